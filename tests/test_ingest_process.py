"""Ingest in child processes (LAUNCHPULSE_INGEST_PROCESSES): same outcomes and metrics as in-process,
a child that dies is replaced without losing input, and a worker that dies leaves no child behind."""
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from launchpulse.stream.admin import ensure_topics
from launchpulse.stream.ingest_process import MetricUpdates, apply_updates
from launchpulse.stream.metrics import Metrics
from launchpulse.stream.settings import Settings

from conftest import http_json
from hostile import HOSTILE, click
from test_worker_e2e import _dead_letters, _produce, _wait_counted, valid_500


def _sample(metrics: Metrics, name: str, **labels) -> float:
    return sum(s.value for fam in metrics.registry.collect() for s in fam.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metric_updates_replay_exactly():
    """What a child records is what the worker's metrics show after replaying it (across several reports)."""
    child, direct, parent = MetricUpdates(), Metrics(), Metrics()
    reports = []
    for step in range(3):
        for m in (child, direct):
            m.messages.labels("clickstream").inc(10 + step)
            m.events.labels("orders", "rejected").inc()
            m.dead_letters.labels("invalid_json").inc(2)
            m.lag.labels("orders", str(step % 2)).set(100 - step)
            m.stage.labels("ingest").observe(0.01 * (step + 1))
        reports.append(orjson.loads(orjson.dumps(child.take())))  # through JSON, as over the pipe
    for r in reports:
        apply_updates(parent, r)
    for name, labels in [("launchpulse_messages_total", {"topic": "clickstream"}),
                         ("launchpulse_events_total", {"topic": "orders", "outcome": "rejected"}),
                         ("launchpulse_dead_letter_total", {"code": "invalid_json"}),
                         ("launchpulse_consumer_lag", {"topic": "orders", "partition": "0"}),
                         ("launchpulse_consumer_lag", {"topic": "orders", "partition": "1"}),
                         ("launchpulse_stage_seconds_count", {"stage": "ingest"}),
                         ("launchpulse_stage_seconds_sum", {"stage": "ingest"})]:
        assert _sample(parent, name, **labels) == _sample(direct, name, **labels), name
    assert _sample(parent, "launchpulse_messages_total", topic="clickstream") == 33


def _ingest_children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"launchpulse.stream.ingest_process" in cmd:
            out.append(int(d.name))
    return sorted(out)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (dead, not yet reaped by init) counts as gone
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def _wait(cond, timeout: float, what: str, tail=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.25)
    raise AssertionError(f"{what} within {timeout} s\n{tail()}")


def test_gc_threshold_is_a_setting_for_worker_and_children(monkeypatch):
    """LAUNCHPULSE_GC_GEN0 is read once into the settings the children receive; tune_gc applies it."""
    monkeypatch.setenv("LAUNCHPULSE_GC_GEN0", "1234")
    assert Settings.from_env().gc_gen0 == 1234
    monkeypatch.setenv("LAUNCHPULSE_GC_GEN0", "-1")
    with pytest.raises(SystemExit, match="LAUNCHPULSE_GC_GEN0"):
        Settings.from_env()
    probe = ("import gc; from launchpulse.stream.settings import tune_gc; t = gc.get_threshold(); tune_gc({}); "
             "print(gc.get_threshold()[0], gc.get_threshold()[0] == t[0], gc.get_freeze_count() > 0)")
    for gen0, want in ((1234, "1234 False True"), (0, "700 True True")):
        out = subprocess.run([sys.executable, "-c", probe.format(gen0)], capture_output=True, text=True, check=True)
        assert out.stdout.split() == want.split()


def test_two_ingest_children(deployment):
    s = deployment.settings()
    asyncio.run(ensure_topics(s))
    w = deployment.worker(LAUNCHPULSE_INGEST_PROCESSES="2")
    w.wait_healthy()
    children = _wait(lambda: len(_ingest_children(w.proc.pid)) == 2 and _ingest_children(w.proc.pid), 30,
                     "two ingest children", w.tail)
    topic = {"clickstream": s.topic_clickstream, "orders": s.topic_orders, "catalog": s.topic_catalog}
    valid = [(topic[k], v) for k, v in valid_500()]
    hostile = [(topic[k], v) for k, v, _ in HOSTILE]
    asyncio.run(_produce(s, valid + hostile + valid))
    _wait_counted(w, 500 + 32 + 500)
    time.sleep(1.5)  # a report interval or two: every child's metrics are in
    # Outcomes and metrics as with ingest in-process (tests/test_worker_e2e.py), summed over the children.
    assert w.metric("launchpulse_events_total", outcome="accepted") == 500
    assert w.metric("launchpulse_events_total", outcome="duplicate") == 500
    assert w.metric("launchpulse_events_total", outcome="rejected") == 32
    assert w.metric("launchpulse_dead_letter_total") == 32
    assert w.metric("launchpulse_messages_total") == 1032
    assert w.metric("launchpulse_stage_seconds_count", stage="ingest") > 0
    assert http_json(w.base + "/progress")[1]["ingested_messages"] == 1032
    _dead_letters(s, 32)

    # A child killed outright is replaced; the input it had read but not committed is read again.
    os.kill(children[0], signal.SIGKILL)
    _wait(lambda: len(_ingest_children(w.proc.pid)) == 2 and children[0] not in _ingest_children(w.proc.pid),
          30, "a replacement child", w.tail)
    more = [(topic["clickstream"], orjson.dumps(click(1000 + i))) for i in range(300)]
    asyncio.run(_produce(s, more))
    _wait_counted(w, 1032 + 300)
    w.wait_healthy(60)
    assert w.metric("launchpulse_events_total", outcome="accepted") == 800
    assert "exited with code" in w.tail(200_000)  # the worker said why it started another

    # A worker killed outright leaves no ingest child holding input partitions.
    children = _ingest_children(w.proc.pid)
    assert len(children) == 2
    w.stop(signal.SIGKILL)
    _wait(lambda: not any(_alive(p) for p in children), 20, "ingest children gone after the worker died")
