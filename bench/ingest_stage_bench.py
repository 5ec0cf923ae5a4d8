"""The ingest stage alone on the embedded broker, with Python's garbage-collector thresholds or tuned.

    python bench/ingest_stage_bench.py [--clicks 200000] [--runs python,tuned,python,tuned]

The live clickstream of ``pipeline_bench.live_clicks`` is produced once as single-event messages;
then, in this process, the worker's ``Ingest`` stage (fetch, parse, validate, pseudonymise, route,
pack and send envelopes, commit; ``pipeline_bench.ingest_alone``) reads all of it, once per run, each
run with a consumer group of its own. A ``python`` run keeps Python's collector thresholds (as ingest
children had them before the fourteenth session); a ``tuned`` run applies ``settings.tune_gc`` as the
worker and its ingest children now do. Prints the rate, this process's CPU per click (the stage and
its clients; the broker runs apart) and the collections made during the run.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clicks", type=int, default=200_000)
    ap.add_argument("--runs", default="python,tuned,python,tuned",
                    help="comma-separated run modes, in order: python (default thresholds) or tuned")
    args = ap.parse_args()
    modes = args.runs.split(",")
    if not set(modes) <= {"python", "tuned"}:
        ap.error("--runs takes 'python' and 'tuned' only")

    import pipeline_bench as pb

    from launchpulse.stream.admin import ensure_topics
    from launchpulse.stream.broker import EmbeddedBroker, free_port
    from launchpulse.stream.settings import tune_gc

    broker = pb._broker = EmbeddedBroker(port=free_port()).start()
    try:
        clicks = pb.live_clicks(args.clicks)
        s = pb.settings_for(broker.url, "bench-ingest-", "bench-producer")
        asyncio.run(ensure_topics(s))
        asyncio.run(pb.produce(s, clicks, 1))
        thresholds = gc.get_threshold()
        for i, mode in enumerate(modes):
            if mode == "tuned":
                tune_gc(s.gc_gen0)
            else:
                gc.unfreeze()
                gc.set_threshold(*thresholds)
            si = pb.settings_for(broker.url, "bench-ingest-", f"bench-ingest-run{i}")
            asyncio.run(ensure_topics(si))  # its routed topic
            cpu0, gc0 = time.process_time(), sum(st["collections"] for st in gc.get_stats())
            r = asyncio.run(pb.ingest_alone(si, len(clicks)))
            cpu = time.process_time() - cpu0
            print(f"{mode:6s} {r['events_per_s']:9,.0f} clicks/s  {cpu / len(clicks) * 1e6:5.1f} us CPU a click  "
                  f"{sum(st['collections'] for st in gc.get_stats()) - gc0:5d} collections", flush=True)
    finally:
        pb.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
