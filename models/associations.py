"""Streaming item associations: bounded co-purchase / co-view / co-cart counters,
association-rule metrics (identical to mlxtend's ``association_rules``), a
complement / substitute split against a null model, and the read-path helpers
``rank_associations``, ``substitutes``, ``homogeneity``, ``bundle_candidates`` and
``provisional_partners``.

Pure and synchronous: no I/O, no environment, no asyncio.  Every state is a
JSON-serialisable dict of plain values carrying ``"version"``.

Data flow (stream layer, not here): each de-duplicated order is routed to the
owner of each of its items; for item ``A`` the owner calls
``ItemAssociations.learn_basket(partners=[other distinct items], ts_ms)``.
Sessions call ``learn_session("view" | "cart", partners, ts_ms)``.  Global
figures (``N`` baskets, ``n_B`` baskets containing ``B``) are passed into the
read-path functions as plain numbers.

Guarantee of :class:`PartnerCounter` (Space-Saving, Metwally et al. 2005)
-------------------------------------------------------------------------
Let ``k`` be the capacity and ``M`` the total of all increments the counter has
seen (``counter.total``; for co-purchase this is the sum over the item's
baskets of the number of other distinct items in the basket).  Then, at any
time:

1. every kept entry satisfies ``count - error <= true_count <= count``;
2. every partner that is *not* kept has ``true_count <= floor``, where
   ``floor`` is the largest count ever evicted (0 if nothing was evicted);
3. ``error <= floor <= M / k``; hence every partner with
   ``true_count > M / k`` is kept;
4. if nothing was ever evicted (``evictions == 0``) every count is EXACT
   (``error == 0``) and absent partners have true count 0.  Individual entries
   with ``error == 0`` are exact even after evictions (they were never
   evicted and re-inserted).

Capacity sizing (from the guarantee)
------------------------------------
To keep every pair with co-count ``>= s`` we need ``M / k < s``, i.e.
``k > M / s``.  For an item bought in ``n_A`` baskets, ``M = n_A * (b̄_A - 1)``
where ``b̄_A`` is the mean size of the baskets that contain it.  On the
Instacart sample the most popular item (product 24852, in 2,087 of 15,183
baskets) has ``M = 25,620`` (12.3 partners per basket), the largest of any
item, so ``s = 10`` needs ``k >= 2,563`` for "kept".  Kept counts are only
guaranteed EXACT (error 0) while the number of distinct partners ``D`` is
``<= k`` (no eviction); that item has ``D = 5,469``.  (Measured: with
``k = 4096`` all 592 pairs >= 10 are kept but 23 carry error 1.)  So
``DEFAULT_CAPACITY = 8192`` = the next power of two above
``max(M/s, D) = 5,469``: every pair with co-count ``>= 10`` is guaranteed kept
while ``M <= 81,910`` (about 3.2x the largest Instacart item, ~6,600 baskets
at 12.3 partners each), and every item of the sample is counted exactly.  Memory is
allocated lazily (a dict grows to ``min(distinct partners, k)``), so the
capacity costs nothing for the long tail.  For a given item use
:func:`capacity_for` (``ceil(n_A * mean_partners / s) + 1``) to size a
counter; for all-time counters that outgrow ``k * s`` use event-time windows
(each window has its own, smaller ``M``) or a larger capacity.  The read path
can always check the live figure: :meth:`PartnerCounter.guarantee`.

River's ``sketch.HeavyHitters`` is deliberately not used (it rejects
``support > epsilon``, the reverse of the Lossy-Counting requirement).
"""

from __future__ import annotations

import heapq
import math
from typing import Iterable, Mapping, Sequence

__all__ = [
    "STATE_VERSION",
    "DEFAULT_CAPACITY",
    "DEFAULT_SESSION_CAPACITY",
    "DEFAULT_MIN_SUPPORT_COUNT",
    "RELATION_THRESHOLDS",
    "BUNDLE_THRESHOLDS",
    "PROVISIONAL_WEIGHTS",
    "PartnerCounter",
    "ItemAssociations",
    "capacity_for",
    "rule_metrics",
    "null_model_z",
    "classify_relation",
    "rank_associations",
    "substitutes",
    "homogeneity",
    "bundle_candidates",
    "strongest_partners",
    "provisional_partners",
]

STATE_VERSION = 2  # 2: partner counts as one mapping

#: Co-purchase capacity per item (see "Capacity sizing" above).
DEFAULT_CAPACITY = 8192
#: Co-view / co-cart capacity per item (guarantee: all partners with count > M/k kept).
DEFAULT_SESSION_CAPACITY = 2048
#: Pairs below this co-count are never ranked.
DEFAULT_MIN_SUPPORT_COUNT = 10
HEAVY_COUNT = DEFAULT_MIN_SUPPORT_COUNT  # PartnerCounter indexes partners counted at least this often

#: Complement / substitute rule (table-driven).  ``z`` is the hypergeometric
#: z-score of the observed co-count against independence (see null_model_z).
#: complement: co-bought more than chance:  lift >= min_lift AND z >= min_z,
#:             computed on the LOWER bound ``count - error`` (conservative).
#: substitute: co-viewed or co-carted more than chance (session lift >=
#:             min_session_lift AND session z >= min_session_z on the lower
#:             bound) AND co-bought at or below chance (purchase lift computed
#:             on the UPPER bound <= max_purchase_lift).
#: anything else is "neutral".
RELATION_THRESHOLDS: dict[str, dict[str, float]] = {
    "complement": {"min_lift": 1.2, "min_z": 2.0},
    "substitute": {"min_session_lift": 1.5, "min_session_z": 2.0, "max_purchase_lift": 1.0},
}

#: Bundle candidates: complements with high lift and enough support.
BUNDLE_THRESHOLDS: dict[str, float] = {"min_lift": 2.0, "min_confidence": 0.02}

#: Cold start: weight of evidence from substitutes' partners vs category partners.
PROVISIONAL_WEIGHTS: dict[str, float] = {"substitute": 0.7, "category": 0.3}

