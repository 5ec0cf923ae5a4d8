"""ItemState against batch truth: windowed counts, the trend series it learns, dormancy, bounded live models,
expected conversions since the previous scored window;
and the owner partitions' watermark (PartitionMeta) over every input partition."""
from __future__ import annotations

import random

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from launchpulse.models.itemstate import ItemState, LearntAhead, dormancy_check_window, series_model
from launchpulse.models.trends import TrendModel
from launchpulse.models.windows import ACCEPTED, DUPLICATE, WindowConfig

CFG = WindowConfig(size_ms=1000, grace_ms=100, idle_windows=4)


def order_rec(oid: str, ts: int, q: int = 1) -> dict:
    return {"k": "o", "id": oid, "t": ts, "i": "x", "c": None, "p": 1.0, "q": q, "b": [], "n": 1}


def replay(events, cfg=CFG, close_every=1):
    """Apply (ts, id, qty) in order, closing as a single-partition owner does (watermark = max ts)."""
    st_ = ItemState("x")
    pending: dict[int, set] = {}
    closed = []
    wm = 0
    for i, (ts, oid, q) in enumerate(events):
        if cfg.is_late(ts, wm):
            continue
        if st_.apply(order_rec(oid, ts, q), cfg) == ACCEPTED:
            pending.setdefault(cfg.start_of(ts), set()).add("x")
            pending.setdefault(dormancy_check_window(cfg.start_of(ts), cfg), set()).add("x")
        wm = max(wm, ts)
        if i % close_every == 0 or i == len(events) - 1:  # the owner closes at least once the input is quiet
            ready = [s for s in pending if cfg.closable(s, wm)]
            for s in ready:
                del pending[s]
            if ready:
                closed.extend(st_.close_windows(cfg, wm))
    return st_, closed, wm


def batch_units(events, cfg=CFG) -> dict[int, float]:
    """Units per window from the first copy of each order id that the watermark rule accepts."""
    units: dict[int, float] = {}
    seen = set()
    wm = 0
    for ts, oid, q in events:
        if cfg.is_late(ts, wm):
            continue
        wm = max(wm, ts)
        if oid in seen:
            continue
        seen.add(oid)
        s = cfg.start_of(ts)
        units[s] = units.get(s, 0.0) + q
    return units


def expected_trend(units: dict[int, float], last_closed: int, cfg=CFG, model=TrendModel) -> TrendModel:
    """The trend model fed the batch series: zeros between windows with events, dropped after idle_windows zeros."""
    m = model()
    if not units:
        return m
    s, idle = min(units), 0
    while s <= last_closed:
        if s in units:
            idle = 0
            m.learn_one(units[s])
        else:
            idle += 1
            if idle == cfg.idle_windows:
                m = m.fresh()
            elif idle < cfg.idle_windows and any(w > s for w in units if w <= last_closed):
                m.learn_one(0.0)
        s += cfg.size_ms
    return m


@st.composite
def events_strategy(draw):
    """Orders (ts, id, qty): an id always has the same time and quantity; some are delivered twice; mildly out of order."""
    n = draw(st.integers(1, 60))
    orders = [(draw(st.integers(0, 40_000)), f"o{i}", draw(st.integers(1, 5))) for i in range(n)]
    deliveries = orders + draw(st.lists(st.sampled_from(orders), max_size=20))
    jitter = random.Random(draw(st.integers(0, 2**16)))
    return sorted(deliveries, key=lambda e: e[0] + jitter.randint(-80, 80))


@settings(max_examples=300, deadline=None)
@given(events_strategy(), st.integers(1, 5))
def test_windows_and_trend_equal_batch_truth(events, close_every):
    st_, closed, wm = replay(events, close_every=close_every)
    truth = batch_units(events)
    # Every window with events closes exactly once, with the batch count.
    emitted = {cw.start_ms: cw.counts["units"] for cw in closed}
    assert len(emitted) == len(closed)
    newest = CFG.start_of(wm - CFG.grace_ms) - CFG.size_ms
    assert emitted == {s: u for s, u in truth.items() if s <= newest}
    # The trend learnt the batch series (silent windows as zeros, dormancy resets) on the same path.
    last_closed = max(emitted, default=None)
    if last_closed is not None:
        want = expected_trend({s: u for s, u in truth.items() if s <= last_closed}, last_closed)
        got = st_.trend
        # a trailing silent run may already have made the item dormant: then both are fresh
        if st_.idle_run >= CFG.idle_windows:
            assert got.to_state() == TrendModel().to_state()
            assert st_.series == {}
        else:
            assert got.to_state() == want.to_state()
            # revenue = units x price 1 here: its own (lighter) model learnt the same series from the same window
            want_rev = expected_trend({s: u for s, u in truth.items() if s <= last_closed}, last_closed, model=series_model)
            assert st_.series["revenue"].to_state() == want_rev.to_state() and set(st_.series) == {"revenue"}
    # State survives JSON.
    again = ItemState.from_state(orjson.loads(orjson.dumps(st_.to_state())))
    assert again.to_state() == st_.to_state()


