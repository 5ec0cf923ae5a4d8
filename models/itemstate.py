"""Per-item state: deduplicated event-time window counts, all-time totals, associations, trends.

One :class:`ItemState` per item lives in a Faust table keyed by ``item_id`` in the
partition that owns the item. Everything here is pure: the worker, ``launchpulse
train`` and the backtest replay records through the same code.

Routed records (what the worker's ingest stage sends to the owner of an item) are
plain dicts with short keys, see :data:`RECORD_FIELDS`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice

import orjson

from .associations import ItemAssociations
from .sessions import learn_session_record
from .trends import TrendModel, model_state as _model_state
from .windows import ACCEPTED, WindowConfig, admit

STATE_VERSION = 8  # 4: expected conversions since the previous scored window; 5: primary orders per window;
#                    6: trends of the views, carts and revenue series; 7: closed sessions per window of their close;
#                    8: the dedupe ids may be kept apart (to_state(ids=False), models.dedupe)

RECORD_FIELDS = {
    "k": "kind: 'c' clickstream, 'o' order line, 'g' catalog (blocks of clicks in columns: 'I', 'U', 'C', see "
         "routing.fold_clicks)",
    "id": "deduplication id (event_id, order_id, or item_id@ts for catalog)",
    "t": "event time, epoch ms",
    "i": "item_id (None for a search event)",
    "c": "category_id or None",
    "e": "clickstream event_type",
    "p": "unit price or None",
    "q": "quantity (order line)",
    "b": "the other distinct items of the order (order line)",
    "n": "1 on the record that counts the input event in metrics (one per event)",
    "st": "catalog status", "sk": "catalog stock", "la": "catalog launched_at ms",
}

# Counters per window, in this order.
COUNTERS = ("views", "carts", "removes", "wishlists", "units", "revenue", "orders")
# Series with a trend model of their own besides units (ItemState.trend): created at the series'
# first window with a non-zero value, so an item nobody views keeps no views model.
SERIES = {"views": 0, "carts": 1, "revenue": 5}
# Their models are lighter than the units model (the one the scorer and decisions read): three
# damped-trend candidates on the raw series instead of eight on raw and log, about a fifth of the
# cost per window (they doubled the worker's trend time with the full pool).
SERIES_GRID = ((0.1, 0.01, 0.05, 0.98), (0.3, 0.03, 0.1, 0.98), (0.6, 0.0, 0.1, 0.9))


def series_model() -> TrendModel:
    """A fresh trend model for a views, carts or revenue series."""
    return TrendModel(grid=SERIES_GRID, use_log=False)
_IDX = {name: i for i, name in enumerate(COUNTERS)}
_CLICK_COUNTER = {"view": 0, "add_to_cart": 1, "remove_from_cart": 2, "wishlist": 3}

SESSION_DEDUPE_KEEP = 1024  # closed-session ids remembered per item, at least
# ... and at most this many more: the oldest are dropped in one pass every SESSION_DEDUPE_SLACK
# sessions. Dropping them one session at a time rebuilt the list of 1,024 ids for every session of
# a busy item: a third of closing a live day's sessions in the profile of the fourteenth session.
SESSION_DEDUPE_SLACK = 256
_ZERO = (0.0,) * len(COUNTERS)


def dormancy_check_window(window_start: int, cfg: WindowConfig) -> int:
    """The window whose closing must visit an item that had events in ``window_start``:
    if nothing came since, the item goes dormant then (see :meth:`ItemState.close_windows`)."""
    return window_start + cfg.idle_windows * cfg.size_ms


@dataclass(slots=True)
class ClosedWindow:
    """One window that has just closed for an item: the row the scorer and decisions see."""

    item_id: str
    start_ms: int
    end_ms: int
    counts: dict
    history: list  # earlier closed windows' counts, oldest first
    state: "ItemState"  # the live state: read what you need at close time, it moves on
    trend_forecast: list | None = None  # the trend model's forecast right after this window
    trend_slope: float | None = None
    trend_burst: bool = False
    totals_before: dict | None = None  # the item's counts over all windows closed before this one
    n_closed: int = 0  # this window's position in the item's own history (1 = first)
    forecast_abs_error: float | None = None  # |one-step trend forecast - units| (None: no forecast yet)
    stock_remaining: float | None = None  # stock left at the window's end (see ItemState.stock_remaining_at)
    # Closed sessions (with a purchase propensity) whose close time falls after the item's previous
    # ClosedWindow and by this window's end: the sum of their propensities, and how many. See
    # ItemState.session_windows.
    expected_conversions: float = 0.0
    sessions: int = 0
    orders_through: float = 0.0  # orders holding the item in every window up to this one's end


@dataclass(slots=True, frozen=True)
class LearntAhead:
    """What closing the window ``start`` does to an item's trend models, worked out on copies of them
    before it closes (:meth:`ItemState.learn_ahead`). Used by the close only if the window's counts
    and the models are still those it was worked out from. An item's models learn only as its windows
    close (:meth:`ItemState.close_windows`, which moves ``closed_through`` past them) and are otherwise
    only replaced: while the window to close is still ``start``, the same model objects are the same
    models, so identity is the check (the old models' state is not read: a live boundary checks
    17,000 items, and touching four scattered models each cost more than the rest of the check)."""

    start: int
    counts: tuple  # the window's counts it learnt
    trend_was: TrendModel  # the models it started from
    series_was: tuple  # ((name, model), ...)
    trend: TrendModel  # the models after learning the window
    series: dict
    before_fc: float | None  # the one-step forecast made before learning the window
    forecast: list | None
    slope: float | None
    burst: bool

    def holds(self, st: "ItemState", start: int, counts) -> bool:
        series = st.series
        if not (start == self.start and st.trend is self.trend_was and len(series) == len(self.series_was)
                and self.counts == tuple(counts)):
            return False
        for name, m in self.series_was:
            if series.get(name) is not m:
                return False
        return True


def _learn_window(trend: TrendModel, series: dict, counts) -> tuple:
    """Learn one closed window with events into ``trend`` and ``series`` (in place); returns the
    one-step forecast made before it, and the forecast, slope and burst after it."""
    before_fc = trend.predict_one()
    trend.learn_one(counts[4])
    for name, j in SERIES.items():
        m = series.get(name)
        if m is None:
            if not counts[j]:
                continue
            m = series[name] = series_model()
        m.learn_one(counts[j])
    return before_fc, trend.forecast(), trend.slope(), trend.burst()


@dataclass(slots=True)
class ItemState:
    item_id: str
    category_id: str | None = None
    price: float | None = None
    stock: int | None = None  # units on hand per the latest catalog record
    stock_ts: int | None = None
    units_since_stock: int = 0  # units ordered after the latest stock figure
    status: str | None = None  # catalog status; None: seen in events but not in the catalog
    launched_at: int | None = None
    first_seen: int | None = None
    seen: dict = field(default_factory=dict)  # dedupe id -> ts, kept for the grace horizon
    _seen_kept: int = field(default=0, repr=False, compare=False)  # len(seen) after its latest prune (not state)
    # How many of seen's ids (the first, in insertion order) are persisted apart (models.dedupe); None when
    # unknown, or since a prune rebuilt seen. Kept by the writer, not state.
    ids_persisted: int | None = field(default=None, repr=False, compare=False)
    windows: dict = field(default_factory=dict)  # window start ms -> list of COUNTERS
    closed_through: int | None = None  # start of the last closed window
    totals: list = field(default_factory=lambda: [0.0] * len(COUNTERS))
    closed_totals: list = field(default_factory=lambda: [0.0] * len(COUNTERS))  # sums over closed windows
    n_closed: int = 0  # windows closed so far (the item's own history length)
    idle_run: int = 0  # consecutive closed windows without an event (dormant from cfg.idle_windows)
    primary_orders: int = 0  # orders whose counting record (n=1) this item carried: they sum to N
    primary_windows: dict = field(default_factory=dict)  # window start -> primary orders in it (N per window)
    session_seen: dict = field(default_factory=dict)  # closed-session record id -> its time (dedupe, bounded)
    expected_conversions: float = 0.0  # sum of the predicted purchase propensity of the sessions that touched it
    # The same sum, and the number of those sessions, per window of the session's close time (its last
    # event + the session gap), for the sessions not yet handed to a ClosedWindow: the next ClosedWindow
    # (a window with events) takes every entry up to its own window. By the close time, not by arrival:
    # a session's record reaches the item's owner through the routed topic after its user's owner closed
    # it, and the worker closes a window only once every owner partition has sent the sessions it closed
    # by then (see stream/pipeline.py, "closing watermark"), so what a row counts does not depend on
    # timing. A record whose window has already closed (a replay after a crash) goes to the next one.
    # window start -> [sum of the propensities in millionths, sessions]: integers, so the sum does not
    # depend on the order the records arrived in (they come from every owner partition)
    session_windows: dict = field(default_factory=dict)
    assoc: ItemAssociations = field(default_factory=ItemAssociations)
    trend: TrendModel = field(default_factory=TrendModel)
    series: dict = field(default_factory=dict)  # SERIES name -> TrendModel (views, carts, revenue)
    signal_memory: dict = field(default_factory=dict)  # signal type -> last window start it fired
    # The trend models having learnt the next window before it closed (learn_ahead): derived, not state.
    ahead: "LearntAhead | None" = field(default=None, repr=False, compare=False)

    # -- updates -------------------------------------------------------------------------
    def apply(self, rec: dict, cfg: WindowConfig) -> str:
        """Apply one routed record; returns ACCEPTED, DUPLICATE or LATE. Idempotent per id.

        LATE: the record's window has already closed for this item; it is refused, never
        merged (the owner refuses most late events earlier, against the watermark). Catalog
        records are never late.
        """
        kind = rec["k"]
        if kind == "c":
            return self.apply_click(rec["id"], rec["t"], rec["e"], rec.get("p"), rec.get("c"), cfg)
        ts = rec["t"]
        if kind == "g":  # catalog records describe the item (stock, status, launch), count in no window: never late
            refused = admit(self, rec["id"], ts, None)
            if refused is not None:
                return refused
            self._apply_catalog(rec, cfg)
            return ACCEPTED
        start = ts - ts % cfg.size_ms  # cfg.start_of, inlined (once per record)
        price = rec.get("p")
        row = self._admit(rec["id"], ts, start, rec.get("c"), price)
        if type(row) is str:
            return row
        if kind == "o":
            q = rec["q"]
            rev = q * (price or 0.0)
            row[4] += q
            row[5] += rev
            row[6] += 1
            self.totals[4] += q
            self.totals[5] += rev
            self.totals[6] += 1
            if self.stock_ts is not None and start >= cfg.start_of(self.stock_ts):
                self.units_since_stock += q
            self.assoc.learn_basket(rec.get("b") or [], ts)
            if rec.get("n"):
                self.primary_orders += 1
                self.primary_windows[start] = self.primary_windows.get(start, 0) + 1
        return ACCEPTED

    def apply_click(self, rid: str, ts: int, event: str, price: float | None, category: str | None,
                    cfg: WindowConfig) -> str:
        """Apply one click (a clickstream record's fields, as the worker reads them from a block of
        clicks in columns, see routing.fold_clicks); the same as :meth:`apply` of its record.

        >>> cfg = WindowConfig(size_ms=1_000, grace_ms=0)
        >>> a, b = ItemState("x"), ItemState("x")
        >>> a.apply({"k": "c", "id": "e1", "t": 1500, "i": "x", "c": "c1", "e": "view", "p": 2.0, "n": 1}, cfg)
        'accepted'
        >>> b.apply_click("e1", 1500, "view", 2.0, "c1", cfg), b.apply_click("e1", 1500, "view", 2.0, "c1", cfg)
        ('accepted', 'duplicate')
        >>> a.to_state() == b.to_state()
        True
        """
        row = self._admit(rid, ts, ts - ts % cfg.size_ms, category, price)
        if type(row) is str:
            return row
        j = _CLICK_COUNTER.get(event)
        if j is not None:
            row[j] += 1
            self.totals[j] += 1
        return ACCEPTED

    def _admit(self, rid: str, ts: int, start: int, category: str | None, price: float | None) -> list | str:
        """The counters of the open window a new click or order counts in, its id remembered and the
        item's category and price taken from it; or LATE (its window has closed for this item) or
        DUPLICATE (its id was seen)."""
        refused = admit(self, rid, ts, start)
        if refused is not None:
            return refused
        windows = self.windows
        row = windows.get(start)
        if row is None:
            row = windows[start] = [0.0] * len(COUNTERS)
        if category and self.category_id is None:
            self.category_id = category
        if price is not None:
            self.price = price
        return row

    @property
    def ec_since_close(self) -> float:
        """Propensities of the sessions not yet handed to a ClosedWindow."""
        return sum(v[0] for v in self.session_windows.values()) / 1e6

    @property
    def sessions_since_close(self) -> int:
        return sum(v[1] for v in self.session_windows.values())

    def apply_session(self, rec: dict, cfg: WindowConfig) -> bool:
        """Learn one closed session that touched this item (a record of
        :meth:`~.sessions.SessionSummary.item_records`); False for a repeat.

        Session records carry the session's close time, which may be behind closed windows: they
        are never late. Repeats (a replay after a crash) are recognised among the last
        SESSION_DEDUPE_KEEP ids at least, which covers any replay horizon of the worker's flush cycle.
        """
        rid = rec["id"]
        seen = self.session_seen
        if rid in seen:
            return False
        seen[rid] = rec["t"]
        if len(seen) > SESSION_DEDUPE_KEEP + SESSION_DEDUPE_SLACK:
            for k in list(islice(seen, len(seen) - SESSION_DEDUPE_KEEP)):  # the oldest (insertion order)
                del seen[k]
        learn_session_record(self.assoc, rec)
        pp = rec.get("pp")
        if pp is not None:
            self.expected_conversions += pp
            start = cfg.start_of(rec["t"])
            if self.closed_through is not None and start <= self.closed_through:
                start = self.closed_through + cfg.size_ms
            micro = round(pp * 1_000_000)  # the worker rounds propensities to 6 digits
            acc = self.session_windows.get(start)
            if acc is None:
                self.session_windows[start] = [micro, 1]
            else:
                acc[0] += micro
                acc[1] += 1
        return True

    def _apply_catalog(self, rec: dict, cfg: WindowConfig) -> None:
        """A catalog record: status, category, price, launch date, and a stock figure.

        A stock figure counts down from the start of its window: the units of every order in
        that window and later are subtracted, whether those orders arrived before or after the
        catalog record (topics are read in no fixed order, so the arrival order of a catalog
        record and an order must not change the figure). Windows older than the kept ones are
        no longer known per window; a stock figure that old counts from the oldest kept window.
        """
        self.status = rec.get("st")
        if rec.get("c"):
            self.category_id = rec["c"]
        if rec.get("p") is not None:
            self.price = rec["p"]
        if rec.get("la") is not None:
            self.launched_at = rec["la"]
        if rec.get("sk") is not None and (self.stock_ts is None or rec["t"] >= self.stock_ts):
            self.stock = rec["sk"]
            self.stock_ts = rec["t"]
            first = cfg.start_of(rec["t"])
            self.units_since_stock = sum(row[4] for s, row in self.windows.items() if s >= first)

    def stock_remaining_at(self, window_start: int, cfg: WindowConfig) -> float | None:
        """Stock left at the end of the window starting at ``window_start``: orders of later windows
        already applied are added back, so the figure does not depend on how far processing has
        run ahead of the closing window. None without a stock figure."""
        if self.stock is None:
            return None
        first = cfg.start_of(self.stock_ts)
        later = sum(row[4] for s, row in self.windows.items() if s > window_start and s >= first)
        return max(0.0, self.stock - self.units_since_stock + later)

    def close_windows(self, cfg: WindowConfig, watermark_ms: int) -> list[ClosedWindow]:
        """Close the windows the watermark has passed, oldest first; one ClosedWindow per window with events.

        Silent windows between the item's first event and now are real zeros for the trend
        model, learnt when the next window with events closes. An item silent for
        ``cfg.idle_windows`` windows goes dormant: its trend model is dropped (a cold series
        keeps no model; its forecast was about nil) and its next event starts a fresh,
        provisional one. Silent windows yield no ClosedWindow (nothing new to decide on) and
        a trailing silent run shorter than ``idle_windows`` stays open until the item's next
        event or its dormancy check (the caller schedules one at
        :func:`dormancy_check_window`); events older than the watermark allows are refused
        before they reach an item, so leaving those windows open changes no count. This keeps
        the work and the live models proportional to active items, not to the catalogue.
        """
        if self.first_seen is None:
            return []
        size = cfg.size_ms
        newest = cfg.start_of(watermark_ms - cfg.grace_ms) - size  # the newest closable window
        start = cfg.start_of(self.first_seen) if self.closed_through is None else self.closed_through + size
        if start > newest:
            return []
        out: list[ClosedWindow] = []
        windows = self.windows
        idle = cfg.idle_windows
        closed_before = self.closed_through
        first_window = cfg.start_of(self.first_seen)
        while start <= newest:
            counts = windows.get(start)
            if counts is None:
                nxt = min([s for s in windows if start < s <= newest], default=None)
                run_end = newest if nxt is None else nxt - size
                k = (run_end - start) // size + 1
                if self.idle_run < idle:
                    if self.idle_run + k >= idle:
                        self.trend = self.trend.fresh()  # dormant: the cold series' model is dropped
                        self.series = {}
                    elif nxt is None:
                        break  # still may wake up: learnt with the next window with events
                    else:
                        for _ in range(k):
                            self.trend.learn_one(0.0)
                            for m in self.series.values():
                                m.learn_one(0.0)
                self.idle_run += k
                self.n_closed += k
                self.closed_through = run_end
                start = run_end + size
                continue
            self.idle_run = 0
            y = counts[4]
            ahead = self.ahead
            if ahead is not None and ahead.holds(self, start, counts):
                self.trend, self.series = ahead.trend, ahead.series
                before_fc, fc, slope, burst = ahead.before_fc, ahead.forecast, ahead.slope, ahead.burst
            else:
                # before_fc: the one-step forecast made before this window closed, to score the trend online.
                before_fc, fc, slope, burst = _learn_window(self.trend, self.series, counts)
            self.ahead = None
            before = self.closed_totals
            self.closed_totals = [a + b for a, b in zip(before, counts)]
            ec, n_sessions = 0, 0
            if self.session_windows:
                for s in [s for s in self.session_windows if s <= start]:
                    e, k = self.session_windows.pop(s)
                    ec += e
                    n_sessions += k
            self.n_closed += 1
            self.closed_through = start
            # The earlier windows' rows themselves, not copies: a closed window's counts never change
            # (a record for it is refused as late), and readers only read them.
            history = [windows.get(s, _ZERO) for s in range(start - (cfg.keep_closed - 1) * size, start, size)
                       if s >= first_window]
            out.append(ClosedWindow(self.item_id, start, start + size, dict(zip(COUNTERS, counts)), history, self,
                                    fc, slope, burst, dict(zip(COUNTERS, before)), self.n_closed,
                                    None if before_fc is None else abs(before_fc - y),
                                    self.stock_remaining_at(start, cfg), ec / 1e6, n_sessions, self.closed_totals[6]))
            start += size
        if self.closed_through != closed_before:
            self._prune(cfg, watermark_ms)
        return out

    def learn_ahead(self, cfg: WindowConfig, window_start: int) -> bool:
        """Work out what closing the window ``window_start`` will do to the trend models, on copies, so
        that the close itself only checks and swaps them in (:meth:`close_windows`); True if done.

        For the window the item closes next, when it has events and nothing is silent before it. A
        window's end passes a grace period before it closes (late events are still counted then):
        learning ahead uses that time, and the close finds the result unless the window's counts or
        the models changed meanwhile, in which case it learns the window itself. Either way the models
        come out the same.

        >>> cfg = WindowConfig(size_ms=10, grace_ms=5)
        >>> a, b = ItemState("x"), ItemState("x")
        >>> for st in (a, b):
        ...     for t in (1, 2, 13, 24, 25):
        ...         _ = st.apply_click(f"e{t}", t, "view", None, None, cfg)
        >>> a.learn_ahead(cfg, 20), a.learn_ahead(cfg, 10)  # (window 0 closes next)
        (False, False)
        >>> _ = a.close_windows(cfg, 25), b.close_windows(cfg, 25)  # windows 0 and 10 close
        >>> a.learn_ahead(cfg, 20), a.ahead.start
        (True, 20)
        >>> _ = a.apply_click("late", 29, "view", None, None, cfg)  # within the grace: the counts move
        >>> _ = b.apply_click("late", 29, "view", None, None, cfg)
        >>> [w.trend_forecast for w in a.close_windows(cfg, 35)] == [w.trend_forecast for w in b.close_windows(cfg, 35)]
        True
        >>> a.ahead is None and a.to_state() == b.to_state()
        True
        """
        if self.first_seen is None:
            return False
        start = cfg.start_of(self.first_seen) if self.closed_through is None else self.closed_through + cfg.size_ms
        counts = self.windows.get(start)
        if start != window_start or counts is None:
            return False
        trend = self.trend.copy()
        series = {name: m.copy() for name, m in self.series.items()}
        before_fc, fc, slope, burst = _learn_window(trend, series, counts)
        self.ahead = LearntAhead(start, tuple(counts), self.trend, tuple(self.series.items()),
                                 trend, series, before_fc, fc, slope, burst)
        return True

    def _prune(self, cfg: WindowConfig, watermark_ms: int) -> None:
        keep_from = self.closed_through - (cfg.keep_closed - 1) * cfg.size_ms
        for s in [s for s in self.windows if s < keep_from]:
            del self.windows[s]
        for s in [s for s in self.primary_windows if s < keep_from]:
            del self.primary_windows[s]
        # An id whose window has closed cannot come back without being refused as late.
        horizon = self.closed_through + cfg.size_ms
        if len(self.seen) > 2 * self._seen_kept + 64:
            # Amortised (a scan only once the ids have doubled): an id older than the horizon is never
            # looked up again (its record is late before the dedupe check), so keeping it changes nothing.
            self.seen = {k: t for k, t in self.seen.items() if t >= horizon}
            self._seen_kept = len(self.seen)
            self.ids_persisted = None
        if self.assoc.owner_prunes:
            self.assoc.drop_windows_before(keep_from)

    # -- views ---------------------------------------------------------------------------
    def recent_windows(self, cfg: WindowConfig) -> list[dict]:
        return [{"start_ms": s, "end_ms": s + cfg.size_ms, "closed": self.closed_through is not None and s <= self.closed_through,
                 **dict(zip(COUNTERS, c))} for s, c in sorted(self.windows.items())]

    # -- state ---------------------------------------------------------------------------
    def to_state(self, ids: bool = True, models_json: bool = False) -> dict:
        """The state as plain data; ``ids=False`` leaves the dedupe ids out, for a writer that keeps
        them apart (models.dedupe) and gives them back to :meth:`from_state` as ``seen``.
        ``models_json=True`` gives the trend models as ``orjson.Fragment`` of their cached
        :meth:`~.trends.TrendModel.state_json` (the same bytes once serialised with orjson)."""
        return self._doc(ids, models_json, True)

    def to_json(self, **extra) -> bytes:
        """``to_state(ids=False)`` and the ``extra`` fields after it, serialised (orjson): what a
        writer that keeps the dedupe ids apart stores. Unchanged trend models go in as their cached
        JSON, and the per-window dicts as they are, their int keys written as strings by orjson:
        the same bytes without copying them (the worker writes a dirty item at every flush).

        >>> st = ItemState("a"); _ = st.apply({"k": "c", "id": "e1", "t": 5, "i": "a", "e": "view", "n": 1}, WindowConfig(10, 0))
        >>> st.to_json(ids=[0, 1]) == orjson.dumps({**st.to_state(ids=False), "ids": [0, 1]})
        True
        """
        d = self._doc(False, True, False)
        if extra:
            d.update(extra)
        return orjson.dumps(d, option=orjson.OPT_NON_STR_KEYS)

    def _doc(self, ids: bool, models_json: bool, str_keys: bool) -> dict:
        windows, primary, sessions = self.windows, self.primary_windows, self.session_windows
        if str_keys:
            windows = {str(k): v for k, v in windows.items()}
            primary = {str(k): v for k, v in primary.items()}
            sessions = {str(k): v for k, v in sessions.items()}
        d = {
            "version": STATE_VERSION, "item_id": self.item_id, "category_id": self.category_id,
            "price": self.price, "stock": self.stock, "stock_ts": self.stock_ts,
            "units_since_stock": self.units_since_stock, "status": self.status,
            "launched_at": self.launched_at, "first_seen": self.first_seen,
            "windows": windows, "closed_through": self.closed_through,
            "totals": self.totals, "closed_totals": self.closed_totals, "n_closed": self.n_closed, "idle_run": self.idle_run, "primary_orders": self.primary_orders,
            "primary_windows": primary, "assoc": self.assoc.to_state(),
            "trend": _model_state(self.trend, models_json),
            "series": {name: _model_state(m, models_json) for name, m in self.series.items()},
            "signal_memory": self.signal_memory,
            "session_seen": self.session_seen, "expected_conversions": self.expected_conversions,
            "session_windows": sessions,
        }
        if ids:
            d["seen"] = self.seen
        return d

    @classmethod
    def from_state(cls, d: dict) -> "ItemState":
        version = d.get("version")
        if version == 3:
            # v3 -> v4: the since-close figures start at zero (sessions before the upgrade stay in
            # the all-time expected_conversions only).
            d = {**d, "ec_since_close": 0.0, "sessions_since_close": 0}
        if version in (3, 4):
            # v4 -> v5: primary orders per window start empty (recent-window totals count from the upgrade).
            d = {**d, "primary_windows": {}}
        if version in (3, 4, 5):
            # v5 -> v6: the views, carts and revenue trends start at the next window with events.
            d = {**d, "series": {}}
        if version in (3, 4, 5, 6):
            # v6 -> v7: the sessions not yet handed to a row go to the next window to close.
            nxt = d["closed_through"] or 0  # at or before the next window to close: its row takes them
            d = {**d, "session_windows": ({str(nxt): [round(d["ec_since_close"] * 1_000_000), d["sessions_since_close"]]}
                                          if d["sessions_since_close"] else {})}
        elif version not in (7, STATE_VERSION):  # 7 -> 8: nothing to convert (its ids are inline)
            raise ValueError(f"item state version {version!r} is not {STATE_VERSION}")
        return cls(
            item_id=d["item_id"], category_id=d["category_id"], price=d["price"], stock=d["stock"],
            stock_ts=d["stock_ts"], units_since_stock=d["units_since_stock"], status=d["status"],
            launched_at=d["launched_at"], first_seen=d["first_seen"], seen=dict(d.get("seen") or ()),
            windows={int(k): v for k, v in d["windows"].items()}, closed_through=d["closed_through"],
            totals=list(d["totals"]), closed_totals=list(d["closed_totals"]), n_closed=d["n_closed"], idle_run=d["idle_run"], primary_orders=d["primary_orders"],
            primary_windows={int(k): v for k, v in d["primary_windows"].items()}, assoc=ItemAssociations.from_state(d["assoc"]),
            trend=TrendModel.from_state(d["trend"]), series={k: TrendModel.from_state(v) for k, v in d["series"].items()},
            signal_memory=dict(d["signal_memory"]),
            session_seen=dict(d["session_seen"]), expected_conversions=d["expected_conversions"],
            session_windows={int(k): list(v) for k, v in d["session_windows"].items()},
        )
