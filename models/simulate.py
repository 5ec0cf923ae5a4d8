"""The pipeline without Kafka: validated events in, closed windows (and their states) out.

The worker runs the same pieces (routing, :class:`ItemState`, window closing) per
partition; this runs them over one in-order stream, for ``launchpulse train``,
the backtest and tests that compare the running worker with the pure models.

With ``sessions`` (a :class:`~.sessions.SessionConfig`; ``launchpulse train`` passes one) it
also runs the user-session owners as the worker does: every accepted event also goes through
:func:`~.routing.route_session_records`, sessions close by watermark, one
:class:`~.propensity.PropensityModel` predicts each closed session's purchase propensity and
then learns its label, and every item the session touched applies its record
(:meth:`ItemState.apply_session`, with ``pp`` rounded to 6 digits like the worker's). The worker
keeps one propensity model per partition of user keys; here there is one. The worker closes a
window only once every partition's sessions closed by the same watermark have reached their items
(its closing watermark): here too, sessions are closed before the windows.
Off by default: the backtest runs its own session owners beside the simulator.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

from launchpulse.schemas.records import SESSION_KEY_PREFIX

from .itemstate import ACCEPTED, ClosedWindow, ItemState, dormancy_check_window
from .propensity import PropensityModel, ProgressiveScore
from .routing import route_event, route_session_records
from .sessions import DueIndex, SessionConfig, UserSessions
from .windows import WindowConfig


class Simulator:
    """Single-partition replay. ``close_every`` events, windows the watermark passed are closed."""

    def __init__(self, cfg: WindowConfig, new_state: Callable[[str], ItemState] | None = None,
                 sessions: SessionConfig | None = None):
        self.cfg = cfg
        self.states: dict[str, ItemState] = {}
        self.watermark = 0
        self.closed_upto = None
        self.outcomes = {"accepted": 0, "duplicate": 0, "late": 0}
        self.n_orders = 0  # accepted baskets (N)
        self.pending: dict[int, set] = {}  # window start -> items with events in it (as the worker keeps)
        self._new = new_state or (lambda item: ItemState(item))
        self.session_cfg = sessions
        self.users: dict[str, UserSessions] = {}  # user key -> open sessions (with ``sessions`` only)
        self.due = DueIndex()
        self.propensity = PropensityModel()
        self.propensity_score = ProgressiveScore()  # predict, then learn
        self.sessions_closed = 0
        self.sessions_ordered = 0

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
            if o == ACCEPTED and not key.startswith(SESSION_KEY_PREFIX):
                start = self.cfg.start_of(rec["t"])
                self.pending.setdefault(start, set()).add(key)
                self.pending.setdefault(dormancy_check_window(start, self.cfg), set()).add(key)
            if rec["n"]:
                outcome = o
                if o == ACCEPTED and rec["k"] == "o":
                    self.n_orders += 1
        if self.session_cfg is not None:
            scfg = self.session_cfg
            for key, rec in route_session_records(event):
                u = self.users.get(key)
                if u is None:
                    u = self.users[key] = UserSessions(key)
                u.apply(rec, scfg)
                self.due.push(key, u.next_due_ms(scfg))
        self.outcomes[outcome] += 1
        self.watermark = max(self.watermark, event.ts_ms)
        return outcome

    def close_sessions(self) -> int:
        """Close the sessions the watermark has passed; their items learn them. Returns how many closed."""
        scfg = self.session_cfg
        if scfg is None:
            return 0
        nxt = self.due.next_due_ms()
        if nxt is None or nxt > self.watermark:
            return 0
        n = 0
        for key in self.due.pop_due(self.watermark):
            u = self.users[key]
            for summary in u.close(self.watermark, scfg):
                x, y = summary.propensity_example()
                p = self.propensity.predict_learn_one(x, y)
                self.propensity_score.update(y, p)
                n += 1
                self.sessions_ordered += y
                for item, rec in summary.item_records(round(p, 6)):
                    self.state(item).apply_session(rec, self.cfg)
            nxt = u.next_due_ms(scfg)
            if nxt is None and u.is_empty():
                del self.users[key]
            else:
                self.due.push(key, nxt)
        self.sessions_closed += n
        return n

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

    def run(self, events: Iterable, before_close: Callable[[], None] | None = None) -> Iterator[ClosedWindow]:
        """Learn events in order, closing windows as the watermark passes them.

        ``before_close`` runs after each event, before any window closes (sessions owned outside
        the simulator, as the backtest keeps them).
        """
        boundary = None
        for ev in events:
            self.learn(ev)
            # Before the windows: the worker closes a window once the sessions closed by the same
            # watermark have reached their items.
            self.close_sessions()
            if before_close is not None:
                before_close()
            b = self.cfg.start_of(max(0, self.watermark - self.cfg.grace_ms))
            if boundary is None or b > boundary:
                boundary = b
                yield from self.close()