@settings(max_examples=100, deadline=None)
@given(events_strategy(), st.integers(1, 5))
def test_models_written_from_their_cached_json_are_the_state_serialised(events, close_every):
    """The flush writes an item's trend models from their cached JSON (to_state(models_json=True)): after
    every record and every close, the bytes are those of the state serialised afresh (a cache that
    outlived a change of its model would write a stale model)."""
    st_ = ItemState("x")
    pending: set[int] = set()
    wm = 0
    for i, (ts, oid, q) in enumerate(events):
        if not CFG.is_late(ts, wm) and st_.apply(order_rec(oid, ts, q), CFG) == ACCEPTED:
            pending.add(CFG.start_of(ts))
        wm = max(wm, ts)
        if i % close_every == 0 and any(CFG.closable(s, wm) for s in pending):
            pending = {s for s in pending if not CFG.closable(s, wm)}
            st_.close_windows(CFG, wm)
        assert orjson.dumps(st_.to_state(models_json=True)) == orjson.dumps(st_.to_state())
        assert st_.to_json(ids=[0, i]) == orjson.dumps({**st_.to_state(ids=False), "ids": [0, i]})
    st_.close_windows(CFG, wm + 10 * CFG.size_ms)  # dormant: the models start afresh
    assert orjson.dumps(st_.to_state(models_json=True)) == orjson.dumps(st_.to_state())
    assert st_.to_json() == orjson.dumps(st_.to_state(ids=False))


def _closed_fields(cw) -> tuple:
    return (cw.start_ms, cw.counts, cw.history, cw.trend_forecast, cw.trend_slope, cw.trend_burst, cw.totals_before,
            cw.n_closed, cw.forecast_abs_error, cw.stock_remaining, cw.orders_through)


@pytest.fixture
def holds_calls(monkeypatch):
    """What LearntAhead.holds answered, call by call: whether a close took what was learnt ahead."""
    calls = []
    holds = LearntAhead.holds

    def recorded(self, st_, start, counts):
        calls.append(holds(self, st_, start, counts))
        return calls[-1]

    monkeypatch.setattr(LearntAhead, "holds", recorded)
    return calls


@settings(max_examples=200, deadline=None)
@given(events_strategy(), st.lists(st.sampled_from(["none", "ahead", "ahead-any", "fresh", "view"]), min_size=1),
       st.integers(1, 5))
def test_learning_ahead_changes_nothing(events, actions, close_every):
    """An item that learns its next window ahead (ItemState.learn_ahead), at any moment, closes the same
    windows to the same states as its twin that never does: late events in the grace, models replaced,
    windows closed several at once, dormancy."""
    a, b = ItemState("x"), ItemState("x")
    pending: set[int] = set()
    out_a, out_b = [], []
    wm = 0
    for i, (ts, oid, q) in enumerate(events):
        act = actions[i % len(actions)]
        if not CFG.is_late(ts, wm):
            if a.apply(order_rec(oid, ts, q), CFG) == ACCEPTED:
                assert b.apply(order_rec(oid, ts, q), CFG) == ACCEPTED
                pending.add(CFG.start_of(ts))
                pending.add(dormancy_check_window(CFG.start_of(ts), CFG))
            if act == "view":
                for st_ in (a, b):
                    assert st_.apply_click("v" + oid, ts, "view", 1.0, None, CFG) in (ACCEPTED, DUPLICATE)
        wm = max(wm, ts)
        if act == "ahead":  # the window whose end the watermark passed last, as the worker does
            a.learn_ahead(CFG, CFG.start_of(wm) - CFG.size_ms)
        elif act == "ahead-any":
            a.learn_ahead(CFG, CFG.start_of(ts))
        elif act == "fresh":  # a model replaced (dormancy, a cold start) after learning ahead
            a.trend, b.trend = a.trend.fresh(), b.trend.fresh()
        if i % close_every == 0 and any(CFG.closable(s, wm) for s in pending):
            pending = {s for s in pending if not CFG.closable(s, wm)}
            out_a += [_closed_fields(cw) for cw in a.close_windows(CFG, wm)]
            out_b += [_closed_fields(cw) for cw in b.close_windows(CFG, wm)]
    for st_, out in ((a, out_a), (b, out_b)):
        out += [_closed_fields(cw) for cw in st_.close_windows(CFG, wm + CFG.size_ms + CFG.grace_ms)]
    assert out_a == out_b
    assert orjson.dumps(a.to_state()) == orjson.dumps(b.to_state())
    assert orjson.dumps(a.to_state(models_json=True)) == orjson.dumps(b.to_state())


