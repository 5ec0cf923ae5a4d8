"""Tests for the demand scorer (models/scorer.py) and its training (models/training.py). Fast: small synthetic data."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from launchpulse.models import training
from launchpulse.models.features import FEATURE_NAMES, FEATURE_SCHEMA_VERSION
from launchpulse.models.scorer import (HORIZON, ArtifactError, DemandModel, DemandScorer, TrendScorer,
                                       artifact_bytes, load_default_scorer)
from launchpulse.models.windows import WindowConfig

DAY = 86_400_000
T0 = 1_790_000_000_000 - 1_790_000_000_000 % DAY  # a day boundary in 2026
CFG = WindowConfig(size_ms=DAY, grace_ms=3_600_000)
N_ITEMS, N_DAYS = 16, 70


def synthetic_units(i: int, d: int) -> int:
    """Learnable: each item alternates between a busy day (its own level) and a quiet one."""
    level = 2 + i % 7
    return level if (d + i) % 2 == 0 else (1 if i % 3 == 0 else 0)


def synthetic_events() -> list[dict]:
    evs = []
    for d in range(N_DAYS):
        for i in range(N_ITEMS):
            item = f"item-{i}"
            ts = T0 + d * DAY + 3_600_000 + i * 60_000
            evs.append({"kind": "clickstream", "event_id": f"v-{d}-{i}", "ts": ts - 30_000, "user_id": "u",
                        "session_id": f"s-{d}-{i}", "event_type": "view", "item_id": item})
            q = synthetic_units(i, d)
            if q:
                evs.append({"kind": "order", "order_id": f"o-{d}-{i}", "ts": ts, "user_id": "u",
                            "items": [{"item_id": item, "quantity": q, "price": 1.0}]})
                # a duplicate delivery of the same order must not count twice in the labels
                evs.append({"kind": "order", "order_id": f"o-{d}-{i}", "ts": ts, "user_id": "u",
                            "items": [{"item_id": item, "quantity": q, "price": 1.0}]})
    evs.sort(key=lambda e: e["ts"])
    return evs


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny batches: more threads only add synchronisation (on a busy 2-core machine, 30x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset(one_thread):
    return training.build_dataset(synthetic_events(), CFG)


@pytest.fixture(scope="module")
def trained(dataset):
    X, Y, meta = dataset
    return training.train(X, Y, seed=0, epochs=40, meta=meta, test_fraction=0.25, batch_size=128)


def test_dataset_labels_are_batch_truth(dataset):
    X, Y, meta = dataset
    assert X.shape == (len(Y), len(FEATURE_NAMES)) and Y.shape[1] == HORIZON and len(Y) > 500
    assert np.isfinite(X).all()
    for r in range(0, len(Y), 37):
        i = int(meta["item_id"][r].split("-")[1])
        d = (int(meta["start_ms"][r]) - T0) // DAY
        assert meta["last_units"][r] == synthetic_units(i, d)
        assert Y[r].tolist() == [synthetic_units(i, d + k) for k in range(1, HORIZON + 1)]
    # no row's labels reach past the data
    assert (meta["start_ms"] + HORIZON * DAY <= T0 + (N_DAYS - 2) * DAY).all()


def test_dataset_carries_expected_conversions(dataset):
    """The training replay closes the sessions like the worker: each item-day's one session (a view, its user
    orders within the gap) reaches the item before that day's window closes, so every row has exactly one."""
    X, _, meta = dataset
    i, h = FEATURE_NAMES.index("log_expected_conversions"), FEATURE_NAMES.index("has_sessions")
    s = meta["sessions"]
    assert s["closed"] == (N_DAYS - 1) * N_ITEMS  # the last day's sessions are still open at the end
    assert s["ordered_share"] == 1.0 and s["rows_with_sessions"] == 1.0
    ec = np.expm1(X[:, i].astype(np.float64))
    assert (X[:, h] == 1.0).all() and ((ec > 0.0) & (ec < 1.0)).all()  # one session a row, pp in (0, 1)


