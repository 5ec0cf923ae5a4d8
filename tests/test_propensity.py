"""Tests for launchpulse.models.propensity (fast, seeded)."""

from __future__ import annotations

import doctest
import json
import math
import random

import pytest

from launchpulse.models import propensity
from launchpulse.models.propensity import FEATURES, ProgressiveScore, PropensityModel, transform


def synthetic_sessions(n, seed=0):
    """Purchase depends on carts and dwell (and weakly on price); views and
    recency are noise."""
    rng = random.Random(seed)
    for _ in range(n):
        views = rng.randint(1, 30)
        carts = min(views, max(0, int(rng.expovariate(1.0))))
        dwell = rng.lognormvariate(4.0, 1.0)
        price = rng.lognormvariate(3.0, 0.7)
        recency = rng.lognormvariate(8.0, 2.0)
        z = -4.0 + 1.5 * carts + 0.8 * math.log1p(dwell) / 4.0 * 2 - 0.3 * math.log1p(price) / 3.0
        p = 1.0 / (1.0 + math.exp(-z))
        x = {"views": views, "carts": carts, "dwell_s": dwell, "mean_price": price, "recency_s": recency}
        yield x, rng.random() < p


def test_untrained_predicts_prior():
    assert PropensityModel().predict_proba_one({"views": 3, "carts": 1}) == 0.5
    s = ProgressiveScore()
    assert s.auc() is None and s.logloss() is None


def test_progressive_auc_on_synthetic():
    model, score = PropensityModel(), ProgressiveScore()
    for x, y in synthetic_sessions(5000, seed=1):
        score.update(y, model.predict_proba_one(x))
        model.learn_one(x, y)
    assert score.auc() > 0.75
    assert score.logloss() < 0.6
    w = model.weights
    assert w["carts"] > 0.5 and w["carts"] > abs(w["views"]) and w["carts"] > abs(w["recency_s"])


def test_auc_matches_exact_pairwise():
    rng = random.Random(3)
    s = ProgressiveScore()
    pairs = [(rng.random() < 0.4, rng.random()) for _ in range(400)]
    pairs = [(y, min(1.0, max(0.0, p + (0.2 if y else 0.0)))) for y, p in pairs]
    for y, p in pairs:
        s.update(y, p)
    pos = [p for y, p in pairs if y]
    neg = [p for y, p in pairs if not y]
    exact = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))
    assert abs(s.auc() - exact) < 2e-3


def test_round_trip_exact():
    model, score = PropensityModel(), ProgressiveScore()
    data = list(synthetic_sessions(600, seed=2))
    for x, y in data[:300]:
        score.update(y, model.predict_proba_one(x))
        model.learn_one(x, y)
    m2 = PropensityModel.from_state(json.loads(json.dumps(model.to_state())))
    s2 = ProgressiveScore.from_state(json.loads(json.dumps(score.to_state())))
    assert m2.to_state() == model.to_state() and s2.to_state() == score.to_state()
    for x, y in data[300:]:
        p1, p2 = model.predict_proba_one(x), m2.predict_proba_one(x)
        assert p1 == p2
        score.update(y, p1)
        s2.update(y, p2)
        model.learn_one(x, y)
        m2.learn_one(x, y)
    assert score.get() == s2.get()
    assert model.to_state() == m2.to_state()


def test_missing_and_bad_features_are_safe():
    m = PropensityModel()
    for _ in range(5):
        m.learn_one({}, False)
        m.learn_one({"views": None, "carts": float("inf"), "dwell_s": -5}, True)
    p = m.predict_proba_one({"unknown": 1})
    assert 0.0 < p < 1.0
    assert set(transform({})) == set(FEATURES)


def test_state_version_checked():
    with pytest.raises(ValueError):
        PropensityModel.from_state({"version": 2})
    with pytest.raises(ValueError):
        ProgressiveScore.from_state({"version": 0})


def test_doctests():
    res = doctest.testmod(propensity)
    assert res.failed == 0 and res.attempted > 0
