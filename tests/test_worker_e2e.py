"""The running worker on a real broker: valid events accepted exactly once, hostile ones dead-lettered."""
import asyncio
import time

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from launchpulse.stream.admin import ensure_topics

from hostile import HOSTILE, click, order
from conftest import http_json


async def _produce(settings, messages):
    p = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, enable_idempotence=False,
                         max_request_size=4 * 1024 * 1024)
    await p.start()
    try:
        out = []
        for topic, value in messages:
            out.append(await p.send_and_wait(topic, value))
        return out
    finally:
        await p.stop()


async def _read_all(settings, topic, expect, timeout=60.0):
    c = AIOKafkaConsumer(topic, bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest",
                         enable_auto_commit=False, group_id=None)
    await c.start()
    got = []
    try:
        deadline = time.monotonic() + timeout
        while len(got) < expect and time.monotonic() < deadline:
            for msgs in (await c.getmany(timeout_ms=500)).values():
                got.extend(orjson.loads(m.value) for m in msgs)
        return got
    finally:
        await c.stop()


def _dead_letters(settings, expect: int) -> list[dict]:
    """The dead-letter topic read to the end offsets the broker has, so that a shortfall says whether the
    broker holds fewer records than were acknowledged or a reader missed some."""
    from diagnose import _read_all as read_to_end

    deadline = time.monotonic() + 60
    while True:  # a send the metrics already count may still be on its way
        records, ends = asyncio.run(read_to_end(settings.bootstrap_servers, settings.topic_dead_letter))
        if len(records) >= expect or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert len(records) == expect, f"{len(records)} dead letters read, the broker's end offsets {ends}"
    return [orjson.loads(v) for _, _, _, v in records]


def _wait_counted(w, n, timeout=90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        total = w.metric("launchpulse_events_total")
        if total >= n:
            return total
        time.sleep(0.5)
    raise AssertionError(f"only {w.metric('launchpulse_events_total')} of {n} events counted\n{w.tail()}")


def valid_500():
    msgs = []
    for i in range(400):
        msgs.append(("clickstream", orjson.dumps(click(i))))
    for i in range(100):
        msgs.append(("orders", orjson.dumps(order(i))))
    return msgs


def test_valid_once_hostile_dead_lettered(deployment):
    s = deployment.settings()
    asyncio.run(ensure_topics(s))
    w = deployment.worker()
    w.wait_healthy()
    topic = {"clickstream": s.topic_clickstream, "orders": s.topic_orders, "catalog": s.topic_catalog}
    valid = [(topic[k], v) for k, v in valid_500()]
    hostile = [(topic[k], v) for k, v, _ in HOSTILE]
    metas = asyncio.run(_produce(s, valid + hostile + valid))
    _wait_counted(w, 500 + 32 + 500)
    time.sleep(1.0)
    assert w.metric("launchpulse_events_total", outcome="accepted") == 500
    assert w.metric("launchpulse_events_total", outcome="duplicate") == 500
    assert w.metric("launchpulse_events_total", outcome="rejected") == 32
    dead = _dead_letters(s, 32)
    where = {(m.topic, m.partition, m.offset): HOSTILE[i][2] for i, m in enumerate(metas[500:532])}
    for rec in dead:
        key = (rec["topic"], rec["partition"], rec["offset"])
        assert key in where, rec
        assert rec["code"] == where.pop(key), rec
        assert rec["error"] and rec["ts"] and ("message" in rec or "message_b64" in rec)
    assert not where
    assert w.metric("launchpulse_dead_letter_total") == 32
    assert http_json(w.base + "/healthz")[0] == 200
    # No raw user id anywhere the worker shows.
    text = "".join(open(w.log_path, errors="replace").read())
    assert "user-1" not in text


def test_http_views_and_cli_errors(deployment):
    s = deployment.settings()
    asyncio.run(ensure_topics(s))
    w = deployment.worker()
    w.wait_healthy()
    asyncio.run(_produce(s, [(s.topic_orders, orjson.dumps([order(i) for i in range(50)]))]))
    _wait_counted(w, 50)
    code, body = http_json(w.base + "/items/item-1/associations?limit=5&window=all")
    assert code == 200 and body["item_id"] == "item-1" and body["window"] == "all"
    for row in body["associations"]:
        assert set(row) >= {"item_id", "co_count", "support", "confidence", "lift", "relation"}
    code, body = http_json(w.base + "/items/item-1/trend")
    assert code == 200 and "forecast" in body and "burst" in body and "windows" in body
    assert http_json(w.base + "/items/nope/trend")[0] == 404
    assert http_json(w.base + "/items/item-1/associations?limit=abc")[0] == 400
    assert http_json(w.base + "/signals/recent?limit=3")[0] == 200
    # The recent view answers with its range; a window the worker does not keep is refused with the reason.
    code, body = http_json(w.base + "/items/item-1/associations?window=recent")
    assert code == 200 and body["window"] == "recent" and body["window_end_ms"] > body["window_start_ms"], body
    code, body = http_json(w.base + "/items/item-1/associations?window=7d")
    assert code == 400 and "window" in body["error"]

