"""Throughput and latency of the demand scorer (models/scorer.py) with the bundled model.

    python bench/scorer_bench.py                    # CPU (threads 1 and 2), and CUDA when available
    python bench/scorer_bench.py --quick            # fewer repetitions
    python bench/scorer_bench.py --json out.json    # also write the figures as JSON

Inputs are real feature rows: the Simulator replays the first ``--events``
Instacart events (window 86400 s, grace 3600 s, the demo's settings) and every
closed window's ``feature_row`` is kept; batches are drawn from those rows. The
same pass times ``feature_row`` per row (the worker builds rows on the event
loop before handing the batch to the scorer thread).

For each batch size: ``predict(rows)`` as the worker calls it (a list of lists
in, a list of lists out: conversion included) and ``predict_array`` (numpy in,
numpy out). Latency: wall time per call, p50/p99 over the repetitions;
rows/s = batch / mean latency. Device is chosen as in the worker (auto: CUDA
when available) and the same code path runs on each device.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from launchpulse.models.features import feature_row  # noqa: E402
from launchpulse.models.scorer import load_default_scorer  # noqa: E402
from launchpulse.models.simulate import Simulator  # noqa: E402
from launchpulse.models.windows import WindowConfig  # noqa: E402
from launchpulse.schemas.validate import validate_event  # noqa: E402
from launchpulse.stream.datasets import instacart_events  # noqa: E402

BATCHES = (256, 1024, 4096, 16384)


def real_rows(n_events: int):
    cfg = WindowConfig(size_ms=86_400_000, grace_ms=3_600_000)
    evs = [validate_event(e["kind"], e, lambda s: s) for e in instacart_events(limit=n_events)]
    rows, spent = [], 0.0
    sim = Simulator(cfg)
    pc = time.perf_counter
    for cw in sim.run(evs):
        t = pc()
        r = feature_row(cw, cfg)
        spent += pc() - t
        rows.append(r)
    return rows, spent


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def bench(scorer, rows_pool: np.ndarray, batch: int, reps: int, as_list: bool, sync) -> dict:
    rng = np.random.default_rng(batch)
    idx = rng.integers(0, len(rows_pool), size=batch)
    x = rows_pool[idx]
    arg = x.tolist() if as_list else x
    fn = scorer.predict if as_list else scorer.predict_array
    for _ in range(3):
        fn(arg, None) if as_list else fn(arg)
    sync()
    lat = []
    for _ in range(reps):
        t = time.perf_counter()
        fn(arg, None) if as_list else fn(arg)
        sync()
        lat.append(time.perf_counter() - t)
    mean = statistics.fmean(lat)
    return {"batch": batch, "api": "predict(list)" if as_list else "predict_array(numpy)", "reps": reps,
            "rows_per_s": batch / mean, "p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20000, help="Instacart events replayed for real rows (default 20000)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", default="1,2", help="CPU thread counts to try (default 1,2)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    reps = {256: 200, 1024: 100, 4096: 50, 16384: 20}
    if a.quick:
        reps = {k: max(5, v // 5) for k, v in reps.items()}
    env = {"date": time.strftime("%Y-%m-%d"), "uname": " ".join(platform.uname()), "nproc": os.cpu_count(),
           "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    print(json.dumps(env), flush=True)
    t = time.perf_counter()
    rows, fr_spent = real_rows(a.events)
    pool = np.asarray(rows, dtype=np.float32)
    fr = {"rows": len(rows), "feature_row_us_per_row": fr_spent / len(rows) * 1e6,
          "feature_row_rows_per_s": len(rows) / fr_spent, "replay_seconds": time.perf_counter() - t}
    print(json.dumps({"feature_row": fr}), flush=True)
    results = []
    configs = [("cpu", int(n)) for n in a.threads.split(",")]
    if torch.cuda.is_available():
        configs.append(("cuda", None))
    for device, threads in configs:
        if threads is not None:
            torch.set_num_threads(threads)
        scorer = load_default_scorer(device=device)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        for as_list in (True, False):
            for b in BATCHES:
                r = {"device": scorer.device, "threads": threads or torch.get_num_threads(), "model": scorer.version,
                     **bench(scorer, pool, b, reps[b], as_list, sync)}
                results.append(r)
                print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"env": env, "feature_row": fr, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
