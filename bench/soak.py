"""Soak run (issue #6): one worker under a steady offered load for minutes; memory and lag over time.

    python bench/soak.py --minutes 10 --rate 800 [--json out.json] [--section out.md]

One embedded broker (Tansu, memory storage, 127.0.0.1 only, free port), one
``launchpulse worker`` subprocess with a fresh app id and data directory (window
86400 s, grace 3600 s, the default 4 s rebalance / 10 s session timeouts that the
tests use too), and a producer in this process sending single-event clickstream and
order messages at a steady offered rate. The events cycle through the Instacart
sample (``pipeline_bench.offered_events``: later passes shift event times by 400 days
and suffix ids; catalog records only in the first pass), so every event is valid and
distinct and arrives in event-time order.

Every ``--sample-seconds`` (10) the worker's RSS (VmRSS from /proc/<pid>/status),
the input consumer lag (sum of ``launchpulse_consumer_lag``), the outcome counters
(accepted / duplicate / rejected, late events) and the end-to-end backlog (events
sent minus events counted by the state stage, which the input lag does not see) are
sampled. After the offer, the worker is given ``--drain-seconds`` to count
everything. Reported: RSS at start and end, its least-squares slope over the last
8 minutes (MiB/min), the lag and backlog over time and their slopes, late events.

Bounded: the offer stops after ``--minutes`` or ``--max-events``, the drain after
``--drain-seconds``. Every process started here (broker, worker) is stopped on exit,
errors and SIGINT/SIGTERM included.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeline_bench as pb  # the bench's helpers: broker/worker lifecycle, metrics, data cycling

SLOPE_WINDOW_S = 480.0  # the slopes are fitted over the last 8 minutes of the offer


def vm_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def slope_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per minute."""
    pts = [(t, v) for t, v in points if v is not None]
    if len(pts) < 3:
        return None
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mv = sum(v for _, v in pts) / n
    den = sum((t - mt) ** 2 for t, _ in pts)
    return 60.0 * sum((t - mt) * (v - mv) for t, v in pts) / den if den else None


def sample(w: pb.Worker, t0: float, sent: int) -> dict:
    row = {"t": round(time.monotonic() - t0, 1), "sent": sent, "rss_mib": vm_rss_mib(w.proc.pid),
           "load1": os.getloadavg()[0]}  # the machine's 1-minute load average: the CPU is shared
    try:
        m = w.metrics()
    except Exception as e:  # noqa: BLE001 - a sample the worker did not answer is recorded as such
        row["error"] = repr(e)
        return row
    for o in ("accepted", "duplicate", "rejected"):
        row[o] = pb.metric_sum(m, "launchpulse_events_total", outcome=o)
    row["late"] = pb.metric_sum(m, "launchpulse_late_events_total")
    row["lag"] = pb.metric_sum(m, "launchpulse_consumer_lag")
    row["items"] = pb.metric_sum(m, "launchpulse_items_tracked")  # item states held: what memory should follow
    row["counted"] = row["accepted"] + row["duplicate"] + row["rejected"]
    row["backlog"] = sent - row["counted"]
    return row


async def offer(settings, w: pb.Worker, events: list, rate: float, seconds: float, every: float,
                samples: list, t0: float, live_time: bool = False) -> dict:
    """Send single-event messages at ``rate``/s for ``seconds`` (or until ``events`` run out), sampling.

    ``live_time``: each event's time is the wall clock when it is sent (a live feed), instead of the
    data's own times (a year of daily windows replayed in minutes)."""
    from aiokafka import AIOKafkaProducer

    loop = asyncio.get_running_loop()
    n = min(len(events), int(rate * seconds))
    prod = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=5,
                            enable_idempotence=False, max_request_size=8 * 1024 * 1024)
    await prod.start()
    futures = []
    i = 0
    sent = 0
    t_start = time.monotonic()
    next_sample = t_start
    try:
        while i < n:
            now = time.monotonic()
            if now >= next_sample:
                samples.append(await loop.run_in_executor(None, sample, w, t0, i))  # i: handed to the producer
                r = samples[-1]
                pb.log(f"t={r['t']:.0f}s sent={i} rss={r.get('rss_mib') or 0:.0f}MiB items={r.get('items')} lag={r.get('lag')} "
                       f"backlog={r.get('backlog')} late={r.get('late')}")
                next_sample += every
                if not w.alive():
                    raise RuntimeError(f"worker exited with {w.proc.returncode}:\n{w.tail()}")
            due = min(n, int((time.monotonic() - t_start) * rate) + 1)
            while i < due:
                e = events[i]
                body = {k: v for k, v in e.items() if k != "kind"}
                if live_time:
                    body["ts"] = int(time.time() * 1000)
                futures.append(await prod.send(getattr(settings, pb.KIND_TOPIC[e["kind"]]), orjson.dumps(body)))
                i += 1
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                sent += len(futures)
                futures.clear()
            await asyncio.sleep(0.005)
        await asyncio.gather(*futures)
        sent += len(futures)
        await prod.flush()
    finally:
        send_s = time.monotonic() - t_start
        await prod.stop()
    return {"events": sent, "send_s": send_s, "rate_achieved": sent / send_s}


