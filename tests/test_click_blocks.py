"""Clicks travel from the ingest to their owners folded into blocks of columns (routing.fold_clicks,
routing.RoutedBatch) and the worker applies a block click by click (Worker._apply_item_clicks and
_apply_user_clicks). Both must be invisible: the same records reach each key in the same order, and
a worker given the blocks ends with the same states, metrics and dead letters as one given the
records one by one (the worker still applies single records: orders, catalog records, searches)."""
from __future__ import annotations

import asyncio

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from launchpulse.models.routing import RoutedBatch, fold_clicks, route_event_extended, unfold_clicks
from launchpulse.schemas import CatalogEvent, ClickEvent, OrderEvent, OrderLine

ITEMS = ["a", "b", "c", "d"]
EVENT_TYPES = ["view", "add_to_cart", "remove_from_cart", "wishlist", "search", "review"]


@st.composite
def _events(draw):
    """A message's events: clicks (with and without item, category, price), orders and catalog
    records, over a few users, items and categories, ids repeating (duplicates) and times spread
    over three windows of 1,000 ms."""
    out = []
    for _ in range(draw(st.integers(1, 4))):
        ts = draw(st.integers(0, 2_999))
        kind = draw(st.sampled_from(["click"] * 6 + ["order", "catalog"]))
        user = draw(st.sampled_from(["u1", "u2", "u3"]))
        if kind == "click":
            etype = draw(st.sampled_from(EVENT_TYPES))
            item = None if etype == "search" else draw(st.sampled_from(ITEMS))
            out.append(ClickEvent(f"e{draw(st.integers(0, 30))}", ts, user, f"s-{user}-{ts // 1500}", etype, item,
                                  draw(st.sampled_from([None, "k1", "k2"])) if item else None,
                                  draw(st.sampled_from([None, 1.5, 2.0])) if item else None, None))
        elif kind == "order":
            lines = tuple(OrderLine(i, draw(st.integers(1, 3)), 2.0, draw(st.sampled_from([None, "k1"])))
                          for i in draw(st.lists(st.sampled_from(ITEMS), min_size=1, max_size=3)))
            out.append(OrderEvent(f"o{draw(st.integers(0, 10))}", ts, user, lines))
        else:
            out.append(CatalogEvent(draw(st.sampled_from(ITEMS)), ts, "T", "k1", 3.0, "live", None,
                                    draw(st.sampled_from([None, 5]))))
    return out


def _owner(key: str) -> int:
    return sum(key.encode()) % 3


def _routed_one_by_one(messages) -> dict[int, list]:
    """What the ingest routed before clicks were folded: one dict per record."""
    parts: dict[int, list] = {}
    for offset, events in enumerate(messages):
        for ev in events:
            for key, rec in route_event_extended(ev):
                if rec["n"]:
                    rec["o"] = ["clicks", 0, offset]
                if key != rec.get("i"):
                    rec["K"] = key
                parts.setdefault(_owner(key), []).append(rec)
    return parts


def _key(rec: dict) -> str:
    return rec.get("K", rec.get("i"))


@settings(max_examples=200, deadline=None)
@given(st.lists(_events(), min_size=1, max_size=12), st.integers(1, 4))
def test_routed_batches_fold_as_fold_clicks_and_keep_each_keys_order(messages, max_block):
    batch = RoutedBatch(_owner, max_block)
    for offset, events in enumerate(messages):
        batch.add(events, ["clicks", 0, offset])
    one_by_one = _routed_one_by_one(messages)
    assert sorted(batch.parts) == sorted(one_by_one)
    for part, recs in one_by_one.items():
        folded = fold_clicks(recs, max_block)
        assert batch.parts[part] == folded
        assert all(len(r["id"]) <= max_block for r in folded if type(r["id"]) is list)
        unfolded = unfold_clicks(folded)
        assert sorted(map(orjson.dumps, unfolded)) == sorted(map(orjson.dumps, recs))
        # A key's records in their order, but a category's clicks, whose counts do not depend on it.
        for key in {_key(r) for r in recs if not _key(r).startswith("category:")}:
            assert [r for r in unfolded if _key(r) == key] == [r for r in recs if _key(r) == key]


