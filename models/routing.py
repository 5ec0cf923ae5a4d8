"""Turn validated events into routed records, each keyed by the item (or session) that owns it.

An order becomes one record per distinct item, each carrying the basket's other
items; exactly one record per input event carries ``n=1`` so the owner that
processes it counts the event once (accepted or duplicate) in the metrics.

>>> from launchpulse.schemas import OrderEvent, OrderLine
>>> o = OrderEvent("o1", 1000, "u", (OrderLine("b", 1, 2.0, None), OrderLine("a", 2, 1.0, "c1"), OrderLine("b", 1, 2.0, None)))
>>> [(k, r["i"], r["q"], r["b"], r["n"]) for k, r in route_event(o)]
[('a', 'a', 2, ['b'], 1), ('b', 'b', 2, ['a'], 0)]
"""
from __future__ import annotations

from launchpulse.schemas import CatalogEvent, ClickEvent, Event, OrderEvent


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's and aiokafka's default partitioner hash)."""
    length = len(data)
    seed = 0x9747B28C
    m = 0x5BD1E995
    r = 24
    h = seed ^ length
    length4 = length // 4
    for i in range(length4):
        i4 = i * 4
        k = (data[i4 + 0] & 0xFF) + ((data[i4 + 1] & 0xFF) << 8) + ((data[i4 + 2] & 0xFF) << 16) + ((data[i4 + 3] & 0xFF) << 24)
        k &= 0xFFFFFFFF
        k = (k * m) & 0xFFFFFFFF
        k ^= (k % 0x100000000) >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
        h &= 0xFFFFFFFF
    extra = length % 4
    if extra >= 3:
        h ^= (data[(length & ~3) + 2] & 0xFF) << 16
        h &= 0xFFFFFFFF
    if extra >= 2:
        h ^= (data[(length & ~3) + 1] & 0xFF) << 8
        h &= 0xFFFFFFFF
    if extra >= 1:
        h ^= data[length & ~3] & 0xFF
        h &= 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
    h ^= (h % 0x100000000) >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= (h % 0x100000000) >> 15
    h &= 0xFFFFFFFF
    if h & 0x80000000:
        h -= 0x100000000
    return h


def partition_for(key: str, n_partitions: int) -> int:
    """The partition Kafka's default partitioner gives this (UTF-8) key."""
    return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % n_partitions


def route_event(ev: Event) -> list[tuple[str, dict]]:
    """(routing key, record) pairs for one validated event; see itemstate.RECORD_FIELDS."""
    t = type(ev)
    if t is ClickEvent:
        key = ev.item_id if ev.item_id is not None else "session:" + ev.session_key
        return [(key, {"k": "c", "id": ev.event_id, "t": ev.ts_ms, "i": ev.item_id, "c": ev.category_id,
                       "e": ev.event_type, "p": ev.price, "s": ev.session_key, "n": 1})]
    if t is OrderEvent:
        qty: dict[str, int] = {}
        price: dict[str, float] = {}
        cat: dict[str, str | None] = {}
        for line in ev.lines:  # the same item on two lines is one item bought in a larger quantity
            qty[line.item_id] = qty.get(line.item_id, 0) + line.quantity
            price[line.item_id] = line.price
            if line.category_id is not None or line.item_id not in cat:
                cat[line.item_id] = line.category_id
        items = sorted(qty)
        out = []
        for j, item in enumerate(items):
            out.append((item, {"k": "o", "id": ev.order_id, "t": ev.ts_ms, "i": item, "c": cat[item], "q": qty[item],
                               "p": price[item], "b": items[:j] + items[j + 1:], "n": 1 if j == 0 else 0}))
        return out
    if t is CatalogEvent:
        return [(ev.item_id, {"k": "g", "id": f"catalog@{ev.ts_ms}", "t": ev.ts_ms, "i": ev.item_id, "c": ev.category_id,
                              "p": ev.price, "st": ev.status, "sk": ev.stock, "la": ev.launched_at_ms, "n": 1})]
    raise TypeError(f"not an event: {ev!r}")
