"""Crash recovery on the real broker: SIGKILL twice mid-replay, or one graceful stop, fresh data
directories each time.

The all-time association counts served afterwards must equal the exact batch truth
computed here from the same orders (issue: effectively-once state on an at-least-once
transport), for the 40 most frequent items of the real Instacart sample.
"""
import asyncio
import signal
import time
from collections import Counter
from itertools import combinations

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from launchpulse.stream.admin import ensure_topics
from launchpulse.stream.datasets import instacart_events

from conftest import http_json
from diagnose import committed_offsets

# Minutes long; part of the default run (python -m pytest -m crash runs it alone). Its failures
# under load came from bugs, each fixed (see docs/guarantees.md).
pytestmark = [pytest.mark.integration, pytest.mark.crash]


# The data are daily. Flushing every half second lets a worker commit several times before it is
# killed, so the kills land between committed and uncommitted envelopes (at the default 5 s, the
# killed workers had committed nothing and each replayed everything from offset 0).
DAILY = {"LAUNCHPULSE_WINDOW_SECONDS": "86400", "LAUNCHPULSE_GRACE_SECONDS": "3600",
         "LAUNCHPULSE_FLUSH_INTERVAL_MS": "500"}


def _orders():
    return [e for e in instacart_events(opening_stock=None) if e["kind"] == "order"]


def batch_truth(orders):
    """(N, baskets per item, co-counts per item: {item: {partner: n}}), counted exactly."""
    n_item = Counter()
    partners: dict = {}
    for o in orders:
        items = sorted({line["item_id"] for line in o["items"]})
        n_item.update(items)
        for a, b in combinations(items, 2):
            partners.setdefault(a, Counter())[b] += 1
            partners.setdefault(b, Counter())[a] += 1
    return len(orders), n_item, partners


def assert_rows_exact(item, rows: dict, expected: dict, n_total: int, n_item) -> None:
    """Every returned row's co_count, support, confidence and lift equal the batch counts."""
    for partner, row in rows.items():
        co = expected.get(partner, 0)
        assert row["co_count"] == co, (item, partner, row, co)
        assert row["support"] == pytest.approx(co / n_total, rel=1e-6)
        assert row["confidence"] == pytest.approx(co / n_item[item], rel=1e-6)
        assert row["lift"] == pytest.approx(co * n_total / (n_item[item] * n_item[partner]), rel=1e-6)


async def _produce(settings, orders, per_message=25):
    p = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, enable_idempotence=False, linger_ms=5)
    await p.start()
    try:
        futs = []
        for i in range(0, len(orders), per_message):
            chunk = [{k: v for k, v in o.items() if k != "kind"} for o in orders[i:i + per_message]]
            futs.append(await p.send(settings.topic_orders, orjson.dumps(chunk)))
        await asyncio.gather(*futs)
    finally:
        await p.stop()


def _wait(pred, timeout, what, worker):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except OSError:
            pass
        time.sleep(0.5)
    try:
        last = http_json(worker.base + "/progress", 2.0)[1]
    except OSError as e:
        last = e
    raise AssertionError(f"timed out waiting for {what}; progress {last}\n{worker.tail()}")


def test_sigkill_twice_then_exact_associations(deployment):
    # Worker 1 is killed once it has applied about a third of the basket lines, worker 2 at two thirds.
    _stop_and_replace(deployment, [(0.3, signal.SIGKILL), (0.3, signal.SIGKILL)])


def test_graceful_stop_mid_replay_then_exact_associations(deployment):
    # A stop writes and acknowledges what was applied and leaves the rest to the next worker without
    # waiting on Faust's streams (faust_transport.App.before_stop); nothing may be lost either way.
    _stop_and_replace(deployment, [(0.4, signal.SIGTERM)])


def _graceful_stop(w) -> None:
    """SIGTERM: exit 0 without Faust's wait on its streams, and with no state error (a stop used to
    leave the agent closing windows of states Faust had dropped)."""
    w.stop()
    assert w.proc.returncode == 0, w.tail()
    log = w.log_path.read_text(errors="replace")
    assert "wait_empty: Waiting" not in log, w.tail()  # Faust's wait on its streams, skipped
    assert "state stage failed" not in log, w.tail()


def _stop_and_replace(deployment, stops):
    """Replay the orders; stop a worker at each (share of the basket lines it applied, signal), each
    once it has committed some envelopes of its own; a last worker must then serve the exact truth,
    and stop gracefully."""
    orders = _orders()
    n_total, n_item, pair = batch_truth(orders)
    s = deployment.settings()
    asyncio.run(ensure_topics(s))
    asyncio.run(_produce(s, orders))

    def progress(w):  # a loaded worker may answer slowly (timers 1 s late here while it catches up)
        return http_json(w.base + "/progress", 10.0)[1]

    def committed():  # the routed offsets the workers' group has committed, summed
        offsets = asyncio.run(committed_offsets(s.bootstrap_servers, s.app_id, s.routed_topic,
                                                range(s.state_partitions)))
        return sum(o for o in offsets.values() if o and o > 0)

    lines = sum(len({x["item_id"] for x in o["items"]}) for o in orders)
    for k, (share, sig) in enumerate(stops):
        before = committed()
        w = deployment.worker(data_dir=f"stop-{k}", **DAILY)
        w.wait_healthy()
        _wait(lambda: progress(w)["records_processed"] >= share * lines, 240, f"worker {k} to make progress", w)
        _wait(lambda: committed() > before, 60, f"worker {k} to commit", w)
        if sig == signal.SIGTERM:
            at_stop = committed()
            _graceful_stop(w)
            assert committed() > at_stop, "the stop committed nothing of what it wrote"
        else:
            w.stop(sig)
    last = deployment.worker(data_dir="final", **DAILY)
    last.wait_healthy()
    try:
        _wait(lambda: progress(last)["orders_total"] == n_total, 300, "all orders counted once", last)
    except AssertionError as e:  # where the orders went: a stall, or envelopes committed past (2026-11-24)
        from diagnose import diagnose_sync

        raise AssertionError(f"{e}\n{diagnose_sync(s, n_item, n_total)}") from None
    time.sleep(2)
    assert progress(last)["orders_total"] == n_total

    top = [item for item, _ in n_item.most_common(40)]
    for item in top:
        code, body = http_json(f"{last.base}/items/{item}/associations?limit=1000&window=all", 10.0)
        assert code == 200, body
        rows = {r["item_id"]: r for r in body["associations"]}
        expected = pair[item]
        assert_rows_exact(item, rows, expected, n_total, n_item)
        missing = [p for p, c in expected.items() if c >= 10 and p not in rows]
        assert not missing, (item, missing[:5])
    _graceful_stop(last)