_KINDS = ("buy", "view", "cart")


# ---------------------------------------------------------------------------
# Space-Saving counter
# ---------------------------------------------------------------------------


class PartnerCounter:
    """Bounded heavy-hitter counter (weighted Space-Saving) for one item's partners.

    Guarantee (capacity ``k``, total increments ``M = self.total``):
    kept entries satisfy ``count - error <= true <= count``; partners not kept
    have ``true <= floor``; ``error <= floor <= M / k`` so every partner with
    true count ``> M / k`` is kept; with no eviction every count is exact.

    >>> c = PartnerCounter(capacity=2)
    >>> for p in ["a", "b", "a", "c", "a"]:
    ...     c.add(p)
    >>> c.get("a")
    (3, 0)
    >>> c.evicted, c.evictions, c.floor
    (True, 1, 1)
    >>> c.get("c")                # replaced "b": count 2 = min 1 + 1, error 1
    (2, 1)
    >>> c.get("b")                # absent: true count in [0, floor]
    (1, 1)
    >>> PartnerCounter.from_state(c.to_state()).items() == c.items()
    True
    """

    __slots__ = ("capacity", "total", "evictions", "floor", "_count", "_error", "_buckets", "_heap", "_heavy")

    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        if int(capacity) < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = int(capacity)
        self.total = 0
        self.evictions = 0
        self.floor = 0
        self._count: dict[str, int] = {}
        self._error: dict[str, int] = {}  # sparse: only non-zero errors
        # count -> ordered set of partners; built lazily at the first eviction
        self._buckets: dict[int, dict[str, None]] | None = None
        self._heap: list[int] = []
        # Partners counted at least HEAVY_COUNT times, kept as counts grow (None: rebuilt by one scan
        # when read): as-of readers with a support floor take them without scanning every partner.
        self._heavy: dict[str, None] | None = {}

    # -- learning -----------------------------------------------------------

    def add(self, partner: str, count: int = 1) -> None:
        """Add ``count`` (>= 0) occurrences of ``partner``."""
        if count <= 0:
            if count == 0:
                return
            raise ValueError("count must be >= 0")
        self.total += count
        c = self._count
        old = c.get(partner)
        if old is not None:
            new = old + count
            c[partner] = new
            if new >= HEAVY_COUNT > old and self._heavy is not None:
                self._heavy[partner] = None
            if self._buckets is not None:
                self._move(partner, old, new)
            return
        if len(c) < self.capacity:
            # free slot; an absent partner has true count <= floor (0 if never evicted)
            base = self.floor
            c[partner] = base + count
            if base:
                self._error[partner] = base
            if base + count >= HEAVY_COUNT and self._heavy is not None:
                self._heavy[partner] = None
            if self._buckets is not None:
                self._bucket_add(partner, base + count)
            return
        self._evict_and_insert(partner, count)

    def update(self, partners: Iterable[str]) -> None:
        """Add 1 for each partner (fast path for a basket's partner list)."""
        c = self._count
        cap = self.capacity
        for p in partners:
            if self._buckets is None:  # no eviction yet: plain exact counting
                old = c.get(p)
                if old is not None:
                    c[p] = old + 1
                    self.total += 1
                    if old + 1 == HEAVY_COUNT and self._heavy is not None:
                        self._heavy[p] = None
                    continue
                if len(c) < cap:
                    c[p] = 1
                    self.total += 1
                    continue
            self.add(p, 1)

    def _build_buckets(self) -> None:
        b: dict[int, dict[str, None]] = {}
        for p, n in self._count.items():
            bk = b.get(n)
            if bk is None:
                b[n] = {p: None}
            else:
                bk[p] = None
        self._buckets = b
        self._heap = list(b)
        heapq.heapify(self._heap)

    def _bucket_add(self, partner: str, n: int) -> None:
        b = self._buckets
        bk = b.get(n)
        if bk is None:
            b[n] = {partner: None}
            heapq.heappush(self._heap, n)
            if len(self._heap) > 2 * len(b) + 64:  # drop stale heap entries
                self._heap = list(b)
                heapq.heapify(self._heap)
        else:
            bk[partner] = None

    def _move(self, partner: str, old: int, new: int) -> None:
        b = self._buckets
        bk = b[old]
        del bk[partner]
        if not bk:
            del b[old]
        self._bucket_add(partner, new)

    def _evict_and_insert(self, partner: str, count: int) -> None:
        if self._buckets is None:
            self._build_buckets()
        b, h = self._buckets, self._heap
        while True:
            m = h[0]
            bk = b.get(m)
            if bk:
                break
            heapq.heappop(h)
        victim = next(iter(bk))
        del bk[victim]
        if not bk:
            del b[m]
        del self._count[victim]
        self._error.pop(victim, None)
        self.evictions += 1
        if m > self.floor:
            self.floor = m
        self._count[partner] = m + count
        self._error[partner] = m
        if self._heavy is not None:
            self._heavy.pop(victim, None)
            if m + count >= HEAVY_COUNT:
                self._heavy[partner] = None
        self._bucket_add(partner, m + count)

    # -- reading ------------------------------------------------------------

    def get(self, partner: str) -> tuple[int, int]:
        """``(count, error)`` with ``count - error <= true <= count``.

        An absent partner returns ``(floor, floor)``: its true count is in
        ``[0, floor]`` (``(0, 0)``, exact zero, when nothing was ever evicted).
        """
        n = self._count.get(partner)
        if n is None:
            return (self.floor, self.floor)
        return (n, self._error.get(partner, 0))

    def __contains__(self, partner: str) -> bool:
        return partner in self._count

    def __len__(self) -> int:
        return len(self._count)

    @property
    def evicted(self) -> bool:
        return self.evictions > 0

    def items(self, min_count: int = 0) -> list[tuple[str, int, int]]:
        """Kept entries ``(partner, count, error)`` with ``count >= min_count``, largest count first, then partner id."""
        e = self._error
        rows = [(p, n, e.get(p, 0)) for p, n in self._count.items() if n >= min_count]
        rows.sort(key=lambda r: (-r[1], r[0]))
        return rows

    def heavy_counts(self, min_count: int = HEAVY_COUNT) -> dict[str, int]:
        """``{partner: count}`` of the kept partners counted at least ``min_count`` (>= HEAVY_COUNT) times,
        from the index kept as counts grow: no scan of every partner (a popular item has thousands).

        >>> c = PartnerCounter()
        >>> c.update(["a"] * 12 + ["b"] * 3)
        >>> c.heavy_counts(), c.heavy_counts(12), PartnerCounter.from_state(c.to_state()).heavy_counts()
        ({'a': 12}, {'a': 12}, {'a': 12})
        """
        if min_count < HEAVY_COUNT:
            raise ValueError(f"min_count must be >= {HEAVY_COUNT}: fewer are not indexed")
        c = self._count
        h = self._heavy
        if h is None:
            h = self._heavy = {p: None for p, n in c.items() if n >= HEAVY_COUNT}
        if not h:
            return {}  # (most items' co-view counters at a live boundary)
        return {p: c[p] for p in h if c[p] >= min_count}

    def counts_at_least(self, min_count: int) -> dict[str, int]:
        """``{partner: count}`` of the kept partners counted at least ``min_count`` times (a new dict):
        from the index when ``min_count >= HEAVY_COUNT``, else by a scan."""
        if min_count >= HEAVY_COUNT:
            return self.heavy_counts(min_count)
        if min_count <= 0:
            return dict(self._count)
        return {p: n for p, n in self._count.items() if n >= min_count}

    def guarantee(self) -> dict:
        """Live guarantee figures: every partner with true count > ``kept_above`` is kept."""
        return {
            "capacity": self.capacity,
            "total": self.total,
            "evictions": self.evictions,
            "floor": self.floor,
            "bound_m_over_k": self.total / self.capacity,
            "kept_above": self.floor,
            "exact": self.evictions == 0,
        }

    # -- state --------------------------------------------------------------

    def to_state(self) -> dict:
        # Counts as one mapping (orjson writes a dict without building Python rows; the worker
        # rewrites popular items' partner lists at every flush). Its order is the eviction order
        # among equal counts once something was evicted, so it is rebuilt in bucket order then.
        if self._buckets is None:
            counts = self._count
        else:
            c = self._count
            counts = {p: c[p] for n in sorted(self._buckets) for p in self._buckets[n]}
        return {
            "version": STATE_VERSION,
            "kind": "partner_counter",
            "capacity": self.capacity,
            "total": self.total,
            "evictions": self.evictions,
            "floor": self.floor,
            "counts": counts,
            "errors": self._error,
        }

    @classmethod
    def from_state(cls, state: Mapping) -> "PartnerCounter":
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported PartnerCounter state version {state.get('version')!r}")
        self = cls(state["capacity"])
        self.total = int(state["total"])
        self.evictions = int(state["evictions"])
        self.floor = int(state["floor"])
        self._count = {p: int(n) for p, n in state["counts"].items()}
        self._heavy = None
        self._error = {p: int(e) for p, e in state["errors"].items() if e}
        if self.evictions:
            self._build_buckets()
        return self

    def minus(self, later: Sequence["PartnerCounter"], min_count: int = 0) -> "PartnerCounter":
        """This counter less the counts of ``later`` ones (counters of windows after a point in time,
        each counting a subset of what this one counted): the counter as of that point.

        A later counter's own slack widens the error: with ``count - error <= true <= count`` for
        both, the difference keeps the guarantee with ``count - (later count - later error)`` and
        the errors summed. Partners left with nothing, or counted fewer than ``min_count`` times
        here, are dropped (then ``total`` still counts them).

        >>> a, w = PartnerCounter(), PartnerCounter()
        >>> for p in ["x", "y", "x", "z"]:
        ...     a.add(p)
        >>> for p in ["x", "z"]:
        ...     w.add(p)
        >>> a.minus([w]).items()
        [('x', 1, 0), ('y', 1, 0)]
        """
        out = PartnerCounter(self.capacity)
        out.evictions, out.floor = self.evictions, self.floor
        counts = self.counts_at_least(min_count)
        err = self._error
        errors = {p: err[p] for p in (counts.keys() & err.keys())} if err else {}
        total = self.total
        for c in later:
            if c is None:
                continue
            total -= c.total
            ce, cc = c._error, c._count
            # Only the partners kept on both sides (a set intersection, in C): a partner evicted or
            # below min_count here has nothing to take from. Subtraction commutes, so order is moot.
            for p in counts.keys() & cc.keys():
                e = ce.get(p, 0)
                counts[p] -= cc[p] - e
                if e:
                    errors[p] = errors.get(p, 0) + e
        out.total = max(0, total)
        out._count = {p: n for p, n in counts.items() if n > 0}
        out._error = {p: e for p, e in errors.items() if e and p in out._count}
        out._heavy = None
        if out.evictions:
            out._build_buckets()
        return out

    @classmethod
    def merged(cls, counters: Sequence["PartnerCounter"], capacity: int | None = None) -> "PartnerCounter":
        """Sum of counters (e.g. several windows) keeping the guarantee.

        A partner missing from one counter contributes that counter's
        ``floor`` to both its count and its error.  If the union exceeds
        ``capacity`` (default: the largest input capacity) the smallest entries
        are dropped and ``floor`` rises to the largest dropped count.
        """
        counters = [c for c in counters if c is not None]
        cap = capacity or max([c.capacity for c in counters] or [1])
        out = cls(cap)
        if not counters:
            return out
        floors = sum(c.floor for c in counters)
        keys: dict[str, None] = {}
        for c in counters:
            keys.update(dict.fromkeys(c._count))
        acc: list[tuple[str, int, int]] = []
        for p in keys:
            n = err = 0
            for c in counters:
                cn = c._count.get(p)
                if cn is None:
                    n += c.floor
                    err += c.floor
                else:
                    n += cn
                    err += c._error.get(p, 0)
            acc.append((p, n, err))
        acc.sort(key=lambda r: (-r[1], r[0]))
        floor = floors
        if len(acc) > cap:
            floor = max(floor, acc[cap][1])
            out.evictions += len(acc) - cap
            acc = acc[:cap]
        out.total = sum(c.total for c in counters)
        out.evictions += sum(c.evictions for c in counters)
        out.floor = floor
        for p, n, err in acc:
            out._count[p] = n
            if err:
                out._error[p] = err
        out._heavy = None
        if out.evictions:
            out._build_buckets()
        return out


