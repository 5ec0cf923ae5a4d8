"""``launchpulse backtest``: replay planted scenarios or a real data set and score the signals.

Wiring (stream/cli.py)::

    from . import backtest
    backtest.add_parser(sub)                      # in build_parser()
    if args.command == "backtest":                # in main()
        return backtest.run(args)

The scoring itself is pure (:mod:`launchpulse.models.backtest`); this module picks
the events, the window size and the scorer, and prints a table or JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import datetime, timezone

from launchpulse.models.backtest import IMPLEMENTED, OutcomeRules, pool_planted, run_backtest
from launchpulse.models.decisions import Thresholds
from launchpulse.models.windows import WindowConfig
from .argtypes import non_negative as _non_negative, positive as _positive

DEFAULT_INSTACART_EVENTS = 30_000


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``backtest`` on the CLI's subparsers; returns the new parser."""
    p = subparsers.add_parser(
        "backtest", help="replay planted scenarios (default) or a real data set and score the signals",
        description="Replays events through the same state, features and decision code the worker runs and scores "
                    "the signals: against planted truths (--scenarios) and against what followed each signal, "
                    "beside naive-rule baselines.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--scenarios", action="store_true", help="seeded synthetic scenarios with planted truths (default)")
    src.add_argument("--dataset", choices=("instacart",), help="a bundled real data set (no planted truths)")
    p.add_argument("--events", type=_positive, default=None,
                   help=f"use only the first N events (default: all scenario events; "
                        f"{DEFAULT_INSTACART_EVENTS:,} of instacart)")
    p.add_argument("--seed", type=_non_negative, default=0, help="scenario seed (default 0)")
    p.add_argument("--seeds", type=_seed_list, default=None, metavar="SEEDS",
                   help="score several scenario seeds and pool them per signal type, e.g. 0-25 or 0,3,7 "
                        "(planted truths only: no outcome scoring, no baselines)")
    p.add_argument("--jobs", type=_positive, default=1, help="with --seeds: seeds replayed in parallel (default 1)")
    p.add_argument("--windows", type=_positive, default=60, help="scenario length in windows (default 60, >= 40)")
    p.add_argument("--background", type=_non_negative, default=200, help="steady background items (default 200)")
    p.add_argument("--window-seconds", type=_positive, default=86_400,
                   help="window size (default 86400: the thresholds count days)")
    p.add_argument("--grace-seconds", type=_non_negative, default=3_600, help="lateness allowed (default 3600)")
    p.add_argument("--opening-stock", type=int, default=40, help="instacart: stated stock at launch (default 40)")
    p.add_argument("--scorer", choices=("auto", "trend"), default="auto",
                   help="auto: the trained scorer when load_default_scorer() gives one, else the trend scorer")
    p.add_argument("--overstock-horizon", type=_positive, default=None,
                   help="outcome scoring: windows an overstock signal is judged over (default: the cover threshold)")
    p.add_argument("--no-baselines", action="store_true", help="skip the naive-rule baselines")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument("--signals", action="store_true", help="with --json: include every signal")
    return p


def _seed_list(v: str) -> list[int]:
    """``0-25`` or ``0,3,7`` (or both: ``0-3,9``) as a sorted list of distinct seeds."""
    seeds: set[int] = set()
    for part in v.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise argparse.ArgumentTypeError(f"{v!r}: seeds are integers or ranges such as 0-25 or 0,3,7") from None
        if a < 0 or b < a:
            raise argparse.ArgumentTypeError(f"{part!r} is not a range of seeds >= 0")
        seeds.update(range(a, b + 1))
    return sorted(seeds)


def load_scorer(kind: str = "auto"):
    """The trained scorer when available (``models.scorer.load_default_scorer``), else TrendScorer."""
    from launchpulse.models.scorer import TrendScorer

    if kind == "auto":
        try:
            from launchpulse.models.scorer import load_default_scorer
        except ImportError:
            return TrendScorer(), "no load_default_scorer in launchpulse.models.scorer"
        try:
            s = load_default_scorer()
        except Exception as e:  # no bundled weights, torch missing, ...: the worker's fallback
            return TrendScorer(), f"load_default_scorer failed: {e}"
        if s is not None:
            return s, "load_default_scorer"
    return TrendScorer(), "trend scorer"


