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
from collections.abc import Mapping
from dataclasses import dataclass, field

from launchpulse.schemas.validate import format_ts

from .associations import ItemAssociations, substitutes_and_homogeneity


@dataclass(frozen=True, slots=True)
class Thresholds:
    new_item_windows: int = 14  # an item is "new" this many windows after launch (or first sight)
    boost_min_interest: float = 10.0  # views + carts in the window
    boost_growth: float = 1.5  # window interest over the mean of the previous windows
    boost_rise_windows: int = 2  # interest above its previous windows' mean this many closed windows in a row (this
    # one included): a take-off is sustained, one noisy window is not
    boost_min_conversion_ratio: float = 0.9  # conversion must hold: this window's, or the last two windows' pooled,
    # >= this x the conversion before them (pooling two windows halves the noise of a window of 1-3 units)
    boost_trend_windows: int = 6  # a take-off compounds: interest's growth is fitted over up to this many windows
    boost_min_trend_windows: int = 4  # ... at least this many (this one included; WindowConfig.keep_closed >= this)
    boost_min_trend_growth: float = 1.15  # ... and must reach this factor per window (a steady +6% riser does not)
    restock_lead_windows: int = 3  # stock must cover this many windows of predicted demand
    stock_min_history_windows: int = 7  # no stock judgement on a trend fitted to fewer windows
    overstock_cover_windows: int = 60  # remaining stock covers more than this many windows of demand
    overstock_min_age_windows: int = 7  # only judge overstock once the item has some history
    overstock_confirm_windows: int = 4  # the condition must hold at this many looks in a row
    overstock_rate_z: float = 2.0  # ... even at this many standard errors (Poisson) above the recent sales rate
    bundle_min_co_count: int = 10  # orders holding both items
    bundle_min_lift: float = 3.0
    bundle_max_per_item: int = 3
    cooldown_windows: int = 3  # the same signal for the same subject at most once per this many windows
    reminder_windows: int = 28  # while a condition holds, it is said again only this often
    opposite_hold_windows: int = 6  # an opposite signal needs this many windows since the last one
    # -- category cadence (decide_category; evidence from category.cadence_evidence) --------------
    cadence_lookback_windows: int = 14  # launches counted over this many windows; demand halves of half of it
    cadence_min_launches: int = 3  # launches in the lookback for the category to be judged at all
    cadence_min_units: float = 5.0  # mean units per window (recent half): thinner demand is not judged
    cadence_rise_growth: float = 1.15  # "rising": recent-half units >= this x the half before (and trend slope > 0)
    cadence_flat_growth: float = 1.05  # "flat or falling": recent-half units <= this x the half before
    cadence_healthy_share: float = 0.10  # accelerate: new items take at least this share of recent units ...
    cadence_max_cannibal_ratio: float = 0.3  # ... and established items lost at most this x the new items' gain
    cadence_cannibal_share: float = 0.10  # slow: new items take at least this share of flat demand ...
    cadence_min_cannibal_ratio: float = 0.7  # ... and established items lost at least this x the new items' gain
    cadence_ratio_z: float = 1.5  # the cannibal-ratio tests must pass by this many standard errors
    cadence_fail_share: float = 0.02  # slow: launches settled for cadence_settle_windows take under this share
    cadence_settle_windows: int = 3  # a launch younger than this is not yet expected to take any share
    # -- homogeneity_warning (decide_homogeneity; evidence from neighbourhood_evidence) -----------
    homogeneity_min_share: float = 0.5  # substitutes' share of the item's co-view + co-cart mass
    homogeneity_min_substitutes: int = 1  # substitutes (co-viewed/carted >= homogeneity_min_co_count, not co-bought)
    homogeneity_min_co_count: int = 10  # sessions holding both items before a partner can count as a substitute
    homogeneity_max_listed: int = 5  # substitutes listed in the evidence


#: model_version of the rule-only signals (no learnt model behind them); bump when a rule changes.
CADENCE_MODEL_VERSION = "cadence-rules-v1"
HOMOGENEITY_MODEL_VERSION = "homogeneity-rules-v1"

