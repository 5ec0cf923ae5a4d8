"""Per-category launch cadence: launches, demand and the new items' share of it, in event-time windows.

One :class:`CategoryState` per ``category_id`` lives with the owner of the key
``category:<category_id>`` (records from :func:`~.routing.route_category_records`: one per catalog
record, per clickstream event with a category, per order and category). Windows are the items'
(:class:`~.windows.WindowConfig`); records are deduplicated by id and refused once their window
has closed, exactly as :class:`~.itemstate.ItemState` does.

Per window it counts units, views and add-to-carts per item (the new/established split needs the
item), and at close it reduces them to a :class:`CategoryWindow`:

* ``launches``: distinct items whose catalog ``launched_at`` falls in the window (status not
  ``planned``), from the launch calendar the catalog records build;
* ``units`` / ``views`` / ``carts``: the category's demand;
* ``new_units`` / ``new_views`` / ``new_carts``: the part of it taken by items launched in the last
  ``new_windows`` windows (``launched_at`` in ``[window start - new_windows * size, window end)``).
  The split is made when the window closes, with the launch calendar as it is then, so an item's
  demand that arrives before its catalog record (within the grace) is still classed right.

A :class:`~.trends.TrendModel` learns the category's units per closed window (silent windows are
zeros, as for items). :func:`cadence_evidence` turns the latest closed windows into the
:class:`~.decisions.CategoryEvidence` that :func:`~.decisions.decide_category` judges.

Each closed window also keeps its units per launch cohort (launch window) of the items launched
within the calendar horizon, so that the evidence can compare the same established items across
windows.

**Bounds:** a window keeps at most ``max_items_per_window`` items (the rest are summed as
established demand, ``overflow``), the launch calendar only items launched within the last
``new_windows + history_windows`` windows (older ones dropped in amortised sweeps; at most
``max_calendar``, newest kept),
``history_windows`` closed windows (each with at most that many cohorts), and dedupe ids for the
open windows only.

>>> cfg = WindowConfig(size_ms=1_000, grace_ms=0)
>>> c = CategoryState("c1")
>>> for rec in [{"k": "g", "id": "g1", "t": 100, "i": "new", "st": "live", "la": 100},
...             {"k": "c", "id": "e1", "t": 200, "i": "new", "e": "view"},
...             {"k": "c", "id": "e2", "t": 300, "i": "old", "e": "view"},
...             {"k": "o", "id": "o1", "t": 400, "L": [["new", 2], ["old", 1]]},
...             {"k": "o", "id": "o1", "t": 400, "L": [["new", 2], ["old", 1]]}]:
...     _ = c.apply(rec, cfg)
>>> [w] = c.close_windows(cfg, 1_000)
>>> w.launches, w.units, w.new_units, w.views, w.new_views
(1, 3.0, 2.0, 2.0, 1.0)
>>> CategoryState.from_state(c.to_state()).to_state() == c.to_state()
True
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson

from .decisions import CategoryEvidence, Thresholds
from .trends import TrendModel, model_state as _model_state
from .windows import ACCEPTED, WindowConfig, admit

STATE_VERSION = 5  # 2: views and carts trends (series); 3: top sellers; 4: revenue; 5: dedupe ids may be kept apart
TOP_SELLERS = 5  # items with the most units in the latest closed window with sales (cold-start partners)
DEFAULT_THRESHOLDS = Thresholds()
MAX_GAP_WINDOWS = 48  # a longer silent gap teaches the category's trend only its last this-many zero windows
MAX_SILENT_STEPS = 48  # close_steps: a longer silent run closes in one call


_CLICK = {"view": 1, "add_to_cart": 2}  # index into an item's [units, views, carts, revenue]


@dataclass(frozen=True, slots=True)
class CategoryWindow:
    """One closed window of a category."""

    category_id: str
    start_ms: int
    end_ms: int
    launches: int
    units: float
    views: float
    carts: float
    new_units: float
    new_views: float
    new_carts: float
    new_items_active: int  # new items with any demand in the window
    items_active: int
    cohorts: tuple = ()  # (launch window start, units) of the items launched within the calendar horizon
    revenue: float = 0.0  # units x unit price of the category's order lines (lines without a price add 0)

    @property
    def established_units(self) -> float:
        return self.units - self.new_units

    def to_list(self) -> list:
        return [self.start_ms, self.launches, self.units, self.views, self.carts, self.new_units, self.new_views,
                self.new_carts, self.new_items_active, self.items_active, [list(c) for c in self.cohorts], self.revenue]

    @classmethod
    def from_list(cls, category_id: str, size_ms: int, v: list) -> CategoryWindow:
        return cls(category_id, v[0], v[0] + size_ms, *v[1:10], tuple(tuple(c) for c in v[10]), v[11])

    def units_launched_since(self, since_ms: int) -> float:
        """Units of the items launched at or after ``since_ms`` (a window start)."""
        return sum(u for lw, u in self.cohorts if lw >= since_ms)


@dataclass(slots=True)
class CategoryState:
    category_id: str
    new_windows: int = 14  # "new" = launched within this many windows (Thresholds.new_item_windows)
    history_windows: int = 28  # closed windows kept for the cadence evidence
    max_items_per_window: int = 5_000
    max_calendar: int = 50_000  # a cap for memory; hitting it makes cadence depend on arrival timing
    calendar: dict = field(default_factory=dict)  # item -> [launched_at ms, status, catalog ts]
    windows: dict = field(default_factory=dict)  # open window start -> {item: [units, views, carts]}
    overflow: dict = field(default_factory=dict)  # open window start -> [units, views, carts] beyond the cap
    seen: dict = field(default_factory=dict)  # dedupe id -> ts (open windows only)
    first_seen: int | None = None
    closed_through: int | None = None
    n_closed: int = 0
    history: list = field(default_factory=list)  # closed CategoryWindow.to_list(), oldest first
    trend: TrendModel = field(default_factory=TrendModel)
    signal_memory: dict = field(default_factory=dict)  # SignalMemory.to_state() of the category's signals
    series: dict = field(default_factory=dict)  # "views" / "carts" -> TrendModel, from the series' first non-zero window
    top_sellers: list = field(default_factory=list)  # items with the most units in the latest closed window with sales
    _calendar_kept: int = field(default=0, repr=False, compare=False)  # len(calendar) after its latest prune
    _seen_kept: int = field(default=0, repr=False, compare=False)  # len(seen) after its latest prune (neither is state)
    ids_persisted: int | None = field(default=None, repr=False, compare=False)  # as ItemState.ids_persisted

    # -- updates -------------------------------------------------------------------------
    def apply(self, rec: Mapping, cfg: WindowConfig) -> str:
        """Apply one record of :func:`~.routing.route_category_records`; ACCEPTED, DUPLICATE or LATE.

        Catalog records are never late: the launch calendar is valid whenever it arrives (a launch
        in a closed window is not counted in that window's ``launches``, but its item is new after it).
        """
        kind = rec["k"]
        if kind == "g":
            self._catalog(rec)
            return ACCEPTED
        ts = rec["t"]
        start = ts - ts % cfg.size_ms  # cfg.start_of, inlined (once per record)
        win = self._admit(rec["id"], ts, start)
        if type(win) is str:
            return win
        if kind == "c":
            j = _CLICK.get(rec.get("e"))
            item = rec.get("i")
            if j is not None and item is not None:
                self._add(win, start, item, j, 1.0)
        elif kind == "o":
            for line in rec["L"]:  # [item, quantity, revenue]
                self._add(win, start, line[0], 0, float(line[1]))
                if len(line) > 2 and line[2]:
                    self._add(win, start, line[0], 3, float(line[2]))
        return ACCEPTED

    def apply_clicks(self, rec: Mapping, cfg: WindowConfig, late_before: int | None = None) -> bool:
        """Apply a record of :func:`~.routing.fold_clicks` (kind ``C``, clicks in columns), each click as
        :meth:`apply` applies its own record, and those older than ``late_before`` refused as late,
        as the worker refuses any record older than its partitions' watermark less the grace.
        True when any click was not late (its owner writes the state again, duplicates included).

        >>> cfg = WindowConfig(size_ms=1_000, grace_ms=0)
        >>> a, b = CategoryState("c1"), CategoryState("c1")
        >>> recs = [{"k": "c", "id": f"e{n}", "t": t, "i": i, "e": e, "n": 0}
        ...         for n, (t, i, e) in enumerate([(100, "x", "view"), (200, "y", "add_to_cart"), (1500, "x", "view")])]
        >>> [a.apply(r, cfg) for r in recs + recs[:1]]
        ['accepted', 'accepted', 'accepted', 'duplicate']
        >>> b.apply_clicks({"k": "C", "id": ["e0", "e1", "e2", "e0"], "t": [100, 200, 1500, 100],
        ...                 "i": ["x", "y", "x", "x"], "e": ["view", "add_to_cart", "view", "view"], "n": 0}, cfg)
        True
        >>> a.to_state() == b.to_state()
        True
        """
        size, admit, click = cfg.size_ms, self._admit, _CLICK
        fresh = False
        for rid, ts, item, e in zip(rec["id"], rec["t"], rec["i"], rec["e"]):
            if late_before is not None and ts < late_before:
                continue
            fresh = True
            start = ts - ts % size
            win = admit(rid, ts, start)
            if type(win) is not str:
                j = click.get(e)
                if j is not None and item is not None:
                    self._add(win, start, item, j, 1.0)
        return fresh

    def _admit(self, rid: str, ts: int, start: int) -> dict | str:
        """The open window a new record counts in, its id remembered; or LATE (its window has closed)
        or DUPLICATE (its id was seen)."""
        refused = admit(self, rid, ts, start)
        if refused is not None:
            return refused
        windows = self.windows
        win = windows.get(start)
        if win is None:
            win = windows[start] = {}
        return win

    def _add(self, win: dict, start: int, item: str, j: int, x: float) -> None:
        row = win.get(item)
        if row is None:
            if len(win) >= self.max_items_per_window:
                row = self.overflow.get(start)
                if row is None:
                    row = self.overflow[start] = [0.0, 0.0, 0.0, 0.0]
                row[j] += x
                return
            row = win[item] = [0.0, 0.0, 0.0, 0.0]
        row[j] += x

    def _catalog(self, rec: Mapping) -> None:
        item, la = rec.get("i"), rec.get("la")
        if item is None:
            return
        cur = self.calendar.get(item)
        if cur is not None and rec["t"] < cur[2]:
            return  # an older catalog record: the newer one holds
        if la is None:
            if cur is not None:
                cur[1], cur[2] = rec.get("st"), rec["t"]
            return
        self.calendar[item] = [la, rec.get("st"), rec["t"]]
        if len(self.calendar) > self.max_calendar:
            # Forget the oldest launches, a tenth of the cap at once: one sort per many records,
            # not a scan of the whole calendar per record.
            cal = self.calendar
            for k in sorted(cal, key=lambda k: (cal[k][0], k))[: len(cal) - self.max_calendar * 9 // 10]:
                del cal[k]

    def close_windows(self, cfg: WindowConfig, watermark_ms: int) -> list[CategoryWindow]:
        """Close every window the watermark has passed, oldest first, teaching the trend its units."""
        if self.first_seen is None:
            return []
        start = cfg.start_of(self.first_seen) if self.closed_through is None else self.closed_through + cfg.size_ms
        last = cfg.start_of(watermark_ms - cfg.grace_ms) - cfg.size_ms
        skip_to = last - MAX_GAP_WINDOWS * cfg.size_ms
        if start < skip_to and not any(start <= s < skip_to for s in self.windows):
            # A long silent gap: thousands of zero windows would teach the trend nothing more.
            self.n_closed += (skip_to - start) // cfg.size_ms
            start = skip_to
        out = []
        while cfg.closable(start, watermark_ms):
            cw = self._reduce(start, cfg)
            self.trend.learn_one(cw.units)
            for name in ("views", "carts", "revenue"):
                y = getattr(cw, name)
                m = self.series.get(name)
                if m is None and y:
                    m = self.series[name] = self.trend.fresh()
                if m is not None:
                    m.learn_one(y)
            self.history.append(cw.to_list())
            self.n_closed += 1
            self.closed_through = start
            out.append(cw)
            start += cfg.size_ms
        if out:
            del self.history[: -self.history_windows]
            self._prune(cfg)
        return out

    def is_new(self, item: str, window_start: int, cfg: WindowConfig) -> bool:
        c = self.calendar.get(item)
        if c is None or c[1] == "planned":
            return False
        return window_start - self.new_windows * cfg.size_ms <= c[0] < window_start + cfg.size_ms

    def calendar_windows(self) -> int:
        """Launches are remembered this many windows: new items, and cohorts for the evidence's history."""
        return self.new_windows + self.history_windows

    def _reduce(self, start: int, cfg: WindowConfig) -> CategoryWindow:
        win = self.windows.pop(start, {})
        tot = list(self.overflow.pop(start, [0.0, 0.0, 0.0, 0.0]))
        new = [0.0, 0.0, 0.0]
        n_new = 0
        cohorts: dict[int, float] = {}
        oldest = start - self.calendar_windows() * cfg.size_ms
        for item, row in win.items():
            for j in range(4):
                tot[j] += row[j]
            c = self.calendar.get(item)
            if c is not None and c[1] != "planned" and oldest <= c[0] < start + cfg.size_ms:
                lw = cfg.start_of(c[0])
                cohorts[lw] = cohorts.get(lw, 0.0) + row[0]
            if self.is_new(item, start, cfg):
                n_new += 1
                for j in range(3):
                    new[j] += row[j]
        launches = sum(1 for la, st, _t in self.calendar.values()
                       if st != "planned" and start <= la < start + cfg.size_ms)
        sellers = sorted((-row[0], item) for item, row in win.items() if row[0] > 0)[:TOP_SELLERS]
        if sellers:
            self.top_sellers = [item for _, item in sellers]
        return CategoryWindow(self.category_id, start, start + cfg.size_ms, launches, tot[0], tot[1], tot[2],
                              new[0], new[1], new[2], n_new, len(win), tuple(sorted(cohorts.items())), tot[3])

    def _prune(self, cfg: WindowConfig) -> None:
        horizon = self.closed_through + cfg.size_ms
        # An item launched before every window still open or to come is no longer new, nor in a cohort
        # the evidence still compares.
        # Amortised (a scan only once an index has doubled): an older launch counts in no window still
        # to close, and an id older than the horizon is never looked up again (its record is late).
        oldest = horizon - self.calendar_windows() * cfg.size_ms
        if len(self.calendar) > 2 * self._calendar_kept + 64:
            self.calendar = {k: v for k, v in self.calendar.items() if v[0] >= oldest}
            self._calendar_kept = len(self.calendar)
        if len(self.seen) > 2 * self._seen_kept + 64:
            self.seen = {k: t for k, t in self.seen.items() if t >= horizon}
            self._seen_kept = len(self.seen)
            self.ids_persisted = None

    # -- views ---------------------------------------------------------------------------
    def closed(self, cfg: WindowConfig) -> list[CategoryWindow]:
        return [CategoryWindow.from_list(self.category_id, cfg.size_ms, v) for v in self.history]

    def prior_for_new_items(self, cfg: WindowConfig, recent: int = 7) -> dict | None:
        """What a brand-new item of this category starts its trend from (cold start), or None.

        ``{"trend": the category's trend state, "scale": s, "through": last closed window}``: the
        new item's model is :meth:`TrendModel.from_prior` of the category's trend at ``s`` times its
        level, ``s`` being the units per active new item over the last ``recent`` closed windows
        against the category's units per window (per active item, when no new item sold), so a new
        launch starts at what new launches of its category sold. None while the category's trend
        has no forecast or nothing sold.

        >>> from launchpulse.models.windows import WindowConfig
        >>> cfg = WindowConfig(size_ms=10, grace_ms=0)
        >>> cat = CategoryState("c")
        >>> for w in range(6):
        ...     _ = cat.apply({"k": "o", "id": f"o{w}", "t": w * 10, "L": [["a", 8], ["b", 2]]}, cfg)
        >>> _ = cat.close_windows(cfg, 60)
        >>> p = cat.prior_for_new_items(cfg)
        >>> round(p["scale"], 3), p["through"]
        (0.5, 50)
        """
        if self.trend.forecast() is None:
            return None
        wins = self.closed(cfg)[-recent:]
        units = sum(w.units for w in wins)
        if units <= 0:
            return None
        new_units, new_active = sum(w.new_units for w in wins), sum(w.new_items_active for w in wins)
        if new_active:
            per_item = new_units / new_active
        else:
            active = sum(w.items_active for w in wins)
            per_item = units / active if active else 0.0
        if per_item <= 0:
            return None
        return {"trend": self.trend.to_state(), "scale": per_item / (units / len(wins)), "through": self.closed_through,
                "top_sellers": list(self.top_sellers)}

    # -- state ---------------------------------------------------------------------------
    def to_state(self, ids: bool = True, models_json: bool = False) -> dict:
        """The state as plain data; ``ids=False`` leaves the dedupe ids out and ``models_json=True`` gives the
        trend models pre-serialised (both as ItemState.to_state)."""
        d = {"version": STATE_VERSION, "category_id": self.category_id, "new_windows": self.new_windows,
             "history_windows": self.history_windows, "max_items_per_window": self.max_items_per_window,
             "max_calendar": self.max_calendar, "calendar": self.calendar,
             "windows": {str(k): v for k, v in self.windows.items()},
             "overflow": {str(k): v for k, v in self.overflow.items()},
             "first_seen": self.first_seen, "closed_through": self.closed_through, "n_closed": self.n_closed,
             "history": self.history, "trend": _model_state(self.trend, models_json),
             "signal_memory": self.signal_memory,
             "series": {k: _model_state(m, models_json) for k, m in self.series.items()}, "top_sellers": self.top_sellers}
        if ids:
            d["seen"] = self.seen
        return d

    def to_json(self, **extra) -> bytes:
        """``to_state(ids=False)`` and the ``extra`` fields after it, serialised: as ItemState.to_json."""
        d = self.to_state(ids=False, models_json=True)
        if extra:
            d.update(extra)
        return orjson.dumps(d)

    @classmethod
    def from_state(cls, d: Mapping) -> CategoryState:
        version = d.get("version")
        if version == 2:
            d = {**d, "top_sellers": []}  # 2 -> 3: known again at the next closed window with sales
        if version in (2, 3):
            # 3 -> 4: revenue per item row and per closed window, 0 before the upgrade
            d = {**d, "windows": {k: {i: list(r) + [0.0] * (4 - len(r)) for i, r in v.items()} for k, v in d["windows"].items()},
                 "overflow": {k: list(r) + [0.0] * (4 - len(r)) for k, r in d["overflow"].items()},
                 "history": [list(h) + [0.0] * (12 - len(h)) for h in d["history"]]}
        elif version not in (4, STATE_VERSION):  # 4 -> 5: nothing to convert (its ids are inline)
            raise ValueError(f"category state version {d.get('version')!r} is not {STATE_VERSION}")
        return cls(d["category_id"], d["new_windows"], d["history_windows"], d["max_items_per_window"],
                   d["max_calendar"], {k: list(v) for k, v in d["calendar"].items()},
                   {int(k): {i: list(r) for i, r in v.items()} for k, v in d["windows"].items()},
                   {int(k): list(v) for k, v in d["overflow"].items()}, dict(d.get("seen") or ()), d["first_seen"],
                   d["closed_through"], d["n_closed"], [list(v) for v in d["history"]],
                   TrendModel.from_state(d["trend"]), dict(d["signal_memory"]),
                   {k: TrendModel.from_state(v) for k, v in d["series"].items()}, list(d["top_sellers"]))


def close_steps(start: int, newest: int, windows, size: int, max_silent: int = MAX_SILENT_STEPS) -> list[int]:
    """The windows to close a category up to, one :meth:`CategoryState.close_windows` call each, so that
    each window is judged (and its prior published) as the category stands at its end, however far one
    watermark step goes: every window from ``start`` to ``newest``, except that a silent run longer than
    ``max_silent`` closes in one call (the trend learns only its last MAX_GAP_WINDOWS zeros then).

    >>> close_steps(0, 40, {10: 1, 30: 1}, 10)
    [0, 10, 20, 30, 40]
    >>> close_steps(0, 1000, {500: 1}, 10)
    [490, 500, 1000]
    """
    steps: list[int] = []
    w = start
    for e in sorted(s for s in windows if start <= s <= newest) + [newest + size]:
        if (e - w) // size > max_silent:
            steps.append(e - size)
        else:
            steps.extend(range(w, e, size))
        if e <= newest:
            steps.append(e)
        w = e + size
    return steps


def cadence_evidence(state: CategoryState, cfg: WindowConfig, th: Thresholds = DEFAULT_THRESHOLDS,
                     window_start: int | None = None) -> CategoryEvidence | None:
    """The cadence decisions' view of the category's latest closed window, or of the closed window
    starting at ``window_start`` when several closed at once (None before any).

    With ``L = th.cadence_lookback_windows`` and ``h = L // 2``: launches are counted over the last
    ``L`` windows (``launches_recent``) and the ``L`` before (``launches_prior``); demand compares
    the mean units of the last ``h`` windows with the ``h`` before them (``demand_growth``,
    None without enough history or with no prior demand); ``new_share`` is the share of the last ``h``
    windows' units taken by the items new at this window (launched within ``state.new_windows``);
    ``established_change`` the relative change, between the two halves, of the units of the items
    that are established at this window (the same items in both halves).
    """
    hist = state.closed(cfg)
    hist_len = len(hist)
    if window_start is not None:
        hist = [w for w in hist if w.start_ms <= window_start]
    if not hist:
        return None
    cur = hist[-1]
    L = th.cadence_lookback_windows
    h = max(1, L // 2)
    size = cfg.size_ms
    by_start = {w.start_ms: w for w in hist}

    def span(lo: int, n: int) -> list[CategoryWindow]:
        return [by_start[s] for s in range(lo, lo + n * size, size) if s in by_start]

    recent = span(cur.start_ms - (h - 1) * size, h)
    prior = span(cur.start_ms - (2 * h - 1) * size, h)
    launches_recent = sum(w.launches for w in span(cur.start_ms - (L - 1) * size, L))
    launches_prior = sum(w.launches for w in span(cur.start_ms - (2 * L - 1) * size, L))
    settle = th.cadence_settle_windows
    launches_settled = sum(w.launches for w in span(cur.start_ms - (L - 1) * size, max(0, L - settle)))
    units_recent = sum(w.units for w in recent) / h
    units_prior = sum(w.units for w in prior) / h if len(prior) == h else None
    # New and established as of this window, for both halves: the same items are compared (an item that
    # stops being new between the halves must not look like established demand appearing).
    new_from = cur.start_ms - state.new_windows * size
    new_recent = sum(w.units_launched_since(new_from) for w in recent)
    est_recent = units_recent - new_recent / h
    est_prior = (units_prior - sum(w.units_launched_since(new_from) for w in prior) / h) if units_prior is not None else None
    growth = units_recent / units_prior if units_prior else None
    new_gain = ratio = loss_sd = gain_sd = None
    if units_prior is not None:
        new_gain = new_recent / h - sum(w.units_launched_since(new_from) for w in prior) / h
        if new_gain > 0:
            ratio = (est_prior - est_recent) / new_gain
        # Noise of the established items' loss and of the new items' gain (differences of two h-window
        # means), so a thin or bursty category is not taken for cannibalised (or unharmed) on noise.
        est_r = [w.units - w.units_launched_since(new_from) for w in recent]
        est_p = [w.units - w.units_launched_since(new_from) for w in prior]
        loss_sd = _diff_sd(est_r, est_p)
        gain_sd = _diff_sd([w.units_launched_since(new_from) for w in recent],
                           [w.units_launched_since(new_from) for w in prior])
    est_change = (est_recent / est_prior - 1.0) if est_prior else None
    slope = state.trend.slope()
    return CategoryEvidence(
        category_id=state.category_id, window_start=cur.start_ms, window_end=cur.end_ms, window_ms=size,
        launches_window=cur.launches, launches_recent=launches_recent, launches_prior=launches_prior,
        units=cur.units, views=cur.views, units_recent_mean=units_recent, units_prior_mean=units_prior,
        demand_growth=growth, new_share=(new_recent / (units_recent * h)) if units_recent > 0 else None,
        new_units_recent=new_recent, established_recent_mean=est_recent, established_prior_mean=est_prior,
        established_change=est_change, new_gain=new_gain, cannibal_ratio=ratio, established_loss_sd=loss_sd,
        new_gain_sd=gain_sd, demand_slope=slope,
        new_items_active=max((w.new_items_active for w in recent), default=0),
        own_windows=state.n_closed - (hist_len - len(hist)),
        launches_settled=launches_settled,
    )


def _diff_sd(recent: list, prior: list) -> float:
    """Standard error of mean(recent) - mean(prior) for per-window unit counts: the larger of the windows'
    own spread and Poisson's (units are counts)."""
    n = len(recent)
    spread = (_var(recent) + _var(prior)) / n
    poisson = (sum(recent) + sum(prior)) / (n * n)
    return math.sqrt(max(spread, poisson))


def _var(xs: list) -> float:
    """Sample variance (0 for fewer than two values)."""
    if len(xs) < 2:
        return 0.0
    m = sum(xs) / len(xs)
    return sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
