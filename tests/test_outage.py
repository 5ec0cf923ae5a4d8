"""A 30-second broker outage under live traffic (issue #6).

Tansu keeps its data in memory, so the broker itself is never restarted: a loopback
TCP proxy (tests/tcpproxy.py) stands between every client and Tansu, which advertises
the proxy's address. The outage closes every live connection and refuses new ones for
30 s, then accepts again. Meanwhile ``launchpulse replay`` keeps sending at a steady
rate (before, during and after the outage). The worker must stay up, answer 503 on
/healthz with a reason during the outage, turn healthy again afterwards, and count
every event exactly once; the replay must report the outage and lose nothing.
"""
import asyncio
import json
import subprocess
import sys
import threading
import time
from collections import Counter

import orjson
import pytest
from conftest import http_json
from launchpulse.stream.admin import ensure_topics
from launchpulse.stream.broker import EmbeddedBroker, free_port
from launchpulse.stream.datasets import instacart_events
from tcpproxy import TcpProxy
from test_recovery import DAILY, batch_truth

pytestmark = pytest.mark.integration

OUTAGE_S = 30.0
N_EVENTS = 9000  # the first Instacart events (clickstream, orders, catalog), in event-time order
RATE = 300.0  # offered events/s: about 30 s of sending without the outage
OUTAGE_AT_S = 6.0  # after the replay starts
UNHEALTHY_WITHIN_S = 15.0  # the worker must say so within this long after the outage begins
HEALTHY_WITHIN_S = 60.0  # and be healthy again within this long after it ends


@pytest.fixture(scope="module")
def proxied_broker():
    """Tansu on a private port, advertising the proxy in front of it."""
    proxy_port = free_port()
    broker = EmbeddedBroker(port=free_port(), advertised=f"127.0.0.1:{proxy_port}").start()
    proxy = TcpProxy(broker.port, listen_port=proxy_port).start()
    try:
        yield proxy, f"kafka://127.0.0.1:{proxy.port}"
    finally:
        proxy.stop()
        broker.stop()


@pytest.fixture
def broker_url(proxied_broker):  # the deployment fixture's broker: the proxy
    return proxied_broker[1]


class HealthLog:
    """Polls /healthz every 0.25 s in a thread: [(monotonic time, status code or None, reason)]."""

    def __init__(self, base: str):
        self.base = base
        self.rows: list[tuple[float, int | None, str]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                code, body = http_json(self.base + "/healthz", 2.0)
                self.rows.append((time.monotonic(), code, (body or {}).get("reason", "")))
            except (OSError, ValueError) as e:
                self.rows.append((time.monotonic(), None, repr(e)))
            self._stop.wait(0.25)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(5)

    def first(self, after: float, pred) -> tuple | None:
        return next((r for r in self.rows if r[0] >= after and pred(r)), None)


def test_worker_and_replay_ride_out_a_30s_broker_outage(deployment, proxied_broker, tmp_path):
    proxy, url = proxied_broker
    t_test = time.monotonic()
    events = [e for e in instacart_events(opening_stock=None)[:N_EVENTS]]
    kinds = Counter(e["kind"] for e in events)
    orders = [e for e in events if e["kind"] == "order"]
    n_total, n_item, pair = batch_truth(orders)
    src = tmp_path / "events.jsonl"
    src.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))

    s = deployment.settings()
    asyncio.run(ensure_topics(s))
    w = deployment.worker(data_dir="outage", **DAILY)
    w.wait_healthy()

    def progress():
        return http_json(w.base + "/progress", 3.0)[1]

    with HealthLog(w.base) as health:
        with open(tmp_path / "replay.log", "wb") as replay_log:
            rp = subprocess.Popen([sys.executable, "-m", "launchpulse.stream.cli", "replay", str(src), "--broker", url,
                                   "--rate", str(RATE)], env=deployment.environ, stdout=replay_log,
                                  stderr=subprocess.STDOUT)
        try:
            time.sleep(OUTAGE_AT_S)
            before = progress()
            t_down = time.monotonic()
            cut = proxy.outage_begin()
            time.sleep(OUTAGE_S)
            assert w.proc.poll() is None, f"worker died during the outage:\n{w.tail()}"
            proxy.outage_end()
            t_up = time.monotonic()
            rc = rp.wait(180)
        finally:
            if rp.poll() is None:
                rp.kill()
                rp.wait(5)
        replay_out = (tmp_path / "replay.log").read_text(errors="replace")
        assert rc == 0, replay_out
        report = json.loads(replay_out.strip().splitlines()[-1])
        assert report["events"] == N_EVENTS, report
        t_replayed = time.monotonic()

        # Every event counted exactly once (as accepted: all of them are valid and on time).
        expected = {s.topic_clickstream: kinds["clickstream"], s.topic_orders: kinds["order"],
                    s.topic_catalog: kinds["catalog"]}

        def accepted():
            return {t: w.metric("launchpulse_events_total", topic=t, outcome="accepted") for t in expected}

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if accepted() == expected and progress()["orders_total"] == n_total:
                    break
            except OSError:
                pass
            time.sleep(1)
        t_counted = time.monotonic()
        time.sleep(3)  # nothing more may arrive: no double count
        got = accepted()
    assert w.proc.poll() is None, w.tail()

    down = health.first(t_down, lambda r: r[1] != 200)
    up_again = health.first(t_up, lambda r: r[1] == 200)
    during = [r for r in health.rows if down and down[0] <= r[0] <= t_up]
    reasons = Counter(r[2] for r in during if r[1] != 200)
    try:
        after = progress()
    except OSError as e:
        after = repr(e)
    summary = {"cut_connections": cut, "progress_before": before, "progress_after": after, "replay": report,
               "unhealthy_after_s": down and round(down[0] - t_down, 2), "reasons": dict(reasons),
               "healthy_again_after_s": up_again and round(up_again[0] - t_up, 2),
               "replay_done_after_up_s": round(t_replayed - t_up, 1), "counted_after_up_s": round(t_counted - t_up, 1),
               "test_wall_s": round(time.monotonic() - t_test, 1)}
    print("outage summary:", json.dumps(summary))

    assert got == expected, (got, expected, summary, w.tail())
    assert progress()["orders_total"] == n_total

    # /healthz: unhealthy with a reason soon after the broker went away, for the rest of the
    # outage, and healthy again once it is back.
    assert down is not None and down[1] == 503 and down[2], summary
    assert down[0] - t_down <= UNHEALTHY_WITHIN_S, summary
    assert all(r[1] == 503 and r[2] for r in during), summary
    assert up_again is not None and up_again[0] - t_up <= HEALTHY_WITHIN_S, summary

    # The producer said it lost the broker and kept retrying, rather than dropping events.
    assert report["stalls"] >= 1 and report["stalled_s"] >= OUTAGE_S / 2, report
    assert "no acknowledgement from the broker" in replay_out and "acknowledges again" in replay_out, replay_out

    # Exact all-time association counts for the most frequent items of the orders sent.
    for item, _ in n_item.most_common(15):
        code, body = http_json(f"{w.base}/items/{item}/associations?limit=1000&window=all", 10.0)
        assert code == 200, body
        rows = {r["item_id"]: r["co_count"] for r in body["associations"]}
        exp = pair.get(item, {})
        assert rows == {p: c for p, c in exp.items() if p in rows}, item
        assert not [p for p, c in exp.items() if c >= 10 and p not in rows], item  # the view omits co_count < 10


