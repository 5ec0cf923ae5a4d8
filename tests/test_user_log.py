"""A user's sessions are written as a base state and then as log chunks of what changed after it
(UserSessions.delta and apply_delta, models.dedupe.read_log, Worker._write_user and _load_user). Whatever the
points at which a worker flushes, drops its cached states and reads them back from its table, it must
hold the states of a worker that writes each user whole (as before logs) at the same points, and what
its table holds must read back as them."""
from __future__ import annotations

import asyncio
import os

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from launchpulse.models.dedupe import LOG_CHUNKS_MAX, log_key, read_log
from launchpulse.models.routing import RoutedBatch
from launchpulse.models.sessions import UserSessions
from launchpulse.schemas import ClickEvent, OrderEvent, OrderLine

HOUR = 3_600_000


@st.composite
def _messages(draw):
    """Clicks and orders of a few users over five hours (sessions end after 30 min of silence), ids
    repeating (duplicates)."""
    out = []
    for _ in range(draw(st.integers(1, 4))):
        ts = draw(st.integers(0, 5 * HOUR))
        user = draw(st.sampled_from(["u1", "u2", "u3"]))
        if draw(st.integers(0, 2)):
            etype = draw(st.sampled_from(["view", "view", "add_to_cart", "search", "wishlist"]))
            item = None if etype == "search" else draw(st.sampled_from(["a", "b", "c"]))
            out.append(ClickEvent(f"e{draw(st.integers(0, 40))}", ts, user, f"s-{user}-{ts // (2 * HOUR)}", etype,
                                  item, None, draw(st.sampled_from([None, 1.5])) if item else None, None))
        else:
            out.append(OrderEvent(f"o{draw(st.integers(0, 8))}", ts, user, (OrderLine("a", 1, 2.0, None),)))
    return out


_apply = st.tuples(st.just("apply"), _messages())
# Watermarks within the day close sessions; one past a week lets users be forgotten (deleted).
_watermark = st.tuples(st.just("watermark"), st.one_of(st.integers(0, 8 * HOUR), st.just(8 * 24 * HOUR)))
_steps = st.lists(st.one_of(_apply, _apply, _apply, _watermark, st.tuples(st.just("flush")),
                            st.tuples(st.just("reload"))), min_size=1, max_size=40)


def _worker():
    from launchpulse.stream.pipeline import Worker
    from launchpulse.stream.settings import Settings

    old = dict(os.environ)
    os.environ.update({"LAUNCHPULSE_PSEUDONYM_KEY": "user-log", "LAUNCHPULSE_WINDOW_SECONDS": "3600",
                       "LAUNCHPULSE_GRACE_SECONDS": "600"})
    try:
        worker = Worker(Settings.from_env())  # its Faust app and tables are built, never started
    finally:
        os.environ.clear()
        os.environ.update(old)
    worker._owned_parts = list(range(worker.s.state_partitions))

    async def no_delivery(prev, *args, **kwargs):  # the changelog records stay in the table's store
        if prev is not None:
            await prev

    worker._deliver = no_delivery
    return worker


def _writes_users_whole(worker):
    """The worker as it was before logs: a dirty user's whole state at every flush."""
    def write_user(key, st):
        worker._table_writes(worker.items, key.encode(), None, orjson.dumps(st.to_state()), worker._partition(key))

    def load_user(key, raw):
        return UserSessions.from_state(orjson.loads(raw)) if raw else UserSessions(key)

    worker._write_user, worker._load_user = write_user, load_user
    return worker


def _users(worker) -> dict:
    return {k: orjson.dumps(s.to_state(), option=orjson.OPT_SORT_KEYS)
            for k, s in worker.cache.items() if type(s) is UserSessions}


@settings(max_examples=150, deadline=None)
@given(_steps, st.integers(1, 3))
@example([("apply", [ClickEvent("e1", 0, "u1", "s-u1-0", "view", "a", None, None, None)]), ("flush",),
          ("watermark", 3 * HOUR),  # closes s-u1-0: the next write must not be a delta of the base holding it
          ("apply", [ClickEvent("e2", 4 * HOUR, "u1", "s-u1-2", "view", "b", None, None, None)]), ("reload",)], 1)
