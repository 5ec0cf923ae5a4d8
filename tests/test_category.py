"""Category cadence state (models/category.py) and its routing records: online equals batch, bounds, state."""
from __future__ import annotations

import json

import orjson
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from launchpulse.models.category import CategoryState, cadence_evidence
from launchpulse.models.decisions import Thresholds
from launchpulse.models.routing import route_category_records
from launchpulse.models.trends import TrendModel
from launchpulse.models.windows import WindowConfig
from launchpulse.schemas import CatalogEvent, ClickEvent, OrderEvent, OrderLine

SIZE, GRACE = 1_000, 300
CFG = WindowConfig(size_ms=SIZE, grace_ms=GRACE)
K = 3  # new_windows in these tests


def _stream(seed: int, n_windows: int = 14, dup_rate: float = 0.15):
    """Two categories; items launch (catalog record at launched_at) and then draw clicks and order lines;
    some items are old (launched long before). Arrival is out of order by less than the grace."""
    rng = random.Random(seed)
    events = []
    items = []
    for k in range(rng.randint(3, 9)):
        cat = f"c{rng.randrange(2)}"
        launched = rng.randrange(0, n_windows * SIZE) if rng.random() < 0.7 else -rng.randrange(1, 50) * SIZE
        status = "planned" if rng.random() < 0.1 else "live"
        ts = max(0, launched)
        events.append(CatalogEvent(f"i{k}", ts, "t", cat, 1.0, status, launched, None))
        if rng.random() < 0.3:  # a later catalog update (stock) of the same item
            events.append(CatalogEvent(f"i{k}", ts + rng.randrange(1, SIZE), "t", cat, 1.0, status, launched, 5))
        items.append((f"i{k}", cat, ts))
    for seq in range(rng.randint(5, 120)):
        item, cat, since = rng.choice(items)
        ts = rng.randrange(since, n_windows * SIZE)
        if rng.random() < 0.6:
            e = rng.choice(("view", "view", "add_to_cart", "wishlist"))
            events.append(ClickEvent(f"e{seq}", ts, "u", "s", e, item, cat, None, None))
        else:
            lines = [OrderLine(item, rng.randint(1, 3), 1.0, cat)]
            other, ocat, osince = rng.choice(items)
            if osince <= ts:
                lines.append(OrderLine(other, rng.randint(1, 2), 1.0, ocat if rng.random() < 0.9 else None))
            events.append(OrderEvent(f"o{seq}", ts, "u", tuple(lines)))
    events.sort(key=lambda e: e.ts_ms)
    arrivals = []
    for e in events:
        for _ in range(2 if rng.random() < dup_rate else 1):
            arrivals.append((e.ts_ms + rng.randrange(0, GRACE // 2), rng.random(), e))
    arrivals.sort(key=lambda a: (a[0], a[1]))
    return events, [a[2] for a in arrivals]


def _online(arrivals, roundtrip_at=None):
    cats: dict[str, CategoryState] = {}
    closed: dict[str, list] = {}
    wm = 0
    for n, e in enumerate(arrivals):
        if n == roundtrip_at:
            cats = {k: CategoryState.from_state(json.loads(json.dumps(c.to_state()))) for k, c in cats.items()}
        for key, rec in route_category_records(e):
            c = cats.get(key) or cats.setdefault(key, CategoryState(rec["c"], new_windows=K))
            assert c.apply(rec, CFG) in ("accepted", "duplicate")
        wm = max(wm, e.ts_ms)
        for key, c in cats.items():
            closed.setdefault(key, []).extend(c.close_windows(CFG, wm))
    end = wm + 3 * SIZE + GRACE
    for key, c in cats.items():
        closed.setdefault(key, []).extend(c.close_windows(CFG, end))
    return cats, closed, end


def _batch(events, end):
    """Per category and window: launches, units, views, carts, and the new items' part."""
    calendar: dict[str, tuple] = {}  # item -> (launched_at, status, category) from its latest catalog record
    for e in events:
        if type(e) is CatalogEvent:
            calendar[e.item_id] = (e.launched_at_ms, e.status, e.category_id)
    rows: dict[str, dict[int, dict]] = {}
    first: dict[str, int] = {}
    seen = set()

    def row(cat, ts):
        first[cat] = min(first.get(cat, ts), ts)
        return rows.setdefault(cat, {}).setdefault(ts - ts % SIZE, {})

    for e in events:
        if type(e) is ClickEvent:
            if e.event_id in seen:
                continue
            seen.add(e.event_id)
            r = row(e.category_id, e.ts_ms).setdefault(e.item_id, [0.0, 0.0, 0.0])
            if e.event_type == "view":
                r[1] += 1
            elif e.event_type == "add_to_cart":
                r[2] += 1
        elif type(e) is OrderEvent:
            if e.order_id in seen:
                continue
            seen.add(e.order_id)
            for line in e.lines:
                if line.category_id is not None:
                    row(line.category_id, e.ts_ms).setdefault(line.item_id, [0.0, 0.0, 0.0])[0] += line.quantity
    out = {}
    for cat, wins in rows.items():
        ws = []
        for start in range(first[cat] - first[cat] % SIZE, end - GRACE - SIZE + 1, SIZE):
            if start + SIZE + GRACE > end:
                break
            items = wins.get(start, {})
            tot, new = [0.0] * 3, [0.0] * 3
            for item, r in items.items():
                la, status, _c = calendar.get(item, (None, None, None))
                is_new = la is not None and status != "planned" and start - K * SIZE <= la < start + SIZE
                for j in range(3):
                    tot[j] += r[j]
                    new[j] += r[j] if is_new else 0.0
            launches = sum(1 for la, status, c in calendar.values()
                           if c == cat and status != "planned" and la is not None and start <= la < start + SIZE)
            ws.append((start, launches, *tot, *new))
        out["category:" + cat] = ws
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), roundtrip=st.booleans())
def test_online_category_windows_equal_batch(seed, roundtrip):
    events, arrivals = _stream(seed)
    cats, closed, end = _online(arrivals, roundtrip_at=len(arrivals) // 2 if roundtrip else None)
    batch = _batch(events, end)
    for key, ws in batch.items():
        got = [(w.start_ms, w.launches, w.units, w.views, w.carts, w.new_units, w.new_views, w.new_carts)
               for w in closed[key]]
        assert got == ws, key
        # the trend learnt exactly the window units, zeros included
        ref = TrendModel()
        for w in ws:
            ref.learn_one(w[2])
        assert cats[key].trend.to_state() == ref.to_state()
        # the flush writes the models from their cached JSON: the same bytes
        assert orjson.dumps(cats[key].to_state(models_json=True)) == orjson.dumps(cats[key].to_state())
        assert cats[key].to_json(ids=[0, 1]) == orjson.dumps({**cats[key].to_state(ids=False), "ids": [0, 1]})
    for key in closed:
        assert key in batch or all(w.units == w.views == w.carts == 0 for w in closed[key])


def test_duplicates_and_late_records():
    c = CategoryState("c", new_windows=K)
    rec = {"k": "o", "id": "o1", "t": 100, "c": "c", "L": [["a", 2]]}
    assert c.apply(rec, CFG) == "accepted" and c.apply(rec, CFG) == "duplicate"
    [w] = c.close_windows(CFG, SIZE + GRACE)
    assert w.units == 2
    assert c.apply({"k": "c", "id": "e1", "t": 999, "i": "a", "e": "view"}, CFG) == "late"
    # a catalog record is never late: an item launched in a closed window is still new afterwards
    assert c.apply({"k": "g", "id": "g", "t": 500, "i": "a", "st": "live", "la": 500}, CFG) == "accepted"
    c.apply({"k": "o", "id": "o2", "t": 1_500, "c": "c", "L": [["a", 1]]}, CFG)
    [w] = c.close_windows(CFG, 2 * SIZE + GRACE)
    assert (w.launches, w.units, w.new_units) == (0, 1, 1)


def test_window_items_and_calendar_are_bounded():
    c = CategoryState("c", new_windows=K, history_windows=4, max_items_per_window=10, max_calendar=20)
    for n in range(500):
        c.apply({"k": "c", "id": f"e{n}", "t": n, "i": f"i{n}", "e": "view"}, CFG)
        c.apply({"k": "g", "id": f"g{n}", "t": n, "i": f"i{n}", "st": "live", "la": n}, CFG)
    assert len(c.windows[0]) == 10 and c.overflow[0] == [0.0, 490.0, 0.0, 0.0] and len(c.calendar) == 20
    [w] = c.close_windows(CFG, SIZE + GRACE)
    assert w.views == 500 and w.launches == 20  # launches beyond max_calendar are forgotten (newest kept)
    c.close_windows(CFG, 20 * SIZE)
    assert len(c.history) == 4 and len(json.dumps(c.to_state())) < 20_000


def _evidence_state(old_units, new_units, launches_at, n=20):
    """A category with one established item and one new item per launch window."""
    c = CategoryState("cat", new_windows=14)
    day = WindowConfig(size_ms=SIZE, grace_ms=0)
    for k, lw in enumerate(launches_at):
        c.apply({"k": "g", "id": f"g{k}", "t": lw * SIZE, "i": f"n{k}", "st": "live", "la": lw * SIZE}, day)
    for w in range(n):
        c.apply({"k": "o", "id": f"o{w}", "t": w * SIZE, "c": "cat", "L": [["old", old_units(w)]]}, day)
        for k, lw in enumerate(launches_at):
            if lw <= w and new_units:
                c.apply({"k": "o", "id": f"o{w}-{k}", "t": w * SIZE + 1, "c": "cat", "L": [[f"n{k}", new_units]]}, day)
    c.close_windows(day, n * SIZE)
    return c, day


def test_cadence_evidence_by_hand():
    th = Thresholds()
    # 3 launches at windows 13, 16, 19, each selling 10 a window; the established item keeps 100
    c, day = _evidence_state(lambda w: 100, 10, [13, 16, 19])
    ev = cadence_evidence(c, day, th)
    assert ev.window_start == 19 * SIZE and ev.launches_recent == 3 and ev.launches_prior == 0
    # recent half = windows 13..19: new units 70 + 40 + 10 = 120; prior half 6..12: 0
    assert ev.units_recent_mean == (700 + 120) / 7 and ev.units_prior_mean == 100
    assert abs(ev.new_share - 120 / 820) < 1e-12 and ev.established_change == 0.0
    assert ev.cannibal_ratio == 0.0 and abs(ev.new_gain - 120 / 7) < 1e-12
    assert ev.launches_settled == 2 and ev.own_windows == 20
    # the same launches taking their units from the established item
    c, day = _evidence_state(lambda w: 100 - 10 * sum(1 for lw in (13, 16, 19) if lw <= w), 10, [13, 16, 19])
    ev = cadence_evidence(c, day, th)
    assert ev.demand_growth == 1.0 and abs(ev.cannibal_ratio - 1.0) < 1e-12
    # evidence of an earlier closed window, when several closed at once
    ev = cadence_evidence(c, day, th, window_start=15 * SIZE)
    assert ev.window_start == 15 * SIZE and ev.launches_recent == 1 and ev.own_windows == 16


def test_an_item_that_stops_being_new_stays_out_of_the_established_comparison():
    # one launch at window 2 selling 50 from then on: at window 19 it is no longer new (14 windows), and
    # the established items of window 19 (the old one and it) kept the same units in both halves
    c, day = _evidence_state(lambda w: 100, 50, [2])
    ev = cadence_evidence(c, day)
    assert ev.new_share == 0.0 and ev.established_change == 0.0 and ev.demand_growth == 1.0


def test_category_routing_records():
    click = ClickEvent("e1", 10, "u", "s", "view", "a", "c1", 2.0, None)
    assert route_category_records(click) == [("category:c1", {"k": "c", "id": "e1", "t": 10, "i": "a", "c": "c1",
                                                              "e": "view", "n": 0})]
    assert route_category_records(ClickEvent("e2", 10, "u", "s", "view", "a", None, 2.0, None)) == []
    assert route_category_records(ClickEvent("e3", 10, "u", "s", "search", None, "c1", None, None)) == []
    o = OrderEvent("o1", 5, "u", (OrderLine("b", 1, 1.0, "c2"), OrderLine("a", 1, 1.0, "c1"), OrderLine("a", 2, 1.0, "c1")))
    assert [(k, r["id"], r["L"]) for k, r in route_category_records(o)] == [("category:c1", "o1", [["a", 3, 3.0]]),
                                                                           ("category:c2", "o1", [["b", 1, 1.0]])]


def test_category_revenue_and_series_trends_and_state_upgrade():
    """Revenue per window from the order lines' prices; views, carts and revenue trends from each series'
    first non-zero window; a version-3 state loads with revenue 0."""
    from launchpulse.models.category import CategoryState

    c = CategoryState("c")
    for w in range(8):
        c.apply({"k": "o", "id": f"o{w}", "t": w * SIZE, "c": "c", "L": [["a", 2, 5.0], ["b", 1]]}, CFG)
        if w >= 3:
            c.apply({"k": "c", "id": f"v{w}", "t": w * SIZE, "i": "a", "c": "c", "e": "view"}, CFG)
    closed = c.close_windows(CFG, 8 * SIZE + GRACE)
    assert [w.revenue for w in closed] == [5.0] * 8 and [w.units for w in closed] == [3.0] * 8
    assert set(c.series) == {"views", "revenue"} and c.series["revenue"].n_seen == 8 and c.series["views"].n_seen == 5
    d = orjson.loads(orjson.dumps(c.to_state()))
    assert CategoryState.from_state(d).to_state() == d
    old = dict(d, version=3, history=[h[:11] for h in d["history"]])
    assert [w.revenue for w in CategoryState.from_state(old).closed(CFG)] == [0.0] * len(d["history"])



_click_recs = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 6_000), st.sampled_from(["a", "b", "c", None]),
                                 st.sampled_from(["view", "add_to_cart", "remove_from_cart", "wishlist"])),
                       max_size=60)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_click_recs, st.integers(-1_000, 5_000), st.booleans()), min_size=1, max_size=6))