def test_replay_resends_what_the_outage_made_fail(proxied_broker, monkeypatch):
    """A delivery that still fails (outage longer than the producer's delivery timeout) is sent again, not lost."""
    import launchpulse.stream.replay as replay_mod
    from aiokafka import AIOKafkaConsumer
    from launchpulse.stream.settings import Settings

    proxy, url = proxied_broker
    prefix = f"resend{int(time.time() * 1000) % 10**8}-"
    monkeypatch.setenv("LAUNCHPULSE_TOPIC_PREFIX", prefix)
    s = Settings.from_env(broker=url)
    asyncio.run(ensure_topics(s))
    monkeypatch.setattr(replay_mod, "DELIVERY_TIMEOUT_MS", 3000)  # expire batches within the outage
    events = [{"kind": "clickstream", "event_id": f"e{i}", "ts": 1760022840000 + i, "user_id": "u", "session_id": "s",
               "event_type": "view", "item_id": str(i % 50)} for i in range(2000)]

    def outage():
        time.sleep(1.0)
        proxy.outage_begin()
        time.sleep(8.0)
        proxy.outage_end()

    t = threading.Thread(target=outage)
    t.start()
    try:
        report = asyncio.run(replay_mod.replay(s, events, rate=500.0, progress=False))
    finally:
        t.join()
        if not proxy.up:
            proxy.outage_end()
    assert report["events"] == 2000 and report["retried"] > 0, report

    async def read_ids():
        c = AIOKafkaConsumer(s.topic_clickstream, bootstrap_servers=s.bootstrap_servers, auto_offset_reset="earliest",
                             enable_auto_commit=False)
        await c.start()
        ids = Counter()
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(ids) < 2000:
                for recs in (await c.getmany(timeout_ms=500)).values():
                    ids.update(orjson.loads(r.value)["event_id"] for r in recs)
        finally:
            await c.stop()
        return ids

    ids = asyncio.run(read_ids())
    missing = [e["event_id"] for e in events if e["event_id"] not in ids]
    assert not missing, (len(missing), missing[:5], report)
    print("resend summary:", json.dumps(report), "copies beyond one:", sum(ids.values()) - len(ids))
