"""A state's dedupe ids, persisted as deltas.

An item's or a category's state remembers the id of every record applied to a window still open
(``seen``: id -> event time), so that a record read twice (a replay after a crash, a producer's
retry) counts once. On a live feed those ids are most of a busy key's state, and they grow all
day: written whole with the rest of the state at every flush, a popular item's ids were rewritten
every few seconds, and the flush's cost grew with the window. Instead, the ids go to chunk records
of their own: a flush writes only the ids added since the key's previous write, as one new chunk,
and the state records which chunks hold its ids (``[first, next)``). A key's chunks are compacted
into one when they number ``CHUNKS_MAX``, or when the state has pruned its ids (amortised: a
compaction rewrites the ids once per ``CHUNKS_MAX`` writes).

Pure: the caller (the worker's flush) sends what :func:`plan_ids_write` returns and reads chunks
back through a getter (:func:`read_ids`). Crash safety comes from the order the caller keeps: a
key's chunks are written before the state that points at them, to the same changelog partition,
and the chunks a compaction replaced are deleted only once that state is on the broker (the next
flush), so a state on the broker never points at a chunk that is not.

>>> seen = {"a": 1, "b": 2}
>>> rng, writes, garbage = plan_ids_write(seen, None, None)   # never written: every id, chunk 0
>>> rng, writes, garbage
([0, 1], [(0, {'a': 1, 'b': 2})], [])
>>> seen["c"] = 3
>>> plan_ids_write(seen, 2, rng)                               # two ids already in chunk 0
([0, 2], [(1, {'c': 3})], [])
>>> plan_ids_write(seen, 3, [0, 2])                            # nothing new
([0, 2], [], [])
>>> plan_ids_write({"c": 3}, None, [0, 2])                     # pruned: one chunk, the old ones go
([2, 3], [(2, {'c': 3})], [0, 1])
>>> store = {chunk_key(b"item", 2): b'{"c":3}'}
>>> read_ids(store.get, b"item", [2, 3])
{'c': 3}
>>> read_ids(store.get, b"item", [1, 3]) is None               # a chunk missing
True
"""
from __future__ import annotations

from itertools import islice
from typing import Callable

import orjson

__all__ = ["CHUNKS_MAX", "chunk_key", "plan_ids_write", "read_ids"]

CHUNKS_MAX = 32  # a key's chunks are compacted into one at this many


def chunk_key(key: bytes, n: int) -> bytes:
    """The record key of chunk ``n`` of ``key``'s ids (NUL never occurs in an item or category key)."""
    return b"%s\x00ids\x00%d" % (key, n)


def plan_ids_write(seen: dict, persisted: int | None, rng: list | None,
                   max_chunks: int = CHUNKS_MAX) -> tuple[list, list, list]:
    """What writing a state's ids takes: ``(range, writes, garbage)``.

    ``seen``: the ids (insertion-ordered; only ever appended to, except when the state prunes them,
    which it says by setting ``persisted`` to None). ``persisted``: how many of them (the first ones)
    the chunks of ``rng`` already hold. ``range``: the chunks ``[first, next)`` the state now points
    at; ``writes``: ``(n, ids)`` chunks to write before the state; ``garbage``: chunk numbers to delete
    once the state is on the broker.
    """
    if rng is None or persisted is None or persisted > len(seen) or rng[1] - rng[0] >= max_chunks:
        first, nxt = rng if rng is not None else (0, 0)
        return [nxt, nxt + 1], [(nxt, seen)], list(range(first, nxt))
    if persisted == len(seen):
        return rng, [], []
    return [rng[0], rng[1] + 1], [(rng[1], dict(islice(seen.items(), persisted, None)))], []


def read_ids(get: Callable[[bytes], bytes | None], key: bytes, rng: list) -> dict | None:
    """The ids held by chunks ``rng`` of ``key``, in write order, or None when one is missing."""
    out: dict = {}
    for n in range(rng[0], rng[1]):
        raw = get(chunk_key(key, n))
        if raw is None:
            return None
        out.update(orjson.loads(raw))
    return out