def test_learning_ahead_is_taken_unless_its_window_or_models_moved(holds_calls):
    cfg = WindowConfig(size_ms=10, grace_ms=5)
    a, b = ItemState("x"), ItemState("x")

    def both(fn):
        return fn(a), fn(b)

    for t in range(0, 40):
        both(lambda st_: st_.apply(order_rec(f"o{t}", t, 1 + t % 3), cfg))
        both(lambda st_: st_.apply_click(f"v{t}", t, "view", 1.0, None, cfg))
    both(lambda st_: st_.close_windows(cfg, 25))  # windows 0 and 10
    assert a.learn_ahead(cfg, 20) and not a.learn_ahead(cfg, 30)  # only the window it closes next
    out = both(lambda st_: [_closed_fields(cw) for cw in st_.close_windows(cfg, 35)])
    assert out[0] == out[1] and holds_calls == [True]
    assert a.learn_ahead(cfg, 30)
    both(lambda st_: st_.apply(order_rec("late", 39, 5), cfg))  # in the window, within its grace
    out = both(lambda st_: [_closed_fields(cw) for cw in st_.close_windows(cfg, 45)])
    assert out[0] == out[1] and holds_calls == [True, False]
    assert orjson.dumps(a.to_state()) == orjson.dumps(b.to_state())


def test_duplicates_count_once_and_dormancy_drops_the_model():
    cfg = CFG
    st_ = ItemState("x")
    for w in range(6):  # active for six windows: the model trains
        assert st_.apply(order_rec(f"a{w}", w * 1000 + 10, 2), cfg) == ACCEPTED
        assert st_.apply(order_rec(f"a{w}", w * 1000 + 10, 2), cfg) == DUPLICATE
    out = st_.close_windows(cfg, 6 * 1000 + 100)
    assert [cw.counts["units"] for cw in out] == [2.0] * 6
    assert st_.trend.forecast() is not None
    # Three silent windows: still open (not learnt yet), no ClosedWindow for them.
    assert st_.close_windows(cfg, 9 * 1000 + 100) == []
    assert st_.trend.forecast() is not None and st_.idle_run == 0
    # The dormancy check: four silent windows -> dormant, model dropped.
    assert st_.close_windows(cfg, 10 * 1000 + 100) == []
    assert st_.idle_run == 4 and st_.trend.forecast() is None
    # Its next event starts a fresh, provisional model; the silent windows are skipped in one step.
    assert st_.apply(order_rec("b", 30 * 1000 + 5, 1), cfg) == ACCEPTED
    out = st_.close_windows(cfg, 31 * 1000 + 100)
    assert [(cw.start_ms, cw.counts["units"]) for cw in out] == [(30_000, 1.0)]
    assert st_.trend.n_seen == 1 and st_.trend.is_provisional
    assert st_.n_closed == 31


