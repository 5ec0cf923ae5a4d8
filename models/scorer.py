"""Demand scorers: predict each item's units over the next windows from feature rows.

``TrendScorer`` is the fallback used when no trained model is configured: it
returns the River trend model's forecast (or, for a series too short to have
one, nothing: the decisions then do not judge stock).

``DemandScorer`` is the trained PyTorch scorer: a small MLP over the versioned
feature row (:data:`launchpulse.models.features.FEATURE_NAMES`) predicting
``log1p(units)`` for each of the next :data:`HORIZON` windows. It is loaded from
an artifact: the weights (a ``state_dict`` saved with ``torch.save``) and a JSON
metadata document (feature schema, normalisation, version, training data, seed,
evaluation). ``launchpulse train`` writes artifacts; the bundled one lives in
``models/artifacts/`` and is read with :mod:`importlib.resources`.

Every scorer has the same interface: ``version: str``, ``device: str`` and
``predict(rows, windows) -> list[list[float] | None]`` (predicted units for the
next ``HORIZON`` windows, one entry per row). The worker calls ``predict`` from
one executor thread; thread counts (``torch.set_num_threads``) are the caller's
choice.
"""
from __future__ import annotations

import hashlib
import io
import json
from importlib import resources

import numpy as np
import torch

from .features import FEATURE_NAMES, FEATURE_SCHEMA_VERSION
from .itemstate import ClosedWindow

HORIZON = 3

ARTIFACT_FORMAT = "launchpulse-demand-mlp"
ARTIFACT_FORMAT_VERSION = 1
DEFAULT_ARTIFACT = "demand_mlp"  # models/artifacts/demand_mlp.json + demand_mlp.pt
BASE_FEATURE = "log_units"  # residual models add their output to this column (last window, log1p)


class TrendScorer:
    version = "trend-v1"
    device = "cpu"

    def predict(self, rows: list[list[float]], windows: list[ClosedWindow]) -> list[list[float] | None]:
        return [(cw.trend_forecast or [])[:HORIZON] or None for cw in windows]


class ArtifactError(ValueError):
    """An artifact that this code cannot serve (wrong format, feature schema, or corrupt weights)."""


class DemandModel(torch.nn.Module):
    """MLP: feature row -> log1p(units) for each of the next ``horizon`` windows.

    Normalisation (training-set mean/std of each feature) is held in buffers, so
    the module takes raw feature rows. With ``residual`` the network predicts the
    change over the last window's ``log1p(units)`` (the :data:`BASE_FEATURE` column).
    """

    def __init__(self, n_features: int = len(FEATURE_NAMES), hidden: int = 64, horizon: int = HORIZON,
                 residual: bool = False, base_index: int = FEATURE_NAMES.index(BASE_FEATURE)):
        super().__init__()
        self.n_features, self.hidden, self.horizon = n_features, hidden, horizon
        self.residual, self.base_index = bool(residual), int(base_index)
        self.register_buffer("x_mean", torch.zeros(n_features))
        self.register_buffer("x_std", torch.ones(n_features))
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n_features, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, horizon),
        )

    def set_normalisation(self, mean, std) -> None:
        mean = torch.as_tensor(np.asarray(mean, dtype=np.float32))
        std = torch.as_tensor(np.asarray(std, dtype=np.float32))
        self.x_mean.copy_(mean)
        self.x_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted log1p(units), unclamped (the training target space)."""
        out = self.net((x - self.x_mean) / self.x_std)
        if self.residual:
            out = out + x[:, self.base_index: self.base_index + 1]
        return out

    def units(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted units, >= 0."""
        return torch.expm1(self.forward(x).clamp_min(0.0))


def weights_sha256(model: torch.nn.Module) -> str:
    """Hash of the parameters and buffers (names, shapes, float32 bytes), independent of the file format."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        a = t.detach().to("cpu", torch.float32).contiguous().numpy()
        h.update(name.encode())
        h.update(str(tuple(a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def model_version(model: torch.nn.Module) -> str:
    return "demand-mlp-" + weights_sha256(model)[:12]


def architecture(model: DemandModel) -> dict:
    return {"n_features": model.n_features, "hidden": model.hidden, "horizon": model.horizon,
            "residual": model.residual, "base_feature": BASE_FEATURE if model.residual else None,
            "layers": [model.n_features, model.hidden, model.hidden, model.horizon],
            "target": "log1p(units) per window", "output": "expm1(max(0, output)) units"}


def artifact_bytes(model: DemandModel, meta: dict) -> tuple[bytes, bytes]:
    """(weights, metadata JSON) for a trained model; ``meta`` adds training data, seed, evaluation, ..."""
    buf = io.BytesIO()
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save(state, buf)
    doc = {
        "format": ARTIFACT_FORMAT, "format_version": ARTIFACT_FORMAT_VERSION,
        "version": model_version(model), "weights_sha256": weights_sha256(model),
        "feature_schema_version": FEATURE_SCHEMA_VERSION, "feature_names": list(FEATURE_NAMES),
        "horizon": model.horizon, "architecture": architecture(model),
        "normalisation": {"mean": [float(v) for v in model.x_mean], "std": [float(v) for v in model.x_std]},
        **{k: v for k, v in meta.items() if k not in ("version", "weights_sha256", "feature_names",
                                                      "feature_schema_version", "normalisation")},
    }
    return buf.getvalue(), (json.dumps(doc, indent=1, sort_keys=False) + "\n").encode()


def check_metadata(meta: dict) -> None:
    """Raise :class:`ArtifactError` unless the artifact matches this code's feature schema and horizon."""
    if meta.get("format") != ARTIFACT_FORMAT or meta.get("format_version") != ARTIFACT_FORMAT_VERSION:
        raise ArtifactError(f"not a {ARTIFACT_FORMAT} v{ARTIFACT_FORMAT_VERSION} artifact: "
                            f"format={meta.get('format')!r} v{meta.get('format_version')!r}")
    if meta.get("feature_schema_version") != FEATURE_SCHEMA_VERSION:
        raise ArtifactError(f"artifact {meta.get('version')!r} was trained on feature schema "
                            f"v{meta.get('feature_schema_version')!r}, this code builds v{FEATURE_SCHEMA_VERSION}; "
                            "retrain it with `launchpulse train`")
    names = tuple(meta.get("feature_names") or ())
    if names != FEATURE_NAMES:
        diff = [f"{i}: {a!r} != {b!r}" for i, (a, b) in enumerate(zip(names, FEATURE_NAMES)) if a != b]
        raise ArtifactError(f"artifact {meta.get('version')!r} feature names differ from FEATURE_NAMES "
                            f"({len(names)} vs {len(FEATURE_NAMES)} columns; {'; '.join(diff[:3]) or 'length differs'}); "
                            "retrain it with `launchpulse train`")
    if meta.get("horizon") != HORIZON:
        raise ArtifactError(f"artifact horizon {meta.get('horizon')!r} != HORIZON {HORIZON}")


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