def test_folded_clicks_count_as_their_records(batches):
    """The ingest folds a category's clicks of a batch into one record of columns
    (routing.fold_clicks) and its owner applies it with CategoryState.apply_clicks: the state
    must be that of the records applied one by one as the worker applies them (older than its late
    bound: refused; else CategoryState.apply), repeats, late clicks, closed windows and all; and the
    owner must write the state again exactly when some record was not refused as late."""
    from launchpulse.models.routing import CATEGORY_KEY_PREFIX, fold_clicks

    one_by_one, folded = CategoryState("c1"), CategoryState("c1")
    key = CATEGORY_KEY_PREFIX + "c1"
    for clicks, late_before, close in batches:
        recs = [{"k": "c", "id": f"e{n}", "t": t, "i": i, "e": e, "n": 0, "K": key} for n, t, i, e in clicks]
        others = [{"k": "o", "id": "x", "t": 1, "i": "a", "q": 1, "n": 1}]  # an item's order: not folded
        packed = fold_clicks(others + recs)
        assert packed[0] is others[0] and len(packed) == 1 + bool(recs)
        fresh = False
        for rec in recs:
            if rec["t"] >= late_before:
                fresh = True
                one_by_one.apply(rec, CFG)
        if recs:
            assert folded.apply_clicks(packed[1], CFG, late_before) is fresh
        assert orjson.dumps(folded.to_state()) == orjson.dumps(one_by_one.to_state())
        if close:
            wm = max([0] + [t for _, t, _, _ in clicks])
            assert one_by_one.close_windows(CFG, wm) == folded.close_windows(CFG, wm)
