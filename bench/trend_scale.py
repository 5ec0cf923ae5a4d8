"""Live trend models and the per-event cost of the trend update on a 1M-item replay (issue 3).

    python bench/trend_scale.py [--items 1000000] [--events 3000000] [--windows 120] [--json out.json]

Pure model code, the worker's path for one owner partition: each order record is applied to its
item's :class:`ItemState`; when the watermark passes a window, the items pending for it (those
with events in it, and those due for their dormancy check) close their windows, exactly as
``stream/pipeline.py`` does. Half the events (``--tail-share``) fall on a uniformly drawn
catalogue item (the long tail: most items are seen once or twice), the rest on a Zipf-like head
that drifts over ``--windows`` windows, so most items are short-lived. Reported:

* live trend models (items whose TrendModel has learnt at least one window) at every window,
  their peak, against items seen so far: the bound is items active in the last
  ``idle_windows`` windows, not the catalogue;
* the time spent closing windows (trend update, forecast, ClosedWindow) per event and per
  closed window, and in the trend model alone per learnt window;
* serialized state size per item (what the changelog holds), on a sample.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402

from launchpulse.models.itemstate import ItemState, dormancy_check_window  # noqa: E402
from launchpulse.models.trends import TrendModel  # noqa: E402
from launchpulse.models.windows import WindowConfig  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1_000_000, help="distinct items in the catalogue (default 1,000,000)")
    ap.add_argument("--events", type=int, default=3_000_000, help="order records replayed (default 3,000,000)")
    ap.add_argument("--windows", type=int, default=120, help="windows the replay spans (default 120)")
    ap.add_argument("--idle-windows", type=int, default=14, help="WindowConfig.idle_windows (default 14)")
    ap.add_argument("--tail-share", type=float, default=0.5,
                    help="share of events on a uniformly drawn catalogue item (default 0.5); the rest is Zipf-like")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args(argv)
    if min(args.items, args.events, args.windows, args.idle_windows) < 1:
        ap.error("--items, --events, --windows and --idle-windows must be >= 1")

    size = 3_600_000
    cfg = WindowConfig(size_ms=size, grace_ms=0, idle_windows=args.idle_windows)
    rng = random.Random(args.seed)
    per_window = args.events // args.windows
    states: dict[str, ItemState] = {}
    pending: dict[int, set] = {}
    live_series, seen_series = [], []
    t_apply = t_close = 0.0
    n_closed = 0
    n_learnt_before = 0

    # Learnt-window timing of the trend model alone, on a steady series (no I/O, no dict work).
    tm = TrendModel()
    t0 = time.perf_counter()
    for i in range(20_000):
        tm.predict_one()
        tm.learn_one(float(i % 7))
        tm.forecast()
        tm.slope()
    trend_us = (time.perf_counter() - t0) / 20_000 * 1e6

    for w in range(args.windows):
        # a popular set that drifts: item ids are offset by the window, so hot items change over time
        base = w * args.items // (2 * args.windows)
        t0 = time.perf_counter()
        for k in range(per_window):
            if rng.random() < args.tail_share:  # the long tail: any item of the catalogue, most seen once
                item = f"i{rng.randrange(args.items)}"
            else:  # the head: Zipf-like ranks over a popular set that drifts
                item = f"i{(base + int(rng.paretovariate(0.7)) * 7919) % args.items}"
            st = states.get(item)
            if st is None:
                st = states[item] = ItemState(item)
            ts = w * size + rng.randrange(size)
            st.apply({"k": "o", "id": f"{w}-{k}", "t": ts, "i": item, "c": None, "p": 1.0, "q": 1, "b": [], "n": 1}, cfg)
            s = cfg.start_of(ts)
            pending.setdefault(s, set()).add(item)
            pending.setdefault(dormancy_check_window(s, cfg), set()).add(item)
        t_apply += time.perf_counter() - t0
        wm = (w + 1) * size
        t0 = time.perf_counter()
        for s in sorted(s for s in pending if cfg.closable(s, wm)):
            for item in sorted(pending.pop(s)):
                n_closed += len(states[item].close_windows(cfg, wm))
        t_close += time.perf_counter() - t0
        live = sum(1 for st in states.values() if st.trend.n_seen > 0)
        live_series.append(live)
        seen_series.append(len(states))
        print(f"window {w + 1}/{args.windows}: items seen {len(states):,}, live trend models {live:,}", file=sys.stderr)
    n_learnt = sum(st.trend.n_seen for st in states.values()) - n_learnt_before
    sample = rng.sample(list(states.values()), min(20_000, len(states)))
    bytes_per_item = sum(len(orjson.dumps(st.to_state())) for st in sample) / len(sample)
    events = per_window * args.windows
    out = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": platform.platform(),
        "python": platform.python_version(), "command": "python bench/trend_scale.py " + " ".join(argv or sys.argv[1:]),
        "items_catalogue": args.items, "events": events, "windows": args.windows, "idle_windows": args.idle_windows,
        "items_seen": len(states), "live_models_peak": max(live_series), "live_models_end": live_series[-1],
        "live_models_by_window": live_series, "items_seen_by_window": seen_series,
        "closed_windows": n_closed,
        "apply_us_per_event": t_apply / events * 1e6, "close_us_per_event": t_close / events * 1e6,
        "close_us_per_closed_window": t_close / max(1, n_closed) * 1e6,
        "trend_us_per_learnt_window": trend_us, "learnt_windows_at_end": n_learnt,
        "state_bytes_per_item": bytes_per_item,
    }
    summary = {k: v for k, v in out.items() if not k.endswith("_by_window")}
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
