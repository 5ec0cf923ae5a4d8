"""Full-pipeline benchmark on the embedded broker, against a bare aiokafka+orjson consumer.

    python bench/pipeline_bench.py [--events N] [--quick] [--json out.json] [--doc docs/bench-pipeline.md]

One run, one embedded broker (Tansu, memory storage, 127.0.0.1):

1. Produces the Instacart events (or the first N) to the input topics twice: as
   single-event messages (prefix ``bench-single-``) and packed 100 events per
   message (prefix ``bench-packed-``), with the project's own ``replay``.
2. Baseline: a bare ``AIOKafkaConsumer`` (same fetch sizes as the ingest stage)
   reads the single-event topics and ``orjson.loads`` every value; events/s from
   the first record to the last. Run twice; the faster run is the baseline.
3. A fresh worker process (its own app id, so fresh state and consumer group;
   window 86400 s, grace 3600 s) consumes the already-produced single-event
   topics; events/s = events / (first ingested message -> all records through the
   state stage), polling ``/progress`` every 0.5 s. The same for the packed topics
   with a second fresh worker. Peak RSS of each worker (VmHWM). A third fresh
   worker repeats the single-event run under ``py-spy record`` for the profile
   (kept apart so the profiler's CPU does not skew the measured run).
4. Latency under a steady offered load: a fresh worker per rate, the bench sends
   single-event messages at a fixed rate (default 2,000/s for 60 s and 20,000/s
   for 30 s). Instacart has 179,373 events; longer offers cycle through it again
   with event times shifted by 400 days and ids suffixed (catalog records only in
   the first pass). Reports the worker's ``launchpulse_event_to_signal_seconds``
   quantiles (estimated from buckets), the consumer lag when the offer ends, and an
   independent send->signal latency measured by the bench (see the doc).
   4b. The same for a live feed (``live_feed``: clicks on a Zipf catalogue, orders after some
   add-to-carts, a catalogue with stock), each event stamped with the wall clock as it is sent,
   in short windows (default 10 s, grace 2 s) so that window boundaries, where a live feed's
   signals come from, pass during the offer (default 20,000/s for 60 s).
5. mlxtend's batch recompute of the pair rules on the same baskets
   (``bench/associations_bench.py``'s construction and call), beside the replay times.

Every process started here (broker, workers, py-spy) is stopped on exit, errors included.
"""
from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
WINDOW_S = 86400
GRACE_S = 3600
PACK = 100
SHIFT_MS = 400 * 86_400_000  # event-time shift per extra pass of the data (the data span 388 days)
KIND_TOPIC = {"clickstream": "topic_clickstream", "order": "topic_orders", "catalog": "topic_catalog"}

_procs: list[subprocess.Popen] = []  # everything started here, stopped in cleanup()
_broker = None


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- helpers ---------------------------------------------------------------------------------

def settings_for(broker_url: str, prefix: str, app_id: str):
    from launchpulse.stream.settings import Settings

    os.environ["LAUNCHPULSE_TOPIC_PREFIX"] = prefix
    os.environ["LAUNCHPULSE_APP_ID"] = app_id
    os.environ.setdefault("LAUNCHPULSE_PSEUDONYM_KEY", "pipeline-bench-key")
    return Settings.from_env(broker=broker_url)


def http_get(url: str, timeout: float = 3.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def parse_metrics(text: str) -> dict:
    """{name: [(labels dict, value)]} from the Prometheus text format."""
    out: dict = collections.defaultdict(list)
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)', line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        out[m.group(1)].append((labels, float(m.group(4))))
    return out


def metric_sum(metrics: dict, name: str, **match) -> float:
    return sum(v for labels, v in metrics.get(name, []) if all(labels.get(k) == w for k, w in match.items()))


def histogram(metrics: dict, name: str) -> dict:
    buckets = sorted(((float(lb["le"]), v) for lb, v in metrics.get(name + "_bucket", [])), key=lambda x: x[0])
    return {"buckets": buckets, "count": metric_sum(metrics, name + "_count"), "sum": metric_sum(metrics, name + "_sum")}


def hist_quantile(h: dict, q: float):
    """Prometheus histogram_quantile: linear within the bucket; None when empty; inf when in +Inf."""
    b = h["buckets"]
    if not b or b[-1][1] == 0:
        return None
    rank = q * b[-1][1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in b:
        if c >= rank:
            if le == float("inf"):
                return float("inf")
            return prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 1.0)
        prev_le, prev_c = le, c
    return float("inf")


def quantile(xs: list, q: float):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]


def children_usage(pid: int) -> dict:
    """CPU seconds and peak RSS of a worker's ingest child processes (LAUNCHPULSE_INGEST_PROCESSES), from /proc:
    the worker's own process_cpu_seconds_total does not include them."""
    cpu, rss, n = 0.0, [], 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != pid:
                continue
            if b"ingest_process" not in (d / "cmdline").read_bytes():
                continue
        except (OSError, ValueError, IndexError):
            continue
        n += 1
        cpu += _stat_cpu_s(fields)
        kib = vm_hwm_kib(int(d.name))
        if kib:
            rss.append(kib / 1024)
    return {"n": n, "cpu_seconds": cpu, "peak_rss_mib": rss}


