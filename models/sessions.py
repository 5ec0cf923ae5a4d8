"""Shopping sessions in event time: per-session counts, co-view / co-cart pairs, purchase labels.

One :class:`UserSessions` per user pseudonym lives with the owner of the key
``user:<user pseudonym>`` (records from :func:`~.routing.route_session_records`). It holds one
:class:`SessionState` per session pseudonym (the records' ``s`` field) and the user's recent
orders. Keying by the user, not the session, is what makes the label possible: the input contract's
orders carry a user but no session, so the owner of a session must also see its user's orders.

A session accumulates its events (deduplicated by event id, any arrival order): views,
add-to-carts, removes, wishlists, searches, the distinct items viewed and carted, the prices seen,
dwell = last event time - first event time. It closes when the watermark passes
``last event + gap + grace`` (:class:`SessionConfig`; default gap 30 min, grace 10 min, the
window grace), and :meth:`UserSessions.close` returns one :class:`SessionSummary` per closed
session: its features, its label, and the co-view / co-cart item sets for the items' owners.

**Label rule** ("this session ordered"): the user has an order with event time in
``[first event, last event + gap]`` of the session. Orders up to ``grace`` late still count (the
session waits for them). When one user has overlapping sessions (two devices), an order in the
overlap labels both. The label says the session was followed by a purchase, not which item.

**Bounds** (a bot cannot blow memory): a session keeps at most ``max_items`` distinct viewed
and as many carted items (more are counted in ``dropped_items`` but never stored), at most
``max_events`` event ids (later events are dropped, counted in ``dropped_events``, and the session
is marked ``truncated``); a user holds at most ``max_open_sessions`` open sessions (opening one
more closes the stalest at once, marked ``forced``) and ``max_orders`` recent orders. So one user
state is at most about ``max_open_sessions * (max_events * ~40 B + 2 * max_items * ~40 B)``:
with the defaults, 64 * (2,000 * 40 + 200 * 40) B ~ 5.6 MB for a pathological bot and a few
hundred bytes for a real shopper. The caps are generous because open sessions pile up whenever
processing runs ahead of the watermark (a replay, a catch-up): a session forced closed early is
learnt out of its turn, so the same replay would no longer give the same propensities.

>>> cfg = SessionConfig(gap_ms=1_000, grace_ms=0)
>>> u = UserSessions("u1")
>>> for rec in [{"k": "c", "id": "e1", "t": 0, "i": "a", "e": "view", "p": 2.0, "s": "s1"},
...             {"k": "c", "id": "e2", "t": 500, "i": "b", "e": "view", "p": 4.0, "s": "s1"},
...             {"k": "c", "id": "e2", "t": 500, "i": "b", "e": "view", "p": 4.0, "s": "s1"},
...             {"k": "c", "id": "e3", "t": 700, "i": "b", "e": "add_to_cart", "s": "s1"},
...             {"k": "o", "id": "o1", "t": 1200, "L": [["b", 1]]}]:
...     _ = u.apply(rec, cfg)
>>> u.close(1_699, cfg)
[]
>>> [s] = u.close(1_700, cfg)
>>> s.views, s.carts, s.viewed, s.carted, s.dwell_s, s.mean_price, s.ordered
(2, 1, ('a', 'b'), ('b',), 0.7, 3.0, True)
>>> s.propensity_example()
({'views': 2, 'carts': 1, 'dwell_s': 0.7, 'mean_price': 3.0, 'recency_s': None}, True)
>>> UserSessions.from_state(u.to_state()).to_state() == u.to_state()
True
"""
from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from .associations import ItemAssociations
from .windows import ACCEPTED, DUPLICATE, LATE

STATE_VERSION = 1


_COUNTER = {"view": "views", "add_to_cart": "carts", "remove_from_cart": "removes", "wishlist": "wishlists",
            "search": "searches", "review": "reviews"}


