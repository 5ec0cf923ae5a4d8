"""The same replay twice gives the same signals: two workers, each in a namespace of its own, run at
the same time (so their timing differs: they share two cores and a broker) over the same real
Instacart replay, and emit the same set of signal ids.

What makes it hold (docs/design.md, "Decisions as of a window's end"): a worker closes a window
only once every owner partition has marked that its input and the sessions it closed have got past
it, closes windows in order, and reads what a decision needs (an item's counts, N, a partner's
baskets, the category's prior, the sessions by their close time) as of the window's end.

The first worker never pauses a partition that runs ahead of its closing watermark
(``LAUNCHPULSE_MAX_AHEAD_WINDOWS=0``, the default), the second does (2 windows, opt-in): pausing changes
when envelopes are applied, never what a window's decisions read.
"""
import asyncio
import os
import time
import uuid

import orjson
import pytest

from launchpulse.stream.admin import ensure_topics
from launchpulse.stream.datasets import instacart_events
from launchpulse.stream.replay import replay
from launchpulse.stream.settings import Settings

from conftest import http_json
from diagnose import _read_all
from test_recovery import DAILY

pytestmark = pytest.mark.integration

EVENTS = 60_000  # about 5,000 orders over the first months: restock, overstock and bundle signals


def _settings(env: dict) -> Settings:
    old = dict(os.environ)
    os.environ.update(env)
    try:
        return Settings.from_env()
    finally:
        os.environ.clear()
        os.environ.update(old)


async def _signals(s: Settings) -> dict[str, dict]:
    """Every signal on the namespace's signal topic, by id."""
    records, _ = await _read_all(s.bootstrap_servers, s.topic_signals)
    out: dict[str, dict] = {}
    for _, _, _, value in records:
        sig = orjson.loads(value)
        out[sig["signal_id"]] = sig
    return out


def _done(w, n_events: int, last_window: int, state: dict) -> bool:
    """Every event counted, every window the replay lets close closed, scoring idle, quiet for 3 s."""
    try:
        prog = http_json(w.base + "/progress", 10.0)[1]
    except OSError:  # busy closing a long stretch of windows (two workers share two cores here)
        return False
    assert not prog["state_error"], prog
    done = (prog["events_counted"] >= n_events and prog["score_queue"] == 0
            and (prog.get("windows_closed_through_ms") or -1) >= last_window)
    snap = (prog["records_processed"], prog["signals_sent"])
    if not done or snap != state.get("snap"):
        state.update(snap=snap, since=time.monotonic())
        return False
    return time.monotonic() - state["since"] > 3


def test_same_replay_twice_same_signal_ids(deployment):
    events = instacart_events(opening_stock=40, limit=EVENTS)
    day, grace = int(DAILY["LAUNCHPULSE_WINDOW_SECONDS"]) * 1000, int(DAILY["LAUNCHPULSE_GRACE_SECONDS"]) * 1000
    last = max(e["ts"] for e in events) - grace
    last_window = last - last % day - day
    runs = []
    for k in range(2):
        ns = "d" + uuid.uuid4().hex[:8]
        env = {"LAUNCHPULSE_APP_ID": f"lp-{ns}", "LAUNCHPULSE_TOPIC_PREFIX": f"{ns}-", **DAILY,
               "LAUNCHPULSE_MAX_AHEAD_WINDOWS": "0" if k == 0 else "2"}
        s = _settings({**deployment.environ, **env})
        asyncio.run(ensure_topics(s))
        runs.append((s, deployment.worker(data_dir=f"run-{k}", **env)))
    for _, w in runs:
        w.wait_healthy()

    async def feed():
        await asyncio.gather(*(replay(s, events, batch=50, progress=False, total=len(events)) for s, _ in runs))

    asyncio.run(feed())
    states = [{}, {}]
    deadline = time.monotonic() + 420
    while not all(_done(w, len(events), last_window, st) for (_, w), st in zip(runs, states)):
        assert time.monotonic() < deadline, [http_json(w.base + "/progress")[1] for _, w in runs]
        time.sleep(1)
    first, second = (asyncio.run(_signals(s)) for s, _ in runs)
    types = {sig["type"] for sig in first.values()}
    assert {"restock_risk", "overstock_risk", "bundle_opportunity"} <= types, types
    only_first = sorted((v["type"], v["subject"], v["window"]["start"]) for k, v in first.items() if k not in second)
    only_second = sorted((v["type"], v["subject"], v["window"]["start"]) for k, v in second.items() if k not in first)
    assert not only_first and not only_second, (len(first), len(second), only_first[:10], only_second[:10])
    # the same evidence too, number for number (the scorer's output included)
    assert {k: v["evidence"] for k, v in first.items()} == {k: v["evidence"] for k, v in second.items()}