MIN_BATCH_ROWS = 64  # see DemandScorer.predict_array


class DemandScorer:
    """The trained MLP behind the scorer interface. ``device=None``: CUDA when available, else CPU."""

    def __init__(self, model: DemandModel, meta: dict, device: str | torch.device | None = None,
                 batch_size: int = 16384):
        self.device = str(resolve_device(device))
        self._device = torch.device(self.device)
        self.model = model.to(self._device).eval()
        self.meta = meta
        self.version: str = meta.get("version") or model_version(model)
        self.batch_size = int(batch_size)

    @classmethod
    def from_bytes(cls, weights: bytes, meta_json: bytes | str, device: str | torch.device | None = None,
                   **kw) -> "DemandScorer":
        meta = json.loads(meta_json)
        check_metadata(meta)
        state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
        a = meta["architecture"]
        model = DemandModel(n_features=a["n_features"], hidden=a["hidden"], horizon=a["horizon"],
                            residual=a["residual"])
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ArtifactError(f"artifact {meta.get('version')!r}: weights do not fit its architecture: {e}") from None
        got = weights_sha256(model)
        if meta.get("weights_sha256") and got != meta["weights_sha256"]:
            raise ArtifactError(f"artifact {meta.get('version')!r}: weights hash {got[:12]} does not match "
                                f"the metadata's {meta['weights_sha256'][:12]} (weights and JSON from different runs?)")
        return cls(model, meta, device=device, **kw)

    def predict_array(self, x: np.ndarray) -> np.ndarray:
        """(n, len(FEATURE_NAMES)) float array -> (n, HORIZON) float32 predicted units (>= 0)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.model.n_features:
            raise ValueError(f"feature rows must be (n, {self.model.n_features}), got {x.shape}")
        n = x.shape[0]
        if n < MIN_BATCH_ROWS:
            # A row's prediction must not depend on what it was batched with (the same replay gives the
            # same signals): on CPU, a handful of rows take another matrix kernel, whose sums round
            # differently (up to ~1e-5 here); padded to MIN_BATCH_ROWS they take the same one as any batch.
            x = np.concatenate([x, np.zeros((MIN_BATCH_ROWS - n, x.shape[1]), dtype=np.float32)])
        out = np.empty((x.shape[0], self.model.horizon), dtype=np.float32)
        with torch.inference_mode():
            for i in range(0, x.shape[0], self.batch_size):
                xb = torch.from_numpy(x[i: i + self.batch_size]).to(self._device, non_blocking=True)
                out[i: i + self.batch_size] = self.model.units(xb).cpu().numpy()
        return out[:n]

    def predict(self, rows, windows: list[ClosedWindow] | None = None) -> list[list[float] | None]:
        """Predicted units for the next HORIZON windows per row; None for a row with non-finite features."""
        if len(rows) == 0:
            return []
        x = np.asarray(rows, dtype=np.float32)
        ok = np.isfinite(x).all(axis=1)
        if not ok.all():
            x = np.where(ok[:, None], x, 0.0).astype(np.float32)
        preds = self.predict_array(x).tolist()
        if not ok.all():
            preds = [p if good else None for p, good in zip(preds, ok.tolist())]
        return preds


def load_default_scorer(device: str | torch.device | None = None, name: str = DEFAULT_ARTIFACT) -> DemandScorer:
    """The bundled artifact (package data ``launchpulse.models/artifacts``); FileNotFoundError if absent."""
    base = resources.files("launchpulse.models").joinpath("artifacts")
    meta_res, weights_res = base.joinpath(name + ".json"), base.joinpath(name + ".pt")
    if not (meta_res.is_file() and weights_res.is_file()):
        raise FileNotFoundError(f"no bundled demand model {name}.json/.pt in launchpulse.models/artifacts; "
                                "train one with `launchpulse train`")
    return DemandScorer.from_bytes(weights_res.read_bytes(), meta_res.read_bytes(), device=device)