def _stat_cpu_s(fields: list) -> float:
    """User + system CPU seconds from the fields of /proc/PID/stat after the command name."""
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system) a process has used so far, from /proc; None when it is not there."""
    if pid is None:
        return None
    try:
        return _stat_cpu_s(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split())
    except OSError:
        return None


def cpu_snapshot(w) -> dict:
    """CPU seconds so far of the worker, its ingest children and the embedded broker (the processes that share
    the cores during a drain; the broker's is None with an external one)."""
    return {"worker": proc_cpu_s(w.proc.pid), "ingest": children_usage(w.proc.pid)["cpu_seconds"],
            "broker": proc_cpu_s(_broker.proc.pid if _broker is not None and _broker.proc is not None else None)}


def cpu_split(before: dict, after: dict, events: int) -> dict:
    """Microseconds of CPU per event in each process between two snapshots."""
    return {k: (None if before[k] is None or after[k] is None else (after[k] - before[k]) / events * 1e6)
            for k in before}


def vm_hwm_kib(pid: int) -> int | None:
    """Peak resident set size (VmHWM) in KiB; psutil has no peak figure on Linux, so /proc it is."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def stop_proc(p: subprocess.Popen, timeout: float = 20.0) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def cleanup() -> None:
    global _broker
    for p in reversed(_procs):
        try:
            stop_proc(p)
        except Exception as e:  # keep stopping the others
            log(f"could not stop pid {p.pid}: {e}")
    _procs.clear()
    if _broker is not None:
        _broker.stop()
        _broker = None


# -- data ------------------------------------------------------------------------------------

def offered_events(events: list, n: int) -> list:
    """The first n events, cycling through the data with shifted event times and suffixed ids."""
    out = list(events[:n])
    k = 1
    while len(out) < n:
        shift = k * SHIFT_MS
        for ev in events:
            if ev["kind"] == "catalog":
                continue
            e = dict(ev, ts=ev["ts"] + shift)
            if ev["kind"] == "clickstream":
                e["event_id"] = f"{ev['event_id']}~{k}"
                e["session_id"] = f"{ev['session_id']}~{k}"
            else:
                e["order_id"] = f"{ev['order_id']}~{k}"
            out.append(e)
            if len(out) >= n:
                break
        k += 1
    return out


LIVE_T0_MS = 1_793_581_200_000  # 2026-11-02T01:00:00Z: the live feed's six hours lie in one daily window


def live_clicks(n: int, items: int = 20_000, users: int = 50_000, seed: int = 0) -> list:
    """A steady live clickstream, the done-when's workload: n single clicks (80% views, 15% add-to-cart,
    5% wishlists) by ``users`` users, one session each, on a Zipf(1) catalogue of ``items`` items in 40
    categories, event times spread evenly over six hours of one day. Unlike the Instacart replay,
    which packs 388 days of event time into seconds (a window closes for about every event), a live
    feed closes each item's window once a day: this measures the per-event path."""
    import random

    rng = random.Random(seed)
    picks = rng.choices(range(items), weights=[1 / (r + 1) for r in range(items)], k=n)
    span = 6 * 3_600_000
    out = []
    for i, it in enumerate(picks):
        u = rng.randrange(users)
        r = rng.random()
        out.append({"kind": "clickstream", "event_id": f"live-{seed}-{i}", "ts": LIVE_T0_MS + i * span // n,
                    "user_id": f"live-user-{u}", "session_id": f"live-session-{u}",
                    "event_type": "view" if r < 0.8 else "add_to_cart" if r < 0.95 else "wishlist",
                    "item_id": f"live-item-{it}", "category_id": f"live-cat-{it % 40}", "price": 9.99})
    return out


def live_feed(n: int, items: int = 20_000, users: int = 50_000, seed: int = 0) -> tuple[list, list]:
    """A live shop for the live latency run: (catalog, events). Events are n clicks and orders without
    event times (the sender stamps each with the wall clock as it sends it): the clicks of
    ``live_clicks``, and after 30% of add-to-carts an order of the item, with its two catalogue
    neighbours half the time each (pairs bought together: bundles); the catalogue's first 2,000 items
    are listed with stock 30 (stock can run short: restock and overstock). Every event counts in n."""
    import random

    rng = random.Random(seed + 1)
    out = []
    for e in live_clicks(n, items, users, seed):
        if len(out) >= n:
            break
        out.append(e)
        if e["event_type"] == "add_to_cart" and rng.random() < 0.3 and len(out) < n:
            it = int(e["item_id"].rsplit("-", 1)[1])
            basket = [it] + [(it + d) % items for d in (1, 2) if rng.random() < 0.5]
            out.append({"kind": "order", "order_id": f"live-order-{seed}-{len(out)}", "user_id": e["user_id"],
                        "items": [{"item_id": f"live-item-{b}", "quantity": 1, "price": 9.99,
                                   "category_id": f"live-cat-{b % 40}"} for b in basket]})
    for e in out:
        e.pop("ts", None)
    catalog = [{"kind": "catalog", "item_id": f"live-item-{i}", "title": f"live item {i}",
                "category_id": f"live-cat-{i % 40}", "price": 9.99, "status": "live", "stock": 30}
               for i in range(2000)]
    return catalog, out


async def produce(settings, events: list, batch: int) -> dict:
    from launchpulse.stream.replay import replay

    return await replay(settings, events, batch=batch, progress=False, total=len(events))


# -- 2. bare consumer ------------------------------------------------------------------------

async def bare_consume(settings, expect_messages: int, timeout_s: float = 300.0) -> dict:
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(*settings.input_topics, bootstrap_servers=settings.bootstrap_servers, group_id=None,
                         enable_auto_commit=False, auto_offset_reset="earliest",
                         max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=32 * 1024 * 1024)
    await c.start()
    msgs = events = 0
    t_first = t_last = None
    loads = orjson.loads
    try:
        deadline = time.monotonic() + timeout_s
        while msgs < expect_messages and time.monotonic() < deadline:
            batches = await c.getmany(timeout_ms=500, max_records=5000)
            for recs in batches.values():
                if t_first is None and recs:
                    t_first = time.perf_counter()
                for r in recs:
                    v = loads(r.value)
                    events += len(v) if isinstance(v, list) else 1
                msgs += len(recs)
            if batches:
                t_last = time.perf_counter()
    finally:
        await c.stop()
    secs = (t_last - t_first) if t_first else float("nan")
    return {"messages": msgs, "events": events, "seconds": secs, "events_per_s": events / secs if secs else None}


# -- 3. worker runs --------------------------------------------------------------------------

class Worker:
    def __init__(self, broker_url: str, prefix: str, app_id: str, workdir: Path, window_s: int = WINDOW_S,
                 grace_s: int = GRACE_S):
        from launchpulse.stream.broker import free_port

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.data_dir = workdir / f"data-{app_id}"
        self.log_path = workdir / f"{app_id}.log"
        env = dict(os.environ, LAUNCHPULSE_BROKER=broker_url, LAUNCHPULSE_APP_ID=app_id,
                   LAUNCHPULSE_TOPIC_PREFIX=prefix, LAUNCHPULSE_WINDOW_SECONDS=str(window_s),
                   LAUNCHPULSE_GRACE_SECONDS=str(grace_s), LAUNCHPULSE_LOG_LEVEL="WARNING")
        env.setdefault("LAUNCHPULSE_PSEUDONYM_KEY", "pipeline-bench-key")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "launchpulse.stream.cli", "worker", "--broker", broker_url,
                                      "--web-port", str(self.port), "--data-dir", str(self.data_dir)],
                                     env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=str(workdir))
        _procs.append(self.proc)
        self.t_spawn = time.monotonic()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def progress(self) -> dict | None:
        try:
            return json.loads(http_get(self.base + "/progress"))
        except Exception:
            return None

    def metrics(self) -> dict:
        return parse_metrics(http_get(self.base + "/metrics", timeout=10).decode())

    def wait_healthy(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"worker exited with {self.proc.returncode}; log {self.log_path}:\n{self.tail()}")
            try:
                if json.loads(http_get(self.base + "/healthz")).get("status") == "ok":
                    return
            except Exception:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"worker not healthy within {timeout:.0f} s; log {self.log_path}:\n{self.tail()}")

    def peak_rss_mib(self) -> float | None:
        k = vm_hwm_kib(self.proc.pid)
        return k / 1024 if k else None

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        stop_proc(self.proc)
        self._log.close()


