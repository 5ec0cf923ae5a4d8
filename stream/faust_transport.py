"""Two changes to Faust's Kafka consumer, as subclasses.

How long the worker's consumer lets the broker hold a fetch:

faust-streaming builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` written into
``AIOKafkaConsumerThread._create_worker_consumer`` (no setting reaches it). A broker may hold a
fetch that long when nothing is new; Kafka answers early once data arrives, but the embedded
Tansu broker does not: measured here, one message waited a median of 128 ms for a consumer at
500 ms and 23 ms at 100 ms, and at 1,000 events/s offered the worker's event-to-signal latency
was 1.7 s at the median, most of it spent waiting on fetches of the routed topic. Idle fetches
every 100 ms cost the broker next to nothing.

Where a partition with nothing committed starts again after a rebalance (seek_to_committed_or_reset).

Where table recovery stops reading a changelog: at its end offset as stream/offsets.end_offsets reads
it, which is right on the embedded broker too.
"""
from __future__ import annotations

import logging

import faust
from aiokafka import AIOKafkaConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka

from .offsets import end_offsets
from .settings import FETCH_MAX_WAIT_MS

log = logging.getLogger("launchpulse.faust")


async def seek_to_committed_or_reset(consumer: AIOKafkaConsumer, skip_topics=frozenset(),
                                     reset: str = "earliest") -> dict:
    """Seek every assigned partition to its committed offset, and those with none by the reset policy.

    Faust discards records it fetched around a rebalance (those of a getmany under way when the flow
    stops, or when a partition is paused) and relies on seeking back to the committed offsets to read
    them again. aiokafka's ``seek_to_committed`` seeks only partitions whose committed offset is above
    0, and leaves the others where the fetcher got to: the discarded records of a partition with
    nothing committed yet were never read again, and acknowledging the next ones committed past them.
    The SIGKILL recovery test lost whole envelopes that way (tests/test_recovery.py, 2026-11-24): a
    fresh worker whose routed partitions had no commit started them at offsets 1, 7 and 15.

    Partitions of ``skip_topics`` (table changelogs, which Faust positions itself and never commits)
    keep their position. Returns the committed offsets, as aiokafka's ``seek_to_committed`` does.
    """
    committed = await consumer.seek_to_committed()
    unset = []
    for tp, offset in committed.items():
        if tp.topic in skip_topics:
            continue
        if offset == 0:
            consumer.seek(tp, 0)
        elif offset is None or offset < 0:
            unset.append(tp)
    if unset and reset == "latest":
        for tp, end in (await end_offsets(consumer, unset)).items():  # not seek_to_end: see stream/offsets.py
            consumer.seek(tp, end)
    elif unset:
        await consumer.seek_to_beginning(*unset)
    return committed


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by AIOKafkaConsumer.start() for its fetcher
        return consumer

    async def seek_to_committed(self):
        app = self.consumer.app
        return await self.call_thread(seek_to_committed_or_reset, self._ensure_consumer(),
                                      frozenset(app.tables.changelog_topics), app.conf.consumer_auto_offset_reset)

    async def _highwaters(self, partitions):
        # Faust reads a table's changelog up to these offsets when it recovers the table.
        if self.consumer.in_transaction:
            return await super()._highwaters(partitions)
        return await end_offsets(self._ensure_consumer(), partitions)


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class App(faust.App):
    """``faust.App`` whose consumer fetches with ``FETCH_MAX_WAIT_MS``, seeks every partition back
    after a rebalance (``seek_to_committed_or_reset``), recovers tables to their true end offsets,
    and can stop without waiting on its streams.

    At a stop, Faust clears the agents' queues and then (``stream_wait_empty``) waits until every
    message handed to an agent is acknowledged, the cleared ones included: they never are until the
    garbage collector frees them, and the worker's stops took 13-15 s, ending in a dump of every
    agent's stack. ``before_stop``, when set, runs first and writes and acknowledges what was
    applied; the wait is then skipped for that stop, and what was not applied is read again at the
    next start (Faust commits only acknowledged offsets).
    """

    before_stop = None  # async callable, or None

    async def on_stop(self) -> None:
        if self.before_stop is not None:
            try:
                await self.before_stop()
            except Exception:  # noqa: BLE001 - then wait as Faust does: nothing is lost either way
                log.exception("writing state before the stop failed; waiting for the streams instead")
            else:
                self.conf.stream_wait_empty = False
        await super().on_stop()

    def _new_transport(self):
        return _Transport(self.conf.broker_consumer, self)
