"""CPU of the Instacart replay through the worker's stages, in this process, without Kafka.

    python bench/replay_stage_bench.py [--events N] [--profile FILE]

The replay's events (``stream.datasets.instacart_events``, 388 days of event time) are routed
(``routing.RoutedBatch``) into envelopes of the ingest stage's batch size in event-time order, each
batch's last envelope per owner partition carrying the watermark report, as ingest sends them;
the worker's own code then applies each envelope (``Worker._apply_envelope``), closes the windows
the watermark passed and decides on them (``Worker._close_ready``), flushes its dirty states every
flush interval (``Worker._flush``, whose delivery to the changelogs is left out) and scores and
decides the queued rows (``Worker._score_batch``; signals are counted, not sent). One worker owns
every partition, as in ``launchpulse replay``. The time is that of the stages' own code, which is
where the running replay spends most of its CPU (docs/benchmarks.md); ``pipeline_bench.py``
measures the replay on a broker. The signal count is printed as a check: it is the running
pipeline's (20,987 for the whole replay).
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import os
import sys
import time
from collections import Counter
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

KIND_TOPIC = {"clickstream": "clickstream", "order": "orders", "catalog": "catalog"}


class CountedSignals:
    """Stands in for the signals topic: counts what would be sent, and digests it (a change to the
    hot path must leave every signal as it was)."""

    def __init__(self):
        self.types: Counter = Counter()
        self.values: list[bytes] = []

    async def send(self, key: bytes, value: bytes) -> None:
        self.send_soon(key, value)

    def send_soon(self, key: bytes, value: bytes) -> None:
        sig = orjson.loads(value)
        self.types[sig["type"]] += 1
        self.values.append(orjson.dumps(sig, option=orjson.OPT_SORT_KEYS))

    def digest(self) -> str:
        return hashlib.sha256(b"\n".join(sorted(self.values))).hexdigest()[:16]


UNSENT = {"records": 0, "bytes": 0}  # what the flushes would have sent to the changelogs


async def no_delivery(prev, state_records=(), meta_records=(), *a, **k) -> None:
    """Stands in for ``Worker._deliver``: the flush's changelog and routed records are counted, not sent."""
    if prev is not None:
        await prev
    for records in (state_records, meta_records):
        UNSENT["records"] += len(records)
        UNSENT["bytes"] += sum(len(r[2] or b"") + len(r[1]) for r in records)


