"""CPU per click of the worker's two stages, in this process, without Kafka.

    python bench/state_stage_bench.py [--clicks 200000] [--profile] [--close]

The live clickstream of ``pipeline_bench.live_clicks`` (single events, one daily window) is
parsed, validated, pseudonymised, routed (``routing.RoutedBatch``) and packed into envelopes as the
ingest stage does (without the consumer and producer), then applied by the worker's own
``Worker._apply_envelope`` (the state stage, without Faust's consumer, the changelog producer or
the flush's delivery), with the worker's flush (without its delivery to the changelogs) every ``--flush-every`` envelopes.
The garbage collector is tuned as in ``launchpulse worker``. What it shows is the pure CPU cost
per click of each stage; ``pipeline_bench.py`` measures the running pipeline on a broker.
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clicks", type=int, default=200_000)
    ap.add_argument("--profile", action="store_true", help="cProfile the state stage (slows it about 2x)")
    ap.add_argument("--flush-every", type=int, default=100, metavar="N",
                    help="flush every N envelopes (default 100: four flushes in 200,000 clicks; the running worker "
                         "flushes every 5 s, thousands of times in a daily window)")
    ap.add_argument("--close", action="store_true",
                    help="then move the watermark past the day: close its sessions, then every item's and "
                         "category's daily window at once (a live feed's window boundary), decide and score")
    ap.add_argument("--days", type=int, default=1,
                    help="with --close: this many days of the same clicks (new ids, the same users and items), "
                         "each closed at its end; from the second, the items' models have history to decide on")
    args = ap.parse_args()
    os.environ.setdefault("LAUNCHPULSE_PSEUDONYM_KEY", "state-stage-bench")
    os.environ["LAUNCHPULSE_WINDOW_SECONDS"], os.environ["LAUNCHPULSE_GRACE_SECONDS"] = "86400", "3600"

    from pipeline_bench import live_clicks

    from launchpulse.stream.pipeline import Worker
    from launchpulse.stream.settings import Settings, tune_gc

    s = Settings.from_env()
    clicks = live_clicks(args.clicks)
    asyncio.set_event_loop(asyncio.new_event_loop())
    worker = Worker(s)  # its Faust app and tables are built, never started
    tune_gc(s.gc_gen0, freezes_survivors=True)  # as the worker
    for day in range(args.days if args.close else 1):
        later = {} if day == 0 else None
        msgs = [orjson.dumps({k: v for k, v in e.items() if k != "kind"} if later is not None else
                             {**{k: v for k, v in e.items() if k != "kind"}, "ts": e["ts"] + day * 86_400_000,
                              "event_id": f"{e['event_id']}~{day}", "session_id": f"{e['session_id']}~{day}"})
                for e in clicks]
        one_day(args, s, worker, msgs, day)
    return 0


def one_day(args, s, worker, msgs: list, day: int) -> None:
    """One day's clicks through ingest and the state stage (and its boundary, with --close)."""
    from launchpulse.models.routing import Partitioner, RoutedBatch
    from launchpulse.schemas.validate import Pseudonymiser, parse_message
    from launchpulse.stream.ingest import pack_envelopes

    # Ingest: Ingest.process's loop, batches of ingest_max_records messages.
    pseudonymise, owner = Pseudonymiser(s.pseudonym_key), Partitioner(s.state_partitions)
    envelopes: list[tuple[int, bytes]] = []
    routed = RoutedBatch(owner, s.envelope_max_records)
    t0 = time.perf_counter()
    for offset, raw in enumerate(msgs):
        routed.add(parse_message(raw, "clickstream", pseudonymise).events, ["clickstream", 0, offset])
        if (offset + 1) % s.ingest_max_records == 0 or offset == len(msgs) - 1:
            for part, recs in routed.parts.items():
                envelopes += [(part, env) for env in pack_envelopes("bench", recs, s.envelope_max_records)]
            routed = RoutedBatch(owner, s.envelope_max_records)
    t_ingest = time.perf_counter() - t0

    # State: the worker's envelope application; its flush (without the delivery) every --flush-every envelopes.
    from replay_stage_bench import UNSENT, no_delivery

    worker._deliver = no_delivery  # (nothing closes inside a day: its envelopes carry no watermark report)
    loop = asyncio.get_event_loop()
    prof = cProfile.Profile() if args.profile else None
    t_flush = 0.0
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    for k, (part, value) in enumerate(envelopes):
        worker._apply_envelope(part, value)
        if k % args.flush_every == args.flush_every - 1 or k == len(envelopes) - 1:
            t1 = time.perf_counter()
            loop.run_until_complete(worker._flush(at_once=True))
            t_flush += time.perf_counter() - t1
    t_state = time.perf_counter() - t0 - t_flush
    if prof:
        prof.disable()
    n = len(msgs)
    if day:
        print(f"-- day {day + 1}")
    print(f"{n:,} clicks, {worker.records_processed:,} records in {len(envelopes):,} envelopes")
    print(f"ingest (parse, validate, pseudonymise, route, pack): {t_ingest / n * 1e6:.1f} us a click ({n / t_ingest:,.0f}/s)")
    print(f"state (apply the records):                          {t_state / n * 1e6:.1f} us a click ({n / t_state:,.0f}/s)")
    print(f"flush (serialise and queue dirty states):           {t_flush / n * 1e6:.1f} us a click; "
          f"{UNSENT['records']:,} changelog records, {UNSENT['bytes'] / 1e6:,.1f} MB")
    if args.close:
        boundary(worker, s, max(ev["ts"] for ev in map(orjson.loads, msgs[-1:])))
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)


def boundary(worker, s, last_ts: int) -> None:
    """The day's end as a live worker meets it: the watermark passes the end of the day (its sessions
    close), then the end plus the grace (every item's and category's window closes at once: the
    burst a daily window boundary brings), then the closed windows are scored and decided on.
    Signals are counted, not sent."""
    from replay_stage_bench import CountedSignals

    worker._owned_parts = list(range(s.state_partitions))
    signals = worker.signals_topic = CountedSignals()
    cfg = worker.cfg
    day_end = cfg.start_of(last_ts) + cfg.size_ms
    loop = asyncio.get_event_loop()
    times = []
    for wm in (day_end, day_end + cfg.grace_ms):
        t0 = time.perf_counter()
        for part in worker._owned_parts:
            worker._apply_envelope(part, orjson.dumps({"src": "bench", "at": time.time(), "r": [],
                                                       "pw": {"input:0": [wm, False, time.time()]}, "np": 1}))
        loop.run_until_complete(worker._close_ready(time.time()))
        times.append(time.perf_counter() - t0)
    closed = len(worker.score_queue)
    t0 = time.perf_counter()
    loop.run_until_complete(worker._score_queued())
    t_score = time.perf_counter() - t0
    print(f"day's end: sessions closed in {times[0]:.2f} s; {closed:,} item windows closed and decided on in "
          f"{times[1]:.2f} s ({times[1] / max(closed, 1) * 1e6:.0f} us each), scored and decided in {t_score:.2f} s "
          f"({s.score_max_rows}-row batches); the last signal {times[1] + t_score:.2f} s after the boundary; "
          f"signals {dict(sorted(signals.types.items()))}")


if __name__ == "__main__":
    sys.exit(main())