def counts_check(m: dict, topics: dict, events: int) -> dict:
    """Outcome counts from the worker's metrics, against what was produced."""
    out = {o: metric_sum(m, "launchpulse_events_total", outcome=o) for o in ("accepted", "duplicate", "rejected")}
    out["counted"] = sum(out.values())
    out["produced_events"] = events
    out["dead_letters"] = metric_sum(m, "launchpulse_dead_letter_total")
    out["late_events"] = metric_sum(m, "launchpulse_late_events_total")
    out["windows_closed"] = metric_sum(m, "launchpulse_windows_closed_total")
    out["messages_counted"] = metric_sum(m, "launchpulse_messages_total")
    out["signals_by_type"] = {lb["type"]: v for lb, v in m.get("launchpulse_signals_total", [])}
    out["ok"] = out["accepted"] == events and out["duplicate"] == 0 and out["rejected"] == 0
    return out


STUCK_S = 60.0  # a drain gives up waiting for missing events after this long without progress


def quiet_since(hist: list, now: float) -> float:
    """Since when the latest /progress snapshot (records, signals, nothing queued) has held."""
    snap = (hist[-1][1]["records_processed"], hist[-1][1]["signals_sent"])
    since = now
    for t, q in reversed(hist):
        if (q["records_processed"], q["signals_sent"]) != snap or q["score_queue"] != 0:
            break
        since = t
    return since


def drain_run(w: Worker, messages: int, events: int, stable_s: float = 8.0, timeout_s: float = 330.0,
              on_first=None) -> dict:
    """Poll /progress every 0.5 s from the worker's start until it is quiet; time the phases."""
    hist: list[tuple[float, dict]] = []
    t_zero_last = None  # last poll that answered with nothing ingested
    deadline = time.monotonic() + timeout_s
    first_seen = False
    cpu_at_zero = cpu_first = None  # CPU snapshots: at the last poll before ingestion began
    cpu_records = None  # and at the first poll with every record through state
    while time.monotonic() < deadline:
        if not w.alive():
            raise RuntimeError(f"worker exited with {w.proc.returncode}:\n{w.tail()}")
        p = w.progress()
        now = time.monotonic()
        if p is not None:
            if p["ingested_messages"] == 0:
                t_zero_last = now
                cpu_at_zero = cpu_snapshot(w)
            else:
                if not first_seen and on_first is not None:
                    on_first()
                if not first_seen:
                    cpu_first = cpu_at_zero  # the last snapshot before the first message was ingested
                first_seen = True
                hist.append((now, p))
                if cpu_records is None and p["ingested_messages"] >= messages and p["events_counted"] >= events:
                    cpu_records = cpu_snapshot(w)
                done = p["ingested_messages"] >= messages and p["score_queue"] == 0
                # quiet: the final snapshot held for stable_s (covers the ingest's 5 s idle-partition
                # watermark) with every event counted, or STUCK_S with some missing (see drain_group)
                quiet_s = now - quiet_since(hist, now)
                if done and ((quiet_s >= stable_s and p["events_counted"] >= events) or quiet_s >= STUCK_S):
                    break
        time.sleep(0.5)
    else:
        raise RuntimeError(f"worker did not go quiet within {timeout_s:.0f} s; last progress {hist[-1][1] if hist else None}")
    final = hist[-1][1]
    t_first_poll = hist[0][0]
    if t_zero_last is not None:
        t_start = (t_zero_last + t_first_poll) / 2  # first message lies between these polls (+-0.25 s)
        start_note = "midpoint of the polls around the first ingested message"
    else:  # already ingesting at the first answer: extrapolate back at the first interval's rate
        (t1, p1), (t2, p2) = hist[0], hist[min(1, len(hist) - 1)]
        rate = (p2["ingested_messages"] - p1["ingested_messages"]) / max(t2 - t1, 1e-9)
        t_start = t1 - (p1["ingested_messages"] / rate if rate > 0 else 0)
        start_note = "extrapolated (the first /progress answer already showed ingestion)"
    t_ingested = next(t for t, q in hist if q["ingested_messages"] >= messages)
    t_records = next(t for t, q in hist if q["records_processed"] >= final["records_processed"]
                     and q["ingested_messages"] >= messages)
    t_quiet = next(t for t, q in hist if (q["records_processed"], q["signals_sent"]) ==
                   (final["records_processed"], final["signals_sent"]) and q["score_queue"] == 0
                   and q["ingested_messages"] >= messages)
    m = w.metrics()
    res = {
        "startup_s": t_start - w.t_spawn,
        "start_note": start_note,
        "ingest_s": t_ingested - t_start,
        "records_s": t_records - t_start,
        "quiet_s": t_quiet - t_start,
        "events_per_s": events / (t_records - t_start),
        "events_per_s_to_quiet": events / (t_quiet - t_start),
        "progress": final,
        "peak_rss_mib": w.peak_rss_mib(),
        "counts": counts_check(m, {}, events),
        "lag_end": metric_sum(m, "launchpulse_consumer_lag"),
        "stage_seconds": {lb["stage"]: v for lb, v in m.get("launchpulse_stage_seconds_sum", [])},
        "stage_batches": {lb["stage"]: v for lb, v in m.get("launchpulse_stage_seconds_count", [])},
        "cpu_seconds": metric_sum(m, "process_cpu_seconds_total"),
        "ingest_children": children_usage(w.proc.pid),
        # CPU per event of each process from the last poll before the first ingest to the first with every event
        # counted (None when the worker was already ingesting at its first answer)
        "cpu_us_per_event": (cpu_split(cpu_first, cpu_records, events)
                             if cpu_first is not None and cpu_records is not None else None),
    }
    return res


def drain_group(workers: list, messages: int, events: int, stable_s: float = 8.0, timeout_s: float = 330.0) -> dict:
    """Workers of one consumer group over the same topics: poll each /progress, sum their figures,
    and time from the first ingested message to the last record through state (as drain_run)."""
    hist: list[tuple[float, dict]] = []
    t_zero_last = None
    deadline = time.monotonic() + timeout_s
    keys = ("ingested_messages", "records_processed", "signals_sent", "score_queue", "events_counted")
    while time.monotonic() < deadline:
        for w in workers:
            if not w.alive():
                raise RuntimeError(f"worker exited with {w.proc.returncode}:\n{w.tail()}")
        ps = [w.progress() for w in workers]
        now = time.monotonic()
        if all(p is not None for p in ps):
            p = {k: sum(q[k] for q in ps) for k in keys}
            p["per_worker_records"] = [q["records_processed"] for q in ps]
            if p["ingested_messages"] == 0:
                t_zero_last = now
            else:
                hist.append((now, p))
                quiet_s = now - quiet_since(hist, now)
                # Quiet with every event counted; or quiet for STUCK_S with some missing: a worker busy
                # in a long flush or closing is quiet for a while without being done, so a short
                # quiet spell alone ended a run early with events still to come (2026-11-24).
                if p["ingested_messages"] >= messages and (
                        (quiet_s >= stable_s and p["events_counted"] >= events) or quiet_s >= STUCK_S):
                    break
        time.sleep(0.5)
    else:
        raise RuntimeError(f"workers did not go quiet within {timeout_s:.0f} s; last {hist[-1][1] if hist else None}")
    final = hist[-1][1]
    t_start = (t_zero_last + hist[0][0]) / 2 if t_zero_last is not None else hist[0][0]
    t_records = next(t for t, q in hist if q["records_processed"] >= final["records_processed"]
                     and q["ingested_messages"] >= messages)
    ms = [w.metrics() for w in workers]
    counts = [counts_check(m, {}, events) for m in ms]
    accepted = sum(c["accepted"] for c in counts)
    return {"workers": len(workers), "records_s": t_records - t_start, "events_per_s": events / (t_records - t_start),
            "progress": final, "accepted": accepted, "ok": accepted == events and not any(c["duplicate"] or c["rejected"] for c in counts),
            "late_events": sum(c["late_events"] for c in counts),
            "cpu_seconds": [metric_sum(m, "process_cpu_seconds_total") for m in ms],
            "peak_rss_mib": [w.peak_rss_mib() for w in workers]}


