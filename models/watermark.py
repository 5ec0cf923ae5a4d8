"""The owner partitions' event-time watermark over every input partition, and what each partition keeps
beside it (items per open window, sessions due, categories, purchase propensity, session totals).

Pure: reports come in as plain dicts, state goes out as bytes.
"""
from __future__ import annotations

import orjson

from launchpulse.models.propensity import PropensityModel
from launchpulse.models.sessions import DueIndex, SessionTotals

__all__ = ["PartitionMeta"]


class PartitionMeta:
    """Per owner partition: where every input partition stands, and the items with events per open window.

    The watermark is the minimum, over every input partition (clickstream, orders, catalog) that holds time, of
    the latest event time read from it (the max over every report heard: a report from a dead
    ingest keeps holding time back until the partition's next holder reports). It only moves
    once every input partition has been heard of, and never goes back.

    A report gives, per input partition, ``[max event time read, idle, wall time]``. An idle
    partition (nothing unread at the broker, no message for a while) stops holding time only
    if its idleness was checked no earlier than the newest report of data from any partition
    (the wall time: for data, when its report was made; for idleness, just before its end
    offset was asked). With several ingests, an idleness checked before data landed on every
    partition at once would otherwise let another ingest's fresh data run time ahead of the
    data still unread there, which would then be refused as late (a two-worker replay lost
    275 of 15,183 orders so). Ingests repeat their idle reports (a heartbeat), so time moves
    on as soon as a fresh confirmation arrives. Reports without a wall time (older ingests)
    count as checked at 0.

    >>> m = PartitionMeta()
    >>> m.hear({"o:0": [500, False, 10.0], "o:1": [900, False, 10.0]}, 3)  # o:2 not heard of yet
    0
    >>> m.hear({"o:2": [100, True, 9.0]}, 3)  # idle, but checked before o:0's data was read
    100
    >>> m.hear({"o:2": [100, True, 11.0]}, 3)  # confirmed idle after it
    500
    """

    __slots__ = ("parts", "n_parts", "watermark", "pending", "due", "categories", "propensity", "session_totals")

    def __init__(self, parts=None, n_parts=0, watermark=0, pending=None, due=None, categories=None,
                 propensity=None, session_totals=None):
        # "topic:partition" -> [max event time, idle, wall time of the latest report]
        self.parts: dict[str, list] = parts or {}
        self.n_parts: int = n_parts  # input partitions that hold time (clickstream, orders, catalog)
        self.watermark: int = watermark
        self.pending: dict[int, set] = pending or {}  # window start -> items with events in it
        self.due: DueIndex = due or DueIndex()  # user keys -> when one of their sessions may close
        self.categories: set = categories or set()  # category keys owned here (closed at every window)
        self.propensity: PropensityModel = propensity or PropensityModel()  # learns this partition's sessions
        self.session_totals: SessionTotals = session_totals or SessionTotals()

    def hear(self, report: dict, n_parts: int) -> int:
        parts = self.parts
        for k, entry in report.items():
            ts, idle = entry[0], entry[1]
            at = entry[2] if len(entry) > 2 else 0.0
            old = parts.get(k)
            if old is None:
                parts[k] = [ts, idle, at]
            elif at >= old[2]:  # the newer report says whether it is idle; the max time is kept
                parts[k] = [max(ts, old[0]), idle, at]
            elif ts > old[0]:
                old[0] = ts
        if n_parts > self.n_parts:
            self.n_parts = n_parts
        if len(parts) >= self.n_parts:
            newest_data = max((at for _, idle, at in parts.values() if not idle), default=None)
            if newest_data is None:
                wm = max(ts for ts, _, _ in parts.values())
            else:
                wm = min(ts for ts, idle, at in parts.values() if not idle or at < newest_data)
            if wm > self.watermark:
                self.watermark = wm
        return self.watermark

    def to_bytes(self) -> bytes:
        return orjson.dumps({"version": 7, "parts": self.parts, "n_parts": self.n_parts, "watermark": self.watermark,
                             "pending": {str(k): sorted(v) for k, v in self.pending.items()},
                             "due": self.due.to_state(), "categories": sorted(self.categories),
                             "propensity": self.propensity.to_state(), "session_totals": self.session_totals.to_state()})

    @classmethod
    def from_bytes(cls, b: bytes | None) -> "PartitionMeta":
        """Version 7; version 6 (reports without wall time) is read as checked at 0."""
        if not b:
            return cls()
        d = orjson.loads(b)
        if d.get("version") not in (6, 7):
            raise ValueError(f"partition meta version {d.get('version')!r} is not 6 or 7")
        parts = {k: (v if len(v) > 2 else [v[0], v[1], 0.0]) for k, v in d["parts"].items()}
        return cls(parts, d["n_parts"], d["watermark"], {int(k): set(v) for k, v in d["pending"].items()},
                   DueIndex.from_state(d["due"]), set(d["categories"]), PropensityModel.from_state(d["propensity"]),
                   SessionTotals.from_state(d["session_totals"]))