def test_live_models_stay_bounded_by_active_items():
    """Many items, each active in a few windows: trained models exist only for recently active items."""
    cfg = WindowConfig(size_ms=1000, grace_ms=0, idle_windows=3)
    rng = random.Random(7)
    states: dict[str, ItemState] = {}
    pending: dict[int, set] = {}
    active_at: dict[str, int] = {}
    peak = 0
    for w in range(200):
        for j in range(50):  # 50 new items a window, each active for 4 windows in a row
            item = f"i{w}-{j}"
            for k in range(4):
                st_ = states.setdefault(item, ItemState(item))
                ts = (w + k) * 1000 + rng.randrange(1000)
                st_.apply({**order_rec(f"{item}-{k}", ts), "i": item}, cfg)
                s = cfg.start_of(ts)
                pending.setdefault(s, set()).add(item)
                pending.setdefault(dormancy_check_window(s, cfg), set()).add(item)
                active_at[item] = w + k
        wm = (w + 1) * 1000
        for s in sorted(s for s in pending if cfg.closable(s, wm)):
            for item in pending.pop(s):
                states[item].close_windows(cfg, wm)
        live = sum(1 for s_ in states.values() if s_.trend.n_seen > 0)
        peak = max(peak, live)
    # Items touched in the last 4 + idle windows at most; 10,000 items seen in all.
    assert len(states) == 10_000
    assert peak <= 50 * (4 + cfg.idle_windows + 1)


# -- the owners' watermark -----------------------------------------------------------------

def test_partition_meta_waits_for_every_input_partition_and_never_goes_back():
    from launchpulse.models.watermark import PartitionMeta

    m = PartitionMeta()
    # An ingest holding two of four partitions: time does not move until every partition is heard of.
    assert m.hear({"c:0": [500, False], "c:1": [900, False]}, 4) == 0
    # The other ingest reports the rest: the minimum over non-idle partitions.
    assert m.hear({"o:0": [700, False], "o:1": [100, True]}, 4) == 500
    # A partition's figure is the max ever reported: a new holder restarting from 0 does not pull it back.
    assert m.hear({"c:0": [0, False]}, 4) == 500
    # The first ingest died while c:0 had data: its last report keeps holding time back.
    assert m.hear({"o:0": [5000, False], "c:1": [5000, False]}, 4) == 500
    assert m.hear({"c:0": [800, False]}, 4) == 800
    # Idle partitions do not hold time; all idle: the max.
    assert m.hear({"c:0": [800, True], "c:1": [5000, True], "o:0": [5000, True]}, 4) == 5000
    again = PartitionMeta.from_bytes(m.to_bytes())
    assert (again.parts, again.n_parts, again.watermark) == (m.parts, m.n_parts, m.watermark)
    with pytest.raises(ValueError):
        PartitionMeta.from_bytes(orjson.dumps({"version": 4}))


def test_idleness_checked_before_the_newest_data_holds_time_back():
    """Two ingests: B found its partition idle just before data landed on every partition; A read its
    share at once and reported first. B's stale idleness must not let A's data run time ahead of the
    data still unread on B's partition (it would all be refused as late); B's next report frees it."""
    from launchpulse.models.watermark import PartitionMeta

    m = PartitionMeta()
    assert m.hear({"o:1": [0, True, 100.0]}, 2) == 0  # B: idle, checked at t=100
    assert m.hear({"o:0": [86_400_000, False, 100.5]}, 2) == 0  # A: a day of data, read at t=100.5
    assert m.hear({"o:1": [3_600_000, False, 100.7]}, 2) == 3_600_000  # B reads its data: no record was late
    assert m.hear({"o:1": [90_000_000, False, 101.0]}, 2) == 86_400_000
    # Both idle later: time goes to the max; a report older than the one kept does not flip idleness back.
    assert m.hear({"o:0": [86_400_000, True, 106.0], "o:1": [90_000_000, True, 106.0]}, 2) == 90_000_000
    m.hear({"o:0": [86_400_000, False, 105.0]}, 2)
    assert m.parts["o:0"][1] is True
    # A heartbeat confirming idleness after the newest data releases time held by a stale idle report.
    m2 = PartitionMeta()
    m2.hear({"o:1": [10, True, 100.0]}, 2)
    assert m2.hear({"o:0": [500, False, 100.5]}, 2) == 10
    assert m2.hear({"o:1": [10, True, 101.0]}, 2) == 500
    # A meta written before reports had wall times (version 6) reads as checked at 0.
    old = orjson.dumps({"version": 6, "parts": {"o:0": [5, False], "o:1": [7, True]}, "n_parts": 2, "watermark": 5,
                        "pending": {}, "due": m2.due.to_state(), "categories": [],
                        "propensity": m2.propensity.to_state(), "session_totals": m2.session_totals.to_state()})
    assert PartitionMeta.from_bytes(old).parts == {"o:0": [5, False, 0.0], "o:1": [7, True, 0.0]}