#: Windows behind ``Evidence.recent_mean_units``, the closing one included (features.RECENT_DEMAND_WINDOWS + 1;
#: a test checks they agree): the standard error of that rate is sqrt(rate / this).
DEMAND_RATE_WINDOWS = 7

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

    def streak(self, key: str, holds: bool) -> int:
        """Count a condition that gates a rule without firing itself: consecutive looks it has held."""
        if not holds:
            self.on.pop(key, None)
            return 0
        self.on[key] = self.on.get(key, 0) + 1
        return self.on[key]

    def clear(self, key: str) -> None:
        """The condition does not hold in this window."""
        self.on.pop(key, None)

    def record(self, key: str, window_start: int) -> None:
        self.last[key] = window_start

    def to_state(self) -> dict:
        return {"version": 3, "last": self.last, "on": self.on}

    @classmethod
    def from_state(cls, d: dict | None) -> SignalMemory:
        if not d:
            return cls()
        if d.get("version") != 3:
            raise ValueError("signal memory version mismatch")
        return cls(dict(d["last"]), dict(d["on"]))


@dataclass(slots=True)
class Evidence:
    """What the decisions see for one item's closed window (built by models.features).

    Not frozen: a worker builds it as the window closes and sets ``predicted_demand`` once the
    scorer has run on the batch (a copy per row cost more than the rest of the row's scoring)."""

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
    # The previous closed windows' interest (views + carts) and units, oldest first (up to
    # WindowConfig.keep_closed - 1 of them, silent windows as 0), and the item's totals over every window
    # closed before this one: boost_exposure's growth fit and pooled conversion read them.
    prev_interest: tuple = ()
    prev_units: tuple = ()
    interest_before: float = 0.0
    units_before: float = 0.0


def _clamp01(x: float) -> float:
    return 0.0 if math.isnan(x) else max(0.0, min(1.0, x))


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


def growth_per_window(series) -> float | None:
    """Compounding growth per window of a count series (oldest first): exp of the least-squares slope of
    log(1 + x). None for fewer than two points. The +1 keeps silent windows finite and damps noise at
    small counts.

    >>> round(growth_per_window([5.0, 6.5, 8.45, 10.99, 14.28]), 3)  # x1.3 a window, read a little lower
    1.263
    >>> growth_per_window([12, 12, 12, 12])
    1.0
    >>> growth_per_window([3]) is None
    True
    """
    n = len(series)
    if n < 2:
        return None
    ys = [math.log1p(max(0.0, x)) for x in series]
    mx, my = (n - 1) / 2, sum(ys) / n
    sxx = sum((i - mx) ** 2 for i in range(n))
    return math.exp(sum((i - mx) * (y - my) for i, y in enumerate(ys)) / sxx)