def capacity_for(n_item: int, mean_partners: float, min_support_count: int = DEFAULT_MIN_SUPPORT_COUNT,
                 cap: int = 65536) -> int:
    """Smallest capacity whose guarantee keeps every pair with co-count >= ``min_support_count``.

    ``M = n_item * mean_partners`` and we need ``M / k < s``.

    >>> capacity_for(2087, 25620 / 2087, 10)   # Instacart's most popular item
    2563
    """
    m = n_item * mean_partners
    return max(1, min(int(cap), math.floor(m / min_support_count) + 1))


# ---------------------------------------------------------------------------
# Per-item state
# ---------------------------------------------------------------------------


_IDX = {"buy": 0, "view": 1, "cart": 2}


class _Slot:
    """Counters for one time span (all-time or one tumbling window)."""

    __slots__ = ("n", "counters")

    def __init__(self):
        self.n = [0, 0, 0]  # buy, view, cart (indexed by _IDX)
        self.counters: list[PartnerCounter | None] = [None, None, None]

    def to_state(self) -> dict:
        return {
            "n": {k: self.n[i] for k, i in _IDX.items()},
            "counters": {k: (self.counters[i].to_state() if self.counters[i] is not None else None)
                         for k, i in _IDX.items()},
        }

    @classmethod
    def from_state(cls, s: Mapping) -> "_Slot":
        self = cls()
        self.n = [int(s["n"].get(k, 0)) for k in _KINDS]
        self.counters = [PartnerCounter.from_state(s["counters"][k]) if s["counters"].get(k) else None
                         for k in _KINDS]
        return self


