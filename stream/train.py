"""``launchpulse train``: build the demand scorer's training data from a bundled data set, train, evaluate, save.

    launchpulse train [--dataset instacart] [--events N] [--seed 0] [--epochs E]
                      [--window-seconds 86400] [--grace-seconds 3600] [--out DIR]

Writes ``demand_mlp.pt`` (weights) and ``demand_mlp.json`` (metadata: feature
schema, normalisation, version, training data, seed, evaluation) into ``--out``
(default: the bundled artifact folder, ``models/artifacts/``) and prints the
evaluation (time-split MAE/RMSE against the naive baselines) as JSON on stdout.
Progress goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from .argtypes import positive as _positive

ARTIFACT_NAME = "demand_mlp"


def default_out() -> Path:
    import launchpulse.models

    return Path(launchpulse.models.__file__).resolve().parent / "artifacts"


def _fraction(v: str) -> float:
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not a number") from None
    if not 0.0 < f < 1.0:
        raise argparse.ArgumentTypeError(f"{v} must be in (0, 1)")
    return f


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``train`` subcommand on an ``add_subparsers()`` object; dispatch to :func:`run`."""
    t = subparsers.add_parser("train", help="train the demand scorer on a bundled data set, evaluate it, save the artifact")
    t.add_argument("--dataset", default="instacart", choices=("instacart",), help="bundled data set (default instacart)")
    t.add_argument("--events", type=_positive, default=None, help="use only the first N events in time order (default: all)")
    t.add_argument("--seed", type=int, default=0, help="seed for initialisation and shuffling (default 0)")
    t.add_argument("--epochs", type=_positive, default=8, help="training epochs (default 8)")
    t.add_argument("--window-seconds", type=_positive, default=86400, help="window size (default 86400, the demo's)")
    t.add_argument("--grace-seconds", type=int, default=3600, help="late-event grace (default 3600, the demo's)")
    t.add_argument("--opening-stock", type=int, default=40,
                   help="the data set's stated stock assumption at launch, as in the demo (default 40)")
    t.add_argument("--test-fraction", type=_fraction, default=0.2,
                   help="share of rows (the latest windows) held out for evaluation (default 0.2)")
    t.add_argument("--residual", action="store_true", help="predict the change over the last window's log1p(units)")
    t.add_argument("--threads", type=_positive, default=1,
                   help="torch CPU threads (default 1: on small machines more threads slowed training a lot)")
    t.add_argument("--out", default=None, help=f"output folder for {ARTIFACT_NAME}.pt/.json "
                                               "(default: the bundled artifact folder models/artifacts/)")
    t.set_defaults(func=run)
    return t


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(args) -> int:
    import torch

    from launchpulse.models import training
    from launchpulse.models.scorer import DemandScorer, artifact_bytes
    from launchpulse.models.windows import WindowConfig

    from . import datasets

    torch.set_num_threads(args.threads)
    cfg = WindowConfig(size_ms=args.window_seconds * 1000, grace_ms=args.grace_seconds * 1000)
    t0 = time.perf_counter()
    events = datasets.load(args.dataset, opening_stock=args.opening_stock, limit=args.events)
    _log(f"train: {len(events)} {args.dataset} events; simulating windows of {args.window_seconds} s and sessions ...")
    X, Y, meta = training.build_dataset(events, cfg)
    t_build = time.perf_counter() - t0
    _log(f"train: {len(X)} rows ({meta['items']} items) in {t_build:.0f} s; fitting {args.epochs} epochs ...")
    t1 = time.perf_counter()
    model, report = training.train(X, Y, seed=args.seed, epochs=args.epochs, meta=meta,
                                   test_fraction=args.test_fraction, residual=args.residual)
    t_fit = time.perf_counter() - t1
    desc = args.dataset
    if args.dataset == "instacart":
        desc = (datasets.__doc__ or "").strip().split("\n\n")[1].split(" The timeline is rebuilt")[0]
        desc += " Timeline rebuilt deterministically (see launchpulse.stream.datasets)."
    data = {k: meta[k] for k in ("events", "invalid_events", "outcomes", "closed_windows", "rows",
                                 "rows_dropped_incomplete_labels", "items", "first_event", "last_event", "sessions")}
    doc = {
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "command": "launchpulse train " + " ".join(_argv(args)),
        "seed": args.seed,
        "training_data": {
            "dataset": args.dataset, "description": " ".join(desc.split()),
            "events_limit": args.events, "opening_stock": args.opening_stock,
            "window_ms": cfg.size_ms, "grace_ms": cfg.grace_ms, **data,
            "labels": "units in each of the next 3 windows from accepted orders in the events (batch truth)",
        },
        "training": {"epochs": args.epochs, "loss": "MSE on log1p(units)", "optimizer": "Adam lr 3e-3, cosine",
                     "batch_size": 1024, "torch": torch.__version__, "threads": args.threads,
                     "build_seconds": round(t_build, 1), "fit_seconds": round(t_fit, 1)},
        "evaluation": report,
    }
    weights, meta_json = artifact_bytes(model, doc)
    DemandScorer.from_bytes(weights, meta_json, device="cpu")  # refuse to write what cannot be loaded
    out = Path(args.out) if args.out else default_out()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{ARTIFACT_NAME}.pt").write_bytes(weights)
    (out / f"{ARTIFACT_NAME}.json").write_bytes(meta_json)
    version = json.loads(meta_json)["version"]
    _log(f"train: wrote {out / ARTIFACT_NAME}.pt ({len(weights)} B) and .json ({len(meta_json)} B), "
         f"version {version}, {time.perf_counter() - t0:.0f} s in all")
    print(json.dumps({"version": version, "out": str(out), "training_data": doc["training_data"],
                      "training": doc["training"], "evaluation": report}, indent=1))
    return 0


def _argv(args) -> list[str]:
    out = ["--dataset", args.dataset]
    if args.events:
        out += ["--events", str(args.events)]
    out += ["--seed", str(args.seed), "--epochs", str(args.epochs), "--window-seconds", str(args.window_seconds),
            "--grace-seconds", str(args.grace_seconds)]
    if args.residual:
        out.append("--residual")
    return out


def load_scorer(path: str | Path | None = None, device: str | None = None):
    """A :class:`DemandScorer` from ``path`` (a folder with demand_mlp.pt/.json, or the .json itself);
    None: the bundled artifact. ``device`` None: CUDA when available, else CPU."""
    from launchpulse.models.scorer import DemandScorer, load_default_scorer

    if path is None:
        return load_default_scorer(device=device)
    p = Path(path)
    meta_path = p if p.suffix == ".json" else p / f"{ARTIFACT_NAME}.json"
    weights_path = meta_path.with_suffix(".pt")
    if not meta_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(f"no demand model at {meta_path} / {weights_path}")
    return DemandScorer.from_bytes(weights_path.read_bytes(), meta_path.read_bytes(), device=device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="launchpulse")
    add_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
