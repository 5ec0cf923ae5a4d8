"""Seeded synthetic event streams with planted truths, for the backtest.

:func:`generate` returns ``(events, truths)``: event dicts in the input contract
(each with a ``kind``: clickstream, order or catalog), in event-time order, and
the planted truths: which signal should fire, for which subject, in which
window range. Same seed and arguments, same output (``random.Random(seed)``
only; no clock, no environment).

Windows are days by default (the thresholds count days: new for 14, restock
lead 3, overstock cover 60). The stream is a background of steady items with
noise (weekly cycle, Poisson counts, random baskets of 1-3 items, stock
replenished below 8 windows of demand) plus planted scenarios:

====  ====================  ========================================================  ===============
 id    truth type            what is planted                                           subject
====  ====================  ========================================================  ===============
 a     boost_exposure        a launch whose views and carts grow ~1.35x per window,    item
                             conversion constant
 b     restock_risk          stock S and a sales rate that exhausts it; replenished    item
                             only 4 windows after the stock-out
 c     overstock_risk        stock of ~150+ windows of flat or falling demand, item    item
                             older than ``overstock_min_age_windows``
 d     bundle_opportunity    two items put together in ~1.5 extra orders per window    item pair
 e     homogeneity_warning   a launch viewed in the same sessions (one shopper, two    item (its
                             views 30 s apart, ~12 a window) as an existing item but   substitute in
                             bought with it only by chance                             the truth)
 f     slow_cadence          six launches in a category of ~150 units a window that    category
                             either take their units from the established items
                             (``cat-cad-sat``) or sell nothing (``cat-cad-flop``)
 g     accelerate_cadence    six (five) launches, each adding demand while the         category
                             established items keep theirs (``cat-cad-grow[2]``)
====  ====================  ========================================================  ===============

Near-misses, which must NOT fire, make precision meaningful (item ids carry the
role, e.g. ``nm-oldgrow-1``): old items growing as fast as (a); new items with
high flat interest; new items whose views surge while units do not follow;
stock replenished just in time; big stock with rising demand; two staples
co-bought often by chance (lift ~1); pairs co-bought mildly above chance
(lift ~1.2-1.6); pairs co-bought far above chance but rarely (6 orders); two old
items compared as often as (e); a launch compared with an existing item only
~0.3 times a window; a launch viewed beside many different items, none often;
categories whose demand rises with the established items while launches take
~1 %, whose launches add demand but take half of it from the established items,
or with no launches and falling demand.

Every other clickstream event is a session of its own (its own session id and a
random user). A launch planted for an item rule gets a category of its own
(``cat-solo-<item>``), so that category rules are judged on the planted
categories; ``generate`` draws everything added for (e)'s near-misses, (f) and
(g) from a second generator, so the background and (a)-(e) keep the clicks,
units and stock per window of the version without them (which baskets hold the
units, and when in its window an order falls, do change).

Window ranges in truths are inclusive window indices (0 = the window holding
``start_ms``) and the matching ``from_ms``/``to_ms`` window starts.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

START_MS = 1_790_812_800_000  # 2026-10-01T00:00:00Z
DEFAULT_LEAD = 3  # Thresholds.restock_lead_windows; the truth range of (b) is built around it
NEW_WINDOWS = 14  # Thresholds.new_item_windows
MIN_AGE = 7  # Thresholds.overstock_min_age_windows

SCENARIO_TYPES = {
    "a": "boost_exposure", "b": "restock_risk", "c": "overstock_risk", "d": "bundle_opportunity",
    "e": "homogeneity_warning", "f": "slow_cadence", "g": "accelerate_cadence",
}
CADENCE_PREFIX = "cat-cad-"  # the planted categories of (f) and (g) and their near-misses


def poisson(rng: random.Random, lam: float) -> int:
    """Deterministic Poisson draw (Knuth below 30, rounded normal above)."""
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit = math.exp(-lam)
    k, p = 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


@dataclass
class _Item:
    item_id: str
    category: str
    price: float
    launch_w: int | None  # window of the catalog launch inside the run; None: launched before the run
    age0: int = 200  # windows since launch at window 0 (items launched before the run)
    views: list = field(default_factory=list)  # expected views per window
    carts: list = field(default_factory=list)
    units: list = field(default_factory=list)  # expected units per window (before the stock cap)
    stock0: int | None = None  # opening stock (None: the catalog says nothing about stock)
    refill_below: float | None = None  # replenish when remaining < this many windows of demand ...
    refill_to: float = 20.0  # ... up to this many windows of demand
    refill_at: dict = field(default_factory=dict)  # window -> stock set at its start (explicit)
    no_refill: bool = False
    refill_after_out: int | None = None  # replenish this many windows after the stock ran out
    pack: int = 1  # > 1: bought in lines of this many units (cases), so few baskets carry many units


class _Gen:
    def __init__(self, seed: int, n_windows: int, window_ms: int, start_ms: int):
        self.rng = random.Random(seed)
        self.n = n_windows
        self.w_ms = window_ms
        self.t0 = start_ms - start_ms % window_ms
        self.items: list[_Item] = []
        self.events: list[tuple] = []  # (ts, order, tiebreak, event)
        self.truths: list[dict] = []
        self.lines: list[list] = [[] for _ in range(n_windows)]  # per window: (item, qty, price, category)
        self.extra_orders: list[list] = [[] for _ in range(n_windows)]  # per window: baskets planted on top
        self.sold: dict[str, list] = {}
        self._seq = 0

    # -- helpers -------------------------------------------------------------------------
    def ts(self, w: int) -> int:
        return self.t0 + w * self.w_ms + self.rng.randrange(1000, self.w_ms - 1000)

    def wstart(self, w: int) -> int:
        return self.t0 + w * self.w_ms

    def truth(self, kind: str, scenario: str, subject: dict, w_from: int, w_to: int, note: str) -> None:
        w_from, w_to = max(0, w_from), min(self.n - 1, w_to)
        self.truths.append({"type": kind, "scenario": scenario, "subject": subject, "window_from": w_from,
                            "window_to": w_to, "from_ms": self.wstart(w_from), "to_ms": self.wstart(w_to),
                            "implemented": True, "note": note})

    def profile(self, base: float, launch_w: int | None = None, season: float = 0.15) -> list:
        phase = self.rng.uniform(0, 2 * math.pi)
        return [0.0 if launch_w is not None and w < launch_w else
                base * (1 + season * math.sin(2 * math.pi * w / 7 + phase)) for w in range(self.n)]

    def add(self, it: _Item) -> _Item:
        if it.launch_w is not None and not it.category.startswith(CADENCE_PREFIX):
            # A launch planted for an item rule gets a category of its own (set after the draw, so the
            # stream is otherwise unchanged): category rules are judged on the planted categories only,
            # and a one-launch category is never judged (Thresholds.cadence_min_launches).
            it.category = f"cat-solo-{it.item_id}"
        for name in ("views", "carts", "units"):
            if not getattr(it, name):
                setattr(it, name, [0.0] * self.n)
        self.items.append(it)
        return it

    def catalog(self, it: _Item, ts: int, stock: int | None) -> None:
        launched = self.wstart(it.launch_w) if it.launch_w is not None else self.t0 - it.age0 * self.w_ms
        rec = {"kind": "catalog", "item_id": it.item_id, "ts": ts, "title": f"Product {it.item_id}",
               "category_id": it.category, "price": it.price, "status": "live", "launched_at": launched}
        if stock is not None:
            rec["stock"] = int(stock)
        self.events.append((ts, 0, it.item_id, rec))

    def click(self, it: _Item, w: int, etype: str, session: str | None = None, ts: int | None = None,
              user: str | None = None) -> None:
        self._seq += 1
        drawn = f"u{self.rng.randrange(5000)}"  # drawn even when given: the other events stay where they were
        user = user or drawn
        ts = self.ts(w) if ts is None else ts
        rec = {"kind": "clickstream", "event_id": f"c{self._seq}", "ts": ts, "user_id": user,
               "session_id": session or f"s{self._seq}", "event_type": etype, "item_id": it.item_id,
               "category_id": it.category, "price": it.price}
        self.events.append((ts, 1, rec["event_id"], rec))

    # -- emission ------------------------------------------------------------------------
    def emit_items(self) -> None:
        rng = self.rng
        for it in self.items:
            start = 0 if it.launch_w is None else it.launch_w
            remaining = it.stock0
            out_seen = False
            self.catalog(it, self.wstart(start), it.stock0)
            sold = self.sold[it.item_id] = [0] * self.n
            for w in range(start, self.n):
                if w in it.refill_at:
                    remaining = it.refill_at[w]
                    self.catalog(it, self.wstart(w), remaining)
                for _ in range(poisson(rng, it.views[w])):
                    self.click(it, w, "view")
                for _ in range(poisson(rng, it.carts[w])):
                    self.click(it, w, "add_to_cart")
                u = poisson(rng, it.units[w])
                if remaining is not None:
                    u = min(u, remaining)
                    remaining -= u
                sold[w] = u
                if remaining == 0 and it.refill_after_out is not None and not out_seen:
                    out_seen = True
                    if w + it.refill_after_out < self.n:
                        it.refill_at[w + it.refill_after_out] = math.ceil(25 * it.units[w])
                    it.no_refill = False  # back to the normal policy after the planted stock-out
                while u > 0:  # mostly one unit per line, sometimes two
                    q = min(u, it.pack) if it.pack > 1 else 2 if u >= 2 and rng.random() < 0.15 else 1
                    self.lines[w].append((it, q))
                    u -= q
                rate = it.units[min(w + 1, self.n - 1)]
                if (remaining is not None and it.refill_below is not None and not it.no_refill and w + 1 < self.n
                        and (w + 1) not in it.refill_at and remaining < it.refill_below * rate):
                    it.refill_at[w + 1] = math.ceil(it.refill_to * rate)

    def emit_orders(self) -> None:
        rng = self.rng
        n_orders = 0
        for w in range(self.n):
            lines = self.lines[w]
            rng.shuffle(lines)
            baskets: list[list] = []
            i = 0
            while i < len(lines):
                size = rng.choices((1, 2, 3), (0.5, 0.3, 0.2))[0]
                basket, seen = [], set()
                while i < len(lines) and len(basket) < size:
                    it, q = lines[i]
                    if it.item_id in seen:
                        break
                    seen.add(it.item_id)
                    basket.append((it, q))
                    i += 1
                baskets.append(basket)
            baskets.extend(self.extra_orders[w])
            for basket in baskets:
                n_orders += 1
                ts = self.ts(w)
                oid = f"o{w}-{n_orders}"
                rec = {"kind": "order", "order_id": oid, "ts": ts, "user_id": f"u{rng.randrange(5000)}",
                       "items": [{"item_id": it.item_id, "quantity": q, "price": it.price, "category_id": it.category}
                                 for it, q in basket]}
                self.events.append((ts, 2, oid, rec))

    def out(self) -> tuple[list[dict], list[dict]]:
        self.emit_items()
        self.emit_orders()
        self.events.sort(key=lambda e: (e[0], e[1], e[2]))
        return [e[3] for e in self.events], self.truths


def _stock_out_window(sold: list, stock: int, first: int) -> int | None:
    cum = 0
    for w in range(first, len(sold)):
        cum += sold[w]
        if cum >= stock:
            return w
    return None


def generate(seed: int = 0, n_windows: int = 60, n_background: int = 200, window_ms: int = 86_400_000,
             start_ms: int = START_MS, lead_windows: int = DEFAULT_LEAD) -> tuple[list[dict], list[dict]]:
    """Events (dicts with ``kind``, event-time order) and planted truths; deterministic per arguments."""
    if n_windows < 40:
        raise ValueError("scenarios need at least 40 windows")
    g = _Gen(seed, n_windows, window_ms, start_ms)
    rng = g.rng
    n = n_windows
    cats = [f"cat-{k}" for k in range(8)]

    def price() -> float:
        return round(rng.uniform(3, 80), 2)

    # -- background: steady old items with noise; most with stock and a replenishment policy
    for k in range(n_background):
        v = math.exp(rng.uniform(math.log(3), math.log(14)))
        it = g.add(_Item(f"bg-{k:04d}", rng.choice(cats), price(), None, age0=rng.randrange(30, 400)))
        it.views = g.profile(v)
        it.carts = [x * 0.3 for x in it.views]
        it.units = [x * 0.15 for x in it.views]
        if v * 0.15 >= 1.0 and rng.random() < 0.7:
            it.stock0 = int(v * 0.15 * rng.uniform(12, 30))
            it.refill_below, it.refill_to = 8.0, rng.uniform(15, 30)
    # staples: bought in many baskets; co-bought by chance (lift ~1) -> no bundle
    for k in range(2):
        it = g.add(_Item(f"nm-staple-{k}", "cat-staples", 2.5, None, age0=500))
        it.views = g.profile(45.0)
        it.carts = [x * 0.4 for x in it.views]
        it.units = [x * 0.3 for x in it.views]

    # -- (a) boost_exposure: launches taking off, conversion constant
    for k in range(8):
        launch = 4 + k * 5 if 4 + k * 5 + NEW_WINDOWS < n else rng.randrange(5, n - NEW_WINDOWS)
        flat = rng.choice((0, 0, 2, 3))  # some take off right away, some after a few quiet windows
        it = g.add(_Item(f"sc-boost-{k}", rng.choice(cats), price(), launch))
        base, grow, conv = rng.uniform(5, 7), rng.uniform(1.3, 1.45), rng.uniform(0.12, 0.2)
        peak = None
        for w in range(launch, n):
            j = w - launch
            if j < flat:
                x = base
            elif peak is None and j - flat < 7:
                x = base * grow ** (j - flat + 1)
            else:
                peak = peak or base * grow ** 7
                x = peak
            it.views[w], it.carts[w], it.units[w] = x * 0.75, x * 0.25, x * conv
        g.truth("boost_exposure", "a", {"item_id": it.item_id}, launch + max(flat, 1), launch + NEW_WINDOWS,
                f"launch at window {launch}, interest x{grow:.2f} per window from window {launch + flat}, "
                f"conversion {conv:.2f} constant")
    # near-misses of (a): old items growing as fast; new items with high flat interest; view surges without units
    for k in range(4):
        it = g.add(_Item(f"nm-oldgrow-{k}", rng.choice(cats), price(), None, age0=rng.randrange(40, 300)))
        s = rng.randrange(8, n - 20)
        for w in range(n):
            x = 6 * 1.35 ** min(max(0, w - s), 9)
            it.views[w], it.carts[w], it.units[w] = x * 0.75, x * 0.25, x * 0.15
    for k in range(4):
        launch = rng.randrange(4, n - NEW_WINDOWS)
        it = g.add(_Item(f"nm-newflat-{k}", rng.choice(cats), price(), launch))
        it.views = g.profile(55.0, launch, season=0.0)
        it.carts = [x * 0.3 for x in it.views]
        it.units = [x * 0.12 for x in it.views]
    for k in range(3):
        launch = rng.randrange(4, n - NEW_WINDOWS)
        s = launch + rng.randrange(4, 7)
        it = g.add(_Item(f"nm-surge-{k}", rng.choice(cats), price(), launch))
        for w in range(launch, n):
            x = 15.0 if w < s else 45.0 * 1.3 ** min(w - s, 6)
            it.views[w], it.carts[w], it.units[w] = x * 0.8, x * 0.2, 3.0
    # -- (b) restock_risk: stock runs out, replenished only after the stock-out
    restock_items = []
    for k in range(6):
        old = k % 2 == 0
        launch = None if old else rng.randrange(2, 12)
        it = g.add(_Item(f"sc-restock-{k}", rng.choice(cats), price(), launch, age0=rng.randrange(30, 200)))
        r = rng.uniform(3, 8)
        it.views = g.profile(r / 0.15, launch, season=0.1)
        it.carts = [x * 0.3 for x in it.views]
        it.units = [x * 0.15 for x in it.views]
        target = rng.randrange(18, n - 12)
        it.stock0 = int(r * (target - (launch or 0)))
        it.no_refill = True
        it.refill_after_out = 4
        it.refill_below, it.refill_to = 8.0, 25.0
        restock_items.append((it, r))
    # near-misses of (b): replenished with about 5 windows of demand still on hand
    for k in range(3):
        it = g.add(_Item(f"nm-justintime-{k}", rng.choice(cats), price(), None, age0=rng.randrange(30, 200)))
        r = rng.uniform(3, 8)
        it.views = g.profile(r / 0.15, season=0.1)
        it.carts = [x * 0.3 for x in it.views]
        it.units = [x * 0.15 for x in it.views]
        it.stock0 = int(r * rng.uniform(14, 20))
        it.refill_below, it.refill_to = 5.5, 18.0
    # -- (c) overstock_risk: big stock, flat or falling demand, item old enough
    for k in range(5):
        launch = None if k < 3 else rng.randrange(3, 15)
        it = g.add(_Item(f"sc-overstock-{k}", rng.choice(cats), price(), launch, age0=rng.randrange(30, 300)))
        r = rng.uniform(1.5, 3.5)
        falling = k % 2 == 1
        for w in range(launch or 0, n):
            f = max(0.4, 1 - 0.012 * w) if falling else 1.0
            it.views[w] = r / 0.15 * f
            it.carts[w] = it.views[w] * 0.3
            it.units[w] = it.views[w] * 0.15
        it.stock0 = int(r * rng.uniform(150, 250))
        first = (launch + MIN_AGE) if launch is not None else 3
        g.truth("overstock_risk", "c", {"item_id": it.item_id}, first, n - 1,
                f"stock {it.stock0} against ~{r:.1f} units/window, demand {'falling' if falling else 'flat'}")
    # near-misses of (c): big stock but demand rising fast; launched young
    for k in range(2):
        launch = rng.randrange(2, 6)
        it = g.add(_Item(f"nm-risingstock-{k}", rng.choice(cats), price(), launch))
        for w in range(launch, n):
            it.units[w] = 8.0 + 0.5 * (w - launch)
            it.views[w] = it.units[w] / 0.15 * 0.77
            it.carts[w] = it.views[w] * 0.3
        it.stock0 = int(sum(it.units[launch:launch + 45]) * 1.0)
        it.refill_below, it.refill_to = 8.0, 40.0
    # -- (d) bundle_opportunity: pairs planted in extra orders
    def pair_items(tag: str, own_units: float) -> tuple[_Item, _Item]:
        out = []
        for j in range(2):
            it = g.add(_Item(f"{tag}-{'ab'[j]}", rng.choice(cats), price(), None, age0=rng.randrange(30, 300)))
            it.views = g.profile(own_units / 0.15)
            it.carts = [x * 0.3 for x in it.views]
            it.units = [x * 0.15 for x in it.views]
            out.append(it)
        return out[0], out[1]

    def plant(a: _Item, b: _Item, rate: float, w_from: int, w_to: int, total: int | None = None) -> None:
        windows = list(range(w_from, w_to + 1))
        counts = {w: poisson(rng, rate) for w in windows}
        if total is not None:
            counts = {w: 0 for w in windows}
            for w in rng.sample(windows, total):
                counts[w] = 1
        for w, c in counts.items():
            for _ in range(c):
                g.extra_orders[w].append([(a, 1), (b, 1)])
                # the planted baskets are real clicks too
                g.click(a, w, "add_to_cart")
                g.click(b, w, "add_to_cart")

    for k in range(4):
        a, b = pair_items(f"sc-bundle-{k}", rng.uniform(0.8, 2.0))
        p = rng.randrange(3, 28)
        plant(a, b, rng.uniform(1.2, 2.0), p, n - 1)
        g.truth("bundle_opportunity", "d", {"item_id": a.item_id, "partner_item_id": b.item_id}, p, n - 1,
                f"co-bought in ~1.5 extra orders per window from window {p}")
    for k in range(2):  # mildly above chance: lift ~1.2-1.6, co-bought ~25-35 times (above bundle_min_co_count)
        # Chance co-purchases per window are ~u_a * u_b * 1.06 / lines (a line shares its basket with ~1.06
        # other lines; ~600 lines a window with the default background): ~0.3 at 13 units each, against 0.25
        # planted. (At 6 units each, chance was ~0.06 and the same 0.25 made a measured lift of 3-5.4, above
        # bundle_min_lift: a planted bundle in all but name, scored as a false positive when it fired.)
        a, b = pair_items(f"nm-mildpair-{k}", 13.0)
        plant(a, b, 0.25, 0, n - 1)
    for k in range(2):  # far above chance but rare
        a, b = pair_items(f"nm-rarepair-{k}", 1.0)
        plant(a, b, 0.0, 5, n - 1, total=6)
    # -- (e) homogeneity_warning: a near-duplicate launch, co-viewed, rarely co-bought
    def compare(a: _Item, b: _Item, w: int, tag: str, j: int) -> None:
        """One shopper's session viewing both items a few seconds apart."""
        sess = f"cmp-{tag}-{w}-{j}"
        user = f"uc-{tag}-{w}-{j}"
        t = g.ts(w)
        g.click(a, w, "view", session=sess, ts=t, user=user)
        g.click(b, w, "view", session=sess, ts=min(t + 30_000, g.wstart(w + 1) - 1), user=user)

    for k in range(3):
        existing = g.add(_Item(f"sc-dupbase-{k}", rng.choice(cats), price(), None, age0=rng.randrange(60, 300)))
        existing.views = g.profile(30.0, season=0.0)
        existing.carts = [x * 0.2 for x in existing.views]
        existing.units = [x * 0.12 for x in existing.views]
        launch = rng.randrange(5, n - NEW_WINDOWS - 5)
        dup = g.add(_Item(f"sc-dup-{k}", existing.category, round(existing.price * 0.95, 2), launch))
        existing.category = dup.category  # the pair's own category (see add)
        dup.views = g.profile(50.0, launch, season=0.0)
        dup.carts = [x * 0.2 for x in dup.views]
        dup.units = [x * 0.1 for x in dup.views]
        for w in range(launch, n):
            for j in range(poisson(rng, 12.0)):  # shoppers comparing the two in one session
                compare(existing, dup, w, f"e{k}", j)
        # The signal may come as soon as the launch window's comparisons are counted.
        g.truth("homogeneity_warning", "e", {"item_id": dup.item_id}, launch, launch + NEW_WINDOWS,
                f"co-viewed with {existing.item_id} in ~12 sessions per window, co-bought only by chance")
        g.truths[-1]["substitute_item_id"] = existing.item_id
    # Everything below draws from a second generator, after the draws the earlier version of this file
    # made here: the planted scenarios above keep their realisations (and the item rules their figures).
    for _ in range(2):
        for _k in range(6):
            price()
            rng.randrange(60, 300)
        rng.sample(range(10, n - 10), 8)
        for _k in range(8):
            price()
    main_rng = rng
    rng = g.rng = random.Random(f"launchpulse-scenarios-extra-{seed}")
    # near-misses of (e): two old items compared as often; a launch compared with an existing item only
    # rarely (~0.3 sessions per window); a launch viewed beside many different items, none often
    for k in range(2):
        a = g.add(_Item(f"nm-cmpold-{k}-a", f"cat-cmpold-{k}", price(), None, age0=rng.randrange(60, 300)))
        b = g.add(_Item(f"nm-cmpold-{k}-b", f"cat-cmpold-{k}", price(), None, age0=rng.randrange(60, 300)))
        for it in (a, b):
            it.views = g.profile(30.0, season=0.0)
            it.carts = [x * 0.2 for x in it.views]
            it.units = [x * 0.12 for x in it.views]
        for w in range(n):
            for j in range(poisson(rng, 12.0)):
                compare(a, b, w, f"old{k}", j)
    for k in range(2):
        base = g.add(_Item(f"nm-cmprare-{k}-base", f"cat-cmprare-{k}", price(), None, age0=rng.randrange(60, 300)))
        launch = rng.randrange(5, n - NEW_WINDOWS - 5)
        new = g.add(_Item(f"nm-cmprare-{k}", f"cat-cmprare-{k}", price(), launch))
        base.category = new.category
        for it, lw in ((base, None), (new, launch)):
            it.views = g.profile(30.0, lw, season=0.0)
            it.carts = [x * 0.2 for x in it.views]
            it.units = [x * 0.12 for x in it.views]
        for w in range(launch, n):
            for j in range(poisson(rng, 0.3)):
                compare(base, new, w, f"rare{k}", j)
    backgrounds = [it for it in g.items if it.item_id.startswith("bg-")]
    for k in range(2):
        launch = rng.randrange(5, n - NEW_WINDOWS - 5)
        new = g.add(_Item(f"nm-cmpmany-{k}", "cat-cmpmany", price(), launch))
        new.views = g.profile(30.0, launch, season=0.0)
        new.carts = [x * 0.2 for x in new.views]
        new.units = [x * 0.12 for x in new.views]
        for w in range(launch, n):
            for j in range(poisson(rng, 12.0)):
                compare(rng.choice(backgrounds), new, w, f"many{k}", j)
    # -- (f) slow_cadence and (g) accelerate_cadence: planted categories of 6 established items of ~25 units
    # per window and launches a few windows apart. The rules judge units over week-long halves: ~150 units
    # per window keep that mostly signal. Bought by the case (10 units a line) with few clicks per unit, so
    # that they neither swell the basket count the bundle lifts are measured against nor give the item
    # rules, which need interest, anything to judge.
    def category(tag: str, n_launch: int, old_units, new_units: float, every: int = 3) -> tuple[str, int]:
        """old_units(w, live) -> units of each established item; returns (category, first launch)."""
        cat = CADENCE_PREFIX + tag
        first = rng.randrange(12, max(13, min(22, n - 20)))
        olds = [g.add(_Item(f"{cat}-old{k}", cat, price(), None, age0=rng.randrange(60, 300), pack=10))
                for k in range(6)]
        news = [g.add(_Item(f"{cat}-new{k}", cat, price(), first + every * k, pack=10)) for k in range(n_launch)]
        for w in range(n):
            live = sum(1 for it in news if it.launch_w <= w)
            for it in olds:
                it.units[w] = old_units(w, live)
            for it in news:
                if it.launch_w <= w:
                    it.units[w] = new_units
            for it in olds + news:
                it.views[w], it.carts[w] = it.units[w] * 0.08, it.units[w] * 0.02
        return cat, first

    # (f1) the launches cannibalise: category units stay at 150 while each launch takes 20 of them
    cat, first = category("sat", 6, lambda w, live: (150.0 - 20.0 * live) / 6, 20.0)
    g.truth("slow_cadence", "f", {"category_id": cat}, first + 6, n - 1,
            f"6 launches from window {first}, 3 windows apart, taking their demand from the established items")
    # (f2) the launches do not sell: ~0.05 units per window each
    cat, first = category("flop", 6, lambda w, live: 25.0, 0.05)
    g.truth("slow_cadence", "f", {"category_id": cat}, first + 6, n - 1,
            f"6 launches from window {first}, 3 windows apart, that take no share of the category's demand")
    # (g) the launches add demand: each sells like an established item, which keep theirs
    cat, first = category("grow", 6, lambda w, live: 25.0, 25.0)
    g.truth("accelerate_cadence", "g", {"category_id": cat}, first + 6, n - 1,
            f"6 launches from window {first}, 3 windows apart, each adding demand; established items hold")
    cat, first = category("grow2", 5, lambda w, live: 25.0, 20.0, every=2)
    g.truth("accelerate_cadence", "g", {"category_id": cat}, first + 4, n - 1,
            f"5 launches from window {first}, 2 windows apart, each adding demand; established items hold")
    # near-misses of (f) and (g): demand rising with the established items while 4 launches take ~1 %;
    # launches adding demand but taking half of it from the established items; no launches, demand falling
    category("nm-oldgrow", 4, lambda w, live: 25.0 * 1.03 ** max(0, w - 10), 0.5)
    category("nm-growcannibal", 6, lambda w, live: (150.0 - 18.75 * live) / 6, 37.5)
    category("nm-quiet", 0, lambda w, live: 25.0 * 0.98 ** max(0, w - 10), 0.0)
    rng = g.rng = main_rng
    events, truths = g.out()
    # (b)'s truth needs the realised stock-out window (Poisson sales). It opens lead + 2 windows before that
    # window, or earlier, at the first window whose remaining stock is below the planted (expected) demand of
    # the next lead + 2 windows: when sales then run below that rate the stock-out comes later than expected,
    # and a signal given on the expected demand must not count as wrong for it.
    for it, r in restock_items:
        first = it.launch_w or 0
        sold = g.sold[it.item_id]
        w_out = _stock_out_window(sold, it.stock0, first)
        if w_out is None:
            continue
        w_expected = w_out
        left = it.stock0
        for w in range(first, w_out):
            left -= sold[w]
            if left < sum(it.units[w + 1:w + lead_windows + 3]):
                w_expected = w
                break
        w_from = min(w_out - lead_windows - 2, w_expected)
        note = f"stock {it.stock0} at ~{r:.1f} units/window runs out in window {w_out}"
        if w_expected < w_out - lead_windows - 2:
            note += f"; below {lead_windows + 2} windows of expected demand from window {w_expected}"
        g.truth("restock_risk", "b", {"item_id": it.item_id}, w_from, w_out, note)
    return events, truths
