"""Launch-adjustment decisions: pure rules over a closed window's evidence, in one place.

Thresholds live in :class:`Thresholds` (one frozen, documented table). Every signal
carries readable reasons, the evidence numbers behind them, a deterministic
``signal_id`` (same evidence, same id) and the model version. Cooldowns and
hysteresis (:class:`SignalMemory`) keep a subject from flapping between opposite
signals.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

from launchpulse.schemas.validate import format_ts


@dataclass(frozen=True, slots=True)
class Thresholds:
    new_item_windows: int = 14  # an item is "new" this many windows after launch (or first sight)
    boost_min_interest: float = 10.0  # views + carts in the window
    boost_growth: float = 1.5  # window interest over the mean of the previous windows
    boost_min_conversion_ratio: float = 0.8  # conversion must hold: >= this x previous conversion
    restock_lead_windows: int = 3  # stock must cover this many windows of predicted demand
    stock_min_history_windows: int = 7  # no stock judgement on a trend fitted to fewer windows
    overstock_cover_windows: int = 60  # remaining stock covers more than this many windows of demand
    overstock_min_age_windows: int = 7  # only judge overstock once the item has some history
    overstock_confirm_windows: int = 4  # the condition must hold at this many looks in a row
    bundle_min_co_count: int = 10  # orders holding both items
    bundle_min_lift: float = 3.0
    bundle_max_per_item: int = 3
    cooldown_windows: int = 3  # the same signal for the same subject at most once per this many windows
    reminder_windows: int = 28  # while a condition holds, it is said again only this often
    opposite_hold_windows: int = 6  # an opposite signal needs this many windows since the last one


OPPOSITES = {"restock_risk": "overstock_risk", "overstock_risk": "restock_risk",
             "accelerate_cadence": "slow_cadence", "slow_cadence": "accelerate_cadence"}


def signal_id(kind: str, subject: dict, window_start_ms: int, model_version: str, extra: str = "") -> str:
    """Deterministic id: the same type, subject, window, model and extra key give the same id."""
    subj = ",".join(f"{k}={subject[k]}" for k in sorted(subject))
    return hashlib.sha256(f"{kind}|{subj}|{window_start_ms}|{model_version}|{extra}".encode()).hexdigest()[:32]


@dataclass(slots=True)
class SignalMemory:
    """Per subject: when each signal (or pair) key last fired, and which conditions hold now.

    Edge-triggered with hysteresis: a signal fires when its condition turns on (outside
    the cooldown); while the condition keeps holding it is repeated only every
    ``reminder_windows``; an opposite signal waits ``opposite_hold_windows``.
    """

    last: dict = field(default_factory=dict)  # key -> window start it last fired
    on: dict = field(default_factory=dict)  # key -> consecutive looks its condition has held

    def allows(self, key: str, kind: str, window_start: int, window_ms: int, th: Thresholds, confirm: int = 1) -> bool:
        """Call only when the condition holds; counts it. ``confirm``: looks in a row needed to fire."""
        streak = self.on.get(key, 0) + 1
        self.on[key] = streak
        if streak < confirm:
            return False
        was_on = streak > confirm
        prev = self.last.get(key)
        if prev is not None:
            gap = window_start - prev
            if gap < th.cooldown_windows * window_ms or (was_on and gap < th.reminder_windows * window_ms):
                return False
        opp = OPPOSITES.get(kind)
        if opp is not None:
            p = self.last.get(key.replace(kind, opp, 1))
            if p is not None and window_start - p < th.opposite_hold_windows * window_ms:
                return False
        return True

    def clear(self, key: str) -> None:
        """The condition does not hold in this window."""
        self.on.pop(key, None)

    def record(self, key: str, window_start: int) -> None:
        self.last[key] = window_start

    def to_state(self) -> dict:
        return {"version": 3, "last": self.last, "on": self.on}

    @classmethod
    def from_state(cls, d: dict | None) -> "SignalMemory":
        if not d:
            return cls()
        if d.get("version") != 3:
            raise ValueError("signal memory version mismatch")
        return cls(dict(d["last"]), dict(d["on"]))


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the decisions see for one item's closed window (built by models.features)."""

    item_id: str
    category_id: str | None
    window_start: int
    window_end: int
    window_ms: int
    views: float
    carts: float
    units: float
    orders: float
    prev_interest_mean: float | None  # mean views+carts over previous closed windows (None: no history)
    prev_conversion: float | None
    age_windows: int | None  # windows since launch (or first sight when the catalog is silent)
    in_catalog: bool
    stock_remaining: float | None
    predicted_demand: list | None  # units per next window, from the scorer
    demand_slope: float | None
    burst: bool
    bundles: tuple = ()  # (partner_id, co_count, lift, confidence, support)
    own_windows: int = 0  # closed windows of the item's own history, this one included
    recent_mean_units: float = 0.0  # mean units over the latest closed windows, this one included


