"""The worker's memory settings: the garbage collector (settings.tune_gc, Worker._freeze_survivors), and
how many items learn a window ahead.

The worker freezes what survives its young collections after each flush and closing step, and its
middle-generation collections (which traversed every long-lived item state again and found nothing)
are held off; any other process keeps Python's own middle and old thresholds.
"""
from __future__ import annotations

import asyncio
import gc

import pytest

from launchpulse.stream.settings import GC_GEN1_BETWEEN_FREEZES, tune_gc
from test_click_blocks import _worker
from test_flush import _keeping_flushes


@pytest.fixture
def gc_restored():
    threshold = gc.get_threshold()
    yield
    gc.set_threshold(*threshold)
    gc.unfreeze()


def test_only_a_process_that_freezes_its_survivors_holds_off_the_middle_collections(gc_restored):
    tune_gc(50_000)
    assert gc.get_threshold() == (50_000, 20, 10) and gc.get_freeze_count() > 0
    tune_gc(50_000, freezes_survivors=True)
    assert gc.get_threshold() == (50_000, GC_GEN1_BETWEEN_FREEZES, 10)
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    tune_gc(0, freezes_survivors=True)  # 0: Python's own thresholds, and nothing held off
    assert gc.get_threshold() == (700, 10, 10)


def test_a_flush_freezes_what_survived_and_a_frozen_object_is_still_freed(gc_restored):
    worker = _keeping_flushes(_worker())
    loop = asyncio.new_event_loop()
    try:
        gc.unfreeze()
        gc.set_threshold(700, 10, 10)
        loop.run_until_complete(worker._flush(at_once=True))
        loop.run_until_complete(worker._delivered())
        assert worker.gc_freezes == 0 and gc.get_freeze_count() == 0  # thresholds not the worker's
        gc.set_threshold(50_000, GC_GEN1_BETWEEN_FREEZES, 10)
        kept = [[i] for i in range(1000)]
        loop.run_until_complete(worker._flush(at_once=True))
        loop.run_until_complete(worker._delivered())
        assert worker.gc_freezes == 1
        frozen = gc.get_freeze_count()
        assert frozen >= len(kept)
        del kept  # frozen objects still go with their last reference
        assert gc.get_freeze_count() <= frozen - 1000
    finally:
        loop.close()


def test_items_learning_ahead_is_a_bounded_setting(monkeypatch):
    from launchpulse.stream.settings import Settings

    assert Settings.from_env().learn_ahead_max_items == 50_000
    monkeypatch.setenv("LAUNCHPULSE_LEARN_AHEAD_MAX_ITEMS", "0")
    assert Settings.from_env().learn_ahead_max_items == 0
    monkeypatch.setenv("LAUNCHPULSE_LEARN_AHEAD_MAX_ITEMS", "-1")
    with pytest.raises(SystemExit, match="LAUNCHPULSE_LEARN_AHEAD_MAX_ITEMS"):
        Settings.from_env()
