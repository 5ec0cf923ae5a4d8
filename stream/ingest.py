"""Ingest stage: input topics -> validated, pseudonymised, routed records packed per owner partition.

It runs on a plain aiokafka consumer group of its own, because Faust's per-message
path costs about 160 us a message (see docs/design.md), in child processes of the
worker (stream/ingest_process.py) or on the worker's own event loop; the stateful
stage behind it is a Faust agent over packed envelopes.

At-least-once: a batch's envelopes and dead-letter records are acknowledged by
the broker before the batch's input offsets are committed. A crash in between
replays the batch; the owners' deduplication makes that harmless.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from launchpulse.models.routing import Partitioner, RoutedBatch
from launchpulse.models.windows import WindowConfig
from launchpulse.schemas.validate import Pseudonymiser, dead_letter_record, parse_message

from .metrics import Metrics
from .offsets import end_offsets
from .settings import FETCH_MAX_WAIT_MS, Settings

log = logging.getLogger("launchpulse.ingest")

IDLE_PARTITION_S = 5.0
# An unchanged report is sent again this often: owners let an idle partition stop holding time
# only on an idleness checked after the newest data any partition reported (see PartitionMeta).
REPORT_HEARTBEAT_S = 1.0
BROKER_PROBE_S = 2.0  # health: a metadata request this often,
BROKER_PROBE_TIMEOUT_S = 5.0  # answered within this long,
BROKER_PROBE_FAILURES = 2  # failing this many times in a row makes the worker unhealthy
STALL_S = 20.0  # health: an ingest loop iteration (fetch, send, commit) taking longer than this


class Ingest:
    def __init__(self, settings: Settings, metrics: Metrics, cfg: WindowConfig):
        self.s = settings
        self.m = metrics
        self.cfg = cfg
        self.pseudonymise = Pseudonymiser(settings.pseudonym_key)
        # Per assigned input partition: the max event time read (reported to the owners, whose
        # watermark is the minimum over every input partition, see partition_report).
        self.partition_max: dict[TopicPartition, int] = {}
        self.partition_heard: dict[TopicPartition, float] = {}  # monotonic time of its latest message
        # When messages started coming again after every partition had been quiet for IDLE_PARTITION_S
        # (or for the first time): each partition then gets IDLE_PARTITION_S to show its own data before
        # it may count as idle. Otherwise, when a feed (or a replay) starts, the partitions whose first
        # messages land a moment later count as idle, time runs ahead on the others, and their data
        # is refused as late.
        self.input_resumed_at = -1e9
        self._last_message_at = -1e9
        self.instance = uuid.uuid4().hex[:12]  # names this ingest in the envelopes' watermarks
        self.consumer: AIOKafkaConsumer | None = None
        # A client of its own for end offsets: on the group consumer's connection a ListOffsets
        # request waits behind the fetch long-polling the idle partitions (up to fetch_max_wait_ms,
        # 500 ms), and the idle check runs every batch: that wait took 11 of 17 s of a live feed.
        self.offset_reader: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.healthy_reason = "starting"
        # Broker reachability, from a bounded metadata probe (aiokafka retries a lost broker inside
        # getmany/send/commit without raising): "" while reachable, else why not, since when.
        self.broker_reason = ""
        self.broker_down_since: float | None = None
        self.last_batch_monotonic = 0.0
        self.consumed = 0
        self._positions: dict[TopicPartition, int] = {}  # committed offsets, for the lag gauge
        self._sent_report: dict[int, dict] = {}  # partition report last sent per owner partition (no wall times)
        self._sent_at: dict[int, float] = {}  # monotonic time it was sent
        self._assigned: set = set()
        self._partition_of = Partitioner(settings.state_partitions)  # routing key -> owner partition
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
                                         fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
                                         **s.kafka_security())
        self.offset_reader = AIOKafkaConsumer(bootstrap_servers=s.bootstrap_servers, group_id=None,
                                              request_timeout_ms=30000, **s.kafka_security())
        await self.producer.start()
        await self.consumer.start()
        await self.offset_reader.start()

    async def start_retrying(self) -> None:
        """start(), again every second until the broker lets it (health says why meanwhile)."""
        while True:
            try:
                await self.start()
                return
            except Exception as e:  # noqa: BLE001 - the broker may not answer yet
                self.healthy_reason = f"cannot start ingest: {e}"
                await self.stop()
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        for c in (self.consumer, self.offset_reader, self.producer):
            if c is not None:
                try:
                    await c.stop()
                except Exception:  # stopping a client that lost its broker
                    log.warning("ingest client stop failed", exc_info=True)

    async def run(self) -> None:
        probe = asyncio.create_task(self._probe_broker(), name="ingest-broker-probe")
        try:
            await self._run_batches()
        finally:
            probe.cancel()

    async def _run_batches(self) -> None:
        while True:
            try:
                batches = await self.consumer.getmany(timeout_ms=200, max_records=self.s.ingest_max_records)
            except Exception as e:
                self.healthy_reason = f"ingest consumer error: {type(e).__name__}: {e}"
                self.m.broker_errors.labels("ingest").inc()
                log.warning("ingest fetch failed; retrying", extra={"error": str(e)})
                await asyncio.sleep(1.0)
                continue
            try:
                if batches:
                    await self.process(batches)
                else:
                    await self.send_envelopes({})  # idle: the watermark may still advance
            except Exception as e:  # noqa: BLE001 - the task must survive any batch failure
                # Envelopes not acknowledged, or the commit refused (the group moved on during an
                # outage): nothing of this batch is committed. Read it again (at-least-once; the
                # owners' deduplication absorbs what did land) rather than let the task die.
                self.healthy_reason = f"ingest batch failed: {type(e).__name__}: {e}"
                self.m.broker_errors.labels("ingest").inc()
                log.warning("ingest batch failed; re-reading it", extra={"error": str(e)})
                self._rewind(batches)
                await asyncio.sleep(1.0)
                continue
            self.healthy_reason = ""
            self.last_batch_monotonic = time.monotonic()
            self.update_lag()

    def _rewind(self, batches: dict) -> None:
        """Seek each partition of an uncommitted batch back to its first message (if still assigned)."""
        assigned = self.consumer.assignment()
        for tp, msgs in batches.items():
            if msgs and tp in assigned:
                try:
                    self.consumer.seek(tp, msgs[0].offset)
                except Exception:  # revoked meanwhile: its next owner starts from the committed offset
                    log.warning("could not rewind %s", tp, exc_info=True)

    async def _probe_broker(self) -> None:
        """Every BROKER_PROBE_S, a metadata request bounded by BROKER_PROBE_TIMEOUT_S."""
        failures = 0
        while True:
            try:
                await asyncio.wait_for(self.consumer.topics(), BROKER_PROBE_TIMEOUT_S)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure to get metadata means unreachable
                failures += 1
                now = time.monotonic()
                if self.broker_down_since is None:
                    self.broker_down_since = now
                if failures >= BROKER_PROBE_FAILURES:
                    what = (f"no answer within {BROKER_PROBE_TIMEOUT_S:.0f} s" if isinstance(e, TimeoutError)
                            else str(e) if str(e).startswith(type(e).__name__) else f"{type(e).__name__}: {e}")
                    self.broker_reason = (f"broker {self.s.bootstrap_servers} unreachable for "
                                          f"{now - self.broker_down_since:.0f} s ({what})")
                    if failures == BROKER_PROBE_FAILURES:
                        self.m.broker_errors.labels("ingest").inc()
                        log.warning("broker unreachable", extra={"error": self.broker_reason})
            else:
                if self.broker_reason:
                    log.warning("broker reachable again after %.0f s", time.monotonic() - self.broker_down_since)
                failures = 0
                self.broker_reason = ""
                self.broker_down_since = None
            await asyncio.sleep(BROKER_PROBE_S)

    def health_reason(self) -> str:
        """Why this ingest is not healthy, or "" when it is."""
        if self.healthy_reason:
            return self.healthy_reason
        if self.broker_reason:
            return self.broker_reason
        stalled = time.monotonic() - self.last_batch_monotonic
        if self.last_batch_monotonic and stalled > STALL_S:
            return f"ingest has completed no batch for {stalled:.0f} s (waiting on the broker)"
        return ""

    def update_lag(self) -> None:
        c = self.consumer
        for tp in c.assignment():
            hw = c.highwater(tp)
            at = self._positions.get(tp)
            if hw is not None:
                self.m.lag.labels(tp.topic, str(tp.partition)).set(max(0, hw - (at if at is not None else 0)))

    async def partition_report(self) -> tuple[dict, int] | None:
        """Where this ingest stands on each assigned input partition, for the owners' watermark.

        ``{"topic:partition": [max event time read, idle, wall time]}`` and the number of such
        partitions in the input topics. A partition is idle when nothing is unread (by the
        broker's end offset) and no message came for IDLE_PARTITION_S: it then no longer holds the
        watermark back, and data arriving on it later than watermark - grace is late. The wall
        time is when the report was made, or for an idle partition just before the broker was
        asked for its end offset (owners weigh idleness against the newest data reported, see
        models.watermark.PartitionMeta). Owners keep the latest report per input partition (max
        of event times), so a partition's figure survives the death of the ingest that read it
        until its next holder reports. Catalog partitions hold time like the others while they
        have data (a quiet catalog is idle): a catalog record (stock, launch date) reaches its
        item before the windows after it close, so the same replay gives the same decisions. None while topic
        metadata is unknown.
        """
        c = self.consumer
        now = time.monotonic()
        wall = time.time()
        catalog = self.s.topic_catalog
        clock_topics = (self.s.topic_clickstream, self.s.topic_orders, catalog)
        n_total = 0
        for t in clock_topics:
            parts = c.partitions_for_topic(t)
            if not parts:
                return None
            n_total += len(parts)
        assigned = c.assignment()
        if assigned != self._assigned:
            # Partitions moved: positions read before are stale, re-read where the group left them.
            for tp in self._assigned - assigned:
                self._positions.pop(tp, None)
                self._start_offsets.pop(tp, None)
            self._assigned = set(assigned)
        report = {}
        positions = {}  # partitions that look idle -> position, checked against the broker below
        for tp in assigned:
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
            heard = max(self.partition_heard.get(tp, -1e9), self.input_resumed_at)
            # A catalog partition is sparse: it holds time only while it has unread records (their
            # windows wait for them), not for IDLE_PARTITION_S after each one, which on a replay let
            # the other partitions run weeks of event time ahead of the closing windows.
            quiet = hw is not None and pos >= hw and (now - heard >= IDLE_PARTITION_S or tp.topic == catalog)
            report[f"{tp.topic}:{tp.partition}"] = [self.partition_max.get(tp, 0), quiet, wall]
            if quiet:
                positions[tp] = pos
        if positions:
            # The consumer's high watermark of a partition is only as fresh as its last fetch response:
            # right after data lands on every partition, one fetched first would make the others look
            # idle and run time ahead of their unread data. Ask the broker for the end offsets.
            checked_at = time.time()  # idle as of no earlier than this
            try:
                ends = await end_offsets(self.offset_reader, positions)
            except Exception:  # noqa: BLE001 - unknown: not idle (holding time back is the safe side)
                ends = {}
            for tp, pos in positions.items():
                entry = report[f"{tp.topic}:{tp.partition}"]
                if ends.get(tp) is None or pos < ends[tp]:
                    entry[1] = False
                else:
                    entry[2] = checked_at
        return report, n_total

    async def process(self, batches: dict) -> None:
        t0 = time.perf_counter()
        s, m = self.s, self.m
        routed = RoutedBatch(self._partition_of, s.envelope_max_records)
        dead: list[dict] = []
        offsets: dict[TopicPartition, int] = {}
        now_ms = int(time.time() * 1000)
        part_max = self.partition_max
        if any(batches.values()):
            t = time.monotonic()
            if t - self._last_message_at >= IDLE_PARTITION_S:
                self.input_resumed_at = t
            self._last_message_at = t
        for tp, msgs in batches.items():
            topic = tp.topic
            kind = s.input_topics[topic]
            m.messages.labels(topic).inc(len(msgs))
            for msg in msgs:
                parsed = parse_message(msg.value, kind, self.pseudonymise)
                for rej in parsed.rejections:
                    dead.append(dead_letter_record(topic, tp.partition, msg.offset, rej, msg.value, now_ms))
                self.partition_heard[tp] = time.monotonic()
                for ev in parsed.events:
                    # Lateness is judged by the owner against the watermark of every input partition;
                    # this stage sees only the partitions assigned to it.
                    if ev.ts_ms > part_max.get(tp, 0):
                        part_max[tp] = ev.ts_ms
                routed.add(parsed.events, [topic, tp.partition, msg.offset])
            offsets[tp] = msgs[-1].offset + 1
        self._positions.update(offsets)  # as if committed, to stamp the watermark this batch reaches
        futures = await self.send_envelopes(routed.parts)
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
        """One envelope per owner partition with records, or whose partition report changed; returns send futures."""
        s = self.s
        prod = self.producer
        futures = []
        rep = await self.partition_report()
        report, n_total = rep if rep is not None else (None, 0)
        step = s.envelope_max_records
        # What the report says, without its wall times: sent again when that changes, or as a heartbeat.
        gist = {k: v[:2] for k, v in report.items()} if report is not None else None
        now = time.monotonic()
        for part in range(s.state_partitions):
            # Every owner partition hears the report, even without records, so its windows close.
            recs = routed.get(part, [])
            if not recs and (report is None or (self._sent_report.get(part) == gist
                                                and now - self._sent_at.get(part, 0.0) < REPORT_HEARTBEAT_S)):
                continue
            if report is not None:
                self._sent_report[part] = gist
                self._sent_at[part] = now
            for env in pack_envelopes(self.instance, recs, step, report, n_total):
                futures.append(await prod.send(s.routed_topic, env, partition=part))
        if futures and not routed:
            await asyncio.gather(*futures)
            return []
        return futures


def pack_envelopes(src: str, recs: list, step: int, report: dict | None = None, n_parts: int = 0) -> list[bytes]:
    """One owner partition's routed records as envelopes of at most ``step`` records (one, empty,
    when there are none), the last carrying the watermark report: only the batch's last envelope
    moves time, since the owner closes windows when it hears it and the records of the earlier
    envelopes must land first. The records come as ``routing.RoutedBatch`` routed them, clicks
    folded into blocks of columns; a block counts as the records it holds."""
    groups: list[list] = [[]]
    weight = 0
    for rec in recs:
        ids = rec["id"]
        n = len(ids) if type(ids) is list else 1
        if weight + n > step and groups[-1]:
            groups.append([])
            weight = 0
        groups[-1].append(rec)
        weight += n
    out = []
    for i, group in enumerate(groups):
        env = {"src": src, "at": time.time(), "r": group}
        if report is not None and i == len(groups) - 1:
            env["pw"] = report
            env["np"] = n_parts
        out.append(orjson.dumps(env))
    return out