class ItemAssociations:
    """Per-item association state (River-style estimator; owner-local).

    Tracks ``n_item`` (baskets containing the item), a co-purchase
    :class:`PartnerCounter`, co-view / co-cart counters (for substitutes), the
    number of view / cart sessions containing the item, and optionally
    tumbling event-time windows (``window_ms``) keeping the last
    ``keep_windows`` windows.  ``window="all"`` is all-time and decay-free.

    >>> a = ItemAssociations("milk", capacity=16)
    >>> a.learn_basket(["bread", "eggs"], ts_ms=0)
    >>> a.learn_basket(["bread"], ts_ms=1)
    >>> a.learn_session("view", ["oat-milk"], ts_ms=2)
    >>> a.n_item, a.counter("buy").get("bread"), a.counter("view").get("oat-milk")
    (2, (2, 0), (1, 0))
    >>> b = ItemAssociations.from_state(a.to_state())
    >>> b.to_state() == a.to_state()
    True
    """

    __slots__ = ("item_id", "capacity", "session_capacity", "window_ms", "keep_windows", "window_capacity",
                 "_all", "_windows", "last_ts_ms", "owner_prunes")

    def __init__(self, item_id: str | None = None, capacity: int = DEFAULT_CAPACITY,
                 session_capacity: int = DEFAULT_SESSION_CAPACITY, window_ms: int | None = None,
                 keep_windows: int = 4, window_capacity: int | None = None, owner_prunes: bool = False):
        self.item_id = item_id
        # True: windows are dropped only by drop_windows_before (the item's owner keeps every window
        # after its last closed one, so counts as of a window's end stay computable: as_of).
        self.owner_prunes = bool(owner_prunes)
        self.capacity = int(capacity)
        self.session_capacity = int(session_capacity)
        self.window_ms = int(window_ms) if window_ms else None
        self.keep_windows = int(keep_windows)
        self.window_capacity = int(window_capacity) if window_capacity else None
        self._all = _Slot()
        self._windows: dict[int, _Slot] | None = None  # created on first windowed event
        self.last_ts_ms: int | None = None

    # -- properties ---------------------------------------------------------

    @property
    def n_item(self) -> int:
        return self._all.n[0]

    @property
    def n_view(self) -> int:
        return self._all.n[1]

    @property
    def n_cart(self) -> int:
        return self._all.n[2]

    def _cap(self, kind: str, windowed: bool) -> int:
        if windowed and self.window_capacity:
            return self.window_capacity if kind == "buy" else min(self.window_capacity, self.session_capacity)
        return self.capacity if kind == "buy" else self.session_capacity

    # -- learning -----------------------------------------------------------

    def _learn(self, kind: str, partners: Iterable[str], ts_ms: int) -> None:
        # A worker calls this for every item of every closed session and basket: one pass to make
        # the partners distinct (order kept), and no per-call list of slots.
        ps = dict.fromkeys(partners)
        ps.pop(self.item_id, None)
        i = _IDX[kind]
        self._count(self._all, i, kind, False, ps)
        if self.window_ms:
            windows = self._windows
            if windows is None:
                windows = self._windows = {}
            ws = int(ts_ms) - int(ts_ms) % self.window_ms
            slot = windows.get(ws)
            if slot is None and self.owner_prunes:
                slot = windows[ws] = _Slot()
            elif slot is None:
                newest = max(windows) if windows else ws
                oldest_kept = max(newest, ws) - (self.keep_windows - 1) * self.window_ms
                if ws >= oldest_kept:  # too-late events only count all-time
                    slot = windows[ws] = _Slot()
                    for old in [w for w in windows if w < oldest_kept]:
                        del windows[old]
            if slot is not None:
                self._count(slot, i, kind, True, ps)
        if self.last_ts_ms is None or ts_ms > self.last_ts_ms:
            self.last_ts_ms = int(ts_ms)

    def _count(self, slot: "_Slot", i: int, kind: str, windowed: bool, partners: Iterable[str]) -> None:
        slot.n[i] += 1
        c = slot.counters[i]
        if c is None:
            c = slot.counters[i] = PartnerCounter(self._cap(kind, windowed))
        c.update(partners)

    def learn_basket(self, partners: Iterable[str], ts_ms: int) -> None:
        """One de-duplicated basket containing this item; ``partners`` = the other items."""
        self._learn("buy", partners, ts_ms)

    def learn_session(self, kind: str, partners: Iterable[str], ts_ms: int) -> None:
        """One session window where this item was viewed (``"view"``) or carted (``"cart"``)."""
        if kind not in ("view", "cart"):
            raise ValueError("kind must be 'view' or 'cart'")
        self._learn(kind, partners, ts_ms)

    def learn_one(self, x: Mapping) -> None:
        """River-style: ``{"partners": [...], "ts_ms": int, "kind": "buy"|"view"|"cart"}``."""
        kind = x.get("kind", "buy")
        if kind == "buy":
            self.learn_basket(x["partners"], x["ts_ms"])
        else:
            self.learn_session(kind, x["partners"], x["ts_ms"])

    def drop_windows_before(self, window_start: int) -> None:
        """Forget the windows older than ``window_start`` (their counts stay in the all-time ones)."""
        if self._windows:
            for w in [w for w in self._windows if w < window_start]:
                del self._windows[w]

    def as_of(self, window_start: int, min_count: int = 0) -> "ItemAssociations":
        """Purchases as of the end of the window starting at ``window_start``: the all-time basket
        count and partner counter less those of every later window held (a window-less view; its
        session counters are the all-time ones). Exact while the later windows are all held, which
        an owner that prunes (``owner_prunes``) guarantees for windows after its last closed one.
        ``min_count``: only partners bought with the item at least that often all-time are kept
        (a reader with a support floor needs no more, and a popular item has thousands).

        Returns ``self`` when no later window holds a basket (the usual case on a live feed).

        >>> a = ItemAssociations("milk", window_ms=10, owner_prunes=True)
        >>> a.learn_basket(["bread"], ts_ms=5); a.learn_basket(["bread", "jam"], ts_ms=15)
        >>> b = a.as_of(0)
        >>> b.n_item, b.counter("buy").items()
        (1, [('bread', 1, 0)])
        >>> a.as_of(10) is a
        True
        """
        later = [s for w, s in (self._windows or {}).items() if w > window_start and s.n[0]]
        if not later:
            return self
        out = ItemAssociations(self.item_id, self.capacity, self.session_capacity)
        out.last_ts_ms = self.last_ts_ms
        slot = out._all
        slot.n = [self._all.n[0] - sum(s.n[0] for s in later), self._all.n[1], self._all.n[2]]
        buy = self._all.counters[0]
        slot.counters = [None if buy is None else buy.minus([s.counters[0] for s in later], min_count),
                         self._all.counters[1], self._all.counters[2]]
        return out

    # -- reading ------------------------------------------------------------

    def _slots(self, window, now_ms: int | None) -> list[_Slot]:
        if window == "all" or window is None:
            return [self._all]
        if not self.window_ms:
            raise ValueError("this ItemAssociations has no windows (window_ms=None)")
        n = self.keep_windows if window == "recent" else int(window)
        wins = self._windows or {}
        ref = now_ms if now_ms is not None else (max(wins) if wins else 0)
        ref = int(ref) - int(ref) % self.window_ms
        lo = ref - (n - 1) * self.window_ms
        return [s for w, s in sorted(wins.items()) if lo <= w <= ref]

    def count(self, kind: str = "buy", window="all", now_ms: int | None = None) -> int:
        """Baskets (``"buy"``) or sessions containing the item in ``window``."""
        i = _IDX[kind]
        if window == "all" or window is None:  # (the usual reading: a decision per closed window)
            return self._all.n[i]
        return sum(s.n[i] for s in self._slots(window, now_ms))

    def counter(self, kind: str = "buy", window="all", now_ms: int | None = None) -> PartnerCounter:
        """The partner counter for ``kind`` over ``window`` ("all", "recent" or last-n windows)."""
        i = _IDX[kind]
        if window == "all" or window is None:
            c = self._all.counters[i]
            return c if c is not None else PartnerCounter(self._cap(kind, False))
        cs = [s.counters[i] for s in self._slots(window, now_ms) if s.counters[i] is not None]
        if not cs:
            return PartnerCounter(self._cap(kind, False))
        if len(cs) == 1:
            return cs[0]
        return PartnerCounter.merged(cs, capacity=self._cap(kind, False))

    # -- state --------------------------------------------------------------

    def to_state(self) -> dict:
        return {
            "version": STATE_VERSION,
            "kind": "item_associations",
            "item_id": self.item_id,
            "capacity": self.capacity,
            "session_capacity": self.session_capacity,
            "window_ms": self.window_ms,
            "keep_windows": self.keep_windows,
            "window_capacity": self.window_capacity,
            "last_ts_ms": self.last_ts_ms,
            "all": self._all.to_state(),
            "windows": [[w, s.to_state()] for w, s in sorted((self._windows or {}).items())],
            "owner_prunes": self.owner_prunes,
        }

    @classmethod
    def from_state(cls, state: Mapping) -> "ItemAssociations":
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported ItemAssociations state version {state.get('version')!r}")
        self = cls(state["item_id"], state["capacity"], state["session_capacity"], state["window_ms"],
                   state["keep_windows"], state["window_capacity"], state.get("owner_prunes", False))
        self.last_ts_ms = state["last_ts_ms"]
        self._all = _Slot.from_state(state["all"])
        if state["windows"] or self.window_ms:
            self._windows = {int(w): _Slot.from_state(s) for w, s in state["windows"]}
        return self


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------