@dataclass(frozen=True, slots=True)
class SessionConfig:
    gap_ms: int = 30 * 60_000  # inactivity that ends a session
    grace_ms: int = 600_000  # the window grace: events this late still count, so closing waits for it
    max_items: int = 100  # distinct items kept per session, viewed and carted each
    max_events: int = 2_000  # event ids kept per session (dedupe); later events are dropped
    max_open_sessions: int = 64  # per user; one more force-closes the stalest (see the module doc)
    max_orders: int = 256  # recent orders kept per user for the labels
    max_recent_ends: int = 8  # end times of closed sessions kept for the recency feature ...
    recency_horizon_ms: int = 7 * 86_400_000  # ... for this long: a user silent longer is forgotten (recency None)

    def __post_init__(self):
        if self.gap_ms <= 0 or self.grace_ms < 0 or self.recency_horizon_ms < 0 or min(self.max_items, self.max_events, self.max_open_sessions,
                                                         self.max_orders, self.max_recent_ends) < 1:
            raise ValueError("gap must be > 0, grace >= 0 and every cap >= 1")

    def close_at(self, last_ts: int) -> int:
        """The watermark at which a session whose last event is ``last_ts`` closes."""
        return last_ts + self.gap_ms + self.grace_ms


@dataclass(slots=True)
class SessionState:
    """One session's deduplicated counts in event time (owned by its user's :class:`UserSessions`)."""

    session_key: str
    first_ts: int | None = None
    last_ts: int | None = None
    counts: dict = field(default_factory=dict)  # views, carts, removes, wishlists, searches, reviews
    viewed: dict = field(default_factory=dict)  # item -> views (at most max_items; insertion order kept)
    carted: dict = field(default_factory=dict)  # item -> add-to-carts (at most max_items)
    price_sum: float = 0.0
    price_n: int = 0
    seen: dict = field(default_factory=dict)  # event id -> ts (at most max_events)
    dropped_items: int = 0  # item touches not stored because of max_items
    dropped_events: int = 0  # events not counted because of max_events

    def apply(self, rec: Mapping, cfg: SessionConfig) -> str:
        return self.apply_click(rec["id"], rec["t"], rec.get("e"), rec.get("i"), rec.get("p"), cfg)

    def apply_click(self, rid: str, ts: int, event: str | None, item: str | None, price: float | None,
                    cfg: SessionConfig) -> str:
        """One click of the session, by its fields (see :meth:`UserSessions.apply_click`)."""
        seen = self.seen
        if rid in seen:
            return DUPLICATE
        if len(seen) >= cfg.max_events:
            self.dropped_events += 1
            return ACCEPTED  # accepted by the pipeline, not stored: the session is a bot's
        seen[rid] = ts
        first, last = self.first_ts, self.last_ts
        if first is None or ts < first:
            self.first_ts = ts
        if last is None or ts > last:
            self.last_ts = ts
        name = _COUNTER.get(event)
        if name is None:
            return ACCEPTED
        counts = self.counts
        counts[name] = counts.get(name, 0) + 1
        if name == "views" or name == "carts":
            if item is not None:
                self._touch(self.viewed if name == "views" else self.carted, item, cfg)
            if price is not None:
                self.price_sum += float(price)
                self.price_n += 1
        return ACCEPTED

    def _touch(self, items: dict, item: str, cfg: SessionConfig) -> None:
        n = items.get(item)
        if n is not None:
            items[item] = n + 1
        elif len(items) < cfg.max_items:
            items[item] = 1
        else:
            self.dropped_items += 1

    # -- views ---------------------------------------------------------------------------
    @property
    def dwell_s(self) -> float:
        return 0.0 if self.first_ts is None else (self.last_ts - self.first_ts) / 1000.0

    @property
    def mean_price(self) -> float | None:
        return self.price_sum / self.price_n if self.price_n else None

    @property
    def truncated(self) -> bool:
        return self.dropped_items > 0 or self.dropped_events > 0

    def items(self) -> list[str]:
        """Distinct items viewed or carted (the items this session touched), sorted."""
        return sorted(set(self.viewed) | set(self.carted))

    def features(self, recency_s: float | None = None) -> dict:
        """The purchase-propensity features (:data:`~.propensity.FEATURES`) of the session so far."""
        return {"views": self.counts.get("views", 0), "carts": self.counts.get("carts", 0), "dwell_s": self.dwell_s,
                "mean_price": self.mean_price, "recency_s": recency_s}

    def to_state(self) -> dict:
        return {"session_key": self.session_key, "first_ts": self.first_ts, "last_ts": self.last_ts,
                "counts": self.counts, "viewed": list(self.viewed.items()), "carted": list(self.carted.items()),
                "price_sum": self.price_sum, "price_n": self.price_n, "seen": self.seen,
                "dropped_items": self.dropped_items, "dropped_events": self.dropped_events}

    @classmethod
    def from_state(cls, d: Mapping) -> SessionState:
        return cls(d["session_key"], d["first_ts"], d["last_ts"], dict(d["counts"]), dict(map(tuple, d["viewed"])),
                   dict(map(tuple, d["carted"])), d["price_sum"], d["price_n"], dict(d["seen"]), d["dropped_items"],
                   d["dropped_events"])


