"""Training data and training for :class:`launchpulse.models.scorer.DemandModel` (pure).

Rows: every :class:`ClosedWindow` the :class:`Simulator` yields over the events
(exactly what the worker scores), as :func:`launchpulse.models.features.feature_row`.
The simulator also runs the user sessions (closed by watermark with the window grace,
purchase propensity predicted then learnt, records applied to the items they touched),
so the expected-conversions features are computed as the worker computes them.

Labels: batch truth computed from the events themselves, not from the simulator's
state: an item's units in each of the ``HORIZON`` windows after the row's window,
summed over accepted order lines (an ``order_id`` counts once; an order the
watermark rule refuses as late, ``cfg.is_late`` against the running maximum event
time, is not counted, as the worker would not count it). Windows with no order
are real zeros, whether or not the simulator still closes windows for the item.
Rows whose label windows reach past the last complete window of the data are
dropped (their truth is unknown).

Split: by time. Test rows are windows starting at or after ``cutoff``; training
rows are windows whose every label window ends by ``cutoff`` (rows in between
are an embargo, used by neither), so no training label overlaps the test period.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable

import numpy as np
import torch

from launchpulse.schemas import OrderEvent
from launchpulse.schemas.validate import Invalid, format_ts, validate_event

from .features import FEATURE_NAMES, feature_row
from .scorer import HORIZON, DemandModel
from .sessions import SessionConfig
from .simulate import Simulator
from .windows import WindowConfig

BASELINES = ("last_window", "trend", "mean")
_HAS_SESSIONS = FEATURE_NAMES.index("has_sessions")


def _round(v, nd: int = 6):
    return None if v is None else round(v, nd)


def validated(events: Iterable) -> tuple[list, int]:
    """Validated events (dicts with ``kind`` are validated; Event objects pass); (events, n_invalid)."""
    out, bad = [], 0
    for e in events:
        if isinstance(e, dict):
            try:
                e = validate_event(e["kind"], e, lambda s: s)
            except (Invalid, KeyError):
                bad += 1
                continue
        out.append(e)
    return out, bad


def true_units(events: list, cfg: WindowConfig) -> dict[tuple[str, int], float]:
    """(item_id, window start ms) -> units from accepted orders (first copy of an order_id, not late)."""
    units: dict[tuple[str, int], float] = defaultdict(float)
    seen: set[str] = set()
    watermark = 0
    for ev in events:
        if cfg.is_late(ev.ts_ms, watermark):
            continue
        watermark = max(watermark, ev.ts_ms)
        if type(ev) is not OrderEvent or ev.order_id in seen:
            continue
        seen.add(ev.order_id)
        start = cfg.start_of(ev.ts_ms)
        for line in ev.lines:
            units[(line.item_id, start)] += line.quantity
    return units


def build_dataset(events: Iterable, cfg: WindowConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    """(X float32 (n, len(FEATURE_NAMES)), Y float32 (n, HORIZON) units, meta).

    ``meta``: per row ``item_id`` (list), ``start_ms`` (int64), ``last_units`` (units of the
    row's own window) and ``trend_forecast`` ((n, HORIZON), NaN where the trend model had
    none: what :class:`TrendScorer` would have served); plus counts describing the data
    (``sessions``: closed sessions, the share that ordered, the propensity model's progressive
    AUC, and the share of rows with a session).
    """
    evs, n_invalid = validated(events)
    truth = true_units(evs, cfg)
    size = cfg.size_ms
    last_ts = max((e.ts_ms for e in evs), default=0)
    # The window holding the newest event may be incomplete; the one before it is the last complete one.
    last_complete = cfg.start_of(last_ts) - size
    sim = Simulator(cfg, sessions=SessionConfig(grace_ms=cfg.grace_ms))
    X, Y, items, starts, last_units, trend_fc = [], [], [], [], [], []
    n_closed = 0
    nan3 = [math.nan] * HORIZON
    for cw in sim.run(evs):
        n_closed += 1
        if cw.start_ms + HORIZON * size > last_complete:
            continue
        X.append(feature_row(cw, cfg))
        Y.append([truth.get((cw.item_id, cw.start_ms + k * size), 0.0) for k in range(1, HORIZON + 1)])
        items.append(cw.item_id)
        starts.append(cw.start_ms)
        last_units.append(cw.counts["units"])
        fc = cw.state.trend.forecast(HORIZON)
        trend_fc.append(fc if fc is not None else nan3)
    n = len(X)
    meta = {
        "item_id": items,
        "start_ms": np.asarray(starts, dtype=np.int64),
        "last_units": np.asarray(last_units, dtype=np.float64),
        "trend_forecast": np.asarray(trend_fc, dtype=np.float64).reshape(n, HORIZON),
        "window_ms": size, "grace_ms": cfg.grace_ms,
        "events": len(evs), "invalid_events": n_invalid, "outcomes": dict(sim.outcomes),
        "closed_windows": n_closed, "rows": n, "rows_dropped_incomplete_labels": n_closed - n,
        "first_event": format_ts(evs[0].ts_ms) if evs else None,
        "last_event": format_ts(last_ts) if evs else None,
        "items": len(set(items)),
        "sessions": {
            "closed": sim.sessions_closed,
            "ordered_share": round(sim.sessions_ordered / sim.sessions_closed, 6) if sim.sessions_closed else None,
            "propensity_auc_progressive": _round(sim.propensity_score.auc()),
            "rows_with_sessions": round(float(np.mean([x[_HAS_SESSIONS] for x in X])), 6) if X else None,
        },
    }
    return (np.asarray(X, dtype=np.float32).reshape(n, len(FEATURE_NAMES)),
            np.asarray(Y, dtype=np.float32).reshape(n, HORIZON), meta)


def time_split(starts: np.ndarray, window_ms: int, test_fraction: float = 0.2,
               cutoff_ms: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(train index, test index, cutoff ms). Default cutoff: the window boundary leaving ~test_fraction of rows after it."""
    starts = np.asarray(starts, dtype=np.int64)
    if cutoff_ms is None:
        if not 0.0 < test_fraction < 1.0:
            raise ValueError("test_fraction must be in (0, 1)")
        q = int(np.quantile(starts, 1.0 - test_fraction, method="lower"))
        cutoff_ms = q - q % window_ms
    test = np.flatnonzero(starts >= cutoff_ms)
    # every label window (start+k*size .. start+(k+1)*size, k=1..HORIZON) ends by the cutoff
    train = np.flatnonzero(starts + (HORIZON + 1) * window_ms <= cutoff_ms)
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"time split at {format_ts(cutoff_ms)} leaves {len(train)} training and {len(test)} test rows")
    return train, test, int(cutoff_ms)