def rule_metrics(n_ac: int, n_a: int, n_c: int, n_total: int) -> dict:
    """Metrics of the rule A -> C exactly as ``mlxtend.frequent_patterns.association_rules``.

    support = n_ac/N; confidence = n_ac/n_a; lift = confidence/(n_c/N);
    leverage = n_ac/N - (n_a/N)(n_c/N); conviction = (1 - n_c/N)/(1 - confidence),
    ``inf`` when confidence == 1 (mlxtend sets inf wherever confidence >= 1).

    >>> m = rule_metrics(2, 4, 5, 10)
    >>> m["support"], m["confidence"], m["lift"], round(m["leverage"], 10), m["conviction"]
    (0.2, 0.5, 1.0, 0.0, 1.0)
    >>> rule_metrics(3, 3, 5, 10)["conviction"]
    inf
    """
    if n_total <= 0 or n_a <= 0 or n_c <= 0:
        raise ValueError("n_total, n_a and n_c must be > 0")
    if n_ac < 0 or n_ac > min(n_a, n_c) or max(n_a, n_c) > n_total:
        raise ValueError("need 0 <= n_ac <= min(n_a, n_c) and n_a, n_c <= n_total")
    s_a = n_a / n_total
    s_c = n_c / n_total
    s_ac = n_ac / n_total
    conf = s_ac / s_a  # same float expression order as mlxtend
    conviction = math.inf if not conf < 1.0 else (1.0 - s_c) / (1.0 - conf)
    return {
        "antecedent_support": s_a,
        "consequent_support": s_c,
        "support": s_ac,
        "confidence": conf,
        "lift": conf / s_c,
        "leverage": s_ac - s_a * s_c,
        "conviction": conviction,
    }