def test_time_split_has_no_leakage(dataset):
    X, Y, meta = dataset
    tr, te, cutoff = training.time_split(meta["start_ms"], DAY, 0.25)
    assert cutoff % DAY == 0
    assert (meta["start_ms"][te] >= cutoff).all()
    assert (meta["start_ms"][tr] + (HORIZON + 1) * DAY <= cutoff).all()


def test_reproducible_with_seed(dataset):
    X, Y, _ = dataset
    m1, l1 = training.fit(X, Y, seed=3, epochs=2, batch_size=256)
    m2, l2 = training.fit(X, Y, seed=3, epochs=2, batch_size=256)
    m3, _ = training.fit(X, Y, seed=4, epochs=2, batch_size=256)
    assert l1 == l2
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.from_numpy(X[:50])
    assert torch.equal(m1.units(x), m2.units(x))
    assert not torch.equal(m1.units(x), m3.units(x))


def test_beats_last_window_on_learnable_pattern(trained):
    _, report = trained
    m = report["metrics"]
    assert m["model"]["mae"]["all"] < 0.5 * m["last_window"]["mae"]["all"]
    assert m["model"]["rmse"]["all"] < 0.5 * m["last_window"]["rmse"]["all"]
    assert m["model"]["mae"]["all"] < m["mean"]["mae"]["all"]
    for name in ("model", "last_window", "trend", "mean"):
        assert set(m[name]["mae"]) == {"h1", "h2", "h3", "all"} == set(m[name]["rmse"])
    json.dumps(report)


def test_artifact_round_trip_and_predictions(trained, dataset):
    model, report = trained
    X, _, _ = dataset
    weights, meta_json = artifact_bytes(model, {"seed": 0, "evaluation": report,
                                                "training_data": {"dataset": "synthetic"}})
    s1 = DemandScorer.from_bytes(weights, meta_json, device="cpu")
    s2 = DemandScorer.from_bytes(weights, meta_json, device="cpu", batch_size=7)  # several batches
    assert re.fullmatch(r"demand-mlp-[0-9a-f]{12}", s1.version) and s1.version == s2.version
    assert s1.device == "cpu"
    rows = X[:100].tolist()
    p1, p2 = s1.predict(rows, []), s2.predict(np.asarray(rows), [])
    assert p1 == DemandScorer.from_bytes(weights, meta_json, device="cpu").predict(np.asarray(rows), [])
    np.testing.assert_allclose(p1, p2, rtol=1e-5, atol=1e-6)  # other batch shapes: other GEMM kernels
    assert len(p1) == 100 and all(len(p) == HORIZON for p in p1)
    with torch.inference_mode():
        direct = model.units(torch.from_numpy(X[:100])).numpy()
    np.testing.assert_allclose(np.asarray(p1, dtype=np.float32), direct, rtol=1e-5, atol=1e-6)
    arr = s1.predict_array(X)
    assert arr.shape == (len(X), HORIZON) and (arr >= 0).all()
    assert s1.predict([], []) == []
    bad = [list(rows[0])]
    bad[0][0] = float("nan")
    out = s1.predict(bad + rows[:1], [])
    assert out[0] is None and np.allclose(out[1], p1[0], rtol=1e-5)
    # weights from another run are refused
    other, _ = training.fit(X[:64], np.zeros((64, HORIZON), np.float32), seed=1, epochs=1)
    with pytest.raises(ArtifactError, match="hash"):
        DemandScorer.from_bytes(artifact_bytes(other, {})[0], meta_json)


def test_non_negative_on_extreme_rows():
    torch.manual_seed(0)
    model = DemandModel()
    s = DemandScorer.from_bytes(*artifact_bytes(model, {}), device="cpu")
    x = np.random.default_rng(0).normal(0, 50, size=(333, len(FEATURE_NAMES))).astype(np.float32)
    p = s.predict_array(x)
    assert p.shape == (333, HORIZON) and (p >= 0).all() and np.isfinite(p).all()


