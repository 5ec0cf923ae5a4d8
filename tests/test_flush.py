"""A flush is taken as of the moment it begins, however long its states take to serialise.

The worker serialises a flush's dirty states in slices while its agent goes on applying envelopes and
closing windows (Worker._flush, _serialise_then_deliver), and serialises a key the agent is about to
change before it changes it (_serialise_before_change). So each flush must write exactly what a flush
done all at once at the same point writes: the states beside its metas and acknowledgements as of
then, never a state from later (a crash would then replay its envelopes onto a state that has them,
against a meta that has not). Two workers are given the same envelopes; one flushes at once, the other
in slices of one key interleaved with the envelopes after the flush began.
"""
from __future__ import annotations

import asyncio
from collections import Counter

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from launchpulse.models.routing import RoutedBatch
from launchpulse.schemas import ClickEvent
from launchpulse.stream import pipeline
from test_click_blocks import _events, _owner, _worker


class _Signals:
    """Stands in for the signals topic of a worker that is never started."""

    def __init__(self):
        self.values = Counter()

    def send_soon(self, key, value):
        self.values[value] += 1

    async def send(self, key, value):
        self.send_soon(key, value)


def _keeping_flushes(worker):
    """A never-started worker made to own the three partitions and to keep each flush's records."""
    worker._owned_parts = [0, 1, 2]
    worker.signals_topic = _Signals()
    worker.flushes = []

    async def deliver(prev, state_records, meta_records, events, routed=(), rows_queued=0):
        if prev is not None:
            await prev
        by_key: dict = {}
        for topic, key, value, part in list(state_records) + list(meta_records):
            by_key.setdefault((topic, key), []).append((value, part))  # a key's records in their order
        worker.flushes.append(by_key)

    worker._deliver = deliver
    return worker


def _envelopes(messages, watermarks) -> list[tuple[int, bytes]]:
    """Each message's routed records, then a watermark report to every partition (windows close)."""
    out = []
    for offset, (events, wm) in enumerate(zip(messages, watermarks)):
        batch = RoutedBatch(_owner, 3)
        batch.add(events, ["clicks", 0, offset])
        for part, recs in sorted(batch.parts.items()):
            out.append((part, orjson.dumps({"src": "t", "at": 0.0, "r": recs})))
        for part in range(3):
            out.append((part, orjson.dumps({"src": "t", "at": 0.0, "r": [], "pw": {"input:0": [wm, False, offset]},
                                            "np": 1})))
    return out


def _now(coro) -> None:
    """Run a coroutine to its end without the event loop, so no other task (the flush's) runs
    meanwhile; it may only yield bare (asyncio.sleep(0), as a closing step does)."""
    try:
        while True:
            coro.send(None)
    except StopIteration:
        pass


def _apply(worker, part, value):
    worker._apply_envelope(part, value)
    _now(worker._close_ready(0.0))


def _flush_both_ways(messages, watermarks, split, steps):
    """Two workers given the same envelopes, flushed after the first ``split``: one at once, one in
    slices of one key, its task taking ``steps[i]`` slices before envelope ``i`` after the split; then
    both flush the rest at once. They must write the same records and end in the same states."""
    envelopes = _envelopes(messages, watermarks)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    at_once, sliced = _keeping_flushes(_worker()), _keeping_flushes(_worker())
    slice_s = pipeline.FLUSH_SLICE_S
    pipeline.FLUSH_SLICE_S = 0.0  # a slice serialises one key: the agent interleaves between any two
    try:
        for part, value in envelopes[:split]:
            _apply(at_once, part, value)
            _apply(sliced, part, value)
        loop.run_until_complete(at_once._flush(at_once=True))
        _now(sliced._flush())  # its task has not run yet
        for (part, value), n in zip(envelopes[split:], steps[split:]):
            _apply(at_once, part, value)
            _apply(sliced, part, value)
            for _ in range(n):  # the flush's task takes a few slices, or none, before the next envelope
                loop.run_until_complete(asyncio.sleep(0))
        loop.run_until_complete(at_once._flush(at_once=True))
        loop.run_until_complete(sliced._flush(at_once=True))
        for worker in (at_once, sliced):
            loop.run_until_complete(worker._delivered())
    finally:
        pipeline.FLUSH_SLICE_S = slice_s
        loop.close()
    assert len(sliced.flushes) == len(at_once.flushes) == 2
    assert sliced.flushes == at_once.flushes
    assert ({k: orjson.dumps(s.to_state(), option=orjson.OPT_SORT_KEYS) for k, s in sliced.cache.items()} ==
            {k: orjson.dumps(s.to_state(), option=orjson.OPT_SORT_KEYS) for k, s in at_once.cache.items()})
    assert sliced.signals_topic.values == at_once.signals_topic.values
    return at_once


