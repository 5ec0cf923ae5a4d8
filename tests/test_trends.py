"""Tests for launchpulse.models.trends (fast: pure Python, seeded)."""

from __future__ import annotations

import doctest
import inspect
import json
import math
import random
import sys

import orjson
import pytest

from launchpulse.models import propensity, trends
from launchpulse.models.propensity import PropensityModel
from launchpulse.models.trends import TrendModel, summarise


def seasonal_series(n, m=7, level=50.0, slope=0.05, amp=5.0, noise=1.0, seed=0, shift_at=None, shift=0.0):
    rng = random.Random(seed)
    out = []
    for t in range(n):
        mu = level + slope * t + (amp * math.sin(2 * math.pi * t / m) if m else 0.0)
        if shift_at is not None and t >= shift_at:
            mu += shift
        out.append(mu + rng.gauss(0.0, noise))
    return out


def trained(m=7, n=80, seed=0, **kw):
    model = TrendModel(season_length=m, **kw)
    for y in seasonal_series(n, m=m, seed=seed):
        model.learn_one(y)
    return model


# ----------------------------------------------------------------- honesty
@pytest.mark.parametrize("m", [0, 7, 12])
def test_untrained_forecast_is_none_not_zero(m):
    model = TrendModel(season_length=m)
    assert model.forecast() is None
    assert model.slope() is None
    assert model.burst() is False
    assert model.is_provisional
    need = 2 * m if m else 3
    ys = seasonal_series(need, m=m)
    for y in ys[:-1]:
        model.learn_one(y)
        assert model.forecast() is None
    model.learn_one(ys[-1])
    f = model.forecast()
    assert f is not None and len(f) == 3 and all(math.isfinite(v) for v in f)
    assert model.n_seen == need
    assert not model.is_provisional


def test_summarise_untrained_and_trained():
    s = summarise(TrendModel(season_length=7))
    assert s == {"forecast": None, "slope": None, "burst": False, "n_windows": 0, "provisional": True, "method": "untrained"}
    s = summarise(trained())
    assert len(s["forecast"]) == 3 and s["slope"] is not None and s["n_windows"] == 80
    assert s["provisional"] is False and s["method"].startswith("ETS(")
    json.dumps(s)


def test_forecast_tracks_trend_and_season():
    m = 7
    model = TrendModel(season_length=m, horizon=m)
    ys = seasonal_series(140, m=m, slope=0.5, noise=0.5, seed=3)
    for y in ys:
        model.learn_one(y)
    truth = [50.0 + 0.5 * t + 5.0 * math.sin(2 * math.pi * t / m) for t in range(140, 147)]
    f = model.forecast()
    assert max(abs(a - b) for a, b in zip(f, truth)) < 3.0
    assert 0.3 < model.slope() < 0.7


def test_bad_inputs():
    with pytest.raises(ValueError):
        TrendModel(horizon=0)
    with pytest.raises(TypeError):
        TrendModel(not_a_param=1)
    with pytest.raises(ValueError):
        TrendModel().learn_one(float("nan"))
    with pytest.raises(ValueError):
        TrendModel.from_state({"version": 99})


def test_negative_values_disable_log_candidates():
    model = TrendModel(season_length=0)
    for y in [-1.0, 2.0, -3.0, 4.0, 0.5, -0.5, 1.0]:
        model.learn_one(y)
    assert model.forecast() is not None
    assert all(c[0] == 0 for c in model.to_state()["cands"])


# ------------------------------------------------------------- round trips
def test_round_trip_exact_mid_stream():
    model = TrendModel(season_length=7)
    ys = seasonal_series(120, m=7, seed=5, shift_at=90, shift=10.0)
    # includes states in the init buffer, just after init, and after a burst
    for i, y in enumerate(ys):
        model.learn_one(y)
        if i in (3, 13, 14, 60, 91, 119):
            st = json.loads(json.dumps(model.to_state()))
            assert st["version"] == 2
            clone = TrendModel.from_state(st)
            assert clone.to_state() == model.to_state()
            assert clone.forecast(5) == model.forecast(5)
            assert clone.slope() == model.slope() and clone.burst() == model.burst()
            # and they stay identical when fed the same future
            a, b = TrendModel.from_state(st), TrendModel.from_state(st)
            for y2 in ys[i + 1 : i + 20]:
                a.learn_one(y2)
                b.learn_one(y2)
            assert a.forecast() == b.forecast()


