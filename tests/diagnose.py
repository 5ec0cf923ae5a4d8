"""Where orders went missing in a deployment, read from the broker itself (for a failing test's message).

Compares, per stage: the input messages with the routed envelopes that carry their records, the
consumer groups' committed offsets with the topics' end offsets, and the latest replicated totals
with the batch truth.
"""
from __future__ import annotations

import asyncio
from collections import Counter

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from launchpulse.stream.offsets import end_offsets


async def _read_all(bootstrap: str, topic: str, timeout: float = 120.0):
    """Every record of ``topic`` up to the end offsets it has now, and those offsets (by partition)."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await c.start()
    try:
        await c.topics()  # metadata of every topic, so that partitions_for_topic knows this one
        parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
        c.assign(parts)
        await c.seek_to_beginning(*parts)
        ends = await end_offsets(c, parts)
        out = []

        async def behind():
            return [tp for tp in parts if await c.position(tp) < ends[tp]]

        deadline = asyncio.get_running_loop().time() + timeout
        while await behind():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{topic}: read {len(out)} records, end offsets {ends}, "
                                     f"positions {[await c.position(tp) for tp in parts]} after {timeout} s")
            for tp, msgs in (await c.getmany(timeout_ms=1000)).items():
                out += [(tp.partition, m.offset, m.key, m.value) for m in msgs]
        return out, {tp.partition: ends[tp] for tp in parts}
    finally:
        await c.stop()


async def committed_offsets(bootstrap: str, group: str, topic: str, partitions) -> dict:
    """The group's committed offsets (read without joining it)."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        return {p: await c.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        await c.stop()


async def diagnose(settings, n_item: Counter, n_total: int) -> str:
    bs = settings.bootstrap_servers
    lines = []
    inputs, in_ends = await _read_all(bs, settings.topic_orders)
    routed, r_ends = await _read_all(bs, settings.routed_topic)
    totals, _ = await _read_all(bs, settings.totals_topic)
    dead, _ = await _read_all(bs, settings.topic_dead_letter)
    try:
        ingest_c = await committed_offsets(bs, f"{settings.app_id}-ingest", settings.topic_orders, in_ends)
        faust_c = await committed_offsets(bs, settings.app_id, settings.routed_topic, r_ends)
    except Exception as e:  # noqa: BLE001 - a diagnostic must not hide the failure it explains
        ingest_c, faust_c = {}, {}
        lines.append(f"committed offsets unavailable: {type(e).__name__}: {e}")
    lines.append(f"orders topic: {len(inputs)} messages, end offsets {in_ends}; ingest group committed {ingest_c}")
    lines.append(f"routed topic: {len(routed)} envelopes, end offsets {r_ends}; faust group committed {faust_c}")
    codes = Counter(orjson.loads(v).get("code") for _p, _o, _k, v in dead)
    lines.append(f"dead letters: {len(dead)} {dict(codes)}")
    seen_src = set()
    for part, off, _k, v in routed:
        env = orjson.loads(v)
        for rec in env.get("r", ()):
            src = rec.get("o")
            if src and src[0] == settings.topic_orders:
                seen_src.add((src[1], src[2]))
    missing_src = sorted({(p, o) for p, o, _k, _v in inputs} - seen_src)
    lines.append(f"input messages with no routed record: {len(missing_src)} {missing_src[:20]}")
    latest = {}
    for _p, _o, k, v in totals:
        if k is not None and not k.startswith(b"#"):
            latest[k] = orjson.loads(v) if v is not None else None
    n_primary = sum(v[1] for v in latest.values() if v)
    short = {k.decode(): (v[0] if v else None, n_item[k.decode()]) for k, v in latest.items()
             if (v[0] if v else 0) != n_item[k.decode()]}
    absent = [i for i in n_item if i.encode() not in latest]
    from launchpulse.models.routing import partition_for

    by_part = Counter(partition_for(i, settings.state_partitions) for i in list(short) + absent)
    lines.append(f"state partitions of the short or absent items: {dict(by_part)}")
    lines.append(f"totals topic: {len(latest)} items, primary orders {n_primary} of {n_total}; "
                 f"{len(short)} items with n_item != truth (first: {list(short.items())[:10]}); "
                 f"{len(absent)} items absent (first: {absent[:10]})")
    return "\n".join(lines)


def diagnose_sync(settings, n_item: Counter, n_total: int) -> str:
    try:
        return asyncio.run(diagnose(settings, n_item, n_total))
    except Exception as e:  # noqa: BLE001
        return f"diagnosis failed: {type(e).__name__}: {e}"