class SessionSummary(NamedTuple):
    """A closed session: what its user's owner hands on. Holds no user identifier.

    An immutable named tuple: a worker builds one per closed session, and a frozen dataclass
    of these 17 fields cost several microseconds to build."""

    session_key: str
    start_ms: int
    end_ms: int  # last event
    close_ms: int  # end_ms + gap: the event time the session's item records carry
    views: int
    carts: int
    removes: int
    wishlists: int
    searches: int
    dwell_s: float
    mean_price: float | None
    recency_s: float | None  # seconds since the user's previous session ended (None: none seen)
    viewed: tuple  # distinct items viewed, sorted (at most max_items)
    carted: tuple  # distinct items carted, sorted
    ordered: bool  # the label: an order by the same user in [start_ms, end_ms + gap]
    truncated: bool = False  # an item or event cap was hit (a bot-like session)
    forced: bool = False  # closed early because its user opened more than max_open_sessions

    def features(self) -> dict:
        return {"views": self.views, "carts": self.carts, "dwell_s": self.dwell_s, "mean_price": self.mean_price,
                "recency_s": self.recency_s}

    def propensity_example(self) -> tuple[dict, bool]:
        """``(x, y)`` for :meth:`~.propensity.PropensityModel.learn_one`: features and "this session ordered"."""
        return self.features(), self.ordered

    def items(self) -> tuple:
        return tuple(sorted(set(self.viewed) | set(self.carted)))

    def record_id(self) -> str:
        """Deterministic id of this session's item records (the same close gives the same id)."""
        return f"s:{self.session_key}@{self.start_ms}"

    def item_records(self, propensity: float | None = None) -> list[tuple[str, dict]]:
        """(item key, record) per item the session touched, for that item's owner.

        ``v``: the other distinct items viewed (None when the item was not viewed), ``ca``: likewise
        for carts, ``pp``: the session's predicted purchase propensity (for expected conversions),
        ``t``: :attr:`close_ms`. Apply with :func:`learn_session_record`, once per ``id``.
        """
        rid, close_ms = self.record_id(), self.close_ms
        viewed, carted = self.viewed, self.carted
        in_viewed, in_carted = set(viewed), set(carted)
        out = []
        for item in sorted(in_viewed | in_carted):  # items(), its sets built once
            out.append((item, {"k": "s", "id": rid, "t": close_ms, "i": item,
                               "v": [p for p in viewed if p != item] if item in in_viewed else None,
                               "ca": [p for p in carted if p != item] if item in in_carted else None,
                               "pp": propensity, "n": 0}))
        return out

    def to_dict(self) -> dict:
        return self._asdict()


def learn_session_record(assoc: ItemAssociations, rec: Mapping) -> None:
    """Teach an item's :class:`~.associations.ItemAssociations` one closed session (a record from
    :meth:`SessionSummary.item_records`). The caller deduplicates by ``rec["id"]``."""
    if rec.get("v") is not None:
        assoc.learn_session("view", rec["v"], rec["t"])
    if rec.get("ca") is not None:
        assoc.learn_session("cart", rec["ca"], rec["t"])


