"""Feature rows: one documented, versioned schema from an item's closed window.

The same function feeds the worker's scorer, ``launchpulse train`` and the
backtest, so training and serving see identical features.

Schema versions: 1, the window counts, history, trend, catalog and totals; 2 adds
``log_expected_conversions`` and ``has_sessions``, from the closed shopping sessions
that touched the item (:attr:`ClosedWindow.expected_conversions` / ``sessions``):
the sum of their predicted purchase propensities over the sessions whose close time
(last event + the session gap) falls after the item's previous row's window and by
the end of this one. A session closes ~30 min after its last event, so it is not
attributed to the window holding its events; each session counts in exactly one row.
Every figure of a row is as of its window's end, whenever the window is closed
(``log_total_orders`` too): the same replay gives the same rows. An artifact trained
on another schema version is refused (``scorer.check_metadata``).
"""
from __future__ import annotations

import math
from math import log1p
from typing import Callable, Mapping

from .associations import bundle_candidates
from .decisions import Evidence
from .itemstate import COUNTERS, ClosedWindow
from .windows import WindowConfig

FEATURE_SCHEMA_VERSION = 2  # 2: log_expected_conversions, has_sessions
HISTORY = 3  # previous closed windows summarised in the row
RECENT_DEMAND_WINDOWS = 6  # with the closing window: a week of daily windows as a demand floor
_UNITS = COUNTERS.index("units")

# name -> meaning; order is the column order of the scorer's input
FEATURES: dict[str, str] = {
    "log_views": "log1p(views in the closed window)",
    "log_carts": "log1p(add-to-carts in the closed window)",
    "log_units": "log1p(units ordered in the closed window)",
    "log_orders": "log1p(orders holding the item in the closed window)",
    "log_units_prev1": "log1p(units one window earlier), 0 when absent",
    "log_units_prev2": "log1p(units two windows earlier), 0 when absent",
    "log_units_prev3": "log1p(units three windows earlier), 0 when absent",
    "history_windows": "closed windows of history available (0..3) / 3",
    "interest_growth": "log((views+carts+1) / (mean previous views+carts + 1))",
    "log_trend_forecast": "log1p(trend forecast of the next window's units), 0 when none",
    "has_trend_forecast": "1 when the trend model gave a forecast",
    "trend_slope": "trend slope in units per window, signed log1p",
    "burst": "1 when the trend's level-shift detector fires",
    "log_age_windows": "log1p(windows since launch or first sight)",
    "in_catalog": "1 when the item has a catalog record",
    "log_price": "log1p(unit price), 0 when unknown",
    "log_stock_remaining": "log1p(stock remaining), 0 when unknown",
    "has_stock": "1 when stock is known",
    "log_total_orders": "log1p(orders holding the item in every window up to the closed one's end)",
    "log_expected_conversions": "log1p(sum of the purchase propensities of the closed sessions touching the item "
                                "whose close time falls after the previous row's window and by this window's end)",
    "has_sessions": "1 when at least one such session (with a propensity) counts in this row",
}
FEATURE_NAMES = tuple(FEATURES)


def _l(x) -> float:
    # log1p(max(0, x)), 0 for None (and NaN): the comparison first, a boundary calls it ~20 times an item
    return log1p(x) if x is not None and x > 0 else 0.0


def _slog(x) -> float:
    if x is None:
        return 0.0
    return math.copysign(math.log1p(abs(x)), x)