# ------------------------------------------------------------------ bursts
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("shift", [6.0, -6.0])
def test_burst_flagged_within_two_windows(seed, shift):
    model = TrendModel(season_length=7)
    shift_at = 150
    ys = seasonal_series(200, m=7, seed=seed, shift_at=shift_at, shift=shift)
    flagged_at = None
    for t, y in enumerate(ys):
        model.learn_one(y)
        if model.burst() and t >= shift_at and flagged_at is None:
            flagged_at = t
    assert flagged_at is not None and flagged_at - shift_at + 1 <= 2


def test_no_burst_on_stationary_noisy_series():
    """Stationary (seasonal + noise) series: the false-alarm rate stays under
    the 1 per 100 windows target (measured ~0.1-0.2 in bench/trend_eval.py).
    A zero-alarm guarantee is not possible for a detector that must also flag
    a 5-sd shift within 2 windows, so the rate is what is asserted."""
    alarms = windows = 0
    for seed in range(10):
        model = TrendModel(season_length=7)
        for y in seasonal_series(300, m=7, seed=100 + seed, noise=2.0):
            model.learn_one(y)
            alarms += model.burst()
        windows += 300 - 2 * 7
    assert 100.0 * alarms / windows < 1.0


def test_quiet_series_has_no_burst():
    model = TrendModel(season_length=7)
    for y in seasonal_series(150, m=7, seed=1, noise=2.0):
        model.learn_one(y)
        assert not model.burst()


def test_lone_outlier_rarely_fires_and_does_not_move_level():
    fired = 0
    for seed in range(40):
        model = TrendModel(season_length=7)
        ys = seasonal_series(120, m=7, seed=seed)
        ys[100] += 40.0
        for t, y in enumerate(ys):
            model.learn_one(y)
            if t >= 100 and model.burst():
                fired += 1
                break
    # can only fire when the window before was itself > confirm_z (1.5) sd off
    # in the same direction; measured ~17% in bench conditions
    assert fired <= 10
    # winsorised learning: the forecast after the outlier stays near the truth
    model = TrendModel(season_length=7)
    ys = seasonal_series(121, m=7, seed=3)
    ys[100] += 40.0
    for y in ys[:101]:
        model.learn_one(y)
    truth = 50 + 0.05 * 101 + 5 * math.sin(2 * math.pi * 101 / 7)
    assert abs(model.forecast(1)[0] - truth) < 4.0


# -------------------------------------------------------------- cold start
def test_from_prior_is_provisional_and_scaled():
    priors = [trained(seed=s).to_state() for s in range(3)]
    new = TrendModel.from_prior(priors, weights=[1.0, 2.0, 1.0])
    assert new.is_provisional and new.n_seen == 0
    f0 = new.forecast()
    assert f0 is not None and all(40 < v < 70 for v in f0)
    # a new product selling at ~1/10 of its category: rescaled on first window
    # priors ended at t=80, so the new series' clock starts at t=80
    truth = [0.1 * (50 + 0.05 * t + 5 * math.sin(2 * math.pi * t / 7)) for t in range(80, 120)]
    new.learn_one(truth[0])
    assert new.is_provisional
    f = new.forecast(3)
    assert all(abs(a - b) < 0.15 * b for a, b in zip(f, truth[1:4]))
    for y in truth[1:14]:
        new.learn_one(y)
    assert not new.is_provisional  # min_history = 2*7 own windows
    # provisional model round-trips too
    st = TrendModel.from_prior(priors).to_state()
    assert TrendModel.from_state(json.loads(json.dumps(st))).forecast() == TrendModel.from_state(st).forecast()