@pytest.mark.parametrize("change", ["version", "names", "order", "horizon", "format"])
def test_schema_mismatch_raises(change):
    weights, meta_json = artifact_bytes(DemandModel(), {})
    meta = json.loads(meta_json)
    if change == "version":
        meta["feature_schema_version"] = FEATURE_SCHEMA_VERSION + 1
    elif change == "names":
        meta["feature_names"] = meta["feature_names"][:-1]
    elif change == "order":
        meta["feature_names"][0], meta["feature_names"][1] = meta["feature_names"][1], meta["feature_names"][0]
    elif change == "horizon":
        meta["horizon"] = HORIZON + 1
    else:
        meta["format"] = "something-else"
    with pytest.raises(ArtifactError, match="feature|horizon|format"):
        DemandScorer.from_bytes(weights, json.dumps(meta))


def test_previous_feature_schema_is_refused_with_a_clear_error():
    """An artifact of schema v1 (19 columns, before the expected-conversions features) cannot be served."""
    assert FEATURE_SCHEMA_VERSION == 2 and FEATURE_NAMES[-2:] == ("log_expected_conversions", "has_sessions")
    weights, meta_json = artifact_bytes(DemandModel(n_features=len(FEATURE_NAMES) - 2), {"version": "demand-mlp-old"})
    meta = json.loads(meta_json)
    meta["feature_schema_version"], meta["feature_names"] = 1, list(FEATURE_NAMES[:-2])
    with pytest.raises(ArtifactError, match=r"trained on feature schema v1, this code builds v2; retrain it"):
        DemandScorer.from_bytes(weights, json.dumps(meta))
    # the right version with the old columns is refused too (names checked, not only the number)
    meta["feature_schema_version"] = FEATURE_SCHEMA_VERSION
    with pytest.raises(ArtifactError, match=r"feature names differ .*19 vs 21 columns"):
        DemandScorer.from_bytes(weights, json.dumps(meta))


def test_trend_scorer_unchanged():
    assert TrendScorer.version == "trend-v1" and TrendScorer().predict([], []) == []


def test_bundled_artifact():
    s = load_default_scorer(device="cpu")
    meta = s.meta
    assert re.fullmatch(r"demand-mlp-[0-9a-f]{12}", s.version)
    assert meta["feature_schema_version"] == FEATURE_SCHEMA_VERSION and tuple(meta["feature_names"]) == FEATURE_NAMES
    assert meta["training_data"]["dataset"] == "instacart"
    assert meta["training_data"]["window_ms"] == 86_400_000 and meta["training_data"]["grace_ms"] == 3_600_000
    assert isinstance(meta["seed"], int)
    ev = meta["evaluation"]["metrics"]
    assert ev["model"]["mae"]["all"] < ev["last_window"]["mae"]["all"]
    assert ev["model"]["rmse"]["all"] < ev["last_window"]["rmse"]["all"]
    p = s.predict([[0.0] * len(FEATURE_NAMES)] * 3, [])
    assert len(p) == 3 and all(len(r) == HORIZON and min(r) >= 0 for r in p)


def test_a_rows_prediction_does_not_depend_on_its_batch():
    """The same row gives the same bits alone, in a small batch or in a large one (same replay, same
    signals): tiny batches would otherwise take another CPU kernel that rounds differently."""
    s = load_default_scorer(device="cpu")
    x = np.random.default_rng(3).random((600, len(FEATURE_NAMES))).astype(np.float32) * 3
    full = s.predict_array(x)
    for start, n in ((0, 1), (7, 2), (100, 7), (3, 63), (0, 64), (5, 65), (11, 500)):
        assert np.array_equal(s.predict_array(x[start:start + n]), full[start:start + n]), (start, n)
