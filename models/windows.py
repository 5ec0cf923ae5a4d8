"""Event-time tumbling windows: pure arithmetic shared by the worker, training and backtests.

>>> cfg = WindowConfig(size_ms=3_600_000, grace_ms=600_000)
>>> cfg.start_of(7_200_123)
7200000
>>> cfg.is_late(ts_ms=3_000_000, watermark_ms=4_000_000)
True
>>> cfg.closable(window_start=0, watermark_ms=4_200_000)
True
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WindowConfig:
    size_ms: int = 3_600_000  # one hour
    grace_ms: int = 600_000  # events up to this much older than the watermark still count
    keep_closed: int = 8  # closed windows kept per item for features and HTTP views
    idle_windows: int = 14  # an item silent for this many closed windows is dormant: its trend model is
    #                         dropped and its silent windows are skipped until its next event

    def __post_init__(self):
        if self.size_ms <= 0 or self.grace_ms < 0 or self.keep_closed < 1 or self.idle_windows < 1:
            raise ValueError("window size must be > 0, grace >= 0, keep_closed >= 1, idle_windows >= 1")

    def start_of(self, ts_ms: int) -> int:
        return ts_ms - ts_ms % self.size_ms

    def is_late(self, ts_ms: int, watermark_ms: int) -> bool:
        """Late: older than the watermark by more than the grace period; such an event is refused."""
        return ts_ms < watermark_ms - self.grace_ms

    def closable(self, window_start: int, watermark_ms: int) -> bool:
        """A window closes once no event that may still land in it can arrive."""
        return window_start + self.size_ms + self.grace_ms <= watermark_ms

    def to_state(self) -> dict:
        return {"size_ms": self.size_ms, "grace_ms": self.grace_ms, "keep_closed": self.keep_closed,
                "idle_windows": self.idle_windows}


# What applying a record to a state comes to (the item's, the category's and the user's states alike).
ACCEPTED, DUPLICATE, LATE = "accepted", "duplicate", "late"


def admit(state, rid: str, ts: int, start: int | None) -> str | None:
    """Admit a record (id ``rid``, event time ``ts`` in the window starting at ``start``) to an item's
    or a category's windowed state (its ``closed_through``, ``seen`` and ``first_seen``): None, its id
    remembered and ``first_seen`` moved back to it if earlier; or LATE (its window has closed for this
    state) or DUPLICATE (its id was seen). The caller counts it in its window.
    ``start=None``: a record that counts in no window (a catalog record), never late.
    """
    closed = state.closed_through
    if closed is not None and start is not None and start <= closed:
        return LATE
    seen = state.seen
    if rid in seen:
        return DUPLICATE
    seen[rid] = ts
    first = state.first_seen
    if first is None or ts < first:
        state.first_seen = ts
    return None