class UserSessions:
    """All open sessions of one user pseudonym, the user's recent orders, and closing by watermark."""

    __slots__ = ("ends", "orders", "sessions", "user_key", "watermark")

    def __init__(self, user_key: str):
        self.user_key = user_key
        self.sessions: dict[str, SessionState] = {}
        self.orders: dict[str, int] = {}  # order id -> ts (recent ones, for labels and dedupe)
        self.ends: list[int] = []  # last-event times of recently closed sessions (recency)
        self.watermark: int | None = None  # the latest watermark close() saw

    def apply(self, rec: Mapping, cfg: SessionConfig) -> str:
        """Apply one record of :func:`~.routing.route_session_records`; ACCEPTED, DUPLICATE or LATE."""
        ts = rec["t"]
        if rec["k"] == "o":
            if rec["id"] in self.orders:
                return DUPLICATE
            if self.watermark is not None and ts < self.watermark - cfg.grace_ms:
                return LATE
            self.orders[rec["id"]] = ts
            if len(self.orders) > cfg.max_orders:
                del self.orders[min(self.orders, key=lambda k: (self.orders[k], k))]
            return ACCEPTED
        return self.apply_click(rec["id"], ts, rec["s"], rec.get("e"), rec.get("i"), rec.get("p"), cfg)

    def apply_click(self, rid: str, ts: int, session: str, event: str | None, item: str | None,
                    price: float | None, cfg: SessionConfig) -> str:
        """Apply one click of this user's by its fields (as the worker reads them from a block of clicks
        in columns, see routing.fold_clicks); the same as :meth:`apply` of its record.

        >>> cfg = SessionConfig()
        >>> a, b = UserSessions("user:u"), UserSessions("user:u")
        >>> a.apply({"k": "c", "id": "e1", "t": 1000, "i": "x", "e": "view", "p": 2.0, "s": "s1", "n": 0}, cfg)
        'accepted'
        >>> b.apply_click("e1", 1000, "s1", "view", "x", 2.0, cfg), b.apply_click("e1", 1000, "s1", "view", "x", 2.0, cfg)
        ('accepted', 'duplicate')
        >>> a.to_state() == b.to_state()
        True
        """
        st = self.sessions.get(session)
        if st is None:
            # An event of a session already closed is older than the watermark allows (the session closed
            # once the watermark passed its end + grace): refused here as upstream, never reopened.
            if self.watermark is not None and ts < self.watermark - cfg.grace_ms:
                return LATE
            st = self.sessions[session] = SessionState(session)
        return st.apply_click(rid, ts, event, item, price, cfg)

    def next_close_ms(self, cfg: SessionConfig) -> int | None:
        """The watermark at which the next open session closes (None: none open)."""
        sessions = self.sessions
        if not sessions:
            return None
        if len(sessions) == 1:  # nearly always: a user has one session open
            for s in sessions.values():
                return s.last_ts + cfg.gap_ms + cfg.grace_ms
        return min(s.last_ts for s in sessions.values()) + cfg.gap_ms + cfg.grace_ms

    def next_due_ms(self, cfg: SessionConfig) -> int | None:
        """The watermark at which this user's state must be visited next: the next session close, else
        the moment its remembered orders and session ends can all be pruned (then :meth:`is_empty`).
        None: nothing left (the key can be deleted). Push it into a :class:`DueIndex`."""
        if self.sessions:
            return self.next_close_ms(cfg)
        due = [max(self.orders.values()) + cfg.gap_ms + cfg.grace_ms + 1] if self.orders else []
        if self.ends:
            # + grace: an event arriving after the key is dropped is then too late to start a session
            # within the horizon of the ends it held
            due.append(self.ends[-1] + cfg.recency_horizon_ms + cfg.grace_ms + 1)
        return max(due) if due else None

    def close(self, watermark_ms: int, cfg: SessionConfig) -> list[SessionSummary]:
        """Close every session the watermark has passed (oldest first) and the stalest beyond the cap."""
        if self.watermark is None or watermark_ms > self.watermark:
            self.watermark = watermark_ms
        limit = watermark_ms - cfg.gap_ms - cfg.grace_ms  # sessions whose last event is at most this close
        sessions = self.sessions
        due = [s for s in sessions.values() if s.last_ts <= limit]
        out = []
        if due:
            due.sort(key=lambda s: (s.last_ts, s.session_key))
            out = [self._summarise(s, cfg, False) for s in due]
        if len(sessions) > cfg.max_open_sessions:
            rest = sorted(sessions.values(), key=lambda s: (s.last_ts, s.session_key))
            out += [self._summarise(s, cfg, True) for s in rest[: len(rest) - cfg.max_open_sessions]]
        if self.orders or (self.ends and self.ends[0] < watermark_ms - cfg.recency_horizon_ms):
            self._prune(watermark_ms, cfg)
        return out

    def _summarise(self, s: SessionState, cfg: SessionConfig, forced: bool) -> SessionSummary:
        del self.sessions[s.session_key]
        hi = s.last_ts + cfg.gap_ms
        first = s.first_ts
        ordered = any(first <= t <= hi for t in self.orders.values()) if self.orders else False
        i = bisect.bisect_left(self.ends, first)  # ends is sorted
        prev = self.ends[i - 1] if i else None
        for o in self.sessions.values():
            if o.last_ts < first and (prev is None or o.last_ts > prev):
                prev = o.last_ts
        # Beyond the horizon a previous session is forgotten (whenever the pruning ran): None.
        recency = (first - prev) / 1000.0 if prev is not None and first - prev <= cfg.recency_horizon_ms else None
        ends = self.ends
        ends.append(s.last_ts)
        if len(ends) > 1:
            ends.sort()
            del ends[: -cfg.max_recent_ends]
        c = s.counts
        return SessionSummary(s.session_key, first, s.last_ts, hi, c.get("views", 0), c.get("carts", 0),
                              c.get("removes", 0), c.get("wishlists", 0), c.get("searches", 0), s.dwell_s,
                              s.mean_price, recency, tuple(sorted(s.viewed)), tuple(sorted(s.carted)), ordered,
                              s.truncated, forced)

    def _prune(self, watermark_ms: int, cfg: SessionConfig) -> None:
        # An order older than every open session's start and than the grace horizon labels nothing more.
        keep_from = min([watermark_ms - cfg.grace_ms - cfg.gap_ms] + [s.first_ts for s in self.sessions.values()])
        if self.orders and min(self.orders.values()) < keep_from:
            self.orders = {k: t for k, t in self.orders.items() if t >= keep_from}
        # An end older than the horizon before every open session's start (and the watermark) gives no
        # recency any more; one within it stays, however far this watermark step went.
        oldest = min([watermark_ms] + [s.first_ts for s in self.sessions.values()]) - cfg.recency_horizon_ms
        if self.ends and self.ends[0] < oldest:
            self.ends = [e for e in self.ends if e >= oldest]

    def is_empty(self) -> bool:
        """Nothing left worth keeping: the owner may delete the key (the next event starts afresh)."""
        return not self.sessions and not self.orders and not self.ends

    def open_sessions(self) -> list[SessionState]:
        return [self.sessions[k] for k in sorted(self.sessions)]

    def to_state(self) -> dict:
        return {"version": STATE_VERSION, "user_key": self.user_key,
                "sessions": {k: s.to_state() for k, s in self.sessions.items()}, "orders": self.orders,
                "ends": self.ends, "watermark": self.watermark}

    @classmethod
    def from_state(cls, d: Mapping) -> UserSessions:
        if d.get("version") != STATE_VERSION:
            raise ValueError(f"user sessions state version {d.get('version')!r} is not {STATE_VERSION}")
        u = cls(d["user_key"])
        u.sessions = {k: SessionState.from_state(s) for k, s in d["sessions"].items()}
        u.orders = dict(d["orders"])
        u.ends = list(d["ends"])
        u.watermark = d["watermark"]
        return u