def null_model_z(n_ac: float, n_a: int, n_c: int, n_total: int) -> float:
    """z-score of a co-count against independence (hypergeometric null).

    Under the null the ``n_a`` baskets with A are a random subset of the ``N``
    baskets, so ``n_ac ~ Hypergeometric(N, n_c, n_a)`` with mean
    ``n_a n_c / N`` and variance ``n_a (n_c/N)(1 - n_c/N)(N - n_a)/(N - 1)``.

    >>> round(null_model_z(30, 100, 100, 1000), 3)
    7.024
    """
    if n_total <= 1:
        return 0.0
    p = n_c / n_total
    mean = n_a * p
    var = n_a * p * (1.0 - p) * (n_total - n_a) / (n_total - 1)
    if var <= 0:
        d = n_ac - mean
        return 0.0 if d == 0 else math.copysign(math.inf, d)
    return (n_ac - mean) / math.sqrt(var)


def _lift(n_ac: float, n_a: int, n_c: int, n_total: int) -> float:
    if n_a <= 0 or n_c <= 0 or n_total <= 0:
        return 0.0
    return (n_ac / n_a) / (n_c / n_total)


def classify_relation(buy_lo: float, buy_hi: float, n_a: int, n_c: int, n_total: int,
                      session: Sequence[tuple[float, int, int, int]] = (),
                      thresholds: Mapping[str, Mapping[str, float]] = RELATION_THRESHOLDS) -> str:
    """"complement" | "substitute" | "neutral" (see ``RELATION_THRESHOLDS``).

    ``buy_lo``/``buy_hi``: lower/upper bounds of the co-purchase count.
    ``session``: ``(co_lo, n_a_sessions, n_c_sessions, n_sessions)`` per session kind
    (view, cart) with the lower bound of the co-view / co-cart count.

    >>> classify_relation(40, 40, 100, 100, 1000)
    'complement'
    >>> classify_relation(2, 2, 100, 100, 1000, session=[(40, 100, 100, 1000)])
    'substitute'
    >>> classify_relation(10, 10, 100, 100, 1000)
    'neutral'
    """
    t = thresholds["complement"]
    if _lift(buy_lo, n_a, n_c, n_total) >= t["min_lift"] and null_model_z(buy_lo, n_a, n_c, n_total) >= t["min_z"]:
        return "complement"
    s = thresholds["substitute"]
    if _lift(buy_hi, n_a, n_c, n_total) <= s["max_purchase_lift"]:
        for co_lo, sa, sc, sn in session:
            if (sa > 0 and sc > 0 and sn > 0 and _lift(co_lo, sa, sc, sn) >= s["min_session_lift"]
                    and null_model_z(co_lo, sa, sc, sn) >= s["min_session_z"]):
                return "substitute"
    return "neutral"


def _session_inputs(item_assoc: ItemAssociations, window, now_ms, view_counts, n_view_total,
                    cart_counts, n_cart_total):
    out = []
    for kind, counts, tot in (("view", view_counts, n_view_total), ("cart", cart_counts, n_cart_total)):
        if counts is None or not tot:
            continue
        out.append((kind, item_assoc.counter(kind, window, now_ms), item_assoc.count(kind, window, now_ms),
                    counts, int(tot)))
    return out


def _session_evidence(partner: str, sess) -> list[tuple[float, int, int, int]]:
    ev = []
    for _kind, ctr, n_a, counts, tot in sess:
        cnt, err = ctr.get(partner)
        lo = cnt - err
        n_c = max(int(counts.get(partner, 0)), cnt)
        ev.append((lo, n_a, min(n_c, tot), tot))
    return ev


def _score(row: Mapping) -> float:
    return row["lift"] * row["confidence"]


_BELOW = 1.0 - 1e-9  # the prefilter leaves rows within rounding of a threshold to the exact test