def render_section(out: dict) -> str:
    s0, s1 = out["first_sample"], out["last_sample"]
    lag_pts = out["lag_by_minute"]
    lines = [
        "## Soak (issue 6)",
        "",
        f"Date: {out['date']}. Machine: `{out['uname']}` ({out['cpus']} cores). Commit `{out['commit']}`.",
        "",
        "Command:",
        "",
        "```sh",
        out["command"],
        "```",
        "",
        (f"One embedded broker, one worker (fresh app id and data directory, window {pb.WINDOW_S} s, grace "
        f"{pb.GRACE_S} s), single-event clickstream and order messages offered at {out['rate']:,.0f} events/s for "
        f"{out['minutes']:g} min ({out['offer']['events']:,} events, achieved {out['offer']['rate_achieved']:,.0f}/s), "
        "cycling the Instacart sample with event times shifted and ids suffixed per pass. Sampled every "
        f"{out['sample_seconds']:g} s."),
        "",
        "| figure | value |",
        "|---|---|",
        f"| worker RSS at the first sample (t = {s0['t']:.0f} s) | {s0['rss_mib']:.0f} MiB |",
        f"| worker RSS at the end of the offer (t = {s1['t']:.0f} s) | {s1['rss_mib']:.0f} MiB |",
        (f"| item states held (`launchpulse_items_tracked`) at the first sample / end of the offer | "
        f"{s0.get('items', 0):,.0f} / {s1.get('items', 0):,.0f} |"),
        f"| RSS slope over the last 8 minutes (least squares) | {out['rss_slope_mib_per_min']:+.2f} MiB/min |",
        (f"| input consumer lag, mean / max over the last 8 minutes | {out['lag_mean_last8']:,.0f} / "
        f"{out['lag_max_last8']:,.0f} messages |"),
        f"| input lag slope over the last 8 minutes | {out['lag_slope_per_min']:+,.1f} messages/min |",
        (f"| end-to-end backlog (sent − counted by the state stage), mean / max over the last 8 minutes | "
        f"{out['backlog_mean_last8']:,.0f} / {out['backlog_max_last8']:,.0f} events |"),
        f"| backlog slope over the last 8 minutes | {out['backlog_slope_per_min']:+,.1f} events/min |",
        f"| drained after the offer (every event counted) | {out['drained']} in {out['drain_s']:.0f} s |",
        (f"| accepted / duplicate / rejected at the end | {out['final']['accepted']:,.0f} / "
        f"{out['final']['duplicate']:,.0f} / {out['final']['rejected']:,.0f} of {out['offer']['events']:,} sent |"),
        f"| late events (`launchpulse_late_events_total`) | {out['final']['late']:,.0f} |",
        f"| worker peak RSS (VmHWM) | {out['peak_rss_mib']:.0f} MiB |",
        (f"| machine 1-minute load average during the offer, mean / max (2 cores, shared) | "
        f"{out['load_mean']:.1f} / {out['load_max']:.1f} |"),
        "",
        "Lag and backlog per minute (sample nearest each minute): "
        + ", ".join(f"{t / 60:.0f} min: {lag:,.0f} / {bl:,.0f}" for t, lag, bl in lag_pts) + ".",
        "",
        ("Late events: an event is refused as `late_event` (dead-lettered, counted `rejected`) when its window "
        "has already closed for its item, i.e. the owner partition's watermark (the minimum over the input "
        "partitions of their latest event time) has passed the window end plus the grace period "
        f"({pb.GRACE_S} s here). Here the events of each pass arrive in event-time order, so a late event would "
        "mean that one input partition ran more than the grace period ahead of another."),
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the offered load (default 10)")
    ap.add_argument("--rate", type=float, default=800.0, help="offered events/s (default 800)")
    ap.add_argument("--max-events", type=int, default=2_000_000, help="bound on the events sent (default 2,000,000)")
    ap.add_argument("--sample-seconds", type=float, default=10.0, help="sampling interval (default 10)")
    ap.add_argument("--drain-seconds", type=float, default=180.0, help="bound on the wait after the offer (default 180)")
    ap.add_argument("--live-time", action="store_true",
                    help="stamp events with the wall clock as they are sent (a live feed), with 60 s windows and 10 s "
                         "grace, instead of the data's own times with daily windows")
    ap.add_argument("--commit", default=None, help="commit to name in the report (default: git rev-parse HEAD here)")
    ap.add_argument("--json", default=None, help="write every figure and sample to this file")
    ap.add_argument("--section", default=None, help="write the markdown section (## Soak (issue 6)) to this file")
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.sample_seconds <= 0:
        ap.error("--minutes, --rate and --sample-seconds must be > 0")

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    workdir = Path(tempfile.mkdtemp(prefix="launchpulse-soak-"))
    try:
        return run(args, workdir)
    except KeyboardInterrupt as e:
        pb.log(f"interrupted ({e}); stopping everything")
        return 130
    finally:
        pb.cleanup()
        pb.log(f"stopped every process started; logs in {workdir}")


def run(args, workdir: Path) -> int:
    from launchpulse.stream.admin import ensure_topics
    from launchpulse.stream.broker import EmbeddedBroker, free_port
    from launchpulse.stream.datasets import instacart_events

    seconds = args.minutes * 60
    n = min(args.max_events, int(args.rate * seconds))
    if args.live_time:
        pb.WINDOW_S, pb.GRACE_S = 60, 10  # read by pb.Worker and the report
    pb.log(f"preparing {n:,} events")
    events = pb.offered_events(instacart_events(opening_stock=None), n)
    pb._broker = broker = EmbeddedBroker(port=free_port()).start()  # pb.cleanup() stops it
    tag = "soak-" + uuid.uuid4().hex[:8]
    settings = pb.settings_for(broker.url, f"{tag}-", tag)
    asyncio.run(ensure_topics(settings))
    w = pb.Worker(broker.url, f"{tag}-", tag, workdir)
    w.wait_healthy()
    time.sleep(2.0)  # let the Faust agent's group settle too
    samples: list[dict] = []
    t0 = time.monotonic()
    pb.log(f"offering {args.rate:,.0f} events/s for {args.minutes:g} min")
    res = asyncio.run(offer(settings, w, events, args.rate, seconds, args.sample_seconds, samples, t0,
                            args.live_time))
    t_offer_end = time.monotonic() - t0
    samples.append(sample(w, t0, res["events"]))
    last_offer = samples[-1]
    # Drain: bounded wait until every sent event is counted.
    t_d = time.monotonic()
    drained = False
    while time.monotonic() - t_d < args.drain_seconds:
        r = sample(w, t0, res["events"])
        if r.get("counted") == res["events"] and r.get("lag") == 0:
            drained = True
            break
        time.sleep(2.0)
    drain_s = time.monotonic() - t_d
    final = sample(w, t0, res["events"])
    window = [s for s in samples if "lag" in s and s["t"] >= t_offer_end - SLOPE_WINDOW_S]

    def mean(xs):
        return sum(xs) / len(xs) if xs else float("nan")

    per_min = []
    for k in range(int(t_offer_end // 60) + 1):
        near = min((s for s in samples if "lag" in s), key=lambda s: abs(s["t"] - 60 * k))
        per_min.append((near["t"], near["lag"], near["backlog"]))
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                           cwd=pb.ROOT, check=False).stdout.strip() or "unknown"
    out = {
        "date": subprocess.run(["date", "-u"], capture_output=True, text=True, check=False).stdout.strip(),
        "uname": " ".join(platform.uname()), "cpus": os.cpu_count(), "commit": commit,
        "command": " ".join(["python", "bench/soak.py", *sys.argv[1:]]),
        "rate": args.rate, "minutes": args.minutes, "sample_seconds": args.sample_seconds, "offer": res,
        "first_sample": next(s for s in samples if s.get("rss_mib")), "last_sample": last_offer,
        "rss_slope_mib_per_min": slope_per_min([(s["t"], s["rss_mib"]) for s in window]),
        "lag_slope_per_min": slope_per_min([(s["t"], s["lag"]) for s in window]),
        "backlog_slope_per_min": slope_per_min([(s["t"], s["backlog"]) for s in window]),
        "lag_mean_last8": mean([s["lag"] for s in window]), "lag_max_last8": max((s["lag"] for s in window), default=0),
        "backlog_mean_last8": mean([s["backlog"] for s in window]),
        "backlog_max_last8": max((s["backlog"] for s in window), default=0),
        "load_mean": mean([s["load1"] for s in samples]), "load_max": max(s["load1"] for s in samples),
        "lag_by_minute": per_min, "drained": drained, "drain_s": drain_s, "final": final,
        "peak_rss_mib": w.peak_rss_mib(), "samples": samples,
    }
    w.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    section = render_section(out)
    if args.section:
        Path(args.section).write_text(section)
    print(section)
    ok = drained and final["accepted"] + final["duplicate"] + final["rejected"] == res["events"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