def errors(pred: np.ndarray, y: np.ndarray) -> dict:
    """MAE and RMSE in units, per horizon (h1..) and over all horizons."""
    d = np.asarray(pred, dtype=np.float64) - np.asarray(y, dtype=np.float64)
    out = {"mae": {}, "rmse": {}}
    for k in range(d.shape[1]):
        out["mae"][f"h{k + 1}"] = float(np.mean(np.abs(d[:, k])))
        out["rmse"][f"h{k + 1}"] = float(np.sqrt(np.mean(d[:, k] ** 2)))
    out["mae"]["all"] = float(np.mean(np.abs(d)))
    out["rmse"]["all"] = float(np.sqrt(np.mean(d ** 2)))
    return out


def baseline_predictions(meta: dict, idx: np.ndarray, train_idx: np.ndarray, Y: np.ndarray) -> dict[str, np.ndarray]:
    """Naive forecasts for rows ``idx``: last window repeated; the trend model (negatives clipped to 0,
    last window where it has no forecast: what the decisions would see); the training-set mean per horizon."""
    last = np.repeat(meta["last_units"][idx, None], HORIZON, axis=1)
    tf = meta["trend_forecast"][idx]
    has = np.isfinite(tf).all(axis=1)
    trend = np.where(has[:, None], np.clip(np.nan_to_num(tf), 0.0, None), last)
    mean = np.broadcast_to(Y[train_idx].astype(np.float64).mean(axis=0), (len(idx), HORIZON))
    return {"last_window": last, "trend": trend, "mean": mean}