def test_catalog_records_are_never_late():
    st_ = ItemState("x")
    st_.apply(order_rec("a", 10), CFG)
    st_.close_windows(CFG, 5_000)
    assert st_.apply(order_rec("b", 20), CFG) == "late"  # its window closed
    cat = {"k": "g", "id": "catalog@30", "t": 30, "i": "x", "c": "c1", "p": 2.0, "st": "live", "sk": 7, "la": 0, "n": 1}
    assert st_.apply(cat, CFG) == ACCEPTED
    assert (st_.stock, st_.status, st_.category_id) == (7, "live", "c1")


# -- expected conversions since the previous scored window ----------------------------------

def session_rec(sid: str, ts: int, pp: float | None) -> dict:
    return {"k": "s", "id": sid, "t": ts, "i": "x", "v": [], "ca": None, "pp": pp, "n": 0}


@st.composite
def orders_and_sessions(draw):
    """Orders (as events_strategy) interleaved with closed-session records (pp in 1/64ths: sums are exact,
    None for a session without a propensity); some sessions are delivered twice."""
    orders = [("o",) + e for e in draw(events_strategy())]
    n = draw(st.integers(0, 40))
    sessions = [("s", f"s{i}", draw(st.one_of(st.none(), st.integers(0, 64).map(lambda k: k / 64)))) for i in range(n)]
    sessions += draw(st.lists(st.sampled_from(sessions), max_size=10)) if sessions else []
    out = list(orders)
    for s in sessions:
        out.insert(draw(st.integers(0, len(out))), s)
    return out


@settings(max_examples=300, deadline=None)
@given(orders_and_sessions(), st.integers(1, 5))
def test_expected_conversions_by_window_of_close_time(events, close_every):
    """Each session's propensity lands in exactly one row: the first ClosedWindow (a window with events)
    at or after the window of its close time, or after the item's last closed window when that one is
    already closed; never in a row before, whatever the arrival order."""
    st_ = ItemState("x")
    pending: dict[int, set] = {}
    wm = 0
    rows = []  # ClosedWindow
    waiting: list[tuple[int, float]] = []  # (window the session belongs to, pp), not yet in a row
    expected = []  # per row: the pp it must hold
    seen_sessions: set[str] = set()
    for i, ev in enumerate(events):
        if ev[0] == "s":
            _, sid, pp = ev
            assert st_.apply_session(session_rec(sid, wm, pp), CFG) == (sid not in seen_sessions)
            if sid not in seen_sessions and pp is not None:
                w = CFG.start_of(wm)
                if st_.closed_through is not None and w <= st_.closed_through:
                    w = st_.closed_through + CFG.size_ms
                waiting.append((w, pp))
            seen_sessions.add(sid)
        else:
            _, ts, oid, q = ev
            if CFG.is_late(ts, wm):
                continue
            if st_.apply(order_rec(oid, ts, q), CFG) == ACCEPTED:
                pending.setdefault(CFG.start_of(ts), set()).add("x")
                pending.setdefault(dormancy_check_window(CFG.start_of(ts), CFG), set()).add("x")
            wm = max(wm, ts)
        if i % close_every == 0 or i == len(events) - 1:
            ready = [s for s in pending if CFG.closable(s, wm)]
            for s in ready:
                del pending[s]
            if ready:
                for cw in st_.close_windows(CFG, wm):
                    rows.append(cw)
                    expected.append([pp for w, pp in waiting if w <= cw.start_ms])
                    waiting = [(w, pp) for w, pp in waiting if w > cw.start_ms]
        # state survives JSON at any point
        if i % 7 == 0:
            again = ItemState.from_state(orjson.loads(orjson.dumps(st_.to_state())))
            assert again.to_state() == st_.to_state()
            st_ = again
    for cw, pps in zip(rows, expected):
        assert cw.sessions == len(pps) and cw.expected_conversions == sum(pps)
    assert st_.sessions_since_close == len(waiting) and st_.ec_since_close == sum(pp for _, pp in waiting)
    assert st_.expected_conversions == sum(pp for pps in expected for pp in pps) + sum(pp for _, pp in waiting)