def age_windows(cw: ClosedWindow, cfg: WindowConfig) -> int | None:
    st = cw.state
    origin = st.launched_at if st.launched_at is not None else st.first_seen
    if origin is None:
        return None
    return max(0, (cw.start_ms - cfg.start_of(origin)) // cfg.size_ms)


def feature_row(cw: ClosedWindow, cfg: WindowConfig) -> list[float]:
    c = cw.counts
    hist = cw.history[-HISTORY:]
    n_hist = len(hist)
    # The previous windows' units, newest first (None where there is no such window)
    u1 = hist[-1][_UNITS] if n_hist > 0 else None
    u2 = hist[-2][_UNITS] if n_hist > 1 else None
    u3 = hist[-3][_UNITS] if n_hist > 2 else None
    interest = c["views"] + c["carts"]
    mean_prev = sum([h[0] + h[1] for h in hist]) / n_hist if n_hist else 0.0
    st = cw.state
    fc = cw.trend_forecast
    slope = cw.trend_slope
    if st.trend.seeded and st.trend.is_provisional:
        # A cold-start forecast borrowed from the category (the worker's /trend serves it): the
        # scorer was trained on items' own trends only, so it sees "no forecast yet", as it did.
        fc = slope = None
    rem = cw.stock_remaining
    return [
        _l(c["views"]), _l(c["carts"]), _l(c["units"]), _l(c["orders"]),
        _l(u1), _l(u2), _l(u3),
        n_hist / HISTORY,
        math.log((interest + 1) / (mean_prev + 1)),
        _l(fc[0]) if fc else 0.0, 1.0 if fc else 0.0,
        _slog(slope), 1.0 if cw.trend_burst else 0.0,
        _l(age_windows(cw, cfg)), 1.0 if st.status is not None else 0.0,
        _l(st.price), _l(rem), 1.0 if rem is not None else 0.0,
        _l(cw.orders_through),
        _l(cw.expected_conversions), 1.0 if cw.sessions else 0.0,
    ]


def evidence(cw: ClosedWindow, cfg: WindowConfig, predicted_demand: list | None,
             item_orders: Mapping[str, int] | Callable | None = None, n_orders_total: int = 0,
             min_co_count: int = 10, assoc=None) -> Evidence:
    """The decisions' view of one closed window; ``predicted_demand`` comes from the scorer.

    Call it when the window closes: it reads the item's state as it is then. ``assoc``: the
    item's purchases to judge bundles on (the worker passes them as of the window's end, with
    ``item_orders`` and ``n_orders_total`` as of then too); by default its associations now.
    """
    c = cw.counts
    prev_interest = tuple([h[0] + h[1] for h in cw.history])
    prev_units = tuple([h[_UNITS] for h in cw.history])
    last = prev_interest[-HISTORY:]
    tb = cw.totals_before
    # Conversion since launch (all closed windows before this one), not just the last few,
    # which may already hold the surge being judged.
    prev_conv = None
    if tb:
        pi = tb["views"] + tb["carts"]
        prev_conv = tb["units"] / pi if pi > 0 else None
    units = c["units"]
    recent_units = [*prev_units[-RECENT_DEMAND_WINDOWS:], units]
    bundles: tuple = ()
    st = cw.state
    a = st.assoc if assoc is None else assoc
    if item_orders is not None and n_orders_total > 0 and a.n_item >= min_co_count:
        rows = bundle_candidates(a, item_orders, n_orders_total, limit=10)
        # One signal per pair: the smaller item id speaks for both.
        bundles = tuple((r["item_id"], r["co_count"], r["lift"], r["confidence"], r["support"])
                        for r in rows if cw.item_id < r["item_id"])
    return Evidence(
        item_id=cw.item_id, category_id=st.category_id, window_start=cw.start_ms, window_end=cw.end_ms,
        window_ms=cfg.size_ms, views=c["views"], carts=c["carts"], units=units, orders=c["orders"],
        prev_interest_mean=(sum(last) / len(last)) if last else None,
        prev_conversion=prev_conv, age_windows=age_windows(cw, cfg), in_catalog=st.status is not None,
        stock_remaining=cw.stock_remaining, predicted_demand=predicted_demand,
        demand_slope=cw.trend_slope, burst=cw.trend_burst, bundles=bundles,
        own_windows=cw.n_closed, recent_mean_units=sum(recent_units) / len(recent_units),
        interest_before=(tb["views"] + tb["carts"]) if tb else 0.0,
        units_before=tb["units"] if tb else 0.0,
        prev_interest=prev_interest, prev_units=prev_units,
    )