def live_run(broker_url: str, workdir: Path, n: int) -> dict:
    """Step 3b: the live clickstream through a bare consumer (twice, the faster counts) and one fresh worker."""
    from launchpulse.stream.admin import ensure_topics

    events = live_clicks(n)
    s = settings_for(broker_url, "bench-live-", "bench-producer")
    asyncio.run(ensure_topics(s))
    produced = asyncio.run(produce(s, events, 1))
    bare_runs = [asyncio.run(bare_consume(s, produced["messages"])) for _ in range(2)]
    s_ingest = settings_for(broker_url, "bench-live-", "bench-live-ingest")
    asyncio.run(ensure_topics(s_ingest))  # its routed topic, with one partition per owner partition
    ingest = asyncio.run(ingest_alone(s_ingest, len(events)))
    w = Worker(broker_url, "bench-live-", "bench-live", workdir)
    try:
        run = drain_run(w, produced["messages"], len(events))
    finally:
        w.stop()
    return {"events": len(events), "produced": produced, "bare_runs": bare_runs,
            "bare": max(bare_runs, key=lambda r: r["events_per_s"] or 0), "ingest": ingest, "run": run}


async def ingest_alone(settings, events: int) -> dict:
    """The worker's ingest stage by itself, in this process (validate, route, send envelopes, commit),
    with nothing consuming its envelopes: the rate the stateful stage could at most be fed at."""
    from launchpulse.models.windows import WindowConfig
    from launchpulse.stream.ingest import Ingest
    from launchpulse.stream.metrics import Metrics

    ig = Ingest(settings, Metrics(), WindowConfig(size_ms=WINDOW_S * 1000, grace_ms=GRACE_S * 1000))
    await ig.start()
    task = asyncio.create_task(ig.run())
    t0 = first = None  # from the first completed batch (so start-up and the group join are left out)
    try:
        deadline = time.monotonic() + 300
        while ig.consumed < events and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            if t0 is None and ig.consumed:
                t0, first = time.monotonic(), ig.consumed
        dt = time.monotonic() - t0 if t0 is not None else None
    finally:
        task.cancel()
        await ig.stop()
    if not dt:
        raise RuntimeError(f"the ingest stage alone read nothing in 300 s: {ig.health_reason() or 'no reason given'}")
    return {"events": ig.consumed, "seconds": dt, "events_per_s": (ig.consumed - first) / dt}


def group_run(broker_url: str, workdir: Path, n_workers: int, events: list) -> dict:
    """n workers in one group over a fresh copy of the single-event topics (same events)."""
    prefix = f"bench-group{n_workers}-"
    s = settings_for(broker_url, prefix, "bench-producer")
    from launchpulse.stream.admin import ensure_topics

    asyncio.run(ensure_topics(s))
    produced = asyncio.run(produce(s, events, 1))
    ws = [Worker(broker_url, prefix, f"bench-group{n_workers}", workdir) for _ in range(n_workers)]
    try:
        return drain_group(ws, produced["messages"], len(events))
    finally:
        for w in ws:
            w.stop()


# -- profile ---------------------------------------------------------------------------------

FRAME_RE = re.compile(r"^(.*) \((.*?)(?::(\d+))?\)$")