def test_expected_conversions_features_and_state_versions():
    from launchpulse.models.features import FEATURE_NAMES, feature_row

    st_ = ItemState("x")
    st_.apply(order_rec("a", 10), CFG)
    assert st_.apply_session(session_rec("s1", 20, 0.5), CFG) and st_.apply_session(session_rec("s2", 30, 0.25), CFG)
    assert not st_.apply_session(session_rec("s1", 20, 0.5), CFG)  # a repeat
    st_.apply_session(session_rec("s4", 1_500, 0.0625), CFG)  # closes in the second window: its row
    st_.apply(order_rec("b", 1010), CFG)
    cw1, cw2 = st_.close_windows(CFG, 2_200)  # two windows close at once: each takes its own sessions
    assert (cw1.expected_conversions, cw1.sessions, cw2.expected_conversions, cw2.sessions) == (0.75, 2, 0.0625, 1)
    i = FEATURE_NAMES.index("log_expected_conversions")
    r1, r2 = feature_row(cw1, CFG), feature_row(cw2, CFG)
    assert r1[i] == pytest.approx(0.5596157879354227) and r1[FEATURE_NAMES.index("has_sessions")] == 1.0
    assert r2[i] == pytest.approx(0.0606246218164348) and r2[FEATURE_NAMES.index("has_sessions")] == 1.0
    # orders as of each window's end, not as of now
    j = FEATURE_NAMES.index("log_total_orders")
    assert (cw1.orders_through, cw2.orders_through) == (1.0, 2.0) and r1[j] == pytest.approx(0.6931471805599453)
    assert st_.expected_conversions == 0.8125 and (st_.ec_since_close, st_.sessions_since_close) == (0.0, 0)
    st_.apply_session(session_rec("s3", 300, 0.125), CFG)  # its window has closed: the next row takes it
    d = st_.to_state()
    assert d["version"] == 8 and d["session_windows"] == {"2000": [125_000, 1]}
    assert ItemState.from_state(orjson.loads(orjson.dumps(d))).to_state() == d
    # a version-6 state (sessions since the previous row, by arrival) hands them to the next row
    v6 = {k: v for k, v in d.items() if k != "session_windows"} | {"version": 6, "ec_since_close": 0.125,
                                                                  "sessions_since_close": 1}
    assert ItemState.from_state(v6).session_windows == {1000: [125_000, 1]}
    # a version-3 state (before these fields) loads with the since-close figures at zero
    v3 = {k: v for k, v in v6.items() if k not in ("ec_since_close", "sessions_since_close", "primary_windows", "series")} | {"version": 3}
    old = ItemState.from_state(v3)
    assert (old.ec_since_close, old.sessions_since_close, old.expected_conversions) == (0.0, 0, 0.9375)
    # a version-4 state (before primary orders per window) loads with them empty
    v4 = {k: v for k, v in v6.items() if k not in ("primary_windows", "series")} | {"version": 4}
    assert ItemState.from_state(v4).primary_windows == {} and ItemState.from_state(v4).series == {}
    with pytest.raises(ValueError, match="version"):
        ItemState.from_state({**d, "version": 99})


def test_views_and_carts_series_learn_their_own_trends():
    """Each series' model starts at its first non-zero window and then learns every window the item
    closes (zeros included), like units; an item nobody carts has no carts model."""
    rng = random.Random(3)
    views: dict[int, float] = {}
    st_ = ItemState("x")
    wm = 0
    for w in range(30):
        if w % 7 == 3:
            continue  # a silent window: learnt as zero when the next window with events closes
        for k in range(rng.randint(1, 6)):
            ts = w * CFG.size_ms + k
            assert st_.apply({"k": "c", "id": f"v{w}-{k}", "t": ts, "i": "x", "c": None, "e": "view", "p": None,
                              "s": "s", "n": 1}, CFG) == ACCEPTED
            views[CFG.start_of(ts)] = views.get(CFG.start_of(ts), 0.0) + 1
            wm = ts
        st_.close_windows(CFG, wm)
    last = max(cw for cw in views if CFG.closable(cw, wm))
    want = expected_trend({s: v for s, v in views.items() if s <= last}, last, model=series_model)
    assert st_.series["views"].to_state() == want.to_state() and want.forecast() is not None
    assert set(st_.series) == {"views"}  # no cart, no revenue: no model for them
    assert ItemState.from_state(orjson.loads(orjson.dumps(st_.to_state()))).to_state() == st_.to_state()



@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 59_999), st.integers(0, 400), st.sampled_from(["apply", "flush", "close",
                                                                                        "crash"])),
                min_size=1, max_size=300))