async def replay(args) -> dict:
    from launchpulse.models.routing import Partitioner, RoutedBatch
    from launchpulse.schemas.validate import Pseudonymiser, parse_message
    from launchpulse.stream.cli import _load_scorer
    from launchpulse.stream.datasets import instacart_events
    from launchpulse.stream.ingest import pack_envelopes
    from launchpulse.stream.pipeline import Worker
    from launchpulse.stream.settings import Settings, tune_gc

    s = Settings.from_env()
    events = instacart_events(limit=args.events)
    msgs = [(KIND_TOPIC[e["kind"]], e["kind"], orjson.dumps({k: v for k, v in e.items() if k != "kind"}))
            for e in events]
    worker = Worker(s, scorer=_load_scorer(s))  # its Faust app and tables are built, never started
    worker._owned_parts = list(range(s.state_partitions))
    signals = worker.signals_topic = CountedSignals()

    worker._deliver = no_delivery
    tune_gc(s.gc_gen0, freezes_survivors=True)  # as the worker

    # Ingest: route each message's events; every ingest_max_records messages, one envelope per owner
    # partition (the last of a partition's envelopes carrying the report of where input stands).
    pseudonymise, owner = Pseudonymiser(s.pseudonym_key), Partitioner(s.state_partitions)
    envelopes: list[tuple[int, bytes]] = []
    routed = RoutedBatch(owner, s.envelope_max_records)
    read_max = 0
    t0 = time.perf_counter()
    for offset, (topic, kind, raw) in enumerate(msgs):
        parsed = parse_message(raw, kind, pseudonymise)
        for ev in parsed.events:
            read_max = max(read_max, ev.ts_ms)
        routed.add(parsed.events, [topic, 0, offset])
        if (offset + 1) % s.ingest_max_records == 0 or offset == len(msgs) - 1:
            report = {"input:0": [read_max, False, time.time()]}
            for part in range(s.state_partitions):
                envelopes += [(part, env) for env in
                              pack_envelopes("bench", routed.parts.get(part, []), s.envelope_max_records, report, 1)]
            routed = RoutedBatch(owner, s.envelope_max_records)
    t_ingest = time.perf_counter() - t0

    # State, closing, flush and scoring, as the agent, the flush timer and the scorer task run them.
    t_apply = t_close = t_ahead = t_flush = t_score = 0.0
    prof = cProfile.Profile() if args.profile else None
    if prof:
        prof.enable()
    t0 = time.perf_counter()
    last_flush = t0
    for part, value in envelopes:
        t1 = time.perf_counter()
        worker._apply_envelope(part, value)
        t2 = time.perf_counter()
        await worker._close_ready(worker._consumed_at)
        t3 = time.perf_counter()
        worker._start_learning_ahead()  # the running worker does it in the grace period, between envelopes
        if worker._learning_ahead is not None:
            await worker._learning_ahead
        t_ahead += time.perf_counter() - t3
        t_apply += t2 - t1
        t_close += t3 - t2
        t3 = time.perf_counter()
        if t3 - last_flush >= worker.flush_interval_s:
            await worker._flush(at_once=True)  # the running worker serialises in slices: the same CPU
            last_flush = time.perf_counter()
            t_flush += last_flush - t3
        t4 = time.perf_counter()
        await worker._score_queued()
        t_score += time.perf_counter() - t4
    t4 = time.perf_counter()
    await worker._flush(at_once=True)
    await worker._delivered()  # (the last flush's records were not counted before)
    t_flush += time.perf_counter() - t4
    t_stages = time.perf_counter() - t0
    if prof:
        prof.disable()
        prof.dump_stats(args.profile)
    return {"events": len(events), "records": worker.records_processed, "envelopes": len(envelopes),
            "windows_closed": worker.metrics.windows_closed._value.get(), "t_ingest": t_ingest,
            "t_apply": t_apply, "t_close": t_close, "t_ahead": t_ahead, "t_flush": t_flush, "t_score": t_score, "t_stages": t_stages,
            "signals": sum(signals.types.values()), "by_type": dict(sorted(signals.types.items())),
            "digest": signals.digest(), "changelog": dict(UNSENT), "learnt_ahead": worker.items_learnt_ahead}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=None, help="only the first N events (default: all)")
    ap.add_argument("--profile", default=None, metavar="FILE", help="cProfile the stages into FILE (slows them)")
    args = ap.parse_args()
    os.environ.setdefault("LAUNCHPULSE_PSEUDONYM_KEY", "replay-stage-bench")
    # The replay's windows: daily, one hour of grace (as launchpulse replay and pipeline_bench).
    os.environ["LAUNCHPULSE_WINDOW_SECONDS"], os.environ["LAUNCHPULSE_GRACE_SECONDS"] = "86400", "3600"
    asyncio.set_event_loop(loop := asyncio.new_event_loop())
    r = loop.run_until_complete(replay(args))
    n = r["events"]
    print(f"{n:,} events, {r['records']:,} records in {r['envelopes']:,} envelopes, "
          f"{r['windows_closed']:,.0f} item windows closed")
    print(f"ingest (parse, validate, pseudonymise, route, pack): {r['t_ingest']:6.2f} s")
    print(f"apply envelopes:                                     {r['t_apply']:6.2f} s")
    print(f"close windows and decide on them (features, as-of):  {r['t_close']:6.2f} s")
    print(f"learn ahead (trend models, before windows close):   {r['t_ahead']:6.2f} s ({r['learnt_ahead']:,} items)")
    print(f"flush (serialise dirty states, totals, metas):       {r['t_flush']:6.2f} s")
    print(f"score and decide (scorer, rules, memory):            {r['t_score']:6.2f} s")
    print(f"changelog records the flushes queued:               {r['changelog']['records']:,} "
          f"({r['changelog']['bytes'] / 1e6:,.1f} MB)")
    print(f"state stages in all:                                 {r['t_stages']:6.2f} s ({n / r['t_stages']:,.0f} events/s)")
    print(f"signals: {r['signals']:,} {r['by_type']}, digest {r['digest']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