@settings(max_examples=60, deadline=None)
@given(st.lists(_events(), min_size=2, max_size=10), st.data())
def test_a_flush_in_slices_writes_the_states_as_of_its_beginning(messages, data):
    watermarks = sorted(data.draw(st.lists(st.integers(0, 3_500), min_size=len(messages), max_size=len(messages))))
    n = len(_envelopes(messages, watermarks))
    _flush_both_ways(messages, watermarks, data.draw(st.integers(1, n - 1)),
                     data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))


def test_a_window_closed_during_a_flush_in_slices_leaves_the_flush_as_it_began():
    """Item a's window closes while the flush that holds its state is under way (the closing step
    reaches a before the flush's slices do): the flush still writes a as it was, window open."""
    def view(event_id, ts, item):
        return ClickEvent(event_id, ts, "u1", "s1", "view", item, "k1", 2.0, None)

    messages = [[view("e1", 10, "a"), view("e2", 20, "a")], [view("e3", 1_200, "b")]]
    split = len(_envelopes(messages[:1], [0]))
    at_once = _flush_both_ways(messages, [0, 1_500], split, [0] * 20)
    first = at_once.flushes[0]
    state_a = orjson.loads(first[(at_once._changelog_names[id(at_once.items)], b"a")][-1][0])
    assert state_a["closed_through"] is None  # written before its window closed
    assert at_once.metrics.windows_closed._value.get() >= 1


def _compacted(store: dict, flush: dict) -> None:
    """A flush's records applied to a compacted changelog (key -> latest value; None deletes)."""
    for (_, key), values in flush.items():
        value = values[-1][0]
        if value is None:
            store.pop(key, None)
        else:
            store[key] = value


@settings(max_examples=60, deadline=None)
@given(st.lists(_events(), min_size=2, max_size=12), st.data())
def test_states_read_back_from_the_changelog_equal_the_states_written(messages, data):
    """A state goes to the changelog in pieces: the state and its dedupe ids' chunks (models.dedupe),
    the chunks a compaction replaced deleted a flush later. After every flush, a worker reading the
    changelog as compacted so far (a restart, a partition moved) gets every state exactly as written,
    whatever the windows closed, models learnt, ids pruned and sessions closed between; and the HTTP
    views' reading (``peek``) gets it without its dedupe ids."""
    from launchpulse.models.sessions import SessionConfig
    from launchpulse.stream.pipeline import ItemState, _store

    watermarks = sorted(data.draw(st.lists(st.integers(0, 6_000), min_size=len(messages), max_size=len(messages))))
    envelopes = _envelopes(messages, watermarks)
    flush_after = data.draw(st.lists(st.booleans(), min_size=len(envelopes), max_size=len(envelopes)))
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = _keeping_flushes(_worker())
    worker.session_cfg = SessionConfig(gap_ms=400, grace_ms=0)  # sessions close within the run
    store: dict[bytes, bytes] = {}
    items_topic = worker.items.changelog_topic.get_topic_name()
    written = 0
    try:
        for (part, value), flush in zip(envelopes + [(None, None)], flush_after + [True]):
            if value is not None:
                _apply(worker, part, value)
            if not flush:
                continue
            loop.run_until_complete(worker._flush(at_once=True))
            loop.run_until_complete(worker._delivered())
            _compacted(store, {k: v for k, v in worker.flushes[-1].items() if k[0] == items_topic})
            reader, viewer = _worker(), _worker()
            _store(reader.items).update(store)
            _store(viewer.items).update(store)
            for key, state in worker.cache.items():
                again = reader._state(key)
                assert (orjson.dumps(again.to_state(), option=orjson.OPT_SORT_KEYS) ==
                        orjson.dumps(state.to_state(), option=orjson.OPT_SORT_KEYS)), key
                if type(state) is ItemState and key.encode() in store:  # (else read and left clean)
                    written += 1
                    peeked = viewer.peek(key)  # the HTTP views' reading: no ids, the rest whole
                    assert peeked.to_state(ids=False) == state.to_state(ids=False) and peeked.seen == {}
    finally:
        loop.close()
    assert written


@settings(max_examples=60, deadline=None)
@given(st.lists(_events(), min_size=2, max_size=12), st.data())
def test_the_order_a_step_closes_items_in_changes_no_signal_and_no_state(messages, data):
    """A closing step takes a window's items busiest first (Worker._close_order), so that most signals go
    out early in a long close. Each decision reads as of the window's end, so any order must give the same
    signals and states: here, the step's own order against its reverse."""
    watermarks = sorted(data.draw(st.lists(st.integers(0, 6_000), min_size=len(messages), max_size=len(messages))))
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    forward, backward = _keeping_flushes(_worker()), _keeping_flushes(_worker())
    backward._close_order = lambda keys, order=forward._close_order: order(keys)[::-1]
    try:
        for part, value in _envelopes(messages, watermarks):
            _apply(forward, part, value)
            _apply(backward, part, value)
        for worker in (forward, backward):
            loop.run_until_complete(worker._flush(at_once=True))
            loop.run_until_complete(worker._delivered())
    finally:
        loop.close()
    assert forward.signals_topic.values == backward.signals_topic.values
    assert forward.flushes == backward.flushes
