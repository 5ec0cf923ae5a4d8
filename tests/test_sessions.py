"""Sessions (models/sessions.py) and their routing records: online equals batch, bounds, labels, state."""
from __future__ import annotations

import json
import math
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from launchpulse.models.associations import ItemAssociations
from launchpulse.models.propensity import ProgressiveScore, PropensityModel
from launchpulse.models.routing import (
    route_category_records,
    route_event,
    route_event_extended,
    route_session_records,
)
from launchpulse.models.sessions import (
    DUPLICATE,
    LATE,
    DueIndex,
    SessionConfig,
    SessionTotals,
    UserSessions,
    expected_conversions,
    learn_session_record,
)
from launchpulse.schemas import CatalogEvent, ClickEvent, OrderEvent, OrderLine

GAP, GRACE = 30 * 60_000, 10 * 60_000
CFG = SessionConfig(gap_ms=GAP, grace_ms=GRACE)
ETYPES = ("view", "view", "view", "add_to_cart", "remove_from_cart", "wishlist", "search", "review")


# -- a random stream: a few users, sessions of events less than half a gap apart, orders; duplicates;
#    arrival out of order by at most half the grace ---------------------------------------------------

def _stream(seed: int, n_users: int = 4, max_sessions: int = 4, dup_rate: float = 0.15):
    rng = random.Random(seed)
    events = []  # validated events, in event time
    seq = 0
    for u in range(n_users):
        t = rng.randrange(0, 4 * GAP)
        for s in range(rng.randint(1, max_sessions)):
            t += rng.randrange(GAP + 1, 4 * GAP)  # a new session starts after more than a gap...
            if rng.random() < 0.3:
                t -= rng.randrange(GAP)  # ...or overlaps the previous one (a second device)
            ts = t
            for _ in range(rng.randint(1, 12)):
                seq += 1
                e = rng.choice(ETYPES)
                item = None if e == "search" else f"i{rng.randrange(8)}"
                price = None if item is None or rng.random() < 0.3 else round(rng.uniform(1, 50), 2)
                events.append(ClickEvent(f"e{seq}", ts, f"u{u}", f"s{u}-{s}", e, item, f"c{rng.randrange(2)}", price,
                                         None))
                ts += rng.randrange(0, GAP // 2)
            if rng.random() < 0.5:  # an order within the session's span + gap, or just after it
                seq += 1
                ots = ts + rng.randrange(-GAP // 2, GAP + GAP // 2)
                lines = tuple(OrderLine(f"i{rng.randrange(8)}", rng.randint(1, 3), 2.0, None) for _ in range(rng.randint(1, 3)))
                events.append(OrderEvent(f"o{seq}", max(0, ots), f"u{u}", lines))
    events.sort(key=lambda e: e.ts_ms)
    arrivals = []
    for e in events:
        copies = 2 if rng.random() < dup_rate else 1
        for _ in range(copies):
            arrivals.append((e.ts_ms + rng.randrange(0, GRACE // 2), rng.random(), e))
    arrivals.sort(key=lambda a: (a[0], a[1]))
    return events, [a[2] for a in arrivals]


def _online(arrivals, cfg=CFG, roundtrip_at: int | None = None):
    users: dict[str, UserSessions] = {}
    due = DueIndex()
    out = []
    wm = 0
    for n, e in enumerate(arrivals):
        if roundtrip_at is not None and n == roundtrip_at:
            users = {k: UserSessions.from_state(json.loads(json.dumps(u.to_state()))) for k, u in users.items()}
            due = DueIndex.from_state(json.loads(json.dumps(due.to_state())))
        for key, rec in route_session_records(e):
            u = users.get(key) or users.setdefault(key, UserSessions(key))
            u.apply(rec, cfg)
            due.push(key, u.next_due_ms(cfg))
        wm = max(wm, e.ts_ms)
        for key in due.pop_due(wm):
            u = users[key]
            out += [(key, s) for s in u.close(wm, cfg)]
            nxt = u.next_due_ms(cfg)
            if nxt is None and u.is_empty():
                del users[key]
            else:
                due.push(key, nxt)
    end = wm + 10 * cfg.gap_ms + cfg.grace_ms
    for key in sorted(users):
        out += [(key, s) for s in users[key].close(end, cfg)]
    return out


def _batch(events, cfg=CFG):
    """The definition: events grouped by (user, session key), deduplicated by id."""
    sessions: dict[tuple, dict] = {}
    orders: dict[str, list] = {}
    seen = set()
    for e in events:
        if type(e) is OrderEvent:
            if e.order_id not in seen:
                seen.add(e.order_id)
                orders.setdefault(e.user_key, []).append(e.ts_ms)
            continue
        if e.event_id in seen:
            continue
        seen.add(e.event_id)
        s = sessions.setdefault((e.user_key, e.session_key), {"ts": [], "types": [], "viewed": set(), "carted": set(),
                                                               "prices": []})
        s["ts"].append(e.ts_ms)
        s["types"].append(e.event_type)
        if e.event_type == "view" and e.item_id:
            s["viewed"].add(e.item_id)
        if e.event_type == "add_to_cart" and e.item_id:
            s["carted"].add(e.item_id)
        if e.price is not None and e.event_type in ("view", "add_to_cart"):
            s["prices"].append(e.price)
    out = {}
    for (user, key), s in sessions.items():
        first, last = min(s["ts"]), max(s["ts"])
        others = [max(o["ts"]) for (u2, k2), o in sessions.items() if u2 == user and k2 != key and max(o["ts"]) < first]
        out[("user:" + user, key)] = {
            "views": s["types"].count("view"), "carts": s["types"].count("add_to_cart"),
            "removes": s["types"].count("remove_from_cart"), "wishlists": s["types"].count("wishlist"),
            "searches": s["types"].count("search"), "start_ms": first, "end_ms": last, "dwell_s": (last - first) / 1000,
            "mean_price": (sum(s["prices"]) / len(s["prices"])) if s["prices"] else None,
            "recency_s": (first - max(others)) / 1000 if others else None,
            "viewed": tuple(sorted(s["viewed"])), "carted": tuple(sorted(s["carted"])),
            "ordered": any(first <= t <= last + cfg.gap_ms for t in orders.get(user, [])),
        }
    return out


def _as_dict(summaries):
    out = {}
    for key, s in summaries:
        d = s.to_dict()
        assert (key, s.session_key) not in out, "a session closed twice"
        out[(key, s.session_key)] = {k: d[k] for k in ("views", "carts", "removes", "wishlists", "searches", "start_ms",
                                                       "end_ms", "dwell_s", "mean_price", "recency_s", "viewed",
                                                       "carted", "ordered")}
        assert not s.truncated and not s.forced
    return out


def _close(a, b):
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), roundtrip=st.booleans())
def test_online_sessions_equal_batch_with_duplicates_and_disorder(seed, roundtrip):
    events, arrivals = _stream(seed)
    online = _as_dict(_online(arrivals, roundtrip_at=len(arrivals) // 2 if roundtrip else None))
    batch = _batch(events)
    assert online.keys() == batch.keys()
    for k, b in batch.items():
        o = online[k]
        for f in b:
            if f == "mean_price":
                assert _close(o[f], b[f]), (k, f, o[f], b[f])
            else:
                assert o[f] == b[f], (k, f, o[f], b[f])


def test_a_session_closes_only_after_gap_and_grace():
    u = UserSessions("u")
    u.apply({"k": "c", "id": "a", "t": 1_000, "i": "x", "e": "view", "s": "s"}, CFG)
    assert u.next_close_ms(CFG) == 1_000 + GAP + GRACE
    assert u.close(1_000 + GAP + GRACE - 1, CFG) == []
    [s] = u.close(1_000 + GAP + GRACE, CFG)
    assert s.close_ms == 1_000 + GAP and not s.ordered
    # an event of the closed session, later than the watermark allows, is refused, never reopens it
    assert u.apply({"k": "c", "id": "b", "t": 2_000, "i": "y", "e": "view", "s": "s"}, CFG) == LATE
    assert u.apply({"k": "o", "id": "o", "t": 2_000, "L": [["x", 1]]}, CFG) == LATE


def test_duplicates_count_once():
    u = UserSessions("u")
    rec = {"k": "c", "id": "a", "t": 0, "i": "x", "e": "view", "s": "s", "p": 3.0}
    u.apply(rec, CFG)
    assert u.apply(rec, CFG) == DUPLICATE
    o = {"k": "o", "id": "o1", "t": 10, "L": [["x", 1]]}
    u.apply(o, CFG)
    assert u.apply(o, CFG) == DUPLICATE
    [s] = u.close(10**9, CFG)
    assert (s.views, s.mean_price, s.ordered) == (1, 3.0, True)


def test_bot_session_is_bounded():
    cfg = SessionConfig(gap_ms=GAP, grace_ms=GRACE, max_items=5, max_events=50)
    u = UserSessions("bot")
    for n in range(200):
        u.apply({"k": "c", "id": f"e{n}", "t": n, "i": f"i{n}", "e": "view" if n % 2 else "add_to_cart", "s": "s"}, cfg)
    st_ = u.sessions["s"]
    assert len(st_.viewed) == 5 and len(st_.carted) == 5 and len(st_.seen) == 50
    assert st_.dropped_events == 150 and st_.truncated
    assert len(json.dumps(u.to_state())) < 5_000
    [s] = u.close(10**9, cfg)
    assert s.truncated and s.views + s.carts == 50 and len(s.viewed) == 5


def test_too_many_open_sessions_close_the_stalest():
    cfg = SessionConfig(gap_ms=GAP, grace_ms=GRACE, max_open_sessions=3)
    u = UserSessions("u")
    for n in range(5):
        u.apply({"k": "c", "id": f"e{n}", "t": n * 1000, "i": "x", "e": "view", "s": f"s{n}"}, cfg)
    out = u.close(5_000, cfg)
    assert [s.session_key for s in out] == ["s0", "s1"] and all(s.forced for s in out)
    assert sorted(u.sessions) == ["s2", "s3", "s4"]


def test_label_rule_window():
    """Ordered: an order of the same user between the first event and last event + gap."""
    def label(order_ts):
        u = UserSessions("u")
        u.apply({"k": "c", "id": "a", "t": 100_000, "i": "x", "e": "view", "s": "s"}, CFG)
        u.apply({"k": "c", "id": "b", "t": 200_000, "i": "x", "e": "view", "s": "s"}, CFG)
        u.apply({"k": "o", "id": "o", "t": order_ts, "L": [["x", 1]]}, CFG)
        [s] = u.close(10**9, CFG)
        return s.ordered

    assert [label(t) for t in (99_999, 100_000, 200_000 + GAP, 200_001 + GAP)] == [False, True, True, False]


def test_recency_is_the_time_since_the_users_previous_session():
    u = UserSessions("u")
    u.apply({"k": "c", "id": "a", "t": 0, "i": "x", "e": "view", "s": "s1"}, CFG)
    [s1] = u.close(GAP + GRACE, CFG)
    u.apply({"k": "c", "id": "b", "t": 5 * GAP, "i": "x", "e": "view", "s": "s2"}, CFG)
    [s2] = u.close(10 * GAP, CFG)
    assert s1.recency_s is None and s2.recency_s == 5 * GAP / 1000


def test_user_state_is_dropped_once_nothing_is_left():
    u = UserSessions("u")
    u.apply({"k": "c", "id": "a", "t": 0, "i": "x", "e": "view", "s": "s"}, CFG)
    u.apply({"k": "o", "id": "o", "t": 1, "L": [["x", 1]]}, CFG)
    u.close(GAP + GRACE, CFG)
    due = u.next_due_ms(CFG)
    assert due is not None and not u.is_empty()
    u.close(due, CFG)
    assert u.is_empty() and u.next_due_ms(CFG) is None


def test_co_view_pairs_teach_item_associations_exactly():
    rng = random.Random(5)
    assoc = {f"i{k}": ItemAssociations(f"i{k}") for k in range(6)}
    totals = SessionTotals()
    brute_pairs: dict[tuple, int] = {}
    brute_n: dict[str, int] = {}
    u = UserSessions("u")
    t = 0
    sessions = []
    for s in range(40):
        t += 3 * GAP
        items = rng.sample(sorted(assoc), rng.randint(1, 4))
        for j, it in enumerate(items):
            u.apply({"k": "c", "id": f"e{s}-{j}", "t": t + j, "i": it, "e": "view", "s": f"s{s}"}, CFG)
        sessions.append(set(items))
    for s in u.close(10**12, CFG):
        totals.add(s)
        ids = set()
        for item, rec in s.item_records(0.25):
            assert rec["pp"] == 0.25 and rec["t"] == s.close_ms and "u" not in rec
            ids.add(rec["id"])
            learn_session_record(assoc[item], rec)
        assert len(ids) == 1
    for items in sessions:
        for a in items:
            brute_n[a] = brute_n.get(a, 0) + 1
            for b in items - {a}:
                brute_pairs[(a, b)] = brute_pairs.get((a, b), 0) + 1
    assert totals.view_sessions == 40 and totals.cart_sessions == 0
    for a, st_ in assoc.items():
        assert st_.n_view == brute_n.get(a, 0)
        for b in assoc:
            if a != b:
                assert st_.counter("view").get(b) == (brute_pairs.get((a, b), 0), 0)


def test_propensity_learns_from_session_labels():
    """Sessions whose users cart more are likelier to order: the closed sessions' examples teach it."""
    rng = random.Random(7)
    users: dict[str, UserSessions] = {}
    model, score = PropensityModel(), ProgressiveScore()
    t = 0
    for n in range(1500):
        user = f"u{n % 50}"
        u = users.setdefault(user, UserSessions(user))
        t += 3 * GAP
        carts = rng.randint(0, 4)
        for j in range(rng.randint(1, 6)):
            u.apply({"k": "c", "id": f"v{n}-{j}", "t": t + 1000 * j, "i": "x", "e": "view", "s": f"s{n}", "p": 10.0}, CFG)
        for j in range(carts):
            u.apply({"k": "c", "id": f"c{n}-{j}", "t": t + 500 * j, "i": "y", "e": "add_to_cart", "s": f"s{n}"}, CFG)
        if rng.random() < 1 / (1 + math.exp(-(1.5 * carts - 3))):
            u.apply({"k": "o", "id": f"o{n}", "t": t + 10_000, "L": [["y", 1]]}, CFG)
        for s in u.close(t + 10_000 - GRACE - GAP, CFG):  # sessions of earlier rounds
            x, y = s.propensity_example()
            score.update(y, model.predict_proba_one(x))
            model.learn_one(x, y)
    assert score.n > 1000 and score.auc() > 0.75
    assert model.weights["carts"] > 0.5


def test_expected_conversions_is_the_sum_of_touching_sessions_propensities():
    rng = random.Random(2)
    rows = [(rng.sample("abcdef", rng.randint(1, 4)), rng.random()) for _ in range(100)]
    got = expected_conversions(rows)
    for item in "abcdef":
        assert math.isclose(got.get(item, 0.0), sum(p for items, p in rows if item in items), abs_tol=1e-9)


def test_due_index_round_trip_and_latest_push_wins():
    d = DueIndex()
    for k in range(100):
        d.push(f"k{k}", 1000 - k)
    d.push("k0", 5)
    d.push("k1", None)
    d2 = DueIndex.from_state(json.loads(json.dumps(d.to_state())))
    assert d2.pop_due(10) == ["k0"] and len(d2) == 98
    assert d2.pop_due(10**6) == [f"k{k}" for k in range(99, 1, -1)]


def test_session_routing_records():
    c = ClickEvent("e1", 10, "uk", "sk", "search", None, None, None, None)
    assert route_session_records(c) == [("user:uk", {"k": "c", "id": "e1", "t": 10, "i": None, "e": "search",
                                                     "p": None, "s": "sk", "n": 0})]
    assert route_session_records(CatalogEvent("a", 1, "A", "c", 1.0, "live", None, None)) == []
    o = OrderEvent("o1", 5, "uk", (OrderLine("b", 1, 1.0, None), OrderLine("a", 1, 1.0, None), OrderLine("b", 2, 1.0, None)))
    [(key, rec)] = route_session_records(o)
    assert key == "user:uk" and rec["L"] == [["a", 1], ["b", 3]] and rec["n"] == 0
    # opt-in: route_event itself is unchanged, and every input event is still counted once (n)
    for ev in (c, o, CatalogEvent("a", 1, "A", "c", 1.0, "live", None, None)):
        assert route_event_extended(ev, sessions=False, categories=False) == route_event(ev)
        assert sum(r["n"] for _k, r in route_event_extended(ev)) == 1


@settings(max_examples=300, deadline=None)
@given(st.builds(ClickEvent, st.sampled_from(["e1", "e2"]), st.integers(0, 10**13), st.sampled_from(["u1", "u2"]),
                 st.sampled_from(["s1", "s2"]), st.sampled_from(ETYPES), st.one_of(st.none(), st.sampled_from(["a", "b"])),
                 st.one_of(st.none(), st.sampled_from(["c1", "c2"])), st.one_of(st.none(), st.floats(0, 100)),
                 st.one_of(st.none(), st.integers(1, 5))),
       st.booleans(), st.booleans())
def test_extended_click_records_are_the_three_routings(ev, sessions, categories):
    """route_event_extended's direct path for clicks gives what the three routings compose to."""
    want = route_event(ev)
    if sessions:
        want = route_session_records(ev) if ev.item_id is None else want + route_session_records(ev)
        if ev.item_id is None:
            want[0][1]["n"] = 1
    if categories:
        want = want + route_category_records(ev)
    assert route_event_extended(ev, sessions, categories) == want


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("push"), st.sampled_from("abcde"), st.one_of(st.none(), st.integers(0, 100))),
    st.tuples(st.just("pop"), st.integers(0, 100)),
    st.tuples(st.just("save"))), max_size=120))
def test_due_index_pops_each_key_once_its_latest_due_time_has_passed(ops):
    """Against a plain dict of latest due times: pop_due gives exactly the keys whose latest due time
    the watermark has passed (a due time that moved later is pushed lazily), also across a state round trip."""
    d, ref, wm = DueIndex(), {}, 0
    for op in ops:
        if op[0] == "push":
            _, key, due = op
            d.push(key, due)
            if due is None:
                ref.pop(key, None)
            else:
                ref[key] = due
        elif op[0] == "pop":
            wm = max(wm, op[1])
            want = {k for k, due in ref.items() if due <= wm}
            assert set(d.pop_due(wm)) == want
            for k in want:
                del ref[k]
        else:
            d = DueIndex.from_state(json.loads(json.dumps(d.to_state())))
        assert len(d) == len(ref)
        lb = d.next_due_ms()
        assert not ref or (lb is not None and lb <= min(ref.values()))  # a lower bound (stale entries allowed)