def _clamp01(x: float) -> float:
    return 0.0 if x != x else max(0.0, min(1.0, x))


def _sig(ev: Evidence, kind: str, score: float, action: str, reasons: list, evidence: dict,
         model_version: str, subject: dict | None = None, extra: str = "") -> dict:
    subject = subject or {"item_id": ev.item_id}
    return {
        "signal_id": signal_id(kind, subject, ev.window_start, model_version, extra),
        "ts": format_ts(ev.window_end),
        "subject": subject,
        "type": kind,
        "score": round(_clamp01(score), 6),
        "action": action,
        "reasons": reasons,
        "evidence": evidence,
        "window": {"start": format_ts(ev.window_start), "end": format_ts(ev.window_end)},
        "model_version": model_version,
    }


def _gate(memory: SignalMemory, key: str, kind: str, holds: bool, ev: Evidence, th: Thresholds, confirm: int = 1) -> bool:
    if not holds:
        memory.clear(key)
        return False
    if memory.allows(key, kind, ev.window_start, ev.window_ms, th, confirm):
        memory.record(key, ev.window_start)
        return True
    return False


def decide_item(ev: Evidence, memory: SignalMemory, model_version: str, th: Thresholds = Thresholds()) -> list[dict]:
    """All item-level signals for one closed window, respecting hysteresis (memory is updated)."""
    out: list[dict] = []
    interest = ev.views + ev.carts
    conversion = ev.units / interest if interest > 0 else None
    is_new = ev.age_windows is not None and ev.age_windows <= th.new_item_windows
    catalog_note = [] if ev.in_catalog else ["item is not in the catalog yet; launch age is counted from its first event"]

    # boost_exposure: a new item taking off while conversion holds.
    growth = None
    holds = False
    if is_new and interest >= th.boost_min_interest and ev.prev_interest_mean is not None:
        growth = interest / max(ev.prev_interest_mean, 1.0)
        conv_ok = ev.prev_conversion is None or conversion is None or conversion >= th.boost_min_conversion_ratio * ev.prev_conversion
        holds = growth >= th.boost_growth and conv_ok
    if _gate(memory, "boost_exposure", "boost_exposure", holds, ev, th):
        out.append(_sig(ev, "boost_exposure", 1 - 1 / growth, "Boost this new item's exposure in search and recommendations",
                        [f"new item ({ev.age_windows} windows since launch)",
                         f"interest (views + add-to-carts) is {interest:g}, {growth:.1f}x the previous windows' mean of {ev.prev_interest_mean:.1f}",
                         "conversion holds" if conversion is None or ev.prev_conversion is None else f"conversion {conversion:.2f} against {ev.prev_conversion:.2f} before"] + catalog_note,
                        {"views": ev.views, "carts": ev.carts, "units": ev.units, "growth": round(growth, 4),
                         "prev_interest_mean": round(ev.prev_interest_mean, 4), "conversion": conversion,
                         "prev_conversion": ev.prev_conversion, "age_windows": ev.age_windows, "burst": ev.burst},
                        model_version))

    # restock_risk / overstock_risk: remaining stock against predicted demand.
    restock = overstock = False
    need = per_window = 0.0
    if ev.stock_remaining is not None and ev.predicted_demand and ev.own_windows >= th.stock_min_history_windows:
        lead = ev.predicted_demand[: th.restock_lead_windows]
        need = sum(max(0.0, d) for d in lead) * (th.restock_lead_windows / len(lead))
        # A forecast near zero would make any stock look like infinite cover: recent sales are a floor.
        per_window = max(sum(max(0.0, d) for d in ev.predicted_demand) / len(ev.predicted_demand),
                         ev.recent_mean_units)
        restock = need > 0 and ev.stock_remaining < need
        overstock = (not restock and ev.age_windows is not None and ev.age_windows >= th.overstock_min_age_windows
                     and (ev.demand_slope is None or ev.demand_slope <= 0) and ev.stock_remaining > 0
                     and ev.stock_remaining > th.overstock_cover_windows * per_window)
    if _gate(memory, "restock_risk", "restock_risk", restock, ev, th):
        windows_left = ev.stock_remaining / per_window if per_window > 0 else math.inf
        out.append(_sig(ev, "restock_risk", 1 - ev.stock_remaining / need, "Restock this item now",
                        [f"{ev.stock_remaining:g} units left", f"predicted demand over the next {th.restock_lead_windows} windows is {need:.1f} units",
                         f"stock runs out in about {windows_left:.1f} windows"] + catalog_note,
                        {"stock_remaining": ev.stock_remaining, "predicted_demand": [round(d, 4) for d in ev.predicted_demand],
                         "units_last_window": ev.units, "demand_slope": ev.demand_slope}, model_version))
    if _gate(memory, "overstock_risk", "overstock_risk", overstock, ev, th, th.overstock_confirm_windows):
        cover = ev.stock_remaining / per_window if per_window > 0 else math.inf
        out.append(_sig(ev, "overstock_risk", 1 - th.overstock_cover_windows / cover if cover != math.inf else 1.0,
                        "Slow replenishment or promote to clear stock",
                        [f"{ev.stock_remaining:g} units left cover {'more than any horizon' if cover == math.inf else f'{cover:.0f} windows'} of predicted demand",
                         f"threshold is {th.overstock_cover_windows} windows", "demand is not rising"] + catalog_note,
                        {"stock_remaining": ev.stock_remaining, "predicted_demand": [round(d, 4) for d in ev.predicted_demand],
                         "cover_windows": None if cover == math.inf else round(cover, 2), "demand_slope": ev.demand_slope},
                        model_version))

    # bundle_opportunity: complements bought together far above chance.
    n = 0
    for partner, co, lift, conf, support in ev.bundles:
        if n >= th.bundle_max_per_item:
            break
        key = f"bundle_opportunity:{partner}"
        # Lift from a few dozen baskets is noisy: discount it by its sampling error (~1/sqrt(co)).
        holds = co >= th.bundle_min_co_count and lift * (1 - 2 / math.sqrt(co)) >= th.bundle_min_lift
        if not _gate(memory, key, "bundle_opportunity", holds, ev, th):
            continue
        n += 1
        out.append(_sig(ev, "bundle_opportunity", 1 - 1 / lift, f"Offer {ev.item_id} and {partner} as a bundle",
                        [f"bought together in {co} orders", f"{lift:.1f}x more often than chance (lift)",
                         f"{conf:.0%} of orders with {ev.item_id} also hold {partner}"],
                        {"partner_item_id": partner, "co_count": co, "lift": round(lift, 6), "confidence": round(conf, 6),
                         "support": round(support, 9)}, model_version, extra=partner))
    return out