class _DeadLetters:
    """Stands in for the dead-letter topic of a worker that is never started: keeps what it is sent."""

    def __init__(self):
        self.values = []

    def send_soon(self, value):
        self.values.append(orjson.loads(value))


def _worker(window_s: int = 1, grace_s: int = 0):
    import os

    from launchpulse.stream.pipeline import Worker
    from launchpulse.stream.settings import Settings

    old = dict(os.environ)
    os.environ.update({"LAUNCHPULSE_PSEUDONYM_KEY": "blocks", "LAUNCHPULSE_WINDOW_SECONDS": str(window_s),
                       "LAUNCHPULSE_GRACE_SECONDS": str(grace_s)})
    try:
        worker = Worker(Settings.from_env())  # its Faust app and tables are built, never started
    finally:
        os.environ.clear()
        os.environ.update(old)
    worker.dead_topic = _DeadLetters()
    return worker


@settings(max_examples=40, deadline=None)
@given(st.lists(_events(), min_size=1, max_size=12), st.integers(1, 4), st.integers(0, 2_000),
       st.sampled_from([None, 0, 1_000]))
def test_a_worker_applies_blocks_as_the_records_they_fold(messages, max_block, watermark, closed_through):
    """Envelopes of blocks and envelopes of the same records one by one, applied by two workers
    whose partitions have heard a watermark (some clicks late by it) and whose item ``a`` has closed
    a window (some late for it alone): the same states, pending windows, counts and dead letters."""
    asyncio.set_event_loop(asyncio.new_event_loop())
    folded_worker, record_worker = _worker(), _worker()
    batch = RoutedBatch(_owner, max_block)
    for offset, events in enumerate(messages):
        batch.add(events, ["clicks", 0, offset])
    one_by_one = _routed_one_by_one(messages)
    for worker, parts in ((folded_worker, batch.parts), (record_worker, one_by_one)):
        for part in range(3):
            worker._meta(part).watermark = watermark
        if closed_through is not None:
            worker._state("a").closed_through = closed_through
        for part, recs in sorted(parts.items()):
            worker._apply_envelope(part, orjson.dumps({"src": "t", "at": 0.0, "r": recs}))
    for worker in (folded_worker, record_worker):
        for d in worker.dead_topic.values:
            d.pop("ts", None)  # when it was written
        worker.dead_topic.values.sort(key=orjson.dumps)

    def states(worker):
        return {k: orjson.dumps(st.to_state(), option=orjson.OPT_SORT_KEYS) for k, st in worker.cache.items()}

    assert states(folded_worker) == states(record_worker)
    assert folded_worker.dirty_items == record_worker.dirty_items
    for part in range(3):
        assert folded_worker._meta(part).pending == record_worker._meta(part).pending
        assert folded_worker._meta(part).due._due == record_worker._meta(part).due._due
        assert folded_worker._meta(part).categories == record_worker._meta(part).categories
    counted = ("launchpulse_events_total", "launchpulse_late_events_total", "launchpulse_dead_letter_total")
    samples = [sorted((s.name, tuple(sorted(s.labels.items())), s.value) for fam in w.metrics.registry.collect()
                      for s in fam.samples if s.name in counted) for w in (folded_worker, record_worker)]
    assert samples[0] == samples[1]
    assert folded_worker.dead_topic.values == record_worker.dead_topic.values
    # Routed records: an item or user block counts its clicks, a category block one.
    assert record_worker.records_processed == sum(map(len, one_by_one.values()))
    assert folded_worker.records_processed == sum(len(r["id"]) if r["k"] in "IU" else 1
                                                  for recs in batch.parts.values() for r in recs)