def rank_associations(item_assoc: ItemAssociations, global_counts: Mapping[str, int], n_total: int,
                      limit: int = 20, min_support_count: int = DEFAULT_MIN_SUPPORT_COUNT, window="all", *,
                      now_ms: int | None = None, view_counts: Mapping[str, int] | None = None,
                      n_view_total: int | None = None, cart_counts: Mapping[str, int] | None = None,
                      n_cart_total: int | None = None, min_lift: float = 0.0,
                      min_confidence: float = 0.0) -> list[dict]:
    """Co-purchase rules ``item -> partner``, strongest first.

    Ranking: ``lift * confidence`` descending (= confidence² / P(C): rewards
    both reliability and non-triviality), ties by ``co_count`` descending then
    ``item_id``.  Pairs with ``co_count < min_support_count`` are ignored.
    ``co_count`` is the Space-Saving count (an upper bound; ``exact`` is True
    when its error is 0, ``error`` gives the slack), clamped to
    ``min(n_item, n_partner)``.  ``global_counts``/``n_total`` must describe
    the same ``window``; a missing or stale ``n_partner`` is raised to
    ``co_count``.  ``relation`` uses :func:`classify_relation`; pass the
    session totals to enable the substitute test. ``min_lift`` / ``min_confidence`` drop rows
    clearly below them before anything else is computed (a cheap prefilter for
    :func:`bundle_candidates`, which still applies the exact thresholds).
    """
    n_a = item_assoc.count("buy", window, now_ms)
    if n_a <= 0 or n_total <= 0:
        return []
    ctr = item_assoc.counter("buy", window, now_ms)
    sess = _session_inputs(item_assoc, window, now_ms, view_counts, n_view_total, cart_counts, n_cart_total)
    rows = []
    for partner, cnt, err in ctr.items(min_support_count):
        n_c = min(max(int(global_counts.get(partner, 0)), min(cnt, n_a)), n_total)
        co = min(cnt, n_a, n_c)
        if co < min_support_count or co < _BELOW * min_confidence * n_a or co * n_total < _BELOW * min_lift * n_a * n_c:
            continue
        lo = max(0, cnt - err)
        m = rule_metrics(co, n_a, n_c, n_total)
        rel = classify_relation(lo, co, n_a, n_c, n_total, _session_evidence(partner, sess))
        rows.append({
            "item_id": partner,
            "co_count": co,
            "support": m["support"],
            "confidence": m["confidence"],
            "lift": m["lift"],
            "leverage": m["leverage"],
            "conviction": m["conviction"],
            "relation": rel,
            "exact": err == 0,
            "error": err,
        })
    rows.sort(key=lambda r: (-_score(r), -r["co_count"], r["item_id"]))
    return rows[:limit] if limit else rows


def _substitute_rows(item_assoc: ItemAssociations, global_counts: Mapping[str, int], n_total: int, sess,
                     min_support_count: int, window, now_ms: int | None) -> list[dict]:
    """:func:`substitutes`' rows, strongest first."""
    cands: dict[str, None] = {}
    for _k, ctr, _n, _c, _t in sess:
        # Unsorted: the rows' own order is total (item_id breaks ties), so the candidates' order is free.
        cands.update(dict.fromkeys(ctr.counts_at_least(min_support_count)))
    if not cands:
        return []  # most items at a live boundary: nothing co-viewed often enough yet
    n_a = item_assoc.count("buy", window, now_ms)
    buy = item_assoc.counter("buy", window, now_ms)
    rows = []
    for p in cands:
        ev = _session_evidence(p, sess)
        b_cnt, b_err = buy.get(p)
        n_c = min(max(int(global_counts.get(p, 0)), 1), max(n_total, 1))
        hi = min(b_cnt, n_a, n_c)
        if classify_relation(max(0, b_cnt - b_err), hi, n_a, n_c, n_total, ev) != "substitute":
            continue
        row = {"item_id": p, "co_count": hi, "lift": _lift(hi, n_a, n_c, n_total) if n_a else 0.0,
               "relation": "substitute", "co_view": 0, "co_cart": 0, "view_lift": None, "cart_lift": None}
        exact = b_err == 0
        for (kind, ctr, sa, counts, tot), (lo, _sa, sc, _tot) in zip(sess, ev):
            cnt, err = ctr.get(p)
            exact = exact and err == 0
            row["co_" + kind] = cnt
            row[kind + "_lift"] = _lift(lo, sa, sc, tot)
        row["exact"] = exact
        rows.append(row)
    rows.sort(key=lambda r: (-max(r["view_lift"] or 0.0, r["cart_lift"] or 0.0), -r["co_view"], r["item_id"]))
    return rows


def _homogeneity_of(subs: list[dict], sess) -> float:
    if not subs:
        return 0.0
    total = sum(ctr.total for _k, ctr, _n, _c, _t in sess)
    if total <= 0:
        return 0.0
    mass = 0
    for r in subs:
        for kind, ctr, _n, _c, _t in sess:
            cnt, err = ctr.get(r["item_id"])
            mass += cnt - err  # lower bound: never overstate crowding
    return max(0.0, min(1.0, mass / total))


def substitutes(item_assoc: ItemAssociations, global_counts: Mapping[str, int], n_total: int,
                view_counts: Mapping[str, int] | None, n_view_total: int | None,
                cart_counts: Mapping[str, int] | None = None, n_cart_total: int | None = None,
                limit: int = 20, min_support_count: int = DEFAULT_MIN_SUPPORT_COUNT, window="all", *,
                now_ms: int | None = None) -> list[dict]:
    """Partners co-viewed / co-carted above chance but co-bought at or below chance.

    Candidates: session partners with session co-count ``>= min_support_count``.
    Rows: ``item_id, co_view, co_cart, view_lift, cart_lift, co_count`` (purchase
    upper bound), ``lift`` (purchase lift on that upper bound), ``relation``
    ("substitute"), ``exact``; strongest first by max session lift, then co-view count.
    """
    rows = substitutes_and_homogeneity(item_assoc, global_counts, n_total, view_counts, n_view_total, cart_counts,
                                       n_cart_total, min_support_count, window, now_ms=now_ms)[0]
    return rows[:limit] if limit else rows


def homogeneity(item_assoc: ItemAssociations, global_counts: Mapping[str, int], n_total: int,
                view_counts: Mapping[str, int] | None, n_view_total: int | None,
                cart_counts: Mapping[str, int] | None = None, n_cart_total: int | None = None,
                min_support_count: int = DEFAULT_MIN_SUPPORT_COUNT, window="all", *,
                now_ms: int | None = None) -> float:
    """How crowded the item's substitute neighbourhood is, in [0, 1].

    Share of the item's session co-occurrence mass (co-view + co-cart counts
    over all kept partners) that goes to partners classified as substitutes.
    0 = shoppers who look at this item look at nothing interchangeable;
    1 = everything they look at alongside it is a substitute.
    """
    return substitutes_and_homogeneity(item_assoc, global_counts, n_total, view_counts, n_view_total, cart_counts,
                                       n_cart_total, min_support_count, window, now_ms=now_ms)[1]