def test_dedupe_ids_written_as_deltas_read_back_whole(steps):
    """The worker's flush writes an item's dedupe ids as chunks (models.dedupe): only the new ids, a
    compaction after a prune or every CHUNKS_MAX writes, the replaced chunks deleted one flush later.
    Whatever the interleaving of records, closes (prunes), flushes and crashes (the state as last
    written, read back from the chunks), the ids read back equal the ids the state held when written."""
    from launchpulse.models.dedupe import chunk_key, plan_ids_write, read_ids

    cfg = CFG
    store: dict[bytes, bytes] = {}  # the changelog as compacted: key -> latest value
    key = b"x"
    live = ItemState("x")
    rng, garbage, wm = None, [], 0
    written_seen: dict | None = None
    for ts, n, what in steps:
        if what == "apply" and not cfg.is_late(ts, wm):
            live.apply(order_rec(f"o{n}", ts), cfg)
            wm = max(wm, ts)
        elif what == "close":
            live.close_windows(cfg, wm)
        elif what == "flush":
            for g in garbage:  # deleted once the state pointing past them is on the broker
                store.pop(chunk_key(key, g), None)
            rng, chunks, garbage = plan_ids_write(live.seen, live.ids_persisted, rng)
            for c, ids in chunks:
                store[chunk_key(key, c)] = orjson.dumps(ids)
            live.ids_persisted = len(live.seen)
            doc = live.to_state(ids=False)
            doc["ids"] = rng
            assert "seen" not in doc
            store[key] = orjson.dumps(doc)
            written_seen = dict(live.seen)
        elif what == "crash" and key in store:
            doc = orjson.loads(store[key])
            ids = read_ids(store.get, key, doc["ids"])
            assert ids == written_seen
            live = ItemState.from_state({**doc, "seen": ids})
            live.ids_persisted = len(live.seen)
            rng, garbage = doc["ids"], []  # a crash forgets the deletions not yet made (left over, unread)
            wm = max([t for t in ids.values()] + [0])
        if rng is not None:
            assert rng[1] - rng[0] <= 32
    if key in store:
        doc = orjson.loads(store[key])
        assert read_ids(store.get, key, doc["ids"]) == written_seen
        assert ItemState.from_state(doc).seen == {}  # a reader that does not need the ids (the HTTP views)


def test_states_of_the_previous_versions_still_load():
    """Item states written before the ids were kept apart (version 7) and category states (version 4)
    hold their ids inline: they load as they were."""
    from launchpulse.models.category import CategoryState

    item = ItemState("x")
    item.apply(order_rec("o1", 10), CFG)
    doc = {**item.to_state(), "version": 7}
    assert ItemState.from_state(doc).seen == {"o1": 10}
    cat = CategoryState("c")
    cat.apply({"k": "o", "id": "o1", "t": 10, "L": [["x", 1]]}, CFG)
    doc = {**cat.to_state(), "version": 4}
    assert CategoryState.from_state(doc).seen == {"o1": 10}


def test_closed_sessions_are_deduplicated_over_the_last_keep_ids_at_least():
    """A repeated session record is refused while it is among the last SESSION_DEDUPE_KEEP ids (any of
    them, at any point); the memory stays within KEEP + SLACK ids; the oldest go first; a state round
    trip keeps what is remembered."""
    from launchpulse.models.itemstate import SESSION_DEDUPE_KEEP as KEEP, SESSION_DEDUPE_SLACK as SLACK

    cfg = WindowConfig(size_ms=3_600_000, grace_ms=0)
    st = ItemState("a")
    rec = lambda n: {"k": "s", "id": f"s{n}", "t": 1_000 + n, "i": "a", "v": ["b"], "ca": None, "pp": None, "n": 0}  # noqa: E731
    rng = random.Random(5)
    for n in range(3 * (KEEP + SLACK) + 17):
        assert st.apply_session(rec(n), cfg)
        assert KEEP <= len(st.session_seen) <= KEEP + SLACK or len(st.session_seen) == n + 1
        back = n - rng.randrange(min(n, KEEP - 1) + 1)  # any of the last KEEP, this one included
        assert not st.apply_session(rec(back), cfg)
        if n % 500 == 0:
            st = ItemState.from_state(orjson.loads(orjson.dumps(st.to_state())))
    assert sorted(st.session_seen, key=lambda k: int(k[1:])) == list(st.session_seen)  # oldest first
    assert st.assoc.n_view == 3 * (KEEP + SLACK) + 17  # every session learnt once