def test_users_read_back_from_base_and_log_are_the_users_applied(steps, max_block):
    from launchpulse.stream.pipeline import _store

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    logged, whole = _worker(), _writes_users_whole(_worker())
    owner = logged._partition
    for n, step in enumerate(steps):
        envelopes = []
        if step[0] == "apply":
            batch = RoutedBatch(owner, max_block)
            batch.add(step[1], ["clicks", 0, n])
            envelopes = [(p, {"src": "t", "at": 0.0, "r": recs}) for p, recs in batch.parts.items()]
        elif step[0] == "watermark":  # every partition hears it: the sessions it passes close
            envelopes = [(p, {"src": "t", "at": 0.0, "r": [], "pw": {"input:0": [step[1], False, 0.0]}, "np": 1})
                         for p in logged._owned_parts]
        for w in (logged, whole):
            for p, env in envelopes:
                w._apply_envelope(p, orjson.dumps(env))
            if step[0] in ("flush", "reload"):
                loop.run_until_complete(w._flush())
            if step[0] == "reload":  # as a rebalance or an eviction leaves it: states read from the table again
                keys = list(_users(w))
                w.cache.clear()
                w._user_logs.clear()
                w._ids_range.clear()
                for key in keys:
                    w._state(key)
        assert _users(logged) == _users(whole)
    for w in (logged, whole):
        loop.run_until_complete(w._flush())
    # What the table holds reads back as the states; a deleted user leaves neither base nor chunk.
    store = _store(logged.items)
    stored_users = {k.decode() for k in store if k.startswith(b"user:") and b"\x00" not in k}
    cached = {k for k, s in logged.cache.items() if type(s) is UserSessions}
    # (a user only looked up, by a late event, holds nothing and is never written)
    assert {k for k in cached if not logged.cache[k].is_empty()} <= stored_users <= cached
    live = stored_users
    for k in store:
        if k.startswith(b"user:") and b"\x00" in k:
            assert k.split(b"\x00")[0].decode() in live, "a deleted user's log chunk was left"
    reader = _worker()
    _store(reader.items).update(store)
    assert {k: orjson.dumps(reader._state(k).to_state(), option=orjson.OPT_SORT_KEYS) for k in live} == \
        {k: v for k, v in _users(whole).items() if k in live}
    assert stored_users == {k.decode() for k in _store(whole.items) if k.startswith(b"user:")}
    loop.close()


def test_a_users_log_is_written_as_chunks_after_one_base():
    """A user already written goes as log chunks, one per flush it changed in; a new base after
    LOG_CHUNKS_MAX of them; chunks of an older base are never read."""
    from launchpulse.stream.pipeline import _store

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    w = _worker()
    key = "user:" + "0" * 32
    part = w._partition(key)
    kb = key.encode()

    def click(n):
        env = {"src": "t", "at": 0.0, "r": [{"k": "c", "K": key, "id": f"e{n}", "t": 1000 + n, "i": "a",
                                             "e": "view", "p": None, "s": "s1", "n": 0}]}
        w._apply_envelope(part, orjson.dumps(env))
        loop.run_until_complete(w._flush())

    store = _store(w.items)
    click(0)
    first_tag = orjson.loads(store[kb])["log"]
    for n in range(1, LOG_CHUNKS_MAX + 1):
        click(n)
    assert orjson.loads(store[kb])["log"] == first_tag
    assert read_log(store.get, kb, first_tag)[1:] == (LOG_CHUNKS_MAX, LOG_CHUNKS_MAX)
    click(LOG_CHUNKS_MAX + 1)  # the log is full: a new base, whose chunks start again at 0
    second_tag = orjson.loads(store[kb])["log"]
    assert second_tag != first_tag
    assert read_log(store.get, kb, second_tag) == ([], 0, LOG_CHUNKS_MAX)
    click(LOG_CHUNKS_MAX + 2)
    assert orjson.loads(store[log_key(kb, 0)])[0] == second_tag
    entries, n, held = read_log(store.get, kb, second_tag)
    assert (len(entries), n, held) == (1, 1, LOG_CHUNKS_MAX)
    loop.close()