def _frame_name(frame: str) -> str:
    m = FRAME_RE.match(frame.strip())
    if not m:
        return frame.strip()
    func, path = m.group(1), m.group(2)
    for marker in ("site-packages/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        try:
            path = str(Path(path).resolve().relative_to(ROOT))
        except ValueError:
            pass
    return f"{func} ({path})"


def _is_project(frame: str) -> bool:
    m = FRAME_RE.match(frame.strip())
    path = m.group(2) if m else frame
    return ("/launchpulse/" in path or str(ROOT) in path or path.startswith(("stream/", "models/", "schemas/"))) \
        and "site-packages" not in path


# The worker's entry frames (every main-thread sample) are left out of the inclusive ranking.
ENTRY_FRAMES = ("<module> (", "main (", "cmd_worker (")


def aggregate_profile(raw_path: Path, top: int = 10) -> dict:
    leaf: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    threads: collections.Counter = collections.Counter()
    total = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        line = line.rstrip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        if frames[0].startswith(("thread", "process")):  # py-spy may prefix thread / process names
            threads[frames[0]] += n
        leaf[_frame_name(frames[-1])] += n
        seen = set()
        for f in frames:
            if _is_project(f) and not any(f.startswith(e) for e in ENTRY_FRAMES):
                name = _frame_name(f)
                if name not in seen:
                    seen.add(name)
                    incl[name] += n
    return {"samples": total,
            "leaf": [(k, v, v / total) for k, v in leaf.most_common(top)] if total else [],
            "project_inclusive": [(k, v, v / total) for k, v in incl.most_common(top)] if total else [],
            "threads": [(k, v, v / total) for k, v in threads.most_common(6)] if total else []}


def profile_run(broker_url: str, workdir: Path, messages: int, events: int, seconds: int) -> dict:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    w = Worker(broker_url, "bench-single-", "bench-prof", workdir)
    raw = workdir / "profile.raw"
    spy: list = []

    def start_spy():
        p = subprocess.Popen([py_spy, "record", "-p", str(w.proc.pid), "-d", str(seconds), "-f", "raw", "-o", str(raw),
                              "--threads"], stdout=subprocess.DEVNULL, stderr=open(workdir / "py-spy.log", "ab"))
        _procs.append(p)
        spy.append(p)

    try:
        res = drain_run(w, messages, events, on_first=start_spy)
    finally:
        w.stop()
    if spy:
        try:
            spy[0].wait(seconds + 30)
        except subprocess.TimeoutExpired:
            stop_proc(spy[0])
    if not raw.exists():
        return {"error": f"py-spy wrote nothing; see {workdir / 'py-spy.log'}", "run": res}
    agg = aggregate_profile(raw)
    agg["run"] = {k: res[k] for k in ("records_s", "events_per_s")}
    agg["seconds"] = seconds
    return agg


# -- 4. latency under offered load -----------------------------------------------------------

async def offered_load(settings, w: Worker, events: list, rate: float, duration: float, stamp: bool = False) -> dict:
    """Send ``rate`` events a second for ``duration`` s. With ``stamp``, each event's time is the wall
    clock when it is sent (a live feed); else the events' own times (the replay, cycled)."""
    from aiokafka import AIOKafkaProducer

    n = int(rate * duration)
    evs = events[:n] if stamp else offered_events(events, n)
    topics = [getattr(settings, KIND_TOPIC[e["kind"]]) for e in evs]
    payloads = None if stamp else [orjson.dumps({k: v for k, v in e.items() if k != "kind"}) for e in evs]
    clock_ts = [0] * n if stamp else [e["ts"] for e in evs]  # event times in send order (sorted)
    tracks = [e["kind"] != "catalog" for e in evs]
    sent_wall = [0.0] * n
    prod = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=5,
                            enable_idempotence=False, max_request_size=8 * 1024 * 1024)
    await prod.start()
    loop = asyncio.get_running_loop()
    lag_series: list = []
    stop = asyncio.Event()

    async def watch():
        while not stop.is_set():
            try:
                m = await loop.run_in_executor(None, w.metrics)
                lag_series.append((time.monotonic(), metric_sum(m, "launchpulse_consumer_lag")))
            except Exception:
                pass
            try:
                await asyncio.wait_for(stop.wait(), 2.0)
            except asyncio.TimeoutError:
                pass

    watcher = asyncio.create_task(watch())
    futures = []
    i = 0
    t0 = time.monotonic()
    try:
        while i < n:
            due = min(n, int((time.monotonic() - t0) * rate) + 1)
            while i < due:
                sent_wall[i] = now = time.time()
                if stamp:
                    clock_ts[i] = ts = int(now * 1000)
                    value = orjson.dumps({**{k: v for k, v in evs[i].items() if k != "kind"}, "ts": ts})
                else:
                    value = payloads[i]
                futures.append(await prod.send(topics[i], value))
                i += 1
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                futures.clear()
            await asyncio.sleep(0.002)
        await asyncio.gather(*futures)
        await prod.flush()
    finally:
        t_send = time.monotonic() - t0
        await prod.stop()
    m_end = await loop.run_in_executor(None, w.metrics)
    lag_end = metric_sum(m_end, "launchpulse_consumer_lag")
    prog_end = await loop.run_in_executor(None, w.progress)
    h_end = histogram(m_end, "launchpulse_event_to_signal_seconds")
    stop.set()
    await watcher
    return {"rate_offered": rate, "duration_offered_s": duration, "events": n, "send_s": t_send,
            "rate_achieved": n / t_send, "lag_at_offer_end": lag_end, "progress_at_offer_end": prog_end,
            "hist_at_offer_end": h_end, "lag_series": [(round(t - t0, 1), v) for t, v in lag_series],
            "_clock": (clock_ts, tracks, sent_wall)}