def _predict_units(model: DemandModel, X: np.ndarray, batch: int = 16384) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for i in range(0, len(X), batch):
            out.append(model.units(torch.from_numpy(X[i: i + batch])).numpy())
    return np.concatenate(out) if out else np.zeros((0, HORIZON), np.float32)


def fit(X: np.ndarray, Y: np.ndarray, seed: int = 0, epochs: int = 10, hidden: int = 64, residual: bool = False,
        lr: float = 3e-3, batch_size: int = 1024, weight_decay: float = 0.0) -> tuple[DemandModel, list[float]]:
    """Train on all of (X, Y) (Y in units; loss: MSE on log1p). Reproducible for a seed on one machine."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    T = np.log1p(np.asarray(Y, dtype=np.float32))
    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = DemandModel(n_features=X.shape[1], hidden=hidden, horizon=T.shape[1], residual=residual)
        model.set_normalisation(X.mean(axis=0), X.std(axis=0))
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
        xt, tt = torch.from_numpy(X), torch.from_numpy(T)
        losses = []
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(len(xt), generator=gen)
            total = 0.0
            for i in range(0, len(perm), batch_size):
                b = perm[i: i + batch_size]
                loss = torch.nn.functional.mse_loss(model(xt[b]), tt[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(b)
            sched.step()
            losses.append(total / max(1, len(perm)))
        model.eval()
    finally:
        torch.use_deterministic_algorithms(prev_det)
    return model, losses


def train(X: np.ndarray, Y: np.ndarray, seed: int = 0, epochs: int = 10, *, meta: dict,
          test_fraction: float = 0.2, cutoff_ms: int | None = None, **fit_kw) -> tuple[DemandModel, dict]:
    """Time-split, fit on the earlier windows, evaluate on the later ones against the naive baselines.

    ``meta`` is :func:`build_dataset`'s (row window starts, last-window units, trend forecasts).
    Returns (model, report); the report is JSON-ready.
    """
    tr, te, cutoff = time_split(meta["start_ms"], meta["window_ms"], test_fraction, cutoff_ms)
    model, losses = fit(X[tr], Y[tr], seed=seed, epochs=epochs, **fit_kw)
    y = Y[te]
    preds = {"model": _predict_units(model, X[te]), **baseline_predictions(meta, te, tr, Y)}
    metrics = {name: errors(p, y) for name, p in preds.items()}
    best_base = min(BASELINES, key=lambda b: metrics[b]["mae"]["all"])
    report = {
        "split": {"kind": "time", "cutoff_ms": cutoff, "cutoff": format_ts(cutoff),
                  "train_rows": int(len(tr)), "test_rows": int(len(te)),
                  "embargo_rows": int(len(Y) - len(tr) - len(te)),
                  "train": "windows whose label windows all end by the cutoff",
                  "test": "windows starting at or after the cutoff"},
        "seed": seed, "epochs": epochs, "fit": {k: v for k, v in fit_kw.items()},
        "train_loss_log1p_mse": [round(v, 6) for v in losses],
        "test_truth_mean_units": float(y.mean()), "test_rows_nonzero": float((y.sum(axis=1) > 0).mean()),
        "trend_coverage": float(np.isfinite(meta["trend_forecast"][te]).all(axis=1).mean()),
        "metrics": metrics,
        "baselines": {"last_window": "repeat the row window's units for each horizon",
                      "trend": "TrendScorer's forecast (River trend model), negatives clipped to 0; "
                               "last window where it has no forecast",
                      "mean": "training-set mean units per horizon"},
        "model_vs_last_window_mae": metrics["model"]["mae"]["all"] / max(metrics["last_window"]["mae"]["all"], 1e-12),
        "model_vs_best_baseline_mae": metrics["model"]["mae"]["all"] / max(metrics[best_base]["mae"]["all"], 1e-12),
        "best_baseline_mae": best_base,
    }
    return model, report
