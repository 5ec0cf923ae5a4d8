"""The worker's consumer seeks every partition back after a rebalance, committed or not (real broker).

Faust discards records fetched around a rebalance and counts on the seek to the committed offsets
to read them again; aiokafka's own seek skips partitions with nothing (or 0) committed, which lost
whole envelopes after a SIGKILL (see stream/faust_transport.seek_to_committed_or_reset).
"""
import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata

from launchpulse.stream.faust_transport import seek_to_committed_or_reset

pytestmark = pytest.mark.integration

N = 20  # records per partition


async def _read_to_end(consumer, tps) -> None:
    """Fetch until every partition's position is at its end (what a fetch before a rebalance does)."""
    for _ in range(200):
        await consumer.getmany(*tps, timeout_ms=200)
        positions = [await consumer.position(tp) for tp in tps]
        if positions == [N] * len(tps):
            return
    raise AssertionError(positions)


async def _scenario(bootstrap: str, reset: str) -> dict:
    stream, changelog = f"seek-{uuid.uuid4().hex[:8]}", f"seek-{uuid.uuid4().hex[:8]}-changelog"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(stream, 3, 1), NewTopic(changelog, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for topic, parts in ((stream, 3), (changelog, 1)):
            for p in range(parts):
                for i in range(N):
                    await producer.send_and_wait(topic, b"%d" % i, partition=p)
    finally:
        await producer.stop()
    tps = [TopicPartition(stream, p) for p in range(3)] + [TopicPartition(changelog, 0)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=f"g-{uuid.uuid4().hex[:8]}",
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign(tps)
        # partition 0: nothing committed; 1: offset 5; 2: offset 0 (nothing consumed yet).
        await consumer.commit({tps[1]: OffsetAndMetadata(5, ""), tps[2]: OffsetAndMetadata(0, "")})
        await _read_to_end(consumer, tps)
        committed = await seek_to_committed_or_reset(consumer, frozenset({changelog}), reset)
        positions = {(tp.topic == changelog, tp.partition): await consumer.position(tp) for tp in tps}
        first = {}  # the first offset read again per stream partition
        for _ in range(100):
            for tp, msgs in (await consumer.getmany(*tps[:3], timeout_ms=200)).items():
                first.setdefault(tp.partition, msgs[0].offset)
            if len(first) == 3 - (reset == "latest"):
                break
        assert committed[tps[1]] == 5
        return {"positions": positions, "first": first}
    finally:
        await consumer.stop()


def test_every_partition_seeks_back_to_its_committed_offset_or_the_reset_policy(broker_url):
    got = asyncio.run(_scenario(broker_url.split("://", 1)[1], "earliest"))
    # The stream's partitions go back to their committed offsets, partition 0 (nothing committed) to
    # its beginning by the reset policy; the changelog (Faust positions it itself) stays where it was.
    assert got["positions"] == {(False, 0): 0, (False, 1): 5, (False, 2): 0, (True, 0): N}
    assert got["first"] == {0: 0, 1: 5, 2: 0}


def test_reset_policy_latest_seeks_uncommitted_partitions_to_their_end(broker_url):
    got = asyncio.run(_scenario(broker_url.split("://", 1)[1], "latest"))
    assert got["positions"] == {(False, 0): N, (False, 1): 5, (False, 2): 0, (True, 0): N}