def _conversion_now_and_before(ev: Evidence, last: int) -> tuple[float, float, float | None]:
    """Interest and units of the ``last`` windows up to this one (pooled), and the conversion of every
    window before them (None without interest before)."""
    k = max(0, min(last - 1, len(ev.prev_interest)))
    pi = sum(ev.prev_interest[len(ev.prev_interest) - k:]) if k else 0.0
    pu = sum(ev.prev_units[len(ev.prev_units) - k:]) if k else 0.0
    interest_before = ev.interest_before - pi
    before = (ev.units_before - pu) / interest_before if interest_before > 0 else None
    return ev.views + ev.carts + pi, ev.units + pu, before


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
    # A take-off is sustained: interest above its previous windows' mean at boost_rise_windows looks in a row.
    # (A flat item at ~15 a window shows 1.5x on a noisy day; it rarely does so right after another rise.)
    rising = 0
    if is_new and ev.prev_interest_mean is not None:
        rising = memory.streak("boost_exposure:rising", interest > ev.prev_interest_mean)
    else:
        memory.streak("boost_exposure:rising", False)
    trend = trend_n = None
    conv_reason = ""  # set whenever the rule is judged (no signal otherwise)
    if is_new and interest >= th.boost_min_interest and ev.prev_interest_mean is not None:
        growth = interest / max(ev.prev_interest_mean, 1.0)
        # It compounds: a log-linear fit over the last few windows, so one noisy window (or a steady
        # riser's lagging mean) does not make a take-off.
        series = (list(ev.prev_interest) + [interest])[-th.boost_trend_windows:]
        trend_n = len(series)
        trend = growth_per_window(series) if trend_n >= th.boost_min_trend_windows else None
        # Conversion holds, in this window or in the last two pooled, against the conversion before them:
        # a surge of views that units do not follow is not a take-off.
        conv_ok = True
        for last in (1, 2):
            i_now, u_now, before = _conversion_now_and_before(ev, last)
            if before is None:  # no interest before these windows: nothing to compare with
                conv_ok, conv_reason = True, "conversion holds (no interest before to compare with)"
                break
            conv_ok = u_now >= th.boost_min_conversion_ratio * before * i_now
            what = "this window" if last == 1 else "the last two windows"
            conv_reason = f"conversion {u_now / i_now:.2f} over {what} against {before:.2f} before"
            if conv_ok:
                break
        holds = (growth >= th.boost_growth and conv_ok and rising >= th.boost_rise_windows
                 and trend is not None and trend >= th.boost_min_trend_growth)
    if _gate(memory, "boost_exposure", "boost_exposure", holds, ev, th):
        out.append(_sig(ev, "boost_exposure", 1 - 1 / growth, "Boost this new item's exposure in search and recommendations",
                        [f"new item ({ev.age_windows} windows since launch)",
                         (f"interest (views + add-to-carts) is {interest:g}, {growth:.1f}x the previous windows' mean of "
                          f"{ev.prev_interest_mean:.1f}, and rising for {rising} windows in a row"),
                         f"interest compounds at x{trend:.2f} a window over the last {trend_n} windows",
                         conv_reason] + catalog_note,
                        {"views": ev.views, "carts": ev.carts, "units": ev.units, "growth": round(growth, 4),
                         "rising_windows": rising, "trend_growth": round(trend, 4), "trend_windows": trend_n,
                         "prev_interest_mean": round(ev.prev_interest_mean, 4), "conversion": conversion,
                         "prev_conversion": ev.prev_conversion, "age_windows": ev.age_windows, "burst": ev.burst},
                        model_version))

    # restock_risk / overstock_risk: remaining stock against predicted demand, checked against what the item
    # has actually sold lately (recent_mean_units, the last DEMAND_RATE_WINDOWS windows), each in its
    # cautious direction.
    restock = overstock = False
    need = lead_rate = forecast_rate = per_window = projected = 0.0
    if ev.stock_remaining is not None and ev.predicted_demand and ev.own_windows >= th.stock_min_history_windows:
        n_rate = max(1, min(ev.own_windows, DEMAND_RATE_WINDOWS))
        lead = ev.predicted_demand[: th.restock_lead_windows]
        forecast_rate = sum(max(0.0, d) for d in lead) / len(lead)
        # restock: a forecast far above recent sales (a trend extrapolating a few lucky windows) would make
        # ordinary stock look short: a stock-out is claimed only when the forecast and the recent sales rate
        # both say so (the lead demand is the smaller of the two).
        lead_rate = min(forecast_rate, ev.recent_mean_units)
        need = lead_rate * th.restock_lead_windows
        restock = need > 0 and ev.stock_remaining < need
        # overstock: a forecast near zero would make any stock look like infinite cover: recent sales are a
        # floor; the stock must exceed the demand of the whole cover horizon even at the upper end of that
        # rate (its Poisson standard error, at least one sale's worth: no sales in a week is not a rate of
        # 0) and with a rising trend carried on (a flat series' slope is as often slightly up as down).
        per_window = max(sum(max(0.0, d) for d in ev.predicted_demand) / len(ev.predicted_demand),
                         ev.recent_mean_units)
        hcov = th.overstock_cover_windows
        upper = per_window + th.overstock_rate_z * math.sqrt(max(per_window, 1.0 / n_rate) / n_rate)
        projected = hcov * upper + max(0.0, ev.demand_slope or 0.0) * hcov * (hcov + 1) / 2
        overstock = (not restock and ev.age_windows is not None and ev.age_windows >= th.overstock_min_age_windows
                     and ev.stock_remaining > 0 and ev.stock_remaining > projected)
    if _gate(memory, "restock_risk", "restock_risk", restock, ev, th):
        windows_left = ev.stock_remaining / lead_rate if lead_rate > 0 else math.inf
        capped = lead_rate < forecast_rate
        out.append(_sig(ev, "restock_risk", 1 - ev.stock_remaining / need, "Restock this item now",
                        [f"{ev.stock_remaining:g} units left",
                         f"predicted demand over the next {th.restock_lead_windows} windows is {need:.1f} units"
                         + (f" (the forecast says {forecast_rate * th.restock_lead_windows:.1f}; recent sales of "
                            f"{ev.recent_mean_units:.2f} a window say less)" if capped else ""),
                         f"stock runs out in about {windows_left:.1f} windows"] + catalog_note,
                        {"stock_remaining": ev.stock_remaining, "predicted_demand": [round(d, 4) for d in ev.predicted_demand],
                         "lead_demand": round(need, 4), "forecast_capped": capped,
                         "recent_mean_units": round(ev.recent_mean_units, 4),
                         "units_last_window": ev.units, "demand_slope": ev.demand_slope}, model_version))
    if _gate(memory, "overstock_risk", "overstock_risk", overstock, ev, th, th.overstock_confirm_windows):
        cover = ev.stock_remaining / per_window if per_window > 0 else math.inf
        out.append(_sig(ev, "overstock_risk", 1 - projected / ev.stock_remaining,
                        "Slow replenishment or promote to clear stock",
                        [f"{ev.stock_remaining:g} units left cover {'more than any horizon' if cover == math.inf else f'{cover:.0f} windows'} of predicted demand",
                         (f"more than the {projected:.0f} units the next {th.overstock_cover_windows} windows would take even at "
                          f"{th.overstock_rate_z:g} standard errors above the rate of {per_window:.2f} a window, trend included"),
                         "demand is not rising fast enough to sell it through"] + catalog_note,
                        {"stock_remaining": ev.stock_remaining, "predicted_demand": [round(d, 4) for d in ev.predicted_demand],
                         "cover_windows": None if cover == math.inf else round(cover, 2),
                         "projected_demand": round(projected, 4), "demand_slope": ev.demand_slope},
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


# -- category cadence ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CategoryEvidence:
    """What the cadence decisions see for one category's closed window (built by category.cadence_evidence)."""

    category_id: str
    window_start: int
    window_end: int
    window_ms: int
    launches_window: int  # launches in this window
    launches_recent: int  # launches in the last cadence_lookback_windows windows, this one included
    launches_prior: int  # launches in the lookback before that
    units: float  # units in this window
    views: float
    units_recent_mean: float  # mean units per window over the recent half-lookback
    units_prior_mean: float | None  # ... over the half-lookback before it (None: not enough history)
    demand_growth: float | None  # units_recent_mean / units_prior_mean
    new_share: float | None  # share of the recent half's units taken by items launched within new_item_windows
    new_units_recent: float
    established_recent_mean: float
    established_prior_mean: float | None
    established_change: float | None  # established_recent_mean / established_prior_mean - 1
    new_gain: float | None  # new items' mean units, recent half minus the half before (same items)
    cannibal_ratio: float | None  # established items' loss / new_gain (None unless new_gain > 0)
    demand_slope: float | None  # the category's unit trend slope (units per window per window)
    new_items_active: int
    own_windows: int  # closed windows of the category's history
    launches_settled: int = 0  # launches in the lookback at least cadence_settle_windows old
    established_loss_sd: float | None = None  # standard error of the established items' loss (units per window)
    new_gain_sd: float | None = None  # standard error of new_gain


def _ratio_beyond(ev: CategoryEvidence, r: float, z: float, below: bool) -> bool:
    """Is the established items' loss significantly below (``below``) / above ``r`` x the new items' gain?"""
    if ev.new_gain is None or ev.new_gain <= 0 or ev.cannibal_ratio is None:
        return False
    loss = ev.cannibal_ratio * ev.new_gain
    margin = r * ev.new_gain - loss if below else loss - r * ev.new_gain
    sd = math.hypot(ev.established_loss_sd or 0.0, r * (ev.new_gain_sd or 0.0))
    return margin >= z * sd if sd > 0 else margin >= 0


def decide_category(ev: CategoryEvidence, memory: SignalMemory, model_version: str,
                    th: Thresholds = Thresholds()) -> list[dict]:
    """``accelerate_cadence`` / ``slow_cadence`` for one category's closed window (memory is updated).

    Cannibalisation is measured as ``cannibal_ratio``: what the established items lost between the
    two half-lookbacks over what the new items gained (1: every unit the launches sell is taken from
    the established items; 0: all of it is new demand). "At least r" / "at most r" below are
    significance tests: ``loss - r * gain`` must be beyond 0 by ``cadence_ratio_z`` standard errors
    (from ``established_loss_sd`` and ``new_gain_sd``), so a noisy week proves neither
    cannibalisation nor its absence.

    * accelerate_cadence: at least ``cadence_min_launches`` launches in the lookback, units rising
      (``demand_growth >= cadence_rise_growth`` and trend slope > 0), the new items taking at least
      ``cadence_healthy_share`` of the recent units with a ``cannibal_ratio`` of at most
      ``cadence_max_cannibal_ratio``: launches add demand, so the category can take more.
    * slow_cadence: launches in the lookback at least as many as before and at least
      ``cadence_min_launches``, units flat or falling (``demand_growth <= cadence_flat_growth``) and
      either the new items take ``cadence_cannibal_share`` or more with a ``cannibal_ratio`` of at
      least ``cadence_min_cannibal_ratio`` (cannibalisation), or launches settled for
      ``cadence_settle_windows`` take under ``cadence_fail_share`` (the launches do not sell).

    Nothing is judged before ``cadence_lookback_windows`` closed windows, or on thinner demand than
    ``cadence_min_units`` units per window.
    """
    out: list[dict] = []
    subject = {"category_id": ev.category_id}
    judged = (ev.own_windows >= th.cadence_lookback_windows and ev.demand_growth is not None
              and ev.new_share is not None and ev.units_recent_mean >= th.cadence_min_units
              and ev.launches_recent >= th.cadence_min_launches)
    g = ev.demand_growth or 0.0
    share = ev.new_share or 0.0
    est = ev.established_change
    ratio = ev.cannibal_ratio
    held = _ratio_beyond(ev, th.cadence_max_cannibal_ratio, th.cadence_ratio_z, below=True)
    taken = _ratio_beyond(ev, th.cadence_min_cannibal_ratio, th.cadence_ratio_z, below=False)
    accelerate = (judged and g >= th.cadence_rise_growth and (ev.demand_slope is None or ev.demand_slope > 0)
                  and share >= th.cadence_healthy_share and held)
    flat = judged and ev.launches_recent >= ev.launches_prior and g <= th.cadence_flat_growth
    cannibal = flat and share >= th.cadence_cannibal_share and taken
    failing = (flat and not cannibal and ev.launches_settled >= th.cadence_min_launches
               and share < th.cadence_fail_share)
    evidence = {"launches_window": ev.launches_window, "launches_recent": ev.launches_recent,
                "launches_prior": ev.launches_prior, "lookback_windows": th.cadence_lookback_windows,
                "units": ev.units, "units_recent_mean": round(ev.units_recent_mean, 4),
                "units_prior_mean": None if ev.units_prior_mean is None else round(ev.units_prior_mean, 4),
                "demand_growth": None if ev.demand_growth is None else round(ev.demand_growth, 4),
                "new_share": None if ev.new_share is None else round(ev.new_share, 4),
                "established_change": None if est is None else round(est, 4),
                "new_gain": None if ev.new_gain is None else round(ev.new_gain, 4),
                "cannibal_ratio": None if ratio is None else round(ratio, 4),
                "new_gain_sd": None if ev.new_gain_sd is None else round(ev.new_gain_sd, 4),
                "established_loss_sd": None if ev.established_loss_sd is None else round(ev.established_loss_sd, 4),
                "demand_slope": None if ev.demand_slope is None else round(ev.demand_slope, 4),
                "new_items_active": ev.new_items_active}
    lookback = f"the last {th.cadence_lookback_windows} windows"
    if _gate(memory, "accelerate_cadence", "accelerate_cadence", accelerate, ev, th):
        out.append(_sig(ev, "accelerate_cadence", 1 - 1 / g, "Launch new items in this category sooner",
                        [f"{ev.launches_recent} launches in {lookback}",
                         f"category units are rising: {ev.units_recent_mean:.1f} per window, {g:.2f}x the windows before",
                         f"new items take {share:.0%} of the units",
                         (f"established items hold their demand ({est:+.0%}; they lost {max(0.0, ratio):.0%} of what "
                          "the new items gained)")],
                        {**evidence, "cadence": "accelerate"}, model_version, subject))
    if _gate(memory, "slow_cadence", "slow_cadence", cannibal or failing, ev, th):
        if cannibal:
            why = [(f"new items take {share:.0%} of the units while established items lose {-est:.0%}, "
                    f"{ratio:.0%} of what the new items gained: the launches cannibalise")]
            score = min(1.0, ratio)
        else:
            why = [(f"{ev.launches_settled} launches settled for {th.cadence_settle_windows}+ windows take only "
                    f"{share:.1%} of the units")]
            score = 1 - share / th.cadence_fail_share
        out.append(_sig(ev, "slow_cadence", score, "Slow the launch cadence in this category",
                        [f"{ev.launches_recent} launches in {lookback} ({ev.launches_prior} in the {th.cadence_lookback_windows} before)",
                         f"category units are {'flat' if g >= 0.95 else 'falling'}: {g:.2f}x the windows before"] + why,
                        {**evidence, "cadence": "slow", "reason": "cannibalisation" if cannibal else "no_uptake"},
                        model_version, subject))
    return out


# -- homogeneity_warning -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NeighbourhoodEvidence:
    """An item's substitute neighbourhood (see :func:`neighbourhood_evidence`)."""

    item_id: str
    homogeneity: float  # associations.homogeneity: substitutes' share of the co-view + co-cart mass
    substitutes: tuple  # associations.substitutes rows (dicts), strongest first
    view_sessions: int  # sessions in which the item was viewed
    cart_sessions: int


def neighbourhood_evidence(assoc: ItemAssociations, item_orders: Mapping[str, int], n_orders: int,
                           view_counts: Mapping[str, int], n_view_sessions: int,
                           cart_counts: Mapping[str, int] | None = None, n_cart_sessions: int | None = None,
                           th: Thresholds = Thresholds(), window="all", now_ms: int | None = None) -> NeighbourhoodEvidence:
    """The substitute neighbourhood of the item whose ``assoc`` this is.

    ``item_orders`` / ``n_orders``: baskets per item and in all (the worker's ``totals``);
    ``view_counts`` / ``cart_counts``: sessions per item in which it was viewed / carted (every
    item's ``assoc.n_view`` / ``assoc.n_cart``), ``n_view_sessions`` / ``n_cart_sessions``: sessions
    with any view / cart (:class:`~.sessions.SessionTotals`).
    """
    subs, h = substitutes_and_homogeneity(assoc, item_orders, n_orders, view_counts, n_view_sessions, cart_counts,
                                          n_cart_sessions, th.homogeneity_min_co_count, window, now_ms=now_ms)
    return NeighbourhoodEvidence(assoc.item_id, h, tuple(subs), assoc.count("view", window, now_ms),
                                 assoc.count("cart", window, now_ms))


def decide_homogeneity(ev: Evidence, nb: NeighbourhoodEvidence, memory: SignalMemory, model_version: str,
                       th: Thresholds = Thresholds()) -> list[dict]:
    """``homogeneity_warning`` for a new item whose substitute neighbourhood is crowded.

    New: launched (or first seen) at most ``new_item_windows`` windows ago. Crowded: at least
    ``homogeneity_min_substitutes`` substitutes (partners co-viewed or co-carted in at least
    ``homogeneity_min_co_count`` sessions and above chance, co-bought at or below chance) and a
    homogeneity (their share of the item's session co-occurrence mass) of at least
    ``homogeneity_min_share``. The substitutes are the evidence. Same memory and conventions as
    :func:`decide_item` (``ev`` is the item's closed-window evidence).
    """
    is_new = ev.age_windows is not None and ev.age_windows <= th.new_item_windows
    subs = nb.substitutes
    holds = is_new and len(subs) >= th.homogeneity_min_substitutes and nb.homogeneity >= th.homogeneity_min_share
    if not _gate(memory, "homogeneity_warning", "homogeneity_warning", holds, ev, th):
        return []
    listed = subs[: th.homogeneity_max_listed]
    names = ", ".join(r["item_id"] for r in listed)
    rows = [{"item_id": r["item_id"], "co_view": r["co_view"], "co_cart": r["co_cart"],
             "view_lift": None if r["view_lift"] is None else round(r["view_lift"], 4),
             "cart_lift": None if r["cart_lift"] is None else round(r["cart_lift"], 4),
             "co_count": r["co_count"], "purchase_lift": round(r["lift"], 4)} for r in listed]
    return [_sig(ev, "homogeneity_warning", nb.homogeneity,
                 "Differentiate this new item from the existing items shoppers compare it with",
                 [f"new item ({ev.age_windows} windows since launch)",
                  (f"{len(subs)} substitute{'s' if len(subs) != 1 else ''} ({names}): viewed in the same sessions "
                   "far above chance but bought together at most by chance"),
                  (f"{nb.homogeneity:.0%} of what shoppers look at alongside it is a substitute "
                   f"(threshold {th.homogeneity_min_share:.0%})")],
                 {"homogeneity": round(nb.homogeneity, 4), "substitutes": rows, "n_substitutes": len(subs),
                  "view_sessions": nb.view_sessions, "cart_sessions": nb.cart_sessions,
                  "age_windows": ev.age_windows}, model_version)]