class DueIndex:
    """Which keys have something to close by a watermark: a lazy min-heap of ``(due_ms, key)``.

    Push a key's next due time whenever it may have moved (after applying records, after closing:
    the latest push wins, None forgets the key); :meth:`pop_due` returns each key whose latest due
    time has passed, once. Closing it and pushing its new next due time is the caller's part.

    A due time that moves later (a session's newest event, at nearly every click of a live feed)
    costs no heap push: the key's earlier entry comes up first and is put back at the latest time
    then. Invariant: every key held has an entry in the heap no later than its latest due time.

    >>> d = DueIndex()
    >>> d.push("user:a", 50); d.push("user:b", 10); d.push("user:a", 60)
    >>> d.pop_due(55)
    ['user:b']
    >>> d.pop_due(100)
    ['user:a']
    >>> d.push("user:c", 80); d.push("user:c", 30)  # moved earlier: pushed
    >>> d.pop_due(40), d.pop_due(90)
    (['user:c'], [])
    """

    __slots__ = ("_due", "_heap")

    def __init__(self):
        self._heap: list[tuple[int, str]] = []
        self._due: dict[str, int] = {}  # key -> the latest due time pushed

    def push(self, key: str, due_ms: int | None) -> None:
        if due_ms is None:
            self._due.pop(key, None)
            return
        cur = self._due.get(key)
        if cur == due_ms:
            return
        self._due[key] = due_ms
        if cur is not None and cur < due_ms:
            return  # its entry at cur comes up first (see pop_due)
        heapq.heappush(self._heap, (due_ms, key))
        if len(self._heap) > 4 * len(self._due) + 1024:  # drop stale entries
            self._heap = [(d, k) for k, d in self._due.items()]
            heapq.heapify(self._heap)

    def pop_due(self, watermark_ms: int) -> list[str]:
        out = []
        h = self._heap
        due_of = self._due
        while h and h[0][0] <= watermark_ms:
            due, key = heapq.heappop(h)
            cur = due_of.get(key)
            if cur is None or cur < due:
                continue  # forgotten, or an earlier entry of it came up already
            if cur <= watermark_ms:
                del due_of[key]
                out.append(key)
            else:
                heapq.heappush(h, (cur, key))  # it moved later since this entry was pushed
        return out

    def __len__(self) -> int:
        return len(self._due)

    def next_due_ms(self) -> int | None:
        """A lower bound of the next due time (None: nothing pushed): nothing is due before it."""
        return self._heap[0][0] if self._heap else None

    def to_state(self) -> dict:
        # In the order keys were pushed, not sorted: a partition's index (every user with a session
        # open or remembered) is rewritten at every flush, and sorting it was a tenth of a busy flush.
        # Order does not matter to from_state: pop_due goes by (due time, key).
        return {"version": STATE_VERSION, "due": list(self._due.items())}

    @classmethod
    def from_state(cls, d: Mapping) -> DueIndex:
        if d.get("version") != STATE_VERSION:
            raise ValueError("due index state version mismatch")
        x = cls()
        for k, due in d["due"]:
            x.push(k, due)
        return x


