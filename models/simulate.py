"""The pipeline without Kafka: validated events in, closed windows (and their states) out.

The worker runs the same pieces (routing, :class:`ItemState`, window closing) per
partition; this runs them over one in-order stream, for ``launchpulse train``,
the backtest and tests that compare the running worker with the pure models.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

from .itemstate import ACCEPTED, ClosedWindow, ItemState, dormancy_check_window
from .routing import route_event
from .windows import WindowConfig


class Simulator:
    """Single-partition replay. ``close_every`` events, windows the watermark passed are closed."""

    def __init__(self, cfg: WindowConfig, new_state: Callable[[str], ItemState] | None = None):
        self.cfg = cfg
        self.states: dict[str, ItemState] = {}
        self.watermark = 0
        self.closed_upto = None
        self.outcomes = {"accepted": 0, "duplicate": 0, "late": 0}
        self.n_orders = 0  # accepted baskets (N)
        self.pending: dict[int, set] = {}  # window start -> items with events in it (as the worker keeps)
        self._new = new_state or (lambda item: ItemState(item))

    def state(self, key: str) -> ItemState:
        st = self.states.get(key)
        if st is None:
            st = self.states[key] = self._new(key)
        return st

    def item_orders(self) -> dict[str, int]:
        return {k: s.assoc.n_item for k, s in self.states.items()}

    def learn(self, event) -> str:
        """Route and apply one validated event; returns its outcome."""
        outcome = None
        if self.cfg.is_late(event.ts_ms, self.watermark):
            outcome = "late"
            self.outcomes[outcome] += 1
            return outcome
        for key, rec in route_event(event):
            o = self.state(key).apply(rec, self.cfg)
            if o == ACCEPTED and not key.startswith("session:"):
                start = self.cfg.start_of(rec["t"])
                self.pending.setdefault(start, set()).add(key)
                self.pending.setdefault(dormancy_check_window(start, self.cfg), set()).add(key)
            if rec["n"]:
                outcome = o
                if o == ACCEPTED and rec["k"] == "o":
                    self.n_orders += 1
        self.outcomes[outcome] += 1
        self.watermark = max(self.watermark, event.ts_ms)
        return outcome

    def close(self) -> list[ClosedWindow]:
        """Close the windows the watermark has passed for the items with events in them.

        The same rule as the worker's: an item is visited when a window it had events in
        closes, and again at its dormancy check (see :meth:`ItemState.close_windows`).
        """
        ready = sorted(s for s in self.pending if self.cfg.closable(s, self.watermark))
        keys: set[str] = set()
        for s in ready:
            keys |= self.pending.pop(s)
        out: list[ClosedWindow] = []
        for key in sorted(keys):
            out.extend(self.states[key].close_windows(self.cfg, self.watermark))
        return out

    def run(self, events: Iterable) -> Iterator[ClosedWindow]:
        """Learn events in order, closing windows as the watermark passes them."""
        boundary = None
        for ev in events:
            self.learn(ev)
            b = self.cfg.start_of(max(0, self.watermark - self.cfg.grace_ms))
            if boundary is None or b > boundary:
                boundary = b
                yield from self.close()
