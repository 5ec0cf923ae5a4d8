"""A series replayed through a running worker: GET /items/{id}/trend equals the pure model on the same windows.

One code path: the worker's owner applies the routed records to ItemState and closes its
windows; the expected answer here replays the same orders through ItemState directly
(single partition, watermark = max event time) and reads the same summary.
"""
import asyncio
import random
import time

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from launchpulse.models.itemstate import ACCEPTED, ItemState
from launchpulse.models.routing import route_event
from launchpulse.models.trends import summarise
from launchpulse.models.windows import WindowConfig
from launchpulse.schemas.validate import Pseudonymiser, parse_message
from launchpulse.stream.admin import ensure_topics

from conftest import http_json

pytestmark = pytest.mark.integration

HOUR = 3_600_000
BASE = 1_790_000_000_000 - 1_790_000_000_000 % HOUR
ITEMS = ("trend-a", "trend-b")


def _orders() -> list[dict]:
    """Two items over 40 hourly windows: a rising one with a jump, and one with gaps (silent windows)."""
    rng = random.Random(11)
    out = []
    for w in range(40):
        for item, rate in (("trend-a", 2 + w // 4 + (8 if w >= 30 else 0)), ("trend-b", 3 if w % 5 else 0)):
            for k in range(rate):
                out.append({"order_id": f"tv-{item}-{w}-{k}", "ts": BASE + w * HOUR + rng.randrange(HOUR - 1000),
                            "user_id": f"u{k}", "items": [{"item_id": item, "quantity": 1 + k % 2, "price": 2.0}]})
    out.sort(key=lambda o: o["ts"])
    return out


def _expected(orders: list[dict], cfg: WindowConfig) -> dict:
    states = {i: ItemState(i) for i in ITEMS}
    ps = Pseudonymiser(b"test-key")
    wm = 0
    for o in orders:
        for ev in parse_message(orjson.dumps(o), "order", ps).events:
            wm = max(wm, ev.ts_ms)
            for key, rec in route_event(ev):
                assert states[key].apply(rec, cfg) == ACCEPTED
    for st in states.values():
        st.close_windows(cfg, wm)
    out = {i: summarise(st.trend) for i, st in states.items()}
    out.update({f"{i}?series=revenue": summarise(st.series["revenue"]) for i, st in states.items()})
    return out


def test_trend_view_equals_pure_model(deployment):
    s = deployment.settings()
    asyncio.run(ensure_topics(s))
    w = deployment.worker()
    w.wait_healthy()
    orders = _orders()

    async def produce():
        p = AIOKafkaProducer(bootstrap_servers=s.bootstrap_servers)
        await p.start()
        try:
            for o in orders:  # one event per message, as a live feed sends them
                await p.send(s.topic_orders, orjson.dumps(o), key=o["order_id"].encode())
            await p.flush()
        finally:
            await p.stop()

    asyncio.run(produce())
    cfg = WindowConfig(size_ms=s.window_ms, grace_ms=s.grace_ms)
    expected = _expected(orders, cfg)
    assert expected["trend-a"]["forecast"] is not None and expected["trend-a"]["n_windows"] >= 30
    # Quiet input partitions stop holding the watermark after 5 s; then the worker has closed
    # exactly the windows the pure replay closes.
    deadline = time.monotonic() + 90
    got = {}
    while time.monotonic() < deadline:
        got = {i: http_json(f"{w.base}/items/{i}/trend")[1] for i in ITEMS}
        if all(got[i].get("n_windows") == expected[i]["n_windows"] for i in ITEMS):
            break
        time.sleep(1)
    for i in ITEMS:
        got[f"{i}?series=revenue"] = http_json(f"{w.base}/items/{i}/trend?series=revenue")[1]
    assert expected["trend-a?series=revenue"]["forecast"] != expected["trend-a"]["forecast"]  # price 2: its own series
    for i in expected:
        body = got[i]
        for k in ("forecast", "slope", "burst", "n_windows", "provisional", "method"):
            assert body[k] == expected[i][k], (i, k, body[k], expected[i][k], w.tail(1500))
    assert http_json(f"{w.base}/items/trend-a/trend?series=nope")[0] == 400
    # The hourly counts it shows are the batch counts of the windows it keeps.
    units = {}
    for o in orders:
        if o["items"][0]["item_id"] == "trend-a":
            start = o["ts"] - o["ts"] % s.window_ms
            units[start] = units.get(start, 0) + o["items"][0]["quantity"]
    for win in got["trend-a"]["windows"]:
        assert win["units"] == units.get(win["start_ms"], 0), win


def test_new_item_starts_from_its_category(deployment):
    """Cold start: a brand-new item of a category with history gets the category's trend, scaled to what
    its items sell, marked provisional; an item of a category without history gets no forecast."""
    from launchpulse.models.category import CategoryState
    from launchpulse.models.routing import route_category_records
    from launchpulse.models.trends import TrendModel

    s = deployment.settings()
    asyncio.run(ensure_topics(s))
    w = deployment.worker()
    w.wait_healthy()
    rng = random.Random(5)
    history = []
    for win in range(12):
        for item, rate in (("cs-a", 4 + win // 3), ("cs-b", 2)):
            for k in range(rate):
                history.append({"order_id": f"cs-{item}-{win}-{k}", "ts": BASE + win * HOUR + rng.randrange(HOUR - 1000),
                                "user_id": f"u{k}", "items": [{"item_id": item, "quantity": 1, "price": 2.0,
                                                               "category_id": "cold-cat"}]})
    # cs-c (a small seller of the category) is always bought with cs-x (another category): a strong
    # complement (lift = N / n, confidence 1) that its owner publishes with its totals
    for k in range(12):
        history.append({"order_id": f"cs-pair-{k}", "ts": BASE + k * HOUR + 2000, "user_id": f"p{k}",
                        "items": [{"item_id": "cs-c", "quantity": 1, "price": 2.0, "category_id": "cold-cat"},
                                  {"item_id": "cs-x", "quantity": 1, "price": 1.0, "category_id": "other-cat"}]})
    history.sort(key=lambda o: o["ts"])
    newcomers = [{"order_id": f"cs-new-{i}", "ts": history[-1]["ts"] + 1000 + i, "user_id": "u9",
                  "items": [{"item_id": item, "quantity": 1, "price": 2.0, "category_id": cat}]}
                 for i, (item, cat) in enumerate((("cs-new", "cold-cat"), ("cs-lone", "empty-cat")))]

    async def produce(orders):
        p = AIOKafkaProducer(bootstrap_servers=s.bootstrap_servers)
        await p.start()
        try:
            for o in orders:
                await p.send(s.topic_orders, orjson.dumps(o), key=o["order_id"].encode())
            await p.flush()
        finally:
            await p.stop()

    cfg = WindowConfig(size_ms=s.window_ms, grace_ms=s.grace_ms)
    cat = CategoryState("cold-cat")
    ps = Pseudonymiser(b"test-key")
    for o in history:
        for ev in parse_message(orjson.dumps(o), "order", ps).events:
            for _, rec in route_category_records(ev):
                cat.apply(rec, cfg)
    cat.close_windows(cfg, history[-1]["ts"])
    prior = cat.prior_for_new_items(cfg)
    assert prior is not None
    expected = TrendModel.from_prior([prior["trend"]], scale=prior["scale"]).forecast()

    asyncio.run(produce(history))
    deadline = time.monotonic() + 90
    body = {}
    while time.monotonic() < deadline:  # the category has closed every window the history allows
        body = http_json(f"{w.base}/items/category:cold-cat/trend")[1]
        if body.get("n_windows") == cat.trend.n_seen:
            break
        time.sleep(1)
    assert body.get("n_windows") == cat.trend.n_seen and body["forecast"] == cat.trend.forecast(), body
    asyncio.run(produce(newcomers))
    got = {}
    while time.monotonic() < deadline + 30:
        got = {i: http_json(f"{w.base}/items/{i}/trend") for i in ("cs-new", "cs-lone")}
        if all(code == 200 for code, _ in got.values()):
            break
        time.sleep(1)
    new, lone = got["cs-new"][1], got["cs-lone"][1]
    assert new["provisional"] and new["n_windows"] == 0 and new["forecast"] == expected, (new, expected)
    assert 0 < new["forecast"][0] < body["forecast"][0]  # a share of the category's units
    assert lone["forecast"] is None and lone["provisional"], lone
    # Cold-start partners: the new item has no basket of its own; cs-c, one of its category's top sellers,
    # is bought with cs-x, so cs-x is offered, marked provisional, with cs-c's confidence (1) and lift.
    # (partners are published with the item totals at the next flush, every 5 s by default)
    deadline = time.monotonic() + 30
    while True:
        code, body = http_json(f"{w.base}/items/cs-new/associations?limit=5&window=all")
        assert code == 200, body
        rows = body["associations"]
        if rows or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert [r["item_id"] for r in rows] == ["cs-x"] and rows[0]["provisional"] and rows[0]["co_count"] == 0, rows
    # lift against the partner's support now: N (every order so far) / 12 (cs-x's orders), however far N
    # had got when cs-c's windows closed during the replay
    n_orders = len(history) + len(newcomers)
    assert rows[0]["confidence"] == 1.0 and rows[0]["lift"] == pytest.approx(n_orders / 12), rows
    code, body = http_json(f"{w.base}/items/cs-c/associations?limit=5&window=all")
    real = body["associations"]
    assert [r["item_id"] for r in real] == ["cs-x"] and not real[0]["provisional"] and real[0]["co_count"] == 12, body
    # an item of a category without history, and no substitutes, gets none
    assert http_json(f"{w.base}/items/cs-lone/associations?limit=5&window=all")[1]["associations"] == []
