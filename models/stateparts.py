"""A state's slow-changing parts, persisted apart and rewritten only when they change.

A live worker rewrites every state dirty since its previous flush, and an item is dirty at nearly
every flush (its counts change at every event). Most of an item's state does not: its trend models
learn only when a window closes, and an association window's counters stop changing once the
window is past. Written whole, those parts were over half of every flush's bytes, and the flushes
grew with the windows kept until one met a window boundary and held its signals back. Instead,
each such part is a record of its own, ``key NUL p NUL name NUL gen``, and the state records which
generation of each part it is made of (its ``index``): a flush writes a part again only when its
bytes differ from the ones last written, under the next generation.

Pure: the caller (the worker's flush) keeps, per key, what it last wrote (``written``: name ->
``(gen, bytes)``), sends what :func:`plan_parts_write` returns, and reads parts back through a getter
(:func:`read_parts`). Crash safety comes from the order the caller keeps, as for the dedupe ids
(models.dedupe): a part is written before the state that points at it, to the same changelog
partition, and a generation replaced is deleted only once the state pointing at its successor is
on the broker (the next flush), so a state on the broker never points at a part that is not.

Unchanged parts are told by identity first (a model's cached JSON, a window's cached JSON: the same
bytes object while nothing changed), then by equality (after a restart, the bytes read back).

>>> models = {"trend": b'{"n":1}', "aw.0": b'{"c":2}'}
>>> index, writes, garbage, written = plan_parts_write(models, None)     # never written: every part
>>> index, writes, garbage
({'trend': 0, 'aw.0': 0}, [('trend', 0, b'{"n":1}'), ('aw.0', 0, b'{"c":2}')], [])
>>> plan_parts_write(models, written)[1:3]                                # nothing changed: nothing to write
([], [])
>>> index, writes, garbage, written = plan_parts_write({"trend": b'{"n":2}', "aw.10": b'{}'}, written)
>>> index, writes, garbage                                                # a new trend, a window gone, one added
({'trend': 1, 'aw.10': 0}, [('trend', 1, b'{"n":2}'), ('aw.10', 0, b'{}')], [('trend', 0), ('aw.0', 0)])
>>> store = {part_key(b"milk", "trend", 1): b'{"n":2}', part_key(b"milk", "aw.10", 0): b'{}'}
>>> read_parts(store.get, b"milk", index)
{'trend': b'{"n":2}', 'aw.10': b'{}'}
>>> read_parts(store.get, b"milk", {"trend": 0}) is None                 # a part missing
True
"""
from __future__ import annotations

from typing import Callable

__all__ = ["part_key", "plan_parts_write", "read_parts", "written_from"]


def part_key(key: bytes, name: str, gen: int) -> bytes:
    """The record key of generation ``gen`` of ``key``'s part ``name`` (NUL never occurs in an item key)."""
    return b"%s\x00p\x00%s\x00%d" % (key, name.encode(), gen)


def plan_parts_write(parts: dict[str, bytes], written: dict[str, tuple[int, bytes]] | None
                     ) -> tuple[dict[str, int], list[tuple[str, int, bytes]], list[tuple[str, int]], dict]:
    """What writing a state's parts takes: ``(index, writes, garbage, written)``.

    ``parts``: name -> the part's bytes now. ``written``: name -> ``(gen, bytes)`` as last written for
    this key (None: nothing known). ``index``: name -> generation, for the state to point at;
    ``writes``: ``(name, gen, bytes)`` to write before the state; ``garbage``: ``(name, gen)`` to delete
    once the state is on the broker; ``written``: the caller's record after these writes.
    """
    prev = written or {}
    index: dict[str, int] = {}
    writes: list = []
    garbage: list = []
    out: dict = {}
    for name, b in parts.items():
        old = prev.get(name)
        if old is not None and (old[1] is b or old[1] == b):
            index[name] = old[0]
            out[name] = old if old[1] is b else (old[0], b)  # hold the live object: identity next time
            continue
        gen = 0 if old is None else old[0] + 1
        if old is not None:
            garbage.append((name, old[0]))
        index[name] = gen
        writes.append((name, gen, b))
        out[name] = (gen, b)
    for name, old in prev.items():
        if name not in parts:
            garbage.append((name, old[0]))
    return index, writes, garbage, out


def read_parts(get: Callable[[bytes], bytes | None], key: bytes, index: dict[str, int]) -> dict[str, bytes] | None:
    """The parts ``index`` names, read through ``get``, or None when one is missing."""
    out: dict = {}
    for name, gen in index.items():
        raw = get(part_key(key, name, gen))
        if raw is None:
            return None
        out[name] = raw
    return out


def written_from(index: dict[str, int], parts: dict[str, bytes]) -> dict[str, tuple[int, bytes]]:
    """The caller's record of what is written, for a state just read back with its parts."""
    return {name: (gen, parts[name]) for name, gen in index.items()}