@dataclass(slots=True)
class SessionTotals:
    """Global session counts the substitute test needs (``n_view_total`` / ``n_cart_total`` of
    :func:`~.associations.substitutes`): closed sessions with at least one view / cart. The
    per-item figures (``view_counts[B]``) are the items' own ``assoc.n_view`` / ``assoc.n_cart``."""

    view_sessions: int = 0
    cart_sessions: int = 0

    def add(self, s: SessionSummary) -> None:
        if s.viewed:
            self.view_sessions += 1
        if s.carted:
            self.cart_sessions += 1

    def to_state(self) -> dict:
        return {"version": STATE_VERSION, "view_sessions": self.view_sessions, "cart_sessions": self.cart_sessions}

    @classmethod
    def from_state(cls, d: Mapping) -> SessionTotals:
        if d.get("version") != STATE_VERSION:
            raise ValueError("session totals state version mismatch")
        return cls(d["view_sessions"], d["cart_sessions"])


def expected_conversions(sessions: Iterable[tuple[Iterable[str], float]]) -> dict[str, float]:
    """Expected conversions per item: the sum, over the sessions that touched the item (viewed or
    carted it), of their predicted purchase propensity.

    ``sessions``: ``(items touched, propensity)`` pairs, from open sessions
    (``(s.items(), model.predict_proba_one(s.features(recency)))``) and closed ones
    (``(summary.items(), p)``) alike. An item's owner gets the same figure by summing the ``pp``
    of the session records it receives (:meth:`SessionSummary.item_records`).

    >>> expected_conversions([(["a", "b"], 0.5), (["a"], 0.25), (["a", "a"], 0.1)])
    {'a': 0.85, 'b': 0.5}
    """
    out: dict[str, float] = {}
    for items, p in sessions:
        for item in set(items):
            out[item] = out.get(item, 0.0) + p
    return {k: round(v, 12) for k, v in sorted(out.items())}