def substitutes_and_homogeneity(item_assoc: ItemAssociations, global_counts: Mapping[str, int], n_total: int,
                                view_counts: Mapping[str, int] | None, n_view_total: int | None,
                                cart_counts: Mapping[str, int] | None = None, n_cart_total: int | None = None,
                                min_support_count: int = DEFAULT_MIN_SUPPORT_COUNT, window="all", *,
                                now_ms: int | None = None) -> tuple[list[dict], float]:
    """``(substitutes(..., limit=0), homogeneity(...))`` from one pass over the partners (a decision needs
    both, and the rows were the cost of each)."""
    sess = _session_inputs(item_assoc, window, now_ms, view_counts, n_view_total, cart_counts, n_cart_total)
    if not sess:
        return [], 0.0
    rows = _substitute_rows(item_assoc, global_counts, n_total, sess, min_support_count, window, now_ms)
    return rows, _homogeneity_of(rows, sess)


def bundle_candidates(item_assoc: ItemAssociations, global_counts: Mapping[str, int], n_total: int,
                      limit: int = 10, min_support_count: int = DEFAULT_MIN_SUPPORT_COUNT, window="all", *,
                      min_lift: float = BUNDLE_THRESHOLDS["min_lift"],
                      min_confidence: float = BUNDLE_THRESHOLDS["min_confidence"],
                      now_ms: int | None = None) -> list[dict]:
    """Complement rows with ``lift >= min_lift``, ``confidence >= min_confidence`` and
    ``co_count >= min_support_count``, in :func:`rank_associations` order."""
    rows = rank_associations(item_assoc, global_counts, n_total, limit=0,
                             min_support_count=min_support_count, window=window, now_ms=now_ms,
                             min_lift=min_lift, min_confidence=min_confidence)
    out = [r for r in rows if r["relation"] == "complement" and r["lift"] >= min_lift
           and r["confidence"] >= min_confidence]
    return out[:limit] if limit else out


def strongest_partners(item_assoc: ItemAssociations, limit: int = 5,
                       min_count: int = DEFAULT_MIN_SUPPORT_COUNT) -> list[tuple[str, int]]:
    """The item's ``limit`` partners bought with it most often (all-time, ``co_count >= min_count``),
    as ``(partner, co_count)``, largest first, then partner id.

    Counts only: what they mean (confidence, lift) depends on the item's and the
    partner's totals and on N, which keep moving after these are taken.

    >>> a = ItemAssociations("milk")
    >>> for basket in (["bread", "eggs"], ["bread"], ["eggs"], ["bread", "jam"]):
    ...     a.learn_basket(basket, ts_ms=0)
    >>> strongest_partners(a, limit=2, min_count=2)
    [('bread', 3), ('eggs', 2)]
    """
    if item_assoc.n_item < min_count:  # no partner can reach it (most closes)
        return []
    rows = list(item_assoc.counter("buy").counts_at_least(min_count).items())
    return heapq.nsmallest(limit, rows, key=lambda r: (-r[1], r[0]))


def provisional_partners(category_rows: Iterable[Mapping], substitute_rows: Iterable[Iterable[Mapping]] | Mapping,
                         limit: int = 20, exclude: Iterable[str] = (),
                         weights: Mapping[str, float] = PROVISIONAL_WEIGHTS) -> list[dict]:
    """Cold-start partners for an item with no basket history.

    ``category_rows``: ranked rows (``rank_associations`` output) of the item's
    category, or of its nearest catalogue peers.  ``substitute_rows``: for
    each known substitute of the new item, that substitute's ranked rows
    (list of lists, or mapping ``substitute_id -> rows``): what a substitute
    is bought with is likely bought with the new item.  Each source
    contributes ``weight * lift * confidence``; ``substitute`` evidence is
    averaged over the substitutes.  Rows: ``item_id, score, confidence, lift``
    (weighted means of the sources), ``co_count`` 0, ``relation``
    "complement", ``exact`` False, ``provisional`` True, ``sources``.

    >>> rows = provisional_partners([{"item_id": "b", "lift": 2.0, "confidence": 0.5}],
    ...                             [[{"item_id": "b", "lift": 3.0, "confidence": 0.5}]])
    >>> rows[0]["item_id"], round(rows[0]["score"], 3), rows[0]["provisional"]
    ('b', 1.35, True)
    """
    if isinstance(substitute_rows, Mapping):
        substitute_rows = list(substitute_rows.values())
    sub_lists = [list(rs) for rs in substitute_rows]
    excl = set(exclude)
    acc: dict[str, dict] = {}

    def feed(rows, w):
        for r in rows:
            p = r["item_id"]
            if p in excl or r.get("relation", "complement") == "substitute":
                continue
            a = acc.setdefault(p, {"score": 0.0, "wsum": 0.0, "conf": 0.0, "lift": 0.0, "sources": 0})
            a["score"] += w * r["lift"] * r["confidence"]
            a["wsum"] += w
            a["conf"] += w * r["confidence"]
            a["lift"] += w * r["lift"]
            a["sources"] += 1

    feed(category_rows, weights["category"])
    if sub_lists:
        w = weights["substitute"] / len(sub_lists)
        for rs in sub_lists:
            feed(rs, w)
    out = []
    for p, a in acc.items():
        out.append({
            "item_id": p, "score": a["score"], "co_count": 0, "support": None,
            "confidence": a["conf"] / a["wsum"], "lift": a["lift"] / a["wsum"], "leverage": None,
            "conviction": None, "relation": "complement", "exact": False, "provisional": True,
            "sources": a["sources"],
        })
    out.sort(key=lambda r: (-r["score"], r["item_id"]))
    return out[:limit] if limit else out