async def read_signals(settings, timeout_s: float = 30.0) -> list:
    """Every record of the signals topic (Kafka timestamp, value), read to the end offsets."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from launchpulse.stream.offsets import end_offsets

    c = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                         enable_auto_commit=False, auto_offset_reset="earliest")
    await c.start()
    out = []
    try:
        await c.topics()  # fetches the cluster metadata
        parts = c.partitions_for_topic(settings.topic_signals) or set()
        tps = [TopicPartition(settings.topic_signals, p) for p in sorted(parts)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await end_offsets(c, tps)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = await c.getmany(timeout_ms=500, max_records=10000)
            for recs in got.values():
                out.extend((r.timestamp, orjson.loads(r.value)) for r in recs)
            done = True
            for tp, off in end.items():
                if await c.position(tp) < off:
                    done = False
            if done:
                break
    finally:
        await c.stop()
    return out


def _iso_ms(s: str) -> int:
    return int(datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() * 1000)


def send_to_signal(signals: list, clock: tuple, grace_s: int = GRACE_S) -> dict:
    """Per signal: its Kafka timestamp minus the wall time the first event able to close its window was sent.

    A window [start, end) closes once the watermark reaches end + grace; the first time-tracking
    event sent with ts >= end + grace is the earliest that can do it (the watermark is the minimum
    over input partitions, so the actual closing event may be a little later: this slightly
    overstates). Signals whose window no sent event could close (closed by the idle-partition
    rule after the offer stopped) are counted apart.
    """
    clock_ts, tracks, sent_wall = clock
    ts_track = [t for t, k in zip(clock_ts, tracks) if k]
    wall_track = [w for w, k in zip(sent_wall, tracks) if k]
    lat = []
    by_idle = 0
    for ts_ms, sig in signals:
        end = _iso_ms(sig["window"]["end"])
        j = bisect.bisect_left(ts_track, end + grace_s * 1000)
        if j >= len(ts_track):
            by_idle += 1
            continue
        lat.append(ts_ms / 1000 - wall_track[j])
    return {"signals": len(signals), "measured": len(lat), "closed_by_idle_rule": by_idle,
            "p50": quantile(lat, 0.5), "p95": quantile(lat, 0.95), "p99": quantile(lat, 0.99),
            "max": max(lat) if lat else None}


def latency_run(broker_url: str, workdir: Path, events: list, rate: float, duration: float, tag: str,
                drain_s: float = 60.0, window_s: int = WINDOW_S, grace_s: int = GRACE_S, live_catalog: list | None = None) -> dict:
    """One offered load through a fresh worker. ``live_catalog``: a live feed (``live_feed``), its
    catalogue sent first, event times stamped at send, windows of ``window_s``."""
    prefix = f"bench-lat{tag}-"
    s = settings_for(broker_url, prefix, f"bench-lat{tag}")
    from launchpulse.stream.admin import ensure_topics

    asyncio.run(ensure_topics(s))
    w = Worker(broker_url, prefix, f"bench-lat{tag}", workdir, window_s, grace_s)
    try:
        w.wait_healthy()
        if live_catalog:
            now = int(time.time() * 1000)
            asyncio.run(produce(s, [dict(e, ts=now) for e in live_catalog], 1))
        time.sleep(2.0)  # let the Faust agent's group settle too
        res = asyncio.run(offered_load(s, w, events, rate, duration, stamp=live_catalog is not None))
        res.update(window_s=window_s, grace_s=grace_s, feed="live" if live_catalog else "instacart")
        clock = res.pop("_clock")
        # Drain (bounded) so windows closed during the offer get their signals; the worker's histogram
        # is read again afterwards. Drained: every event sent counted and nothing moving; a worker busy
        # closing windows moves nothing for a while, so a still snapshot alone is not the end.
        t0 = time.monotonic()
        expect = res["events"] + len(live_catalog or ())
        drained = False
        prev, moved_at = None, t0
        while time.monotonic() - t0 < drain_s and time.monotonic() - moved_at < STUCK_S:
            p = w.progress()
            m = w.metrics()
            lag = metric_sum(m, "launchpulse_consumer_lag")
            snap = p and (p["records_processed"], p["signals_sent"], p["events_counted"])
            if snap != prev:
                moved_at = time.monotonic()
            elif p and lag == 0 and p["score_queue"] == 0 and p["events_counted"] >= expect:
                drained = True
                break
            prev = snap
            time.sleep(1.0)
        res["drain_s"] = time.monotonic() - t0
        res["drained"] = drained
        m = w.metrics()
        h = histogram(m, "launchpulse_event_to_signal_seconds")
        res["worker_hist"] = {"count": h["count"], "p50": hist_quantile(h, 0.5), "p95": hist_quantile(h, 0.95),
                              "p99": hist_quantile(h, 0.99), "mean": h["sum"] / h["count"] if h["count"] else None}
        he = res.pop("hist_at_offer_end")
        res["worker_hist_at_offer_end"] = {"count": he["count"], "p50": hist_quantile(he, 0.5),
                                           "p95": hist_quantile(he, 0.95), "p99": hist_quantile(he, 0.99)}
        res["counts"] = counts_check(m, {}, res["events"])
        res["peak_rss_mib"] = w.peak_rss_mib()
        res["progress_end"] = w.progress()
    finally:
        w.stop()
    sigs = asyncio.run(read_signals(s))
    res["send_to_signal"] = send_to_signal(sigs, clock, grace_s)
    res["signal_types"] = dict(collections.Counter(v["type"] for _, v in sigs))
    return res


# -- 5. mlxtend ------------------------------------------------------------------------------

def mlxtend_recompute() -> dict:
    sys.path.insert(0, str(ROOT / "bench"))
    from associations_bench import instacart_baskets, mlxtend_rules

    baskets = instacart_baskets()
    n = len(baskets)
    freq, rules, t_enc, t_rules = mlxtend_rules(baskets)
    return {"baskets": n, "encode_s": t_enc, "fpgrowth_rules_s": t_rules, "total_s": t_enc + t_rules,
            "rules": len(rules), "itemsets": len(freq)}


# -- report ----------------------------------------------------------------------------------

def fmt(x, spec=",.0f", none="n/a"):
    if x is None:
        return none
    if isinstance(x, float) and x == float("inf"):
        return "> 30 s (+Inf bucket)"
    return format(x, spec)


def render(out: dict) -> str:
    L = ["| figure | value |", "|---|---|"]
    if "single" not in out:
        return "\n".join(L + render_live(out.get("live")) + [render_latency(lr) for lr in out.get("latency", [])]
                         + [render_mlxtend(out)])
    bare = out["bare"]["events_per_s"]
    single, packed = out["single"], out["packed"]
    L.append(f"| events (messages single / packed) | {out['events']:,} ({out['produced_single']['messages']:,} / "
             f"{out['produced_packed']['messages']:,}) |")
    L.append(f"| produce time, single / packed (project `replay`, acks=all) | {out['produced_single']['seconds']:.1f} s / "
             f"{out['produced_packed']['seconds']:.1f} s |")
    runs = ", ".join(f"{r['events_per_s']:,.0f}" for r in out["bare_runs"])
    L.append(f"| bare aiokafka+orjson, single-event topics | **{bare:,.0f} events/s** (runs: {runs}) |")
    L.append(f"| bare aiokafka+orjson, packed topics | {out['bare_packed']['events_per_s']:,.0f} events/s |")
    for name, r in (("single-event", single), ("packed x100", packed)):
        L.append(f"| full pipeline, {name}: first ingest -> all records through state | **{r['records_s']:.1f} s = "
                 f"{r['events_per_s']:,.0f} events/s = {r['events_per_s'] / bare:.1%} of bare** |")
        L.append(f"| full pipeline, {name}: ingest done / quiet (final signals, incl. 5 s idle-partition rule) | "
                 f"{r['ingest_s']:.1f} s / {r['quiet_s']:.1f} s ({r['events_per_s_to_quiet']:,.0f} events/s) |")
        c = r["counts"]
        L.append(f"| {name}: accepted / duplicate / rejected / late; signals; windows closed; partitions paused ahead | "
                 f"{c['accepted']:,.0f} / {c['duplicate']:,.0f} / {c['rejected']:,.0f} / {c['late_events']:,.0f}; "
                 f"{r['progress']['signals_sent']:,}; {c['windows_closed']:,.0f}; "
                 f"{fmt(r['progress'].get('partition_pauses'), ',')} |")
        L.append(f"| {name}: worker peak RSS (VmHWM); worker CPU | {fmt(r['peak_rss_mib'], ',.0f')} MiB; "
                 f"{r['cpu_seconds']:.1f} s{_children(r)} |")
    L.extend(render_live(out.get("live")))
    for g in out.get("group", []):
        L.append(f"| same single-event topics, {g['workers']} worker(s) in one group: first ingest -> all records | "
                 f"{g['records_s']:.1f} s = {g['events_per_s']:,.0f} events/s; records per worker "
                 f"{', '.join(f'{r:,}' for r in g['progress']['per_worker_records'])}; accepted {g['accepted']:,.0f} "
                 f"(all once: {g['ok']}); CPU {' + '.join(f'{c:.1f}' for c in g['cpu_seconds'])} s |")
    L.extend(render_latency(lr) for lr in out.get("latency", []))
    L.append(render_mlxtend(out))
    return "\n".join(x for x in L if x)


def render_live(lv: dict | None) -> list:
    if not lv:
        return []
    bare, r = lv["bare"]["events_per_s"], lv["run"]
    c = r["counts"]
    runs = ", ".join(f"{b['events_per_s']:,.0f}" for b in lv["bare_runs"])
    return [f"| live clickstream ({lv['events']:,} single-event messages, one daily window): bare aiokafka+orjson | "
            f"**{bare:,.0f} events/s** (runs: {runs}) |",
            f"| live clickstream: full pipeline, first ingest -> all records through state | **{r['records_s']:.1f} s = "
            f"{r['events_per_s']:,.0f} events/s = {r['events_per_s'] / bare:.1%} of bare** |",
            *([f"| live clickstream: the ingest stage alone (validate, route, send envelopes, commit; nothing consumes them) | "
               f"{lv['ingest']['events_per_s']:,.0f} events/s |"] if lv.get("ingest", {}).get("events_per_s") else []),
            f"| live clickstream: accepted / duplicate / rejected / late; records; worker CPU; peak RSS | "
            f"{c['accepted']:,.0f} / {c['duplicate']:,.0f} / {c['rejected']:,.0f} / {c['late_events']:,.0f}; "
            f"{r['progress']['records_processed']:,}; {r['cpu_seconds']:.1f} s{_children(r)}; "
            f"{fmt(r['peak_rss_mib'], ',.0f')} MiB |",
            *(["| live clickstream: CPU per event from the first ingest until every event is counted: worker / "
               "ingest process(es) / broker | " + " / ".join(fmt(v, ',.1f') + " µs" for v in r['cpu_us_per_event'].values())
               + f" = {sum(v for v in r['cpu_us_per_event'].values() if v is not None):,.1f} µs |"]
              if r.get("cpu_us_per_event") else [])]


def _children(r: dict) -> str:
    """' + X s in N ingest process(es)' when the worker ran ingest in child processes."""
    ch = r.get("ingest_children") or {}
    if not ch.get("n"):
        return ""
    return (f" + {ch['cpu_seconds']:.1f} s in {ch['n']} ingest process(es) "
            f"(peak RSS {', '.join(f'{x:,.0f}' for x in ch['peak_rss_mib'])} MiB)")


def render_latency(lr: dict) -> str:
    L = []
    tag = f"{lr['rate_offered']:,.0f}/s offered for {lr['duration_offered_s']:.0f} s"
    if lr.get("feed") == "live":
        tag = f"live feed, {lr['window_s']} s windows, {tag}"
    wh, s2s = lr["worker_hist"], lr["send_to_signal"]
    c = lr["counts"]
    L.append(f"| latency @ {tag}: achieved send rate | {lr['rate_achieved']:,.0f} events/s "
             f"({lr['events']:,} events in {lr['send_s']:.1f} s) |")
    L.append(f"| latency @ {tag}: input consumer lag at offer end; drained after | {lr['lag_at_offer_end']:,.0f} messages; "
             f"{'%.0f s' % lr['drain_s'] if lr['drained'] else 'not within %.0f s' % lr['drain_s']} |")
    L.append(f"| latency @ {tag}: worker histogram p50 / p95 / p99 (n) | {fmt(wh['p50'], '.3f')} / "
             f"{fmt(wh['p95'], '.3f')} / {fmt(wh['p99'], '.3f')} s ({wh['count']:,.0f}) |")
    L.append(f"| latency @ {tag}: send -> signal (bench-measured) p50 / p95 / p99 / max (n) | {fmt(s2s['p50'], '.3f')} / "
             f"{fmt(s2s['p95'], '.3f')} / {fmt(s2s['p99'], '.3f')} / {fmt(s2s['max'], '.3f')} s ({s2s['measured']:,}) |")
    L.append(f"| latency @ {tag}: accepted / rejected (late) of events counted | {c['accepted']:,.0f} / "
             f"{c['rejected']:,.0f} ({c['late_events']:,.0f}) of {c['counted']:,.0f} |")
    return "\n".join(L)


def render_mlxtend(out: dict) -> str:
    ml = out.get("mlxtend")
    if not ml:
        return ""
    return (f"| mlxtend batch recompute (encode + fpgrowth max_len=2 + association_rules) | "
            f"**{ml['total_s']:.2f} s** ({ml['encode_s']:.2f} + {ml['fpgrowth_rules_s']:.2f}; {ml['rules']:,} rules) |")


def render_profile(p: dict) -> str:
    if not p or "error" in p:
        return f"(no profile: {p.get('error') if p else 'skipped'})"
    L = [f"{p['samples']:,} samples over {p['seconds']} s (py-spy raw, 100 Hz, active threads only; "
         f"that run: {p['run']['events_per_s']:,.0f} events/s under the profiler)", ""]
    if p.get("threads"):
        L.append("Threads: " + ", ".join(f"{k} {s:.1%}" for k, _, s in p["threads"]))
        L.append("")
    L.append("| # | leaf frame (self time) | share |")
    L.append("|---|---|---|")
    for i, (k, _, s) in enumerate(p["leaf"], 1):
        L.append(f"| {i} | `{k}` | {s:.1%} |")
    L.append("")
    L.append("| # | project frame (inclusive) | share |")
    L.append("|---|---|---|")
    for i, (k, _, s) in enumerate(p["project_inclusive"], 1):
        L.append(f"| {i} | `{k}` | {s:.1%} |")
    return "\n".join(L)


# -- main ------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=None, help="only the first N Instacart events (default: all 179,373)")
    ap.add_argument("--quick", action="store_true", help="20,000 events, short latency runs, 8 s profile")
    ap.add_argument("--rates", default=None, help="offered loads as RATE:SECONDS,... (default 2000:60,20000:30)")
    ap.add_argument("--profile-seconds", type=int, default=None)
    ap.add_argument("--skip-throughput", action="store_true", help="skip steps 2-3 (bare consumer, single/packed runs)")
    ap.add_argument("--live-clicks", type=int, default=600_000,
                    help="step 3b: this many synthetic live clicks, single-event messages in one daily window, "
                         "through bare and pipeline (default 600,000: the worker flushes several times meanwhile; "
                         "a run shorter than its flush interval would leave the flush's cost out; 0 skips)")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--live-rates", default="20000:60",
                    help="step 4b, a live feed's latency: offered loads as RATE:SECONDS,... of live_feed events "
                         "stamped with the wall clock as sent, in --live-window windows (default 20000:60; '' skips)")
    ap.add_argument("--live-window", type=int, default=10, help="step 4b's window, seconds (grace: a fifth of it)")
    ap.add_argument("--drain-seconds", type=float, default=60.0, help="bound on the wait after each offered load")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="render the report from the --json files of earlier (partial) runs; runs nothing")
    ap.add_argument("--skip-profile", action="store_true")
    ap.add_argument("--skip-group", action="store_true", help="skip the one- against two-worker runs")
    ap.add_argument("--skip-mlxtend", action="store_true")
    ap.add_argument("--json", default=None, help="also write every figure to this file")
    ap.add_argument("--doc", default=None, help="write the markdown report here (default docs/bench-pipeline.md; "
                                                "--quick writes nowhere unless given)")
    args = ap.parse_args(argv)
    if args.quick:
        args.events = args.events or 20_000
        args.rates = args.rates or "1000:10,20000:5"
        args.profile_seconds = args.profile_seconds or 8
        args.live_clicks = min(args.live_clicks, 20_000)
        args.live_rates = "5000:20" if args.live_rates == "20000:60" else args.live_rates
    args.rates = args.rates or "2000:60,20000:30"
    args.profile_seconds = args.profile_seconds or 20
    doc = args.doc or (None if args.quick else str(ROOT / "docs" / "bench-pipeline.md"))
    if args.merge:
        out = merge([json.loads(Path(f).read_text()) for f in args.merge])
        return report(out, args.json, doc)

    from launchpulse.stream.admin import ensure_topics
    from launchpulse.stream.broker import EmbeddedBroker, free_port
    from launchpulse.stream.datasets import instacart_events

    global _broker
    workdir = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    out: dict = {"date": time.strftime("%Y-%m-%d"), "machine": subprocess.run(["uname", "-a"], capture_output=True, text=True).stdout.strip()
                 or " ".join(platform.uname()), "nproc": os.cpu_count(),
                 "python": sys.version.split()[0], "command": " ".join(["python", "bench/pipeline_bench.py", *sys.argv[1:]]),
                 "window_s": WINDOW_S, "grace_s": GRACE_S, "workdir": str(workdir),
                 "ingest_processes": os.environ.get("LAUNCHPULSE_INGEST_PROCESSES", "(default)")}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    t_all = time.monotonic()
    try:
        events = instacart_events(limit=args.events)
        out["events"] = len(events)
        _broker = EmbeddedBroker(port=free_port()).start()
        url = _broker.url
        log(f"broker {url}; {len(events):,} events; workdir {workdir}")
        s_single = settings_for(url, "bench-single-", "bench-producer")
        s_packed = settings_for(url, "bench-packed-", "bench-producer")
        asyncio.run(ensure_topics(s_single))
        asyncio.run(ensure_topics(s_packed))
        out["produced_single"] = asyncio.run(produce(s_single, events, 1))
        log(f"produced single: {out['produced_single']}")
        n_single = out["produced_single"]["messages"]
        if not args.skip_throughput:
            out["produced_packed"] = asyncio.run(produce(s_packed, events, PACK))
            log(f"produced packed: {out['produced_packed']}")
            n_packed = out["produced_packed"]["messages"]
            out["bare_runs"] = [asyncio.run(bare_consume(s_single, n_single)) for _ in range(2)]
            out["bare"] = max(out["bare_runs"], key=lambda r: r["events_per_s"] or 0)
            out["bare_packed"] = asyncio.run(bare_consume(s_packed, n_packed))
            log(f"bare: {[round(r['events_per_s']) for r in out['bare_runs']]} events/s; packed "
                f"{out['bare_packed']['events_per_s']:,.0f}")
            for name, prefix, n_msgs in (("single", "bench-single-", n_single), ("packed", "bench-packed-", n_packed)):
                w = Worker(url, prefix, f"bench-{name}", workdir)
                try:
                    out[name] = drain_run(w, n_msgs, len(events))
                finally:
                    w.stop()
                r = out[name]
                log(f"{name}: {r['records_s']:.1f} s to all records ({r['events_per_s']:,.0f} events/s), quiet at "
                    f"{r['quiet_s']:.1f} s, progress {r['progress']}, counts {r['counts']}, RSS {r['peak_rss_mib']}")

        if args.live_clicks:
            out["live"] = live_run(url, workdir, args.live_clicks)
            lv = out["live"]
            log(f"live clicks: bare {lv['bare']['events_per_s']:,.0f}/s; pipeline {lv['run']['events_per_s']:,.0f}/s "
                f"({lv['run']['events_per_s'] / lv['bare']['events_per_s']:.1%}), counts {lv['run']['counts']}")

        if not args.skip_group:
            out["group"] = [group_run(url, workdir, n, events) for n in (1, 2)]
            for g in out["group"]:
                log(f"group of {g['workers']}: {g['events_per_s']:,.0f} events/s, records per worker "
                    f"{g['progress']['per_worker_records']}, ok {g['ok']}, CPU {g['cpu_seconds']}")
        if not args.skip_profile:
            out["profile"] = profile_run(url, workdir, n_single, len(events), args.profile_seconds)
            log("profile done")

        if not args.skip_latency:
            full = instacart_events()
            out["latency"] = []
            for spec in args.rates.split(","):
                rate, secs = (float(x) for x in spec.split(":"))
                lr = latency_run(url, workdir, full, rate, secs, f"{int(rate)}", args.drain_seconds)
                out["latency"].append(lr)
                log(f"latency @{rate:.0f}/s: achieved {lr['rate_achieved']:,.0f}/s, lag at end {lr['lag_at_offer_end']:,.0f}, "
                    f"worker hist {lr['worker_hist']}, send->signal {lr['send_to_signal']}")
            for spec in filter(None, args.live_rates.split(",")):
                rate, secs = (float(x) for x in spec.split(":"))
                catalog, feed = live_feed(int(rate * secs))
                # A live feed's backlog is drained within minutes (the replay's closing takes far longer).
                lr = latency_run(url, workdir, feed, rate, secs, f"live{int(rate)}", max(args.drain_seconds, 180),
                                 args.live_window, max(1, args.live_window // 5), catalog)
                out["latency"].append(lr)
                log(f"live latency @{rate:.0f}/s: achieved {lr['rate_achieved']:,.0f}/s, lag at end "
                    f"{lr['lag_at_offer_end']:,.0f}, worker hist {lr['worker_hist']}, send->signal "
                    f"{lr['send_to_signal']}, signals {lr['signal_types']}")
    finally:
        cleanup()
    if not args.skip_mlxtend:
        out["mlxtend"] = mlxtend_recompute()
        log(f"mlxtend: {out['mlxtend']}")
    out["total_s"] = time.monotonic() - t_all
    out["runs"] = [{"command": out["command"], "total_s": out["total_s"]}]
    return report(out, args.json, doc)


def merge(parts: list) -> dict:
    """Partial runs (each under the per-run time bound) into one report; later parts win, latency runs add up."""
    out: dict = {}
    for p in parts:
        lat = out.get("latency", []) + p.get("latency", [])
        runs = out.get("runs", []) + p.get("runs", [{"command": p.get("command"), "total_s": p.get("total_s")}])
        for k, v in p.items():  # the first run that has a figure keeps it (e.g. its produce time)
            out.setdefault(k, v)
        out["latency"], out["runs"] = lat, runs
    out["total_s"] = sum(r["total_s"] or 0 for r in out["runs"])
    return out


def report(out: dict, json_path, doc) -> int:
    table = render(out)
    prof = render_profile(out.get("profile"))
    print(table)
    print()
    print(prof)
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=2, default=str))
    if doc:
        Path(doc).write_text(render_doc(out, table, prof))
        log(f"wrote {doc}")
    return 0


def render_doc(out: dict, table: str, prof: str) -> str:
    """The figures; the reading is written by hand under them (see docs/bench-pipeline.md)."""
    return (f"## Pipeline vs bare aiokafka (generated by bench/pipeline_bench.py)\n\n"
            f"- **Date:** {out['date']}\n- **Machine:** `{out['machine']}`, {out['nproc']} cores; Python {out['python']}\n"
            f"- **Commands:** " + "; ".join(f"`{r['command']}` ({r['total_s']:.0f} s)" for r in out["runs"])
            + f"\n\n{table}\n\n### Profile\n\n{prof}\n")


if __name__ == "__main__":
    sys.exit(main())