def _stamp(report: dict) -> dict:
    """When and where a report was made."""
    report["run_at"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    report["machine"] = f"{platform.node()} {platform.machine()} Python {platform.python_version()}"
    return report


def _planted_of_seed(seed: int, windows: int, background: int, window_ms: int, grace_ms: int,
                     scorer_kind: str) -> dict:
    """One seed's planted scores (runs in a worker process under --jobs)."""
    from launchpulse.models.scenarios import generate

    cfg = WindowConfig(size_ms=window_ms, grace_ms=grace_ms)
    events, truths = generate(seed=seed, n_windows=windows, n_background=background, window_ms=window_ms)
    scorer, _ = load_scorer(scorer_kind)
    report = run_backtest(events, cfg, scorer, Thresholds(), truths, baselines=False)
    return report["planted"]


def run_seeds(args) -> int:
    """``--seeds``: the planted scores of each seed, pooled per signal type."""
    import time
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    t0 = time.perf_counter()
    one_seed = partial(_planted_of_seed, windows=args.windows, background=args.background,
                       window_ms=args.window_seconds * 1000, grace_ms=args.grace_seconds * 1000,
                       scorer_kind=args.scorer)
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            per_seed = dict(zip(args.seeds, pool.map(one_seed, args.seeds)))
    else:
        per_seed = {seed: one_seed(seed) for seed in args.seeds}
    pooled = pool_planted(per_seed)
    report = _stamp({"source": f"scenarios seeds {args.seeds[0]}..{args.seeds[-1]} ({len(args.seeds)} seeds), "
                        f"{args.windows} windows, {args.background} background items",
              "seeds": args.seeds, "pooled": pooled,
              "per_seed": {s: {k: {f: v.get(f) for f in ("truths", "signals", "precision", "recall")}
                               for k, v in p.items()} for s, p in per_seed.items()},
              "elapsed_s": round(time.perf_counter() - t0, 1)})
    if args.json:
        sys.stdout.write(json.dumps(report, indent=1, default=str) + "\n")
    else:
        sys.stdout.write(format_pooled(report))
    return 0


def format_pooled(r: dict) -> str:
    lines = [f"launchpulse backtest: {r['source']}; {r['elapsed_s']} s", "",
             "planted truths pooled over the seeds (95% Wilson intervals); seeds meeting precision >= 0.9 and "
             "recall >= 0.8 on their own",
             f"{'type':<22}{'truths':>7}{'signals':>9}{'prec':>7}{'   (95% CI)':<16}{'recall':>7}{'   (95% CI)':<16}"
             f"{'seeds ok':>9}  worst seed (prec / recall)"]
    for kind, v in r["pooled"].items():
        if v["status"] != "ok":
            lines.append(f"{kind:<22}   not implemented (no rule emits it yet)")
            continue
        pci = v["precision_ci95"] or ("-", "-")
        rci = v["recall_ci95"] or ("-", "-")
        wp, wr = v["worst_seed_precision"], v["worst_seed_recall"]
        lines.append(f"{kind:<22}{v['truths']:>7}{v['signals']:>9}{_f(v['precision']):>7}"
                     f"{'   (' + _f(pci[0]) + '-' + _f(pci[1]) + ')':<16}{_f(v['recall']):>7}"
                     f"{'   (' + _f(rci[0]) + '-' + _f(rci[1]) + ')':<16}"
                     f"{str(v['seeds_meeting']) + '/' + str(v['seeds']):>9}  "
                     f"{'-' if wp is None else f'seed {wp[0]}: {wp[1]:.2f}'} / "
                     f"{'-' if wr is None else f'seed {wr[0]}: {wr[1]:.2f}'}")
    return "\n".join(lines) + "\n"


def run(args) -> int:
    if getattr(args, "seeds", None):
        if args.dataset:
            print("launchpulse backtest: --seeds scores planted scenarios; it cannot be used with --dataset",
                  file=sys.stderr)
            return 2
        try:
            return run_seeds(args)
        except ValueError as e:  # the scenario generator refuses its parameters (e.g. too few windows)
            print(f"launchpulse backtest: {e}", file=sys.stderr)
            return 2
    cfg = WindowConfig(size_ms=args.window_seconds * 1000, grace_ms=args.grace_seconds * 1000)
    truths = None
    if args.dataset == "instacart":
        from .datasets import instacart_events

        try:
            events = instacart_events(opening_stock=args.opening_stock,
                                      limit=args.events or DEFAULT_INSTACART_EVENTS)
        except RuntimeError as e:
            print(f"launchpulse backtest: {e}", file=sys.stderr)
            return 1
        source = f"instacart, first {len(events):,} events, opening stock {args.opening_stock}"
    else:
        from launchpulse.models.scenarios import generate

        try:
            events, truths = generate(seed=args.seed, n_windows=args.windows, n_background=args.background,
                                      window_ms=cfg.size_ms)
        except ValueError as e:
            print(f"launchpulse backtest: {e}", file=sys.stderr)
            return 2
        if args.events:
            events = events[: args.events]
        source = f"scenarios seed {args.seed}, {args.windows} windows, {args.background} background items"
    scorer, why = load_scorer(args.scorer)
    rules = OutcomeRules(overstock_horizon=args.overstock_horizon)
    report = run_backtest(events, cfg, scorer, Thresholds(), truths, outcome_rules=rules,
                          baselines=not args.no_baselines, keep_signals=args.json and args.signals)
    report["source"] = source
    report["scorer_choice"] = why
    _stamp(report)
    if args.json:
        sys.stdout.write(json.dumps(report, indent=1, default=str) + "\n")
    else:
        sys.stdout.write(format_report(report))
    return 0


def _f(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def format_report(r: dict) -> str:
    lines = [f"launchpulse backtest: {r.get('source', '')}",
             f"scorer {r['scorer']} ({r.get('scorer_choice', '')}); window {r['window_ms'] // 1000} s; "
             f"{r['events']:,} events ({sum(r['invalid_events'].values())} invalid), {r['items']:,} items, "
             f"{r['windows_closed']:,} closed windows; {r['elapsed_s']} s", ""]
    if "planted" in r:
        lines.append("planted truths (signal matches a truth: same type and subject, window inside the truth's range)")
        lines.append(f"{'type':<22}{'truths':>7}{'signals':>9}{'prec':>7}{'recall':>8}   "
                     f"{'naive signals':>13}{'prec':>7}{'recall':>8}")
        base = r.get("planted_baseline") or {}
        for kind, v in r["planted"].items():
            if v["status"] != "ok":
                lines.append(f"{kind:<22}{v['truths']:>7}   not implemented (no rule emits it yet)")
                continue
            b = base.get(kind, {})
            lines.append(f"{kind:<22}{v['truths']:>7}{v['signals']:>9}{_f(v['precision']):>7}{_f(v['recall']):>8}   "
                         f"{b.get('signals', '-'):>13}{_f(b.get('precision')):>7}{_f(b.get('recall')):>8}")
        lines.append("")
    lines.append("outcomes (each signal judged by what followed it; recall over subjects where the outcome held)")
    lines.append(f"{'type':<22}{'signals':>8}{'judged':>7}{'prec':>7}{'pos':>6}{'recall':>8}   "
                 f"{'naive sig':>9}{'judged':>7}{'prec':>7}{'recall':>8}")
    ob = r.get("outcome_baseline") or {}
    for kind in IMPLEMENTED:
        v = r["outcome"][kind]
        b = ob.get(kind, {})
        lines.append(f"{kind:<22}{v['signals']:>8}{v['evaluable']:>7}{_f(v['precision']):>7}{v['positives']:>6}"
                     f"{_f(v['recall']):>8}   {b.get('signals', '-'):>9}{b.get('evaluable', '-'):>7}"
                     f"{_f(b.get('precision')):>7}{_f(b.get('recall')):>8}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """Stand-alone entry (``python -m launchpulse.stream.backtest``) until cli.py wires it."""
    parser = argparse.ArgumentParser(prog="launchpulse")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
