"""accelerate_cadence, slow_cadence and homogeneity_warning (models/decisions.py): rules, memory, signal shape."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jsonschema
import pytest
from launchpulse.models.associations import ItemAssociations
from launchpulse.models.decisions import (
    CADENCE_MODEL_VERSION,
    HOMOGENEITY_MODEL_VERSION,
    CategoryEvidence,
    Evidence,
    SignalMemory,
    Thresholds,
    decide_category,
    decide_homogeneity,
    neighbourhood_evidence,
)

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "schemas" / "launch_signal.json").read_text())
DAY = 86_400_000
T0 = 1_790_812_800_000


def _valid(sig: dict) -> None:
    jsonschema.Draft202012Validator(SCHEMA).validate(sig)
    json.dumps(sig, allow_nan=False)
    assert "user" not in json.dumps(sig)


def _cat(w: int = 30, **kw) -> CategoryEvidence:
    base = {"category_id": "cat-1", "window_start": T0 + w * DAY, "window_end": T0 + (w + 1) * DAY, "window_ms": DAY,
            "launches_window": 1, "launches_recent": 4, "launches_prior": 1, "units": 150.0, "views": 30.0,
            "units_recent_mean": 150.0, "units_prior_mean": 150.0, "demand_growth": 1.0, "new_share": 0.0,
            "new_units_recent": 0.0, "established_recent_mean": 150.0, "established_prior_mean": 150.0,
            "established_change": 0.0, "new_gain": None, "cannibal_ratio": None, "demand_slope": 0.0,
            "new_items_active": 4, "own_windows": 40, "launches_settled": 4}
    base.update(kw)
    return CategoryEvidence(**base)


GROWING = {"units_recent_mean": 190.0, "demand_growth": 1.27, "new_share": 0.22, "new_gain": 40.0,
           "cannibal_ratio": 0.05, "established_change": -0.01, "demand_slope": 1.5}
CANNIBAL = {"demand_growth": 1.0, "new_share": 0.3, "new_gain": 30.0, "cannibal_ratio": 1.0, "established_change": -0.25}
FLOP = {"demand_growth": 1.01, "new_share": 0.001, "new_gain": 0.1, "cannibal_ratio": None}


def test_accelerate_when_launches_add_demand():
    [sig] = decide_category(_cat(**GROWING), SignalMemory(), CADENCE_MODEL_VERSION)
    _valid(sig)
    assert sig["type"] == "accelerate_cadence" and sig["subject"] == {"category_id": "cat-1"}
    assert sig["evidence"]["cadence"] == "accelerate" and 0 < sig["score"] < 1
    assert sig["model_version"] == CADENCE_MODEL_VERSION and sig["reasons"]


@pytest.mark.parametrize("change", [
    {"demand_growth": 1.1},  # not rising enough
    {"demand_slope": -0.1},  # the trend disagrees
    {"new_share": 0.05},  # launches take too little of it
    {"cannibal_ratio": 0.5},  # half of what they sell is taken from established items
    {"launches_recent": 2},  # too few launches to judge
    {"units_recent_mean": 3.0},  # too thin
    {"own_windows": 10},  # too little history
])
def test_accelerate_needs_every_condition(change):
    assert decide_category(_cat(**{**GROWING, **change}), SignalMemory(), "v") == []


def test_slow_when_launches_cannibalise_or_do_not_sell():
    [sig] = decide_category(_cat(**CANNIBAL), SignalMemory(), "v")
    _valid(sig)
    assert sig["type"] == "slow_cadence" and sig["evidence"]["reason"] == "cannibalisation"
    [sig] = decide_category(_cat(**FLOP), SignalMemory(), "v")
    _valid(sig)
    assert sig["type"] == "slow_cadence" and sig["evidence"]["reason"] == "no_uptake"
    # rising demand, a falling launch rate, a moderate cannibal ratio, or launches too young: no slow signal
    for change in ({"demand_growth": 1.2}, {"launches_prior": 6}, {"cannibal_ratio": 0.5}):
        assert decide_category(_cat(**{**CANNIBAL, **change}), SignalMemory(), "v") == []
    assert decide_category(_cat(**{**FLOP, "launches_settled": 2}), SignalMemory(), "v") == []


def test_cadence_hysteresis_and_deterministic_ids():
    th = Thresholds()
    mem = SignalMemory()
    first = decide_category(_cat(30, **GROWING), mem, "v")
    assert len(first) == 1
    # while the condition holds it is repeated only every reminder_windows
    assert all(decide_category(_cat(w, **GROWING), mem, "v") == [] for w in range(31, 30 + th.reminder_windows))
    assert len(decide_category(_cat(30 + th.reminder_windows, **GROWING), mem, "v")) == 1
    # the opposite signal waits opposite_hold_windows after the last one
    mem = SignalMemory()
    decide_category(_cat(30, **GROWING), mem, "v")
    decide_category(_cat(31), mem, "v")  # the condition stops
    assert decide_category(_cat(30 + th.opposite_hold_windows - 1, **CANNIBAL), mem, "v") == []
    decide_category(_cat(30 + th.opposite_hold_windows, **{**CANNIBAL, "demand_growth": 1.5}), mem, "v")
    assert len(decide_category(_cat(30 + th.opposite_hold_windows + 1, **CANNIBAL), mem, "v")) == 1
    # same evidence, same id; the memory survives JSON
    a = decide_category(_cat(30, **GROWING), SignalMemory(), "v")
    b = decide_category(_cat(30, **GROWING), SignalMemory.from_state(json.loads(json.dumps(SignalMemory().to_state()))), "v")
    assert a == b


def test_existing_threshold_defaults_are_unchanged():
    d = {f.name: f.default for f in dataclasses.fields(Thresholds)}
    assert {k: d[k] for k in ("new_item_windows", "boost_min_interest", "boost_growth", "boost_min_conversion_ratio",
                              "boost_trend_windows", "boost_min_trend_windows", "boost_min_trend_growth",
                              "restock_lead_windows", "stock_min_history_windows", "overstock_cover_windows",
                              "overstock_min_age_windows", "overstock_confirm_windows", "bundle_min_co_count",
                              "bundle_min_lift", "bundle_max_per_item", "cooldown_windows", "reminder_windows",
                              "opposite_hold_windows")} == {
        "new_item_windows": 14, "boost_min_interest": 10.0, "boost_growth": 1.5, "boost_min_conversion_ratio": 0.9,
        "boost_trend_windows": 6, "boost_min_trend_windows": 4, "boost_min_trend_growth": 1.15,
        "restock_lead_windows": 3, "stock_min_history_windows": 7, "overstock_cover_windows": 60,
        "overstock_min_age_windows": 7, "overstock_confirm_windows": 4, "bundle_min_co_count": 10,
        "bundle_min_lift": 3.0, "bundle_max_per_item": 3, "cooldown_windows": 3, "reminder_windows": 28,
        "opposite_hold_windows": 6}


# -- homogeneity_warning --------------------------------------------------------------------------

def _item_ev(item="new", age=3, w=30) -> Evidence:
    return Evidence(item_id=item, category_id="c", window_start=T0 + w * DAY, window_end=T0 + (w + 1) * DAY,
                    window_ms=DAY, views=50, carts=5, units=3, orders=3, prev_interest_mean=40.0, prev_conversion=0.05,
                    age_windows=age, in_catalog=True, stock_remaining=None, predicted_demand=None, demand_slope=None,
                    burst=False)


def _world(compare_sessions=30, co_bought=0):
    """A new item viewed in many single-item sessions and with ``dup`` in ``compare_sessions``; ``dup``
    and ``other`` are viewed a lot on their own; the new item co-bought with ``dup`` ``co_bought`` times."""
    assoc = ItemAssociations("new")
    for _ in range(compare_sessions):
        assoc.learn_session("view", ["dup"], 0)
    for _ in range(3):
        assoc.learn_session("view", ["other"], 0)
    for _ in range(20):
        assoc.learn_session("view", [], 0)
    for _ in range(40):
        assoc.learn_basket(["dup"] if co_bought > 0 else [], 0)
        co_bought -= 1
    views = {"new": assoc.n_view, "dup": 200, "other": 300}
    orders = {"new": 40, "dup": 100}
    return assoc, orders, 5_000, views, 20_000


def test_homogeneity_warning_for_a_new_item_with_a_crowded_neighbourhood():
    assoc, orders, n, views, n_view = _world()
    nb = neighbourhood_evidence(assoc, orders, n, views, n_view)
    assert [r["item_id"] for r in nb.substitutes] == ["dup"] and nb.homogeneity == 30 / 33
    [sig] = decide_homogeneity(_item_ev(), nb, SignalMemory(), HOMOGENEITY_MODEL_VERSION)
    _valid(sig)
    assert sig["type"] == "homogeneity_warning" and sig["subject"] == {"item_id": "new"}
    assert sig["evidence"]["substitutes"][0]["item_id"] == "dup" and sig["evidence"]["substitutes"][0]["co_view"] == 30
    assert abs(sig["score"] - 30 / 33) < 1e-6


def test_no_homogeneity_warning_when_not_new_not_crowded_or_bought_together():
    assoc, orders, n, views, n_view = _world()
    nb = neighbourhood_evidence(assoc, orders, n, views, n_view)
    assert decide_homogeneity(_item_ev(age=30), nb, SignalMemory(), "v") == []  # an established item
    assert decide_homogeneity(_item_ev(age=None), nb, SignalMemory(), "v") == []
    # compared too rarely for the partner to count as a substitute
    nb = neighbourhood_evidence(*_world(compare_sessions=8))
    assert nb.substitutes == () and decide_homogeneity(_item_ev(), nb, SignalMemory(), "v") == []
    # co-bought above chance: a complement, not a substitute
    nb = neighbourhood_evidence(*_world(co_bought=20))
    assert decide_homogeneity(_item_ev(), nb, SignalMemory(), "v") == []
    # a crowded share under the threshold
    nb = neighbourhood_evidence(*_world())
    assert decide_homogeneity(_item_ev(), nb, SignalMemory(), "v", Thresholds(homogeneity_min_share=0.95)) == []


def test_homogeneity_warning_hysteresis():
    nb = neighbourhood_evidence(*_world())
    mem = SignalMemory()
    assert len(decide_homogeneity(_item_ev(w=30), nb, mem, "v")) == 1
    assert decide_homogeneity(_item_ev(w=31), nb, mem, "v") == []  # still crowded: no repeat
    mem2 = SignalMemory.from_state(json.loads(json.dumps(mem.to_state())))
    assert decide_homogeneity(_item_ev(w=32), nb, mem2, "v") == []


def test_a_noisy_cannibal_ratio_proves_nothing():
    """The ratio tests must pass by cadence_ratio_z standard errors of the loss and the gain."""
    noisy = {"established_loss_sd": 20.0, "new_gain_sd": 5.0}
    assert decide_category(_cat(**{**GROWING, **noisy}), SignalMemory(), "v") == []
    assert decide_category(_cat(**{**CANNIBAL, **noisy}), SignalMemory(), "v") == []
    quiet = {"established_loss_sd": 2.0, "new_gain_sd": 2.0}
    assert [s["type"] for s in decide_category(_cat(**{**GROWING, **quiet}), SignalMemory(), "v")] == ["accelerate_cadence"]
    assert [s["type"] for s in decide_category(_cat(**{**CANNIBAL, **quiet}), SignalMemory(), "v")] == ["slow_cadence"]
