"""Items learn a window into copies of their trend models between its end and its close (the grace
period), and the close takes that result if nothing it was learnt from changed (ItemState.learn_ahead,
Worker._learn_ahead). It must never change what the worker decides: two workers are given the same
envelopes, one learning ahead after every envelope (all of it, or a part: the task stopped midway),
the other never; both must send the same signals, write the same records and end in the same states.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from launchpulse.models.itemstate import ItemState, LearntAhead
from launchpulse.schemas import ClickEvent
from launchpulse.stream import pipeline
from test_click_blocks import ITEMS, _events, _worker
from test_flush import _envelopes, _keeping_flushes

SCALE = 10  # _events spreads times over 3,000 ms: here over three 10 s windows, with 2 s of grace


def _scaled(events):
    return [type(e)(*(e[:1] + (e[1] * SCALE,) + e[2:])) for e in events]


def _learning_both_ways(messages, watermarks, stop_after, late=(), caught_up=(True,), max_items=None):
    """``late[i]``: an item given a view in message i at the last millisecond of the window the previous
    watermark has passed the end of: in its grace, a window learnt ahead whose counts move before it closes.
    ``caught_up[i]``: whether the agent is caught up with its input after envelope i (else the task waits)."""
    scaled = [_scaled(m) for m in messages]
    for i, item in enumerate(late):
        if item and 0 < i < len(scaled) and watermarks[i - 1] >= 10_000:
            ts = watermarks[i - 1] - watermarks[i - 1] % 10_000 - 1
            scaled[i] = scaled[i] + [ClickEvent(f"late{i}", ts, "u9", "s9", "view", item, "k1", 2.0, None)]
    envelopes = _envelopes(scaled, watermarks)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    never, ahead = (_keeping_flushes(_worker(window_s=10, grace_s=2)) for _ in range(2))
    never.s = dataclasses.replace(never.s, learn_ahead_max_items=0)
    if max_items is not None:
        ahead.s = dataclasses.replace(ahead.s, learn_ahead_max_items=max_items)
    slice_s = pipeline.LEARN_AHEAD_SLICE_S
    pipeline.LEARN_AHEAD_SLICE_S = 0.0  # a slice learns one item's window at a time
    try:
        for i, (part, value) in enumerate(envelopes):
            for worker in (never, ahead):
                worker._apply_envelope(part, value)
                loop.run_until_complete(worker._close_ready(0.0))
            # the envelope as just read by ingest, or long ago
            ahead._consumed_at = time.time() if caught_up[i % len(caught_up)] else 0.0
            ahead._start_learning_ahead()
            for _ in range(stop_after[i % len(stop_after)]):  # the task takes a few slices, or none
                loop.run_until_complete(asyncio.sleep(0))
        if ahead._learning_ahead is not None and not ahead._learning_ahead.done():
            ahead._learning_ahead.cancel()  # still waiting for the agent to catch up
            loop.run_until_complete(asyncio.gather(ahead._learning_ahead, return_exceptions=True))
        for worker in (never, ahead):
            loop.run_until_complete(worker._score_queued())
            loop.run_until_complete(worker._flush(at_once=True))
            loop.run_until_complete(worker._delivered())
    finally:
        pipeline.LEARN_AHEAD_SLICE_S = slice_s
        loop.close()
    assert never.items_learnt_ahead == 0
    assert ahead.flushes == never.flushes
    assert ({k: orjson.dumps(s.to_state(), option=orjson.OPT_SORT_KEYS) for k, s in ahead.cache.items()} ==
            {k: orjson.dumps(s.to_state(), option=orjson.OPT_SORT_KEYS) for k, s in never.cache.items()})
    assert ahead.signals_topic.values == never.signals_topic.values
    return ahead, never


@settings(max_examples=60, deadline=None)
@given(st.lists(_events(), min_size=2, max_size=10), st.data())
def test_learning_ahead_changes_no_signal_record_or_state(messages, data):
    # Often within a grace period (a window's end passed, its close not yet), where learning ahead happens.
    marks = st.one_of(st.integers(0, 36_000), st.sampled_from([10_000, 11_000, 20_000, 21_500, 30_000, 31_900]))
    watermarks = sorted(data.draw(st.lists(marks, min_size=len(messages), max_size=len(messages))))
    _learning_both_ways(messages, watermarks, data.draw(st.lists(st.integers(0, 4), min_size=1, max_size=5)),
                        data.draw(st.lists(st.sampled_from([None, None, *ITEMS]), max_size=len(messages))),
                        data.draw(st.lists(st.sampled_from([True, True, False]), min_size=1, max_size=5)))


def test_a_window_learnt_ahead_is_taken_at_its_close():
    """Items seen in two windows: the second is learnt ahead once its end has passed and taken when it
    closes, unless its counts moved meanwhile; the same signals and states as without."""
    def view(event_id, ts, item):
        return ClickEvent(event_id, ts, "u1", "s1", "view", item, "k1", 2.0, None)

    messages = [[view("e1", 100, "a"), view("e2", 200, "b")], [view("e3", 1_100, "a"), view("e4", 1_200, "b")],
                [view("e5", 2_050, "a")], [view("e6", 2_150, "b")]]
    taken = []
    real = LearntAhead.holds
    LearntAhead.holds = lambda self, st_, start, counts: taken.append(real(self, st_, start, counts)) or taken[-1]
    try:
        # watermarks (x10 ms): window 0 closes at 12 s; window 10 s ends at 20 s (learnt ahead), closes at 22.05 s
        ahead, _ = _learning_both_ways(messages, [500, 15_000, 20_500, 22_100], [8])
        assert ahead.items_learnt_ahead == 2 and taken == [True, True]
        # a view of a in its window's grace, after it was learnt ahead: a's is refused, b's taken
        taken.clear()
        ahead, _ = _learning_both_ways(messages, [500, 15_000, 20_500, 22_100], [8], [None, None, None, "a"])
        assert ahead.items_learnt_ahead == 2 and taken == [False, True]
        # at most one item learns ahead (LAUNCHPULSE_LEARN_AHEAD_MAX_ITEMS), or none
        taken.clear()
        ahead, _ = _learning_both_ways(messages, [500, 15_000, 20_500, 22_100], [8], max_items=1)
        assert ahead.items_learnt_ahead == 1 and taken == [True]
        taken.clear()
        ahead, _ = _learning_both_ways(messages, [500, 15_000, 20_500, 22_100], [8], max_items=0)
        assert ahead.items_learnt_ahead == 0 and taken == []
    finally:
        LearntAhead.holds = real
    assert ahead.metrics.windows_closed._value.get() >= 4


def test_a_failure_learning_ahead_says_so_and_the_close_learns(monkeypatch):
    def view(event_id, ts, item):
        return ClickEvent(event_id, ts, "u1", "s1", "view", item, "k1", 2.0, None)

    def broken(self, cfg, window_start):
        raise RuntimeError("boom")

    monkeypatch.setattr(ItemState, "learn_ahead", broken)
    messages = [[view("e1", 100, "a")], [view("e3", 1_100, "a")], [view("e5", 2_050, "a")]]
    ahead, never = _learning_both_ways(messages, [500, 15_000, 20_500], [4])
    assert ahead.state_error == "learning windows ahead failed: RuntimeError: boom" and not never.state_error
    assert ahead.items_learnt_ahead == 0


def test_what_a_close_replaced_is_dropped_after_it_not_during_a_closing_step():
    """The models a closing step swapped out (held by the LearntAhead it took) are kept by the worker
    and freed after the step, in slices (Worker._release_retired), never while a step is under way."""
    import weakref

    class Model:  # stands for a LearntAhead and the models it holds
        pass

    worker = _worker(window_s=10, grace_s=2)
    models = [Model() for _ in range(500)]
    alive = [weakref.ref(m) for m in models]
    worker._retired.extend(models)
    del models
    loop = asyncio.new_event_loop()
    try:
        worker._closing = True
        task = loop.create_task(worker._release_retired())
        loop.run_until_complete(asyncio.sleep(3 * pipeline.RELEASE_SLICE_S))
        assert all(r() is not None for r in alive) and not task.done()
        worker._closing = False
        loop.run_until_complete(asyncio.wait_for(task, 5))
        assert worker._retired == [] and all(r() is None for r in alive)
    finally:
        loop.close()


def test_a_closing_step_keeps_the_models_it_replaced_for_later():
    def view(event_id, ts, item):
        return ClickEvent(event_id, ts, "u1", "s1", "view", item, "k1", 2.0, None)

    kept = []
    real = pipeline.Worker._release_retired

    async def noting(self):
        kept.extend(type(x).__name__ for x in self._retired)
        await real(self)

    pipeline.Worker._release_retired = noting
    try:
        messages = [[view("e1", 100, "a"), view("e2", 200, "b")], [view("e3", 1_100, "a"), view("e4", 1_200, "b")],
                    [view("e5", 2_050, "a")], [view("e6", 2_150, "b")]]
        ahead, never = _learning_both_ways(messages, [500, 15_000, 20_500, 22_100], [8])
    finally:
        pipeline.Worker._release_retired = real
    assert kept == ["LearntAhead", "LearntAhead"] and ahead._retired == [] and never._retired == []


def test_a_closing_batch_reads_the_totals_through_a_memo_that_answers_as_the_views_do():
    """_decide_closed reads partners' totals through pipeline._Memo: the same answers as the views
    (an owned item from its state, another from the replicated totals, a missing one the default),
    each key read from its view once."""
    worker = _worker(window_s=10, grace_s=2)
    owned = ItemState("a")
    owned.assoc.learn_session("view", ["b"], 0)
    owned.assoc.learn_session("view", ["b"], 1)
    owned.assoc.learn_session("cart", ["b"], 2)
    owned.assoc.learn_basket(["b"], 3)
    worker.cache["a"] = owned

    class Replica(dict):
        reads = 0

        def get(self, key, default=None):
            Replica.reads += 1
            return super().get(key, default)

    totals = Replica({b"b": [5, 1, 7, 3], b"old": [4]})  # "old": a value of an older, shorter format
    for field, expected in (("n_item", {"a": 1, "b": 5, "old": 4}), ("n_view", {"a": 2, "b": 7}),
                            ("n_cart", {"a": 1, "b": 3})):
        view = pipeline._TotalsView(totals, worker.cache, field)
        memo = pipeline._Memo(view)
        for key in ("a", "b", "old", "none"):
            assert memo.get(key, 0) == view.get(key, 0) == expected.get(key, 0)
        Replica.reads = 0
        assert [memo.get(k, -1) for k in ("b", "old", "none", "b")] == [expected["b"], expected.get("old", -1), -1,
                                                                     expected["b"]]
        assert Replica.reads == 0  # all read already