@pytest.mark.parametrize("m", [0, 7])
def test_copies_of_a_seed_learn_as_fresh_builds_and_apart(m):
    """PriorSeeds hands out copies of one model built from a prior: each copy must learn exactly as a
    model built afresh from that prior, and what one copy learns must not reach the seed or another
    copy (its candidates, seasonals, buffer and forecast cache are its own)."""
    from launchpulse.models.trends import PriorSeeds

    prior = trained(m=m, n=40).to_state()
    seeds = PriorSeeds()
    rng = random.Random(m)
    for round_ in range(3):
        copy_, fresh = seeds.model(prior, 0.2), TrendModel.from_prior([prior], scale=0.2)
        assert copy_.state_json() == fresh.state_json() == orjson.dumps(fresh.to_state())
        copy_.forecast(5)  # fill the forecast cache before learning
        for _ in range(12 + round_):
            y = rng.uniform(0.0, 20.0)
            copy_.learn_one(y)
            fresh.learn_one(y)
            assert copy_.to_state() == fresh.to_state() and copy_.forecast(4) == fresh.forecast(4)
        assert copy_.state_json() == fresh.state_json()
    # another prior document (even an equal one) is another seed
    assert seeds.model(dict(prior), 0.2).to_state() == TrendModel.from_prior([prior], scale=0.2).to_state()
    assert seeds.model(prior, 0.3).to_state() == TrendModel.from_prior([prior], scale=0.3).to_state()


def test_from_prior_with_only_untrained_priors_is_honest():
    new = TrendModel.from_prior([TrendModel(season_length=7).to_state()])
    assert new.forecast() is None and new.is_provisional


# ------------------------------------------------ River-style contract test
def _estimator_classes():
    found = []
    for mod in (trends, propensity):
        for _, obj in inspect.getmembers(mod, inspect.isclass):
            if obj.__module__ == mod.__name__ and hasattr(obj, "learn_one"):
                found.append(obj)
    return found


def _drive_trend(model, rng):
    for t in range(40):
        model.learn_one(50 + 5 * math.sin(t) + rng.gauss(0, 1))
    return lambda mm: (mm.forecast(), mm.forecast(5), mm.predict_one(), mm.slope(), mm.burst(), mm.n_seen)


def _drive_propensity(model, rng):
    for _ in range(200):
        x = {"views": rng.randint(0, 20), "carts": rng.randint(0, 3), "dwell_s": rng.random() * 600}
        model.learn_one(x, rng.random() < 0.1 + 0.2 * x["carts"])
    probe = [{"views": v, "carts": c, "dwell_s": 60.0 * v, "mean_price": 20.0, "recency_s": 3600} for v in range(5) for c in range(3)]
    return lambda mm: [mm.predict_proba_one(x) for x in probe]


CONTRACT = {
    TrendModel: (lambda: TrendModel(season_length=4), _drive_trend, lambda m, rng: m.learn_one(rng.gauss(50, 1))),
    PropensityModel: (PropensityModel, _drive_propensity, lambda m, rng: m.learn_one({"views": 3, "carts": 1}, True)),
}


def test_contract_covers_every_estimator():
    assert set(_estimator_classes()) == set(CONTRACT)


@pytest.mark.parametrize("cls", list(CONTRACT), ids=lambda c: c.__name__)
def test_river_style_contract(cls):
    factory, drive, step = CONTRACT[cls]
    rng = random.Random(1)
    model = factory()
    assert callable(model.learn_one) and callable(model.to_state) and callable(cls.from_state)
    out = drive(model, rng)
    st = model.to_state()
    assert st["version"] == sys.modules[cls.__module__].STATE_VERSION
    raw = json.dumps(st)  # JSON-serialisable, no pickles
    clone = cls.from_state(json.loads(raw))
    assert out(clone) == out(model)
    assert clone.to_state() == st
    # identical after further identical learning
    r1, r2 = random.Random(7), random.Random(7)
    for _ in range(10):
        step(model, r1)
        step(clone, r2)
    assert out(clone) == out(model)


def test_doctests():
    for mod in (trends,):
        res = doctest.testmod(mod)
        assert res.failed == 0 and res.attempted > 0
