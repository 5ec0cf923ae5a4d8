"""Backtest the launch-adjustment rules: replay events, collect signals, score them.

:func:`run_backtest` replays validated events through :class:`~.simulate.Simulator`
and turns every closed window into signals exactly as the worker does
(``stream/pipeline.py`` ``Worker._score_batch``): one scorer call per batch of
windows closed together, ``features.evidence`` with the live per-item basket
counts and the accepted-basket total, one :class:`~.decisions.SignalMemory` per
item, :func:`~.decisions.decide_item` with the given thresholds. Those few lines
are replicated here (see :func:`_score_batch`), not shared: keep them in step
with the worker.

The session and category owners the lead wires next run beside it (``_SessionsAndCategories``):
every event also goes through :func:`~.routing.route_session_records` (sessions keyed by user,
closed by watermark; each closed session teaches its items their co-view / co-cart partners) and
:func:`~.routing.route_category_records` (category windows closed with the items' windows, judged by
:func:`~.decisions.decide_category`); each new item's closed window is also judged by
:func:`~.decisions.decide_homogeneity` on its substitute neighbourhood. Those three types
(:data:`PLANTED_ONLY`) are scored against planted truths only: no outcome oracle or naive baseline
exists for them yet.

Two scorings, both against naive-rule baselines run on the same evidence with the
same cooldown/hysteresis memory:

* **planted** (``truths`` given, from :mod:`.scenarios`): a signal is a true
  positive when a truth has the same type and subject and the signal's window
  start lies in the truth's window range. precision = true-positive signals /
  signals; recall = truths hit by at least one signal / truths. Truth types no
  rule emits yet are reported as ``not implemented`` (never faked).
* **outcome** (always; the only scoring for real data): each signal is judged by
  what followed it (see :class:`OutcomeRules`); recall is over subjects for which
  the outcome oracle holds in at least one eligible window.

Pure: no I/O, no clock reads except ``time.perf_counter`` for the timing figure.
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from launchpulse.schemas.records import SESSION_KEY_PREFIX
from launchpulse.schemas.validate import Invalid, validate_event

from . import features
from .category import CategoryState, cadence_evidence, close_steps
from .decisions import (
    CADENCE_MODEL_VERSION,
    HOMOGENEITY_MODEL_VERSION,
    Evidence,
    SignalMemory,
    Thresholds,
    decide_category,
    decide_homogeneity,
    decide_item,
    neighbourhood_evidence,
)
from .itemstate import ClosedWindow
from .routing import route_category_records, route_session_records
from .sessions import (
    DueIndex,
    SessionConfig,
    SessionTotals,
    UserSessions,
)
from .propensity import PropensityModel
from .simulate import Simulator
from .windows import WindowConfig

IMPLEMENTED = ("boost_exposure", "restock_risk", "overstock_risk", "bundle_opportunity")  # outcome-scored too
DEFAULT_THRESHOLDS = Thresholds()
PLANTED_ONLY = ("homogeneity_warning", "accelerate_cadence", "slow_cadence")  # no outcome oracle yet
NOT_IMPLEMENTED: tuple = ()


@dataclass(frozen=True, slots=True)
class OutcomeRules:
    """What "the signal was right" means when judged by what followed (no planted truth).

    boost_exposure: units in the next ``rise_windows`` windows exceed ``rise_factor`` x the
        units of the signal window and the ``rise_windows - 1`` before it, and are at least
        ``rise_min_units``.
    restock_risk: within ``Thresholds.restock_lead_windows`` windows after the signal, the
        units sold reach the stock remaining at the signal (a stock-out), and are > 0.
    overstock_risk: the units sold in the ``overstock_horizon`` windows after the signal
        (default ``Thresholds.overstock_cover_windows``) stay below the stock remaining at
        the signal; when fewer windows remain in the data, only a sell-through can be
        judged (wrong), otherwise the signal is not evaluable.
    bundle_opportunity: in the windows after the signal, the pair is co-bought in at least
        ``bundle_min_co_after`` orders with a lift of at least ``bundle_min_lift_after``
        (lift over the after-period's own orders); needs ``min_after_windows`` windows.
    A signal whose horizon runs past the data is not evaluable (counted apart).
    Positives (recall's denominator): subjects for which the oracle holds at some
    eligible window: a new item's window (boost), a window with known stock (restock),
    a window with known stock and age >= overstock_min_age_windows (overstock), and for
    a pair the window in which its co-purchase count first reached ``bundle_known_co``.
    """

    rise_windows: int = 3
    rise_factor: float = 1.2
    rise_min_units: float = 3.0
    overstock_horizon: int | None = None
    bundle_min_co_after: int = 3
    bundle_min_lift_after: float = 2.0
    bundle_known_co: int = 5
    min_after_windows: int = 3


def _naive(ev: Evidence, units_hist: list, th: Thresholds, co_pairs: list) -> dict:
    """The naive baselines' conditions on the same evidence: type -> holds (bundle: partner -> holds)."""
    interest = ev.views + ev.carts
    is_new = ev.age_windows is not None and ev.age_windows <= th.new_item_windows
    out = {
        # boost every new item with any growth
        "boost_exposure": is_new and ev.prev_interest_mean is not None and interest > ev.prev_interest_mean,
        # restock when something sold last window and stock < 10 x last window's units
        "restock_risk": ev.stock_remaining is not None and ev.units > 0 and ev.stock_remaining < 10 * ev.units,
    }
    recent = units_hist[-3:]
    mean_units = sum(recent) / len(recent) if recent else 0.0
    # overstock: stock above cover_windows x the mean units of the last 3 windows, item old enough
    out["overstock_risk"] = (ev.stock_remaining is not None and ev.stock_remaining > 0 and ev.age_windows is not None
                             and ev.age_windows >= th.overstock_min_age_windows
                             and ev.stock_remaining > th.overstock_cover_windows * mean_units)
    # bundle every pair co-bought >= bundle_min_co_count times
    out["bundle_opportunity"] = {p: True for p in co_pairs}
    return out


def _gate(memory: SignalMemory, key: str, kind: str, holds: bool, ev: Evidence, th: Thresholds) -> bool:
    # The same edge trigger, cooldown and hysteresis decide_item applies (decisions._gate, via the public API).
    if not holds:
        memory.clear(key)
        return False
    if memory.allows(key, kind, ev.window_start, ev.window_ms, th):
        memory.record(key, ev.window_start)
        return True
    return False


class _LiveOrders:
    """Baskets per item, read live from the simulator's states (the worker's totals table)."""

    __slots__ = ("_s",)

    def __init__(self, states: dict):
        self._s = states

    def get(self, key: str, default=None):
        st = self._s.get(key)
        return st.assoc.n_item if st is not None else default

    def __getitem__(self, key: str):
        return self._s[key].assoc.n_item

    def __contains__(self, key) -> bool:
        return key in self._s


class _Recorder:
    """Everything the scorings need, collected during the replay."""

    def __init__(self, cfg: WindowConfig, track_pairs: bool):
        self.cfg = cfg
        self.units: dict[str, dict[int, float]] = defaultdict(dict)  # item -> window start -> units
        self.orders: dict[str, dict[int, float]] = defaultdict(dict)  # item -> window start -> orders holding it
        self.n_orders: dict[int, int] = defaultdict(int)  # window start -> accepted-looking baskets
        self.pairs: dict[tuple, dict[int, int]] | None = defaultdict(lambda: defaultdict(int)) if track_pairs else None
        self.windows: list[tuple] = []  # (item, window start, age, stock remaining)
        self.first_window: int | None = None
        self.last_window: int | None = None

    def order(self, ev) -> None:
        w = self.cfg.start_of(ev.ts_ms)
        self.n_orders[w] += 1
        if self.pairs is not None:
            items = sorted({line.item_id for line in ev.lines})
            if len(items) <= 60:  # huge baskets say little about pairs and cost quadratically
                for i, a in enumerate(items):
                    for b in items[i + 1:]:
                        self.pairs[(a, b)][w] += 1

    def window(self, cw: ClosedWindow, ev: Evidence) -> None:
        self.units[cw.item_id][cw.start_ms] = cw.counts["units"]
        self.orders[cw.item_id][cw.start_ms] = cw.counts["orders"]
        self.windows.append((cw.item_id, cw.start_ms, ev.age_windows, ev.stock_remaining))
        if self.first_window is None or cw.start_ms < self.first_window:
            self.first_window = cw.start_ms
        if self.last_window is None or cw.start_ms > self.last_window:
            self.last_window = cw.start_ms

    def sum_units(self, item: str, w_from: int, n: int) -> float:
        u = self.units.get(item, {})
        step = self.cfg.size_ms
        return sum(u.get(w_from + k * step, 0.0) for k in range(n))

    def windows_after(self, w: int) -> int:
        return 0 if self.last_window is None else max(0, (self.last_window - w) // self.cfg.size_ms)


class _Oracle:
    def __init__(self, rec: _Recorder, th: Thresholds, rules: OutcomeRules):
        self.r, self.th, self.o = rec, th, rules
        self.step = rec.cfg.size_ms

    def boost(self, item: str, w: int) -> bool | None:
        k = self.o.rise_windows
        if self.r.windows_after(w) < k:
            return None
        after = self.r.sum_units(item, w + self.step, k)
        before = self.r.sum_units(item, w - (k - 1) * self.step, k)
        return after >= self.o.rise_min_units and after > self.o.rise_factor * before

    def restock(self, item: str, w: int, stock: float) -> bool | None:
        lead = self.th.restock_lead_windows
        if self.r.windows_after(w) < lead:
            return None
        after = self.r.sum_units(item, w + self.step, lead)
        return after > 0 and after >= stock

    def overstock(self, item: str, w: int, stock: float) -> bool | None:
        h = self.o.overstock_horizon or self.th.overstock_cover_windows
        avail = min(h, self.r.windows_after(w))
        sold = self.r.sum_units(item, w + self.step, avail)
        if sold >= stock:
            return False
        return True if avail >= h else None

    def bundle(self, a: str, b: str, w: int) -> bool | None:
        r = self.r
        n_after = r.windows_after(w)
        if n_after < self.o.min_after_windows or r.pairs is None:
            return None
        co = sum(c for t, c in r.pairs.get((a, b), {}).items() if t > w)
        if co < self.o.bundle_min_co_after:
            return False
        n = sum(c for t, c in r.n_orders.items() if t > w)
        na = sum(c for t, c in r.orders.get(a, {}).items() if t > w)
        nb = sum(c for t, c in r.orders.get(b, {}).items() if t > w)
        if n <= 0 or na <= 0 or nb <= 0:
            return False
        return co * n / (na * nb) >= self.o.bundle_min_lift_after


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def _subject_key(kind: str, subject: dict) -> tuple:
    if kind == "bundle_opportunity":
        return tuple(sorted((subject["item_id"], subject["partner_item_id"])))
    if "category_id" in subject:
        return ("category", subject["category_id"])
    return (subject["item_id"],)


def _sig_key(s: dict) -> tuple:
    if s["type"] == "bundle_opportunity":
        return tuple(sorted((s["item_id"], s["partner_item_id"])))
    if "category_id" in s:
        return ("category", s["category_id"])
    return (s["item_id"],)


def _planted(signals: list[dict], truths: list[dict]) -> dict:
    by_type: dict[str, list] = defaultdict(list)
    for t in truths:
        by_type[t["type"]].append(t)
    out = {}
    scored = IMPLEMENTED + PLANTED_ONLY
    for kind in list(scored) + [k for k in by_type if k not in scored]:
        ts = by_type.get(kind, [])
        sigs = [s for s in signals if s["type"] == kind]
        if kind not in scored:
            out[kind] = {"status": "not implemented", "truths": len(ts), "signals": len(sigs),
                         "precision": None, "recall": None,
                         "note": "no rule emits such a signal; the planted truths are kept for when one does"}
            continue
        index: dict[tuple, list] = defaultdict(list)
        for t in ts:
            index[_subject_key(kind, t["subject"])].append(t)
        hit: set[int] = set()
        tp = 0
        fps = []
        for s in sigs:
            match = [t for t in index.get(_sig_key(s), []) if t["from_ms"] <= s["window_start_ms"] <= t["to_ms"]]
            if match:
                tp += 1
                hit.update(id(t) for t in match)
            else:
                fps.append(s)
        missed = [t for t in ts if id(t) not in hit]
        out[kind] = {"status": "ok", "truths": len(ts), "signals": len(sigs), "true_positive_signals": tp,
                     "truths_hit": len(ts) - len(missed), "precision": _ratio(tp, len(sigs)),
                     "recall": _ratio(len(ts) - len(missed), len(ts)),
                     "false_positives": [_brief(s) for s in fps],
                     "missed": [{"subject": t["subject"], "window_from": t["window_from"], "window_to": t["window_to"]}
                                for t in missed]}
    return out


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """Wilson score interval of a proportion k/n (95% by default); None when n is 0.

    >>> wilson_interval(9, 10)
    (0.5958, 0.9821)
    """
    if n <= 0:
        return None
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / d
    return round(max(0.0, c - h), 4), round(min(1.0, c + h), 4)


def pool_planted(per_seed: dict[int, dict], min_precision: float = 0.9, min_recall: float = 0.8) -> dict:
    """Pool planted scores of several scenario seeds (``{seed: report["planted"]}``) per signal type.

    Pooled precision = true-positive signals / signals over all seeds; pooled recall = truths hit /
    truths. Each comes with its Wilson 95% interval, which treats signals (and truths) as independent:
    they are not quite (one item can give several signals), so read it as a guide to the noise, not a
    guarantee. ``seeds_meeting`` counts the seeds whose own precision and recall reach the targets (a
    seed without signals of the type, or without truths, does not meet them).

    >>> one = {"boost_exposure": {"status": "ok", "truths": 8, "signals": 10, "true_positive_signals": 9,
    ...                           "truths_hit": 8, "precision": 0.9, "recall": 1.0}}
    >>> two = {"boost_exposure": {"status": "ok", "truths": 8, "signals": 10, "true_positive_signals": 7,
    ...                           "truths_hit": 6, "precision": 0.7, "recall": 0.75}}
    >>> p = pool_planted({0: one, 1: two})["boost_exposure"]
    >>> p["precision"], p["recall"], p["seeds_meeting"], p["worst_seed_precision"]
    (0.8, 0.875, 1, [1, 0.7])
    """
    out: dict[str, dict] = {}
    kinds: list[str] = []
    for planted in per_seed.values():
        kinds += [k for k in planted if k not in kinds]
    for kind in kinds:
        rows = {seed: p[kind] for seed, p in per_seed.items() if kind in p and p[kind]["status"] == "ok"}
        if not rows:
            out[kind] = {"status": "not implemented", "seeds": len(per_seed)}
            continue
        sig = sum(r["signals"] for r in rows.values())
        tp = sum(r["true_positive_signals"] for r in rows.values())
        tr = sum(r["truths"] for r in rows.values())
        hit = sum(r["truths_hit"] for r in rows.values())
        meeting = [s for s, r in rows.items() if r["precision"] is not None and r["recall"] is not None
                   and r["precision"] >= min_precision and r["recall"] >= min_recall]
        worst_p = min(((s, r["precision"]) for s, r in rows.items() if r["precision"] is not None),
                      key=lambda x: x[1], default=None)
        worst_r = min(((s, r["recall"]) for s, r in rows.items() if r["recall"] is not None),
                      key=lambda x: x[1], default=None)
        out[kind] = {"status": "ok", "seeds": len(rows), "truths": tr, "signals": sig, "true_positive_signals": tp,
                     "truths_hit": hit, "precision": _ratio(tp, sig), "precision_ci95": wilson_interval(tp, sig),
                     "recall": _ratio(hit, tr), "recall_ci95": wilson_interval(hit, tr),
                     "seeds_meeting": len(meeting), "targets": {"precision": min_precision, "recall": min_recall},
                     "seeds_missing_targets": sorted(set(rows) - set(meeting)),
                     "worst_seed_precision": None if worst_p is None else list(worst_p),
                     "worst_seed_recall": None if worst_r is None else list(worst_r)}
    return out


def _brief(s: dict) -> dict:
    if "category_id" in s:
        return {"category_id": s["category_id"], "window": s["window_index"]}
    d = {"item_id": s["item_id"], "window": s["window_index"]}
    if "partner_item_id" in s:
        d["partner_item_id"] = s["partner_item_id"]
    return d


def _outcome(signals: list[dict], rec: _Recorder, oracle: _Oracle, th: Thresholds, rules: OutcomeRules,
             positives: dict) -> dict:
    out = {}
    for kind in IMPLEMENTED:
        sigs = [s for s in signals if s["type"] == kind]
        judged = correct = 0
        correct_subjects: set = set()
        for s in sigs:
            v = _judge(kind, s, oracle)
            if v is None:
                continue
            judged += 1
            if v:
                correct += 1
                correct_subjects.add(_sig_key(s))
        pos = positives[kind]
        recalled = len(pos & correct_subjects)
        out[kind] = {"signals": len(sigs), "evaluable": judged, "correct": correct,
                     "precision": _ratio(correct, judged), "positives": len(pos), "recalled": recalled,
                     "recall": _ratio(recalled, len(pos))}
    return out


def _judge(kind: str, s: dict, oracle: _Oracle) -> bool | None:
    w = s["window_start_ms"]
    if kind == "boost_exposure":
        return oracle.boost(s["item_id"], w)
    if kind == "restock_risk":
        return oracle.restock(s["item_id"], w, s["stock_remaining"])
    if kind == "overstock_risk":
        return oracle.overstock(s["item_id"], w, s["stock_remaining"])
    a, b = sorted((s["item_id"], s["partner_item_id"]))
    return oracle.bundle(a, b, w)


def _positives(rec: _Recorder, oracle: _Oracle, th: Thresholds, rules: OutcomeRules) -> dict:
    pos: dict[str, set] = {k: set() for k in IMPLEMENTED}
    for item, w, age, stock in rec.windows:
        key = (item,)
        if (age is not None and age <= th.new_item_windows and key not in pos["boost_exposure"]
                and oracle.boost(item, w)):
            pos["boost_exposure"].add(key)
        if stock is not None:
            if key not in pos["restock_risk"] and oracle.restock(item, w, stock):
                pos["restock_risk"].add(key)
            if (key not in pos["overstock_risk"] and age is not None and age >= th.overstock_min_age_windows
                    and oracle.overstock(item, w, stock)):
                pos["overstock_risk"].add(key)
    if rec.pairs is not None:
        k = rules.bundle_known_co
        for pair, per_w in rec.pairs.items():
            if sum(per_w.values()) < k:
                continue
            cum = 0
            for w in sorted(per_w):
                cum += per_w[w]
                if cum >= k:
                    if oracle.bundle(pair[0], pair[1], w):
                        pos["bundle_opportunity"].add(pair)
                    break
    return pos


def _record(sig: dict | None, kind: str, ev: Evidence, w_index: int, partner: str | None = None,
            score: float | None = None) -> dict:
    d = {"type": kind, "item_id": ev.item_id, "window_start_ms": ev.window_start, "window_index": w_index,
         "stock_remaining": ev.stock_remaining}
    if partner is not None:
        d["partner_item_id"] = partner
    if sig is not None:
        d["score"] = sig["score"]
        d["signal_id"] = sig["signal_id"]
    elif score is not None:
        d["score"] = score
    return d


class _LiveCount:
    """Sessions per item (``assoc.n_view`` / ``n_cart``), read live: the worker's global session counts."""

    __slots__ = ("_kind", "_s")

    def __init__(self, states: dict, kind: str):
        self._s, self._kind = states, kind

    def get(self, key: str, default=0):
        st = self._s.get(key)
        return st.assoc.count(self._kind) if st is not None else default


class _SessionsAndCategories:
    """The session and category owners of the worker, single-partition: what the lead wires next.

    Sessions (keyed ``user:<pseudonym>``) close by watermark through a :class:`~.sessions.DueIndex`;
    each closed session teaches every item it touched its co-view / co-cart partners (the item records
    of :meth:`~.sessions.SessionSummary.item_records`, applied once per id). Categories close their
    windows when the watermark passes them and are judged by :func:`~.decisions.decide_category`.
    """

    def __init__(self, cfg: WindowConfig, scfg: SessionConfig, th: Thresholds, sim: Simulator, sessions: bool,
                 categories: bool):
        self.cfg, self.scfg, self.th, self.sim = cfg, scfg, th, sim
        self.sessions_on, self.categories_on = sessions, categories
        self.users: dict[str, UserSessions] = {}
        self.due = DueIndex()
        self.totals = SessionTotals()
        self.propensity = PropensityModel()  # one model here; the worker keeps one per owner partition
        self.sessions_closed = 0
        self.sessions_ordered = 0
        self.max_open_users = 0
        self.cats: dict[str, CategoryState] = {}
        self.cat_memory: dict[str, SignalMemory] = {}
        self.boundary: int | None = None

    def apply(self, e) -> None:
        if self.sessions_on:
            for key, rec in route_session_records(e):
                u = self.users.get(key)
                if u is None:
                    u = self.users[key] = UserSessions(key)
                u.apply(rec, self.scfg)
                self.due.push(key, u.next_due_ms(self.scfg))
            self.max_open_users = max(self.max_open_users, len(self.users))
        if self.categories_on:
            for key, rec in route_category_records(e):
                c = self.cats.get(key)
                if c is None:
                    c = self.cats[key] = CategoryState(rec["c"], new_windows=self.th.new_item_windows)
                c.apply(rec, self.cfg)

    def close_sessions(self, watermark: int) -> None:
        nxt = self.due.next_due_ms()
        if nxt is None or nxt > watermark:
            return
        for key in self.due.pop_due(watermark):
            u = self.users[key]
            for summary in u.close(watermark, self.scfg):
                self.sessions_closed += 1
                self.sessions_ordered += summary.ordered
                self.totals.add(summary)
                # As the worker does: predict the purchase propensity, then learn; each touched item
                # learns the session's co-views and adds the propensity to its expected conversions.
                x, y = summary.propensity_example()
                p = self.propensity.predict_learn_one(x, y)
                for item, rec in summary.item_records(round(p, 6)):
                    self.sim.state(item).apply_session(rec, self.cfg)
            nxt = u.next_due_ms(self.scfg)
            if nxt is None and u.is_empty():
                del self.users[key]
            else:
                self.due.push(key, nxt)

    def close_categories(self, watermark: int, w_index: Callable, signals: list) -> None:
        b = self.cfg.start_of(max(0, watermark - self.cfg.grace_ms))
        if self.boundary is not None and b <= self.boundary:
            return
        self.boundary = b
        cfg = self.cfg
        newest = b - cfg.size_ms
        for key in sorted(self.cats):
            c = self.cats[key]
            if c.first_seen is None:
                continue
            start = cfg.start_of(c.first_seen) if c.closed_through is None else c.closed_through + cfg.size_ms
            # as the worker does: one window at a time, each judged as the category stands at its end
            for step in close_steps(start, newest, c.windows, cfg.size_ms):
                for cw in c.close_windows(cfg, step + cfg.size_ms + cfg.grace_ms):
                    ev = cadence_evidence(c, cfg, self.th, window_start=cw.start_ms)
                    if ev is None:
                        continue
                    mem = self.cat_memory.get(key)
                    if mem is None:
                        mem = self.cat_memory[key] = SignalMemory()
                    for sig in decide_category(ev, mem, CADENCE_MODEL_VERSION, self.th):
                        signals.append({"type": sig["type"], "category_id": ev.category_id,
                                        "window_start_ms": ev.window_start, "window_index": w_index(ev.window_start),
                                        "score": sig["score"], "signal_id": sig["signal_id"]})

    def homogeneity(self, cw: ClosedWindow, ev: Evidence, mem: SignalMemory, n_total: int, item_orders) -> list[dict]:
        th = self.th
        if ev.age_windows is None or ev.age_windows > th.new_item_windows:
            mem.clear("homogeneity_warning")
            return []
        st = cw.state
        nb = neighbourhood_evidence(st.assoc, item_orders, n_total, _LiveCount(self.sim.states, "view"),
                                    self.totals.view_sessions, _LiveCount(self.sim.states, "cart"),
                                    self.totals.cart_sessions, th)
        return decide_homogeneity(ev, nb, mem, HOMOGENEITY_MODEL_VERSION, th)

    def report(self) -> dict:
        return {"sessions_closed": self.sessions_closed, "sessions_ordered": self.sessions_ordered,
                "view_sessions": self.totals.view_sessions, "cart_sessions": self.totals.cart_sessions,
                "users_held_max": self.max_open_users, "categories": len(self.cats)}


def run_backtest(events: Iterable[dict], cfg: WindowConfig, scorer, thresholds: Thresholds = DEFAULT_THRESHOLDS,
                 truths: list[dict] | None = None, *, outcome_rules: OutcomeRules = OutcomeRules(),
                 baselines: bool = True, keep_signals: bool = False, decide: Callable = decide_item,
                 sessions: bool = True, categories: bool = True,
                 session_config: SessionConfig | None = None) -> dict:
    """Replay ``events`` (dicts with ``kind``) and score the signals; returns a JSON-ready report.

    ``decide`` is :func:`~.decisions.decide_item` (what the worker runs); pass a variant with the same
    signature to measure a proposed rule change on the same replay. ``sessions`` / ``categories``:
    also run the session owners (co-views for ``homogeneity_warning``) and the category owners
    (``accelerate_cadence`` / ``slow_cadence``); the session grace is the window grace.
    """
    t0 = time.perf_counter()
    th = thresholds
    sim = Simulator(cfg)
    side = _SessionsAndCategories(cfg, session_config or SessionConfig(grace_ms=cfg.grace_ms), th, sim,
                                  sessions, categories)
    rec = _Recorder(cfg, track_pairs=True)
    live_orders = _LiveOrders(sim.states)
    memories: dict[str, SignalMemory] = {}
    naive_mem: dict[str, SignalMemory] = {}
    signals: list[dict] = []
    naive: list[dict] = []
    invalid: dict[str, int] = defaultdict(int)
    pending: list[ClosedWindow] = []
    n_events = 0
    n_windows = 0
    origin: list[int] = []

    def w_index(ms: int) -> int:
        return (ms - origin[0]) // cfg.size_ms

    def score_batch() -> None:
        # == stream/pipeline.py Worker._score_batch, without Kafka: keep in step ==
        nonlocal n_windows
        windows = list(pending)
        pending.clear()
        rows = [features.feature_row(cw, cfg) for cw in windows]
        preds = scorer.predict(rows, windows)
        n_total = sim.n_orders
        for cw, pred in zip(windows, preds):
            ev = features.evidence(cw, cfg, pred, live_orders, n_total)
            mem = memories.get(cw.item_id)
            if mem is None:
                mem = memories[cw.item_id] = SignalMemory()
            for sig in decide(ev, mem, scorer.version, th):
                partner = sig["evidence"].get("partner_item_id") if sig["type"] == "bundle_opportunity" else None
                signals.append(_record(sig, sig["type"], ev, w_index(ev.window_start), partner))
            # == end of the worker's lines ==
            if sessions:  # homogeneity_warning: what the lead adds to the worker's lines
                for sig in side.homogeneity(cw, ev, mem, n_total, live_orders):
                    r = _record(sig, sig["type"], ev, w_index(ev.window_start))
                    r["substitutes"] = [x["item_id"] for x in sig["evidence"]["substitutes"]]
                    signals.append(r)
            rec.window(cw, ev)
            n_windows += 1
            if baselines:
                _run_naive(cw, ev)

    def _run_naive(cw: ClosedWindow, ev: Evidence) -> None:
        mem = naive_mem.get(cw.item_id)
        if mem is None:
            mem = naive_mem[cw.item_id] = SignalMemory()
        u = rec.units[cw.item_id]
        hist = [u.get(ev.window_start - k * cfg.size_ms, 0.0) for k in (2, 1, 0)]
        co_pairs = []
        st = cw.state
        if st.assoc.n_item >= th.bundle_min_co_count:
            for partner, cnt, _err in st.assoc.counter("buy").items():
                if cnt < th.bundle_min_co_count:
                    break
                if cw.item_id < partner:
                    co_pairs.append(partner)
        cond = _naive(ev, hist, th, co_pairs)
        wi = w_index(ev.window_start)
        for kind in ("boost_exposure", "restock_risk", "overstock_risk"):
            if _gate(mem, kind, kind, cond[kind], ev, th):
                naive.append(_record(None, kind, ev, wi))
        for partner in sorted(co_pairs):
            key = f"bundle_opportunity:{partner}"
            if _gate(mem, key, "bundle_opportunity", True, ev, th):
                naive.append(_record(None, "bundle_opportunity", ev, wi, partner))
        # pairs no longer above the count cannot drop (counts only grow): nothing to clear

    def feed():
        nonlocal n_events
        for obj in events:
            if sessions:  # sessions the watermark has passed teach their items before those windows are judged
                side.close_sessions(sim.watermark)
            if pending:  # the simulator asks for the next event: the previous close is complete
                score_batch()
            if categories and origin:
                side.close_categories(sim.watermark, w_index, signals)
            n_events += 1
            kind = obj.get("kind") if isinstance(obj, dict) else None
            try:
                e = validate_event(kind, obj, _identity)
            except (Invalid, KeyError) as exc:
                invalid[getattr(exc, "code", "unknown_kind")] += 1
                continue
            if not origin:
                origin.append(cfg.start_of(e.ts_ms))
            if kind == "order":
                rec.order(e)
            if not cfg.is_late(e.ts_ms, sim.watermark):  # the simulator refuses late events: so do the owners
                side.apply(e)
            yield e

    # Sessions the watermark has passed teach their items before those windows close, as in the worker.
    close_sessions = (lambda: side.close_sessions(sim.watermark)) if sessions else None
    for cw in sim.run(feed(), before_close=close_sessions):  # feed() reads and clears pending between windows
        pending.append(cw)  # noqa: PERF402
    if sessions:
        side.close_sessions(sim.watermark)
    if pending:
        score_batch()
    if categories and origin:
        side.close_categories(sim.watermark, w_index, signals)

    oracle = _Oracle(rec, th, outcome_rules)
    positives = _positives(rec, oracle, th, outcome_rules)
    report: dict = {
        "events": n_events, "invalid_events": dict(invalid), "outcomes": dict(sim.outcomes),
        "items": len([k for k in sim.states if not k.startswith(SESSION_KEY_PREFIX)]), "windows_closed": n_windows,
        "window_ms": cfg.size_ms, "data_windows": (rec.windows_after(rec.first_window) + 1) if rec.first_window is not None else 0,
        "scorer": getattr(scorer, "version", type(scorer).__name__), "thresholds": asdict(th),
        "outcome_rules": asdict(outcome_rules),
        "signals": _count(signals), "baseline_signals": _count(naive) if baselines else None,
        "outcome": _outcome(signals, rec, oracle, th, outcome_rules, positives),
        "sessions_and_categories": side.report(),
    }
    if baselines:
        report["outcome_baseline"] = _outcome(naive, rec, oracle, th, outcome_rules, positives)
    if truths is not None:
        report["truths"] = _count([{"type": t["type"]} for t in truths])
        report["planted"] = _planted(signals, truths)
        if baselines:
            # no naive rule exists for the session and category types: nothing to report for them
            report["planted_baseline"] = {k: v for k, v in _planted(naive, truths).items() if k not in PLANTED_ONLY}
    if keep_signals:
        report["signal_list"] = signals
        report["baseline_signal_list"] = naive if baselines else None
    report["elapsed_s"] = round(time.perf_counter() - t0, 2)
    return report


def _identity(s: str) -> str:
    return s


def _count(sigs: list[dict]) -> dict:
    out: dict[str, int] = {}
    for s in sigs:
        out[s["type"]] = out.get(s["type"], 0) + 1
    return dict(sorted(out.items()))
