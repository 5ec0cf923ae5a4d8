"""Ingest stage: input topics -> validated, pseudonymised, routed records packed per owner partition.

It runs inside the worker on a plain aiokafka consumer group of its own, because
Faust's per-message path costs about 160 us a message (see docs/design.md); the
stateful stage behind it is a Faust agent over packed envelopes.

At-least-once: a batch's envelopes and dead-letter records are acknowledged by
the broker before the batch's input offsets are committed. A crash in between
replays the batch; the owners' deduplication makes that harmless.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from launchpulse.models.routing import partition_for, route_event
from launchpulse.models.windows import WindowConfig
from launchpulse.schemas.validate import Pseudonymiser, Rejection, dead_letter_record, parse_message

from .metrics import Metrics
from .settings import Settings

log = logging.getLogger("launchpulse.ingest")

IDLE_PARTITION_S = 5.0


class Ingest:
    def __init__(self, settings: Settings, metrics: Metrics, cfg: WindowConfig):
        self.s = settings
        self.m = metrics
        self.cfg = cfg
        self.pseudonymise = Pseudonymiser(settings.pseudonym_key)
        # Event-time watermark: the slowest input partition that still has data pending decides,
        # so partitions read in bursts do not make each other's events late.
        self.watermark = 0
        self.partition_max: dict[TopicPartition, int] = {}
        self.partition_heard: dict[TopicPartition, float] = {}  # monotonic time of its latest message
        self.instance = uuid.uuid4().hex[:12]  # names this ingest in the envelopes' watermarks
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.healthy_reason = "starting"
        self.last_batch_monotonic = 0.0
        self.consumed = 0
        self._positions: dict[TopicPartition, int] = {}  # committed offsets, for the lag gauge
        self._sent_wm: dict[int, int] = {}  # watermark last stamped per owner partition
        self._start_offsets: dict[TopicPartition, int] = {}  # committed offsets when first seen

    async def start(self) -> None:
        s = self.s
        self.producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap_servers, acks="all", linger_ms=5,
                                         enable_idempotence=False, max_request_size=8 * 1024 * 1024,
                                         request_timeout_ms=30000, **s.kafka_security())
        self.consumer = AIOKafkaConsumer(*s.input_topics, bootstrap_servers=s.bootstrap_servers,
                                         group_id=f"{s.app_id}-ingest", enable_auto_commit=False,
                                         auto_offset_reset="earliest", session_timeout_ms=int(s.session_timeout_s * 1000),
                                         heartbeat_interval_ms=1000, rebalance_timeout_ms=int(s.rebalance_timeout_s * 1000),
                                         max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=32 * 1024 * 1024,
                                         **s.kafka_security())
        await self.producer.start()
        await self.consumer.start()

    async def stop(self) -> None:
        for c in (self.consumer, self.producer):
            if c is not None:
                try:
                    await c.stop()
                except Exception:  # stopping a client that lost its broker
                    log.warning("ingest client stop failed", exc_info=True)

    async def run(self) -> None:
        while True:
            try:
                batches = await self.consumer.getmany(timeout_ms=200, max_records=self.s.ingest_max_records)
            except Exception as e:
                self.healthy_reason = f"ingest consumer error: {type(e).__name__}: {e}"
                self.m.broker_errors.labels("ingest").inc()
                log.warning("ingest fetch failed; retrying", extra={"error": str(e)})
                await asyncio.sleep(1.0)
                continue
            if batches:
                await self.process(batches)
            else:
                await self.send_envelopes({})  # idle: the watermark may still advance
            self.healthy_reason = ""
            self.last_batch_monotonic = time.monotonic()
            self.update_lag()

    def update_lag(self) -> None:
        c = self.consumer
        for tp in c.assignment():
            hw = c.highwater(tp)
            at = self._positions.get(tp)
            if hw is not None:
                self.m.lag.labels(tp.topic, str(tp.partition)).set(max(0, hw - (at if at is not None else 0)))

    async def advance_watermark(self) -> int:
        """Min over the assigned clickstream and orders partitions of their max event time.

        A partition with unread data holds the watermark at its max so far (0 before its first
        message); one with nothing unread and no message for IDLE_PARTITION_S is skipped, so a
        quiet partition does not hold every window open. Catalog records do not move time.
        """
        c = self.consumer
        now = time.monotonic()
        live = []
        clock_topics = (self.s.topic_clickstream, self.s.topic_orders)
        for tp in c.assignment():
            if tp.topic not in clock_topics:
                continue
            hw = c.highwater(tp)
            pos = self._positions.get(tp)
            if pos is None:
                # Not read by this instance yet: where the group left it. (The consumer's own
                # position runs ahead of what was processed, since it prefetches.)
                pos = self._start_offsets.get(tp)
                if pos is None:
                    try:
                        pos = self._start_offsets[tp] = (await c.committed(tp)) or 0
                    except Exception:  # unknown yet: pending
                        pos = -1
            caught_up = hw is not None and pos >= hw
            if not caught_up or now - self.partition_heard.get(tp, -1e9) < IDLE_PARTITION_S:
                live.append(self.partition_max.get(tp, 0))
        if live:
            wm = min(live)
        elif self.partition_max:
            wm = max(self.partition_max.values())
        else:
            wm = 0
        if wm > self.watermark:
            self.watermark = wm
        return self.watermark

    async def process(self, batches: dict) -> None:
        t0 = time.perf_counter()
        s, m, cfg = self.s, self.m, self.cfg
        n_parts = s.state_partitions
        routed: dict[int, list] = defaultdict(list)
        dead: list[dict] = []
        offsets: dict[TopicPartition, int] = {}
        now_ms = int(time.time() * 1000)
        watermark = await self.advance_watermark()
        part_max = self.partition_max
        for tp, msgs in batches.items():
            topic = tp.topic
            kind = s.input_topics[topic]
            tracks_time = kind != "catalog"  # catalog records are sparse state updates, not a clock
            m.messages.labels(topic).inc(len(msgs))
            for msg in msgs:
                parsed = parse_message(msg.value, kind, self.pseudonymise)
                for rej in parsed.rejections:
                    dead.append(dead_letter_record(topic, tp.partition, msg.offset, rej, msg.value, now_ms))
                self.partition_heard[tp] = time.monotonic()
                for ev in parsed.events:
                    if cfg.is_late(ev.ts_ms, watermark):
                        dead.append(dead_letter_record(topic, tp.partition, msg.offset, Rejection(
                            None, "late_event", f"event time is {(watermark - ev.ts_ms) / 1000:.0f} s behind the "
                            f"watermark, more than the {cfg.grace_ms / 1000:.0f} s grace period", orjson.dumps(_public(ev))),
                            None, now_ms))
                        m.late_events.labels(topic).inc()
                        continue
                    if tracks_time and ev.ts_ms > part_max.get(tp, 0):
                        part_max[tp] = ev.ts_ms
                    src = [topic, tp.partition, msg.offset]
                    for key, rec in route_event(ev):
                        rec["o"] = src
                        routed[partition_for(key, n_parts)].append(rec)
            offsets[tp] = msgs[-1].offset + 1
        self._positions.update(offsets)  # as if committed, to stamp the watermark this batch reaches
        futures = await self.send_envelopes(routed)
        for rec in dead:
            m.dead_letters.labels(rec["code"]).inc()
            m.events.labels(rec["topic"], "rejected").inc()
            futures.append(await self.producer.send(s.topic_dead_letter, orjson.dumps(rec)))
        if futures:
            await asyncio.gather(*futures)
        await self.consumer.commit(offsets)
        self.consumed += sum(len(v) for v in batches.values())
        m.stage.labels("ingest").observe(time.perf_counter() - t0)

    async def send_envelopes(self, routed: dict) -> list:
        """One envelope per owner partition with records, or whose watermark moved; returns send futures."""
        s = self.s
        prod = self.producer
        futures = []
        wm_after = await self.advance_watermark()
        step = s.envelope_max_records
        for part in range(s.state_partitions):
            # Every owner partition hears the watermark, even without records, so its windows close.
            recs = routed.get(part, [])
            if not recs and self._sent_wm.get(part) == wm_after:
                continue
            before = self._sent_wm.get(part, 0)
            self._sent_wm[part] = wm_after
            starts = range(0, max(len(recs), 1), step)
            for i in starts:
                # Only the batch's last envelope may move the watermark: the owner closes windows
                # when it hears it, and the records of the earlier envelopes must land first.
                wm = wm_after if i == starts[-1] else before
                env = {"src": self.instance, "wm": wm, "at": time.time(), "r": recs[i:i + step]}
                futures.append(await prod.send(s.routed_topic, orjson.dumps(env), partition=part))
        if futures and not routed:
            await asyncio.gather(*futures)
            return []
        return futures


def _public(ev) -> dict:
    """A refused event for the dead-letter record: pseudonyms only, never the raw user id."""
    d = {f: getattr(ev, f) for f in ev.__slots__}
    if "lines" in d:
        d["lines"] = [{f: getattr(l, f) for f in l.__slots__} for l in d["lines"]]
    return d
