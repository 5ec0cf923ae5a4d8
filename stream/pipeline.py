"""The worker: a Faust app whose agent keeps per-item state in tables, plus ingest, scoring and HTTP.

Data flows one way: input topics -> :mod:`ingest` (validate, pseudonymise, dead-letter,
route) -> ``<app_id>-routed`` (envelopes of records packed per owner partition) ->
the ``process`` agent (dedupe, windows, associations, trends; one table write per
touched item per envelope) -> scorer batches -> decisions -> ``launch-signals``.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import faust
import orjson
from aiokafka import AIOKafkaConsumer
from faust.exceptions import ConsumerNotStarted
from faust.types import TP

from launchpulse.models import features
from launchpulse.models.category import CategoryState, cadence_evidence, close_steps
from launchpulse.models.dedupe import chunk_key, plan_ids_write, read_ids
from launchpulse.models.decisions import (
    CADENCE_MODEL_VERSION,
    HOMOGENEITY_MODEL_VERSION,
    SignalMemory,
    Thresholds,
    decide_category,
    decide_homogeneity,
    decide_item,
    neighbourhood_evidence,
)
from launchpulse.models.itemstate import SERIES as ITEM_SERIES
from launchpulse.models.itemstate import ClosedWindow, ItemState, dormancy_check_window
from launchpulse.models.propensity import ProgressiveScore
from launchpulse.models.routing import CATEGORY_KEY_PREFIX, USER_KEY_PREFIX
from launchpulse.models.sessions import SessionConfig, UserSessions
from launchpulse.models.scorer import TrendScorer
from launchpulse.models.trends import PriorSeeds, TrendModel, summarise
from launchpulse.models.associations import (
    DEFAULT_MIN_SUPPORT_COUNT,
    ItemAssociations,
    provisional_partners,
    strongest_partners,
    rank_associations,
)
from launchpulse.models.routing import Partitioner, partition_for
from launchpulse.models.watermark import PartitionMeta
from launchpulse.models.windows import ACCEPTED, DUPLICATE, LATE, WindowConfig
from launchpulse.schemas.validate import Rejection, dead_letter_record

from .faust_transport import App as FaustApp
from .ingest import Ingest
from .ingest_process import IngestProcesses
from .replica import TopicReplica
from .metrics import Metrics
from .offsets import read_range
from .settings import GC_GEN1_BETWEEN_FREEZES, Settings

log = logging.getLogger("launchpulse.worker")

N_TOTAL_TTL_S = 0.25
# ... or longer on a large catalogue: the sum scans every replicated total (0.25 s for 1M
# items), so it runs at most this fraction of the time; N is then staler, never behind (see n_orders_total).
N_TOTAL_MAX_SHARE = 0.05
CATEGORY_PRIOR_PREFIX = b"#category:"  # totals key of a category's cold-start prior
# A category's published prior also keeps what it was after each of its last this-many closed windows:
# a new item's trend starts from its category as of the window before its first (see _seed_new_item),
# whenever its owner closes that first window.
PRIOR_HISTORY_WINDOWS = 16
CLOSE_SLICE_S = 0.05  # a closing step yields to the event loop at least this often


def meta_keys(n_partitions: int, prefix: str = "#meta") -> list[bytes]:
    """A key per partition that the default partitioner maps to that partition."""
    keys: list[bytes | None] = [None] * n_partitions
    j = 0
    while None in keys:
        k = f"{prefix}:{j}"
        p = partition_for(k, n_partitions)
        if keys[p] is None:
            keys[p] = k.encode()
        j += 1
    return keys


CACHE_MAX_ITEMS = 200_000
# window=recent of the associations view: the last this-many windows, up to the newest window any
# input partition has reached (each item keeps per-window partner counters for them).
RECENT_WINDOWS = 4
# Besides every Settings.flush_interval_ms, a flush is due once this many routed records wait
# unacknowledged: it bounds the memory held envelopes take and the replay after a crash. Each flush
# rewrites every key touched since the last one, so bigger flushes coalesce more writes of busy
# keys. Counted in records, not envelopes: a trickle makes many small envelopes, and a cap of 400
# envelopes (as before) flushed two to three times as often on a live clickstream, for no gain.
# At 500,000 this cap, not the cost rule below, set the cadence at 20,000 clicks/s (2.2 records a
# click: a flush every 11-13 s, each writing ~68,000 keys in 1.6-5.5 s, 25-40% of the worker), and
# the worker fell behind; at 2,000,000 the cost rule governs there (docs/benchmarks.md, seventeenth
# session). A crash replays at most this many records (about 40 s of that feed).
FLUSH_MAX_RECORDS = 2_000_000
# Under load a flush waits at least this many times as long as the previous one took to serialise:
# the flush then takes at most about a tenth of the worker's time. Each flush rewrites every key
# touched since the last, and on a busy live feed almost every active item and user is touched
# every few seconds, so a fixed 5 s cadence made the flush a quarter of the worker's time
# (py-spy, 20,000 events/s offered). A longer gap means more to replay after a crash, never less safety.
FLUSH_COST_FACTOR = 10
# A flush serialises its states in slices of about this long, between which the event loop runs the
# agent and the closing of windows; a flush of a busy live feed serialises 70,000 keys in 2-4 s, and
# done in one go it held every window closing behind it (docs/design.md, the flush).
FLUSH_SLICE_S = 0.01
FLUSH_PAUSE_FACTOR = 2  # ... and while the agent is busy, at most a third of the worker's time
# Between a window's end and its close (the grace period), the items of that window learn it into
# copies of their trend models (ItemState.learn_ahead) in slices of about this long, so that the
# close, which sets the signals' latency, only checks and swaps the models in.
LEARN_AHEAD_SLICE_S = 0.01
# ... each followed, while envelopes keep coming, by a pause as long: half the worker at most. It has
# the grace period to finish in (a live feed's boundary has about 17,000 items to learn, 0.9-1.2 s),
# and what it has not learnt by the close, the close learns.
LEARN_AHEAD_PAUSE_FACTOR = 1
# ... and none while the agent is behind, applying envelopes read by ingest longer ago than this: learning
# ahead costs more than the close's learning it saves (the copies), so it only pays in spare time, and
# taken from a busy agent it delayed the close instead (traced at 20,000 clicks/s).
LEARN_AHEAD_BEHIND_S = 0.5
# A closing step swaps in the models learnt ahead, and the models they replace (four an item, a few
# hundred objects) were freed there and then: 15-20% of a live boundary's close (in process, 16,844
# items). The step keeps them instead, and they are dropped after it in slices of about this long.
RELEASE_SLICE_S = 0.005


class Worker:
    """Holds the Faust app, its topics and tables, and the worker's in-process services."""

    def __init__(self, settings: Settings, scorer=None, thresholds: Thresholds = Thresholds()):
        self.s = s = settings
        self.cfg = WindowConfig(size_ms=s.window_ms, grace_ms=s.grace_ms)
        self.metrics = Metrics()
        self.thresholds = thresholds
        self.scorer = scorer or TrendScorer()
        self.ingest = (IngestProcesses(s, self.metrics, s.ingest_processes) if s.ingest_processes
                       else Ingest(s, self.metrics, self.cfg))
        self.recent_signals: deque = deque(maxlen=1000)
        self.score_queue: list[tuple] = []  # (ingest wall time, ClosedWindow, feature row, Evidence)
        self.score_wakeup = asyncio.Event()
        # Rows ever queued and ever scored (their signals sent): a flush acknowledges its envelopes only
        # once the rows they queued are scored (see _deliver); one scorer at a time keeps them in order.
        self._rows_queued = 0
        self._rows_scored = 0
        self._score_lock = asyncio.Lock()
        # Deserialised item states of the partitions this worker owns; the table holds the truth
        # (bytes, changelogged) and the cache is dropped at every rebalance.
        self.cache: dict[str, ItemState] = {}
        # The dedupe ids of item and category states go to chunk records of their own, a flush writing
        # only the new ones (models.dedupe): the chunks [first, next) each cached state points at, and
        # the chunks replaced by a compaction, deleted by the next flush (once the state is delivered).
        self._ids_range: dict[str, list] = {}
        self._ids_garbage: list[tuple[bytes, int]] = []
        self.metas: dict[int, PartitionMeta] = {}
        self.dirty_items: set[str] = set()
        self.dirty_totals: set[str] = set()
        self.dirty_metas: set[int] = set()
        self.unacked: list = []  # envelopes applied but not yet written: acknowledged by _flush
        self._applied_through: dict[int, int] = {}  # routed partition -> offset of the last envelope applied
        self._gap_reader: AIOKafkaConsumer | None = None  # reads back envelopes never delivered (_skipped_envelopes)
        self.envelopes_refetched = 0
        self.ack_stream = None
        self.last_flush = time.monotonic()
        self._n_total = 0
        self._primary_since = 0  # primary orders accepted here since _n_total was summed
        self._n_sessions = (0, 0)
        self._n_total_at = -1e9
        self._n_total_cost = 0.0  # seconds the last sum took
        self.session_cfg = SessionConfig(grace_ms=s.grace_ms)
        self.propensity_score = ProgressiveScore()  # this process's predict-then-learn score (metrics)
        self.top_partners: dict[str, list] = {}  # item -> its strongest partners at its latest close (to publish)
        self.deleted: set[str] = set()  # keys whose state ended (a user with no open session): tombstoned
        self._flush_lock = asyncio.Lock()
        self._pending_writes: list[tuple] = []  # changelog records for the next flush
        # The flush under way: the dirty keys it has not serialised yet (in place: the hot paths hold it),
        # each written as it was when the flush began, before anything changes it (_serialise_before_change);
        # the records serialised so far; the CPU seconds spent serialising.
        self._unserialised: dict[str, None] = {}
        self._flush_records: list[tuple] = []
        self._flush_cost = 0.0
        self._serialising = False  # the flush under way is serialising (the next may not begin before)
        self._closing = False  # a closing step is under way: the flush's slices give way to it
        self._learnt_ahead_through = -(1 << 62)  # the newest window learn-ahead was started for
        self._learning_ahead: asyncio.Future | None = None
        self.items_learnt_ahead = 0
        self._retired: list = []  # what closing steps replaced (LearntAhead), to drop after them (_release_retired)
        self._releasing: asyncio.Future | None = None
        self.gc_freezes = 0
        self._changelog_names: dict[int, str] = {}  # id(table) -> its changelog topic's name
        self._partition = Partitioner(s.state_partitions)  # a changelog key's partition (the default partitioner)
        self._delivery: asyncio.Future | None = None  # the latest flush's delivery and acknowledgements
        self.flush_interval_s = s.flush_interval_ms / 1000
        self._flush_gap_s = self.flush_interval_s  # after the previous flush, before the next is due (_flush_due)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer")
        self.envelopes_processed = 0
        self.records_processed = 0
        self._flushed_records = 0  # records_processed at the latest flush
        self.state_error = ""  # set when applying an envelope raised (a bug): the worker is unhealthy
        self.signals_sent = 0
        self.last_signal_monotonic = 0.0
        self._owned_parts: list[int] | None = None  # routed partitions owned (see _owned)
        # The priors of the categories closed here, as last published: the replica may briefly hand
        # back an older record of a key this worker writes itself (see _TotalsView).
        self.category_priors: dict[bytes, dict] = {}
        self.prior_seeds = PriorSeeds()  # a brand-new item's trend, copied from its category's prior
        # Session records and marks for the owner partitions, sent after the envelope that made them
        # (see _send_routed); their delivery futures are awaited before the next acknowledgements.
        self._routed_out: list[tuple[int, bytes]] = []
        self._routed_futures: list = []
        self._closed_through = -(1 << 62)  # the newest window _close_ready has closed
        self._consumed_at = 0.0
        self._generation = 0  # bumped at every rebalance: a closing step that yielded across one stops
        # Routed partitions paused for running ahead of the closing watermark (see _hold_ahead).
        self._ahead_ms = s.max_ahead_windows * s.window_ms
        self._paused: dict = {}  # TP -> None, in pause order
        self._paused_closing = -1  # the closing watermark when the paused set was last checked
        self._stall_mark: int | None = None  # the closing watermark at the previous flush timer tick
        self.partition_pauses = 0
        self.pause_releases = 0
        self.app = app = FaustApp(
            s.app_id, broker=s.broker, datadir=str(s.data_dir), store="memory://",
            web_port=s.web_port, web_bind=s.web_host, web_host=s.advertised_host,
            broker_rebalance_timeout=s.rebalance_timeout_s, broker_session_timeout=s.session_timeout_s,
            broker_heartbeat_interval=1.0, consumer_auto_offset_reset="earliest",
            topic_partitions=s.state_partitions, topic_replication_factor=s.replication_factor,
            consumer_max_fetch_size=16 * 1024 * 1024, producer_max_request_size=16 * 1024 * 1024,
            producer_linger=0.005, table_cleanup_interval=60.0, web_enabled=True,
            broker_credentials=_faust_credentials(s), logging_config=None,
        )
        self.routed = app.topic(s.routed_topic, key_type=bytes, value_type=bytes, value_serializer="raw",
                                key_serializer="raw", partitions=s.state_partitions, internal=False)
        self.signals_topic = app.topic(s.topic_signals, key_serializer="raw", value_serializer="raw")
        self.dead_topic = app.topic(s.topic_dead_letter, value_serializer="raw")
        # Item state, one JSON document per item, in the partition that owns the item.
        # Keys are UTF-8 bytes with the raw codec and go through the default partitioner, so a key's
        # changelog partition is the partition its routed records use; that lets state be written in
        # batches (see _flush) rather than once per envelope.
        self.items = _raw_table(app.Table("items", key_type=bytes, value_type=bytes, partitions=s.state_partitions,
                                          use_partitioner=True))
        self.meta = _raw_table(app.Table("partition-meta", key_type=bytes, value_type=bytes,
                                         partitions=s.state_partitions, use_partitioner=True))
        self.meta_keys = meta_keys(s.state_partitions)
        # Baskets and sessions per item, closed sessions per partition, replicated to every worker
        # (lift needs n_B of any B; the substitute test the session counts): see stream/replica.py.
        self.totals = TopicReplica(s, s.totals_topic)
        # Cooldown memory of the decisions, written by the scorer outside stream iteration,
        # so keys go through the partitioner (item keys hash like the routed records).
        self.memory = _raw_table(app.Table("signal-memory", key_type=bytes, value_type=bytes,
                                           partitions=s.state_partitions, use_partitioner=True))
        self.totals_view = _TotalsView(self.totals, self.cache)
        self.view_counts = _TotalsView(self.totals, self.cache, "n_view")
        self.cart_counts = _TotalsView(self.totals, self.cache, "n_cart")
        # Closed sessions with a view / a cart, per partition, replicated like the item totals.
        self.session_keys = meta_keys(s.state_partitions, "#sessions")
        app.agent(self.routed, name="process")(self._process)
        app.before_stop = self._write_before_stop
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_partitions_assigned.connect(self._on_assigned)
        app.on_rebalance_complete.connect(self._on_recovered)
        app.task(self._run_ingest)
        app.task(self.totals.run)
        app.task(self._run_scorer)
        app.task(self._close_gap_reader_at_stop)
        app.timer(self.flush_interval_s)(self._flush_timer)
        self._routes()

    # -- stateful stage ------------------------------------------------------------------
    async def _on_revoked(self, *args, **kwargs) -> None:
        # Write what was applied, and acknowledge it, while these partitions are still ours:
        # Faust does not replay envelopes of partitions that stay assigned across a rebalance,
        # so unwritten state dropped here would be lost.
        await self._write_applied()
        self.cache.clear()
        self._ids_range.clear()
        self.metas.clear()
        self.category_priors.clear()
        self._applied_through.clear()
        self._owned_parts = None
        self._closed_through = -(1 << 62)
        self._generation += 1

    async def _write_before_stop(self) -> None:
        """Write and acknowledge every envelope applied so far (FaustApp.before_stop).

        The flow stops first, as Faust's own stop does next: the agent gets nothing more (what it
        has queued is dropped and read again at the next start), so the stop does not wait on it.
        A close step under way is abandoned at its next yield (the app is stopping, see
        _yield_in_step); the windows it did not reach stay pending in the metas written here.
        """
        try:
            self.app.consumer.stop_flow()
            self.app.flow_control.suspend()
            self.app.flow_control.clear()
        except ConsumerNotStarted:
            return
        await self._write_applied()

    async def _write_applied(self) -> None:
        """Write every envelope applied so far and acknowledge it, and wait for the writes' delivery."""
        self._serialise_some(None)  # the flush under way, if any, at once
        if self.unacked or self.dirty_items or self.dirty_metas or self._pending_writes:
            await self._flush(at_once=True)
        await self._delivered()

    async def _on_assigned(self, *args, **kwargs) -> None:
        # Faust keeps a paused partition paused across a rebalance that leaves it assigned, and the
        # watermarks that paused it are dropped here: resume them (the revoked ones Faust forgot).
        if self._paused:
            self._resume_all_paused()
        self._serialise_some(None)  # a flush begun since the revocation wrote them: it needs the states
        # Partitions may have moved in: read their state from the (recovered) tables again.
        self.cache.clear()
        self._ids_range.clear()
        self.metas.clear()
        self.category_priors.clear()
        self._applied_through.clear()
        self._owned_parts = None
        self._closed_through = -(1 << 62)
        self._generation += 1

    async def _on_recovered(self, *args, **kwargs) -> None:
        # Sent when table recovery is done, just before Faust resumes the routed partitions, seeks
        # them to their committed offsets and resumes flow control. Flow is already running then
        # (recovery resumed it to read the changelogs), so envelopes fetched while the seek is under
        # way reach the agent's queue, which resuming flow control then clears: they are never
        # processed, and the consumer's read offset has passed them, so their copies fetched after
        # the seek are dropped too. Acknowledging the next envelope then lets Faust commit past the
        # hole (faust-streaming 0.15 commits over a single missing offset at the head, and checks
        # nothing before a partition's first commit): envelopes lost for good after a restart.
        # Stop the flow first, as Faust does when partitions are revoked: nothing is fetched or
        # delivered until Faust itself resumes it, after the seek.
        self.app.consumer.stop_flow()
        self.app.flow_control.suspend()

    async def _process(self, stream):
        self.ack_stream = manual = stream.noack()
        applied_through = self._applied_through
        async for event in manual.events():
            message = event.message
            partition = message.partition
            if message.offset != applied_through.get(partition, -2) + 1:
                for skipped in await self._skipped_envelopes(message):
                    await self._apply_step(partition, skipped.value)
            applied_through[partition] = message.offset
            await self._apply_step(partition, event.value)
            self.unacked.append(event)
            if not self._serialising and (self.records_processed - self._flushed_records >= FLUSH_MAX_RECORDS
                                           or self._flush_due()):
                await self._flush()
            if len(self.score_queue) >= self.s.score_max_rows:
                self.score_wakeup.set()

    async def _apply_step(self, partition: int, value: bytes) -> None:
        try:
            self._apply_envelope(partition, value)
            await self._close_ready(self._consumed_at)
            self._start_learning_ahead()
            if self._ahead_ms:
                self._hold_ahead(partition)
        except Exception as e:
            # A bug, not bad input (that is dead-lettered by ingest): say so on /healthz and let
            # Faust's supervisor restart the agent; the envelope is not acknowledged.
            self.state_error = f"state stage failed on an envelope: {type(e).__name__}: {e}"
            log.exception("state stage failed on an envelope of partition %s", partition)
            raise
        if self._routed_out:  # before the envelope counts as applied: a flush meanwhile must not ack it
            await self._send_routed()

    async def _close_gap_reader_at_stop(self) -> None:
        try:
            await asyncio.Event().wait()  # Faust cancels its tasks when the app stops
        finally:
            if self._gap_reader is not None:
                await self._gap_reader.stop()

    async def _skipped_envelopes(self, message) -> list:
        """The envelopes before this one that were never applied, read back from the broker.

        The routed topic's offsets have no gaps (plain appends, no compaction, no transactions), so
        an envelope past the next offset means the ones in between were fetched and dropped, or
        never delivered, without being applied; acknowledging this one would let Faust commit over
        them. That happened after a rebalance until stream/faust_transport.seek_to_committed_or_reset,
        and about once in ten full test runs in steady state, with three producers writing the
        partition (the worker and two ingest children; cause not found). The expected offset is
        the one after the last applied or, for a worker's first envelope of a partition, the
        committed offset (the earliest with none committed). An envelope at or before the last
        applied is a replay after a seek back: nothing to do.

        The skipped envelopes are read from the broker and returned, to be applied before this
        one; their offsets are registered with Faust as a gap, which its commit counts as
        acknowledged once an envelope after them is (after the flush that writes their state).
        Applying one twice is harmless: state deduplicates its records.
        """
        tp = message.tp
        last = self._applied_through.get(message.partition)
        consumer = self.app.consumer
        if last is not None:
            expected = last + 1
        else:
            expected = consumer._committed_offset.get(tp)  # Faust's record of the partition's commit
            if expected is None:
                expected = (await consumer.earliest_offsets(tp)).get(tp, 0)
        if message.offset <= expected:
            return []
        if self._gap_reader is None:
            self._gap_reader = AIOKafkaConsumer(bootstrap_servers=self.s.bootstrap_servers, group_id=None,
                                                enable_auto_commit=False, **self.s.kafka_security())
            await self._gap_reader.start()
        generation = self._generation
        found = await read_range(self._gap_reader, tp, expected, message.offset)
        if generation != self._generation:  # a rebalance meanwhile: the owner reads them from its commit
            return []
        self.envelopes_refetched += len(found)
        await consumer._add_gap(tp, expected, message.offset - 1)
        log.warning("routed partition %s: envelope at offset %s arrived where %s was due (Faust's read offset "
                    "%s): read %d of the %d envelopes in between from the broker and applied them first%s",
                    message.partition, message.offset, expected, consumer._read_offset.get(tp), len(found),
                    message.offset - expected,
                    "" if len(found) == message.offset - expected else "; the broker holds no record at the others")
        return found

    async def _send_routed(self) -> None:
        """Hand session records and marks to the producer straight away, in order per partition.

        Not through Faust's send_soon buffer, where they would queue behind thousands of changelog
        records and hold every owner's closing watermark back (windows then closed in bursts). The
        flush that acknowledges the envelope behind them waits for their delivery first.
        """
        out, self._routed_out = self._routed_out, []
        prod = self.app.producer._ensure_producer()
        topic = self.s.routed_topic
        for part, value in out:
            self._routed_futures.append(await prod.send(topic, value, partition=part))

    def _flush_due(self) -> bool:
        """A flush interval has passed since the previous flush, and FLUSH_COST_FACTOR times its cost."""
        return time.monotonic() - self.last_flush >= self._flush_gap_s

    async def _flush_timer(self) -> None:
        if self._paused:
            self._release_if_stalled()
        else:
            self._stall_mark = None
        if (self.unacked or self._pending_writes) and not self._serialising and self._flush_due():
            await self._flush()

    def _release_if_stalled(self) -> None:
        """Resume every paused partition when the closing watermark has not moved for a whole flush
        interval. A paused partition is resumed only as envelopes of the others move closing on
        (_hold_ahead); when the least partition has nothing more to deliver (its share of the feed is
        through), nothing would ever move it, and the paused partitions' envelopes would wait unread.
        Pausing saves memory; it must never hold records back, so it gives way here and may pause
        again on later envelopes. (The outage test's stalls had another cause: see _pause_fetching.)"""
        closing = self._closing_watermark()
        if closing is not None and closing == self._stall_mark:
            self.pause_releases += 1
            self._resume_all_paused()
            closing = None
        self._stall_mark = closing

    def _resume_all_paused(self) -> None:
        """Resume every partition paused for running ahead that is still assigned (Faust forgot the rest)."""
        held, self._paused = set(self._paused), {}
        self._resume_fetching(held & set(self.app.consumer.assignment()))

    async def _flush(self, at_once: bool = False) -> None:
        """Write every dirty item, total and partition meta once, then acknowledge their envelopes.

        Writes go out before the acknowledgements, and Faust flushes the producer before it
        commits offsets, so a committed envelope's effects are always in the changelogs. A
        crash replays unacknowledged envelopes onto the recovered state; deduplication by
        event id makes that replay harmless.

        The flush is taken as of now: the envelopes applied so far, the metas as they are, the keys
        dirty now. The metas, totals and tombstones are written at once; the dirty states are
        serialised in slices by the flush's task (_serialise_then_deliver) while the agent goes on
        (``at_once``: all of them now), and a key the agent is about to change is serialised first
        (_serialise_before_change), so every state written is the state as of the flush, whatever
        happened meanwhile: it matches the metas and acknowledgements beside it exactly.
        """
        failed = self._delivery
        if failed is not None and failed.done() and not failed.cancelled() and failed.exception() is not None:
            raise failed.exception()
        async with self._flush_lock:  # one flush at a time: a key's changelog records stay in order
            self._serialise_some(None)  # the previous flush's rest (callers start none before it is done)
            t0 = time.perf_counter()
            cache = self.cache
            records, self._pending_writes = self._pending_writes, []  # memory, priors: written meanwhile
            writes = self._table_writes
            garbage, self._ids_garbage = self._ids_garbage, []
            for ckey, part in garbage:  # chunks compacted away by the previous flush, now delivered
                writes(self.items, ckey, None, None, part, records)
            deleted = self.deleted
            for key in deleted:
                kb = key.encode()
                rng = self._ids_range.pop(key, None)
                part = self._partition(key)
                if rng is not None:
                    self._ids_garbage.extend((chunk_key(kb, n), part) for n in range(*rng))
                writes(self.items, kb, None, None, part, records)
                cache.pop(key, None)
            for key in self.dirty_totals:
                st = cache[key]
                a = st.assoc
                pw = st.primary_windows
                per_window = {str(w): [row[6], pw.get(w, 0)] for w, row in st.windows.items() if row[6]}
                top = self._published_top(key)  # what the item's latest close chose, else what was published
                self.top_partners.pop(key, None)
                self._replica_write(key.encode(), [a.n_item, st.primary_orders, a.n_view, a.n_cart, per_window, top],
                                    self._partition(key), records)
            meta_records: list[tuple] = []
            for p in self.dirty_metas:
                meta = self.metas[p]
                writes(self.meta, self.meta_keys[p], None, meta.to_bytes(), None, meta_records)
                t = meta.session_totals
                self._replica_write(self.session_keys[p], [t.view_sessions, t.cart_sessions], None, meta_records)
            unserialised = self._unserialised
            unserialised.update(dict.fromkeys(k for k in self.dirty_items if k not in deleted))
            self._flush_records = records
            deleted.clear()
            self.dirty_items.clear()
            self.dirty_totals.clear()
            self.dirty_metas.clear()
            events, self.unacked = self.unacked, []
            routed, self._routed_futures = self._routed_futures, []
            self._flushed_records = self.records_processed
            self._flush_cost = time.perf_counter() - t0
            self._serialising = True
            if at_once:
                self._serialise_some(None)
            # Delivery runs beside the agent, which goes on applying envelopes (their state is in
            # memory, written by the next flush). Deliveries go one after another, so a key's
            # changelog records keep their order; at most one waits behind the one under way.
            prev = self._delivery
            self._delivery = asyncio.ensure_future(self._serialise_then_deliver(
                prev, records, meta_records, events, routed, self._rows_queued))
        if prev is not None and not prev.done():
            await prev

    def _serialise_some(self, budget_s: float | None) -> float:
        """Serialise states of the flush under way for about ``budget_s`` seconds (None: all of them);
        the seconds it took."""
        todo = self._unserialised
        if not todo:
            return 0.0
        t0 = time.perf_counter()
        end = None if budget_s is None else t0 + budget_s
        serialise, records = self._serialise_key, self._flush_records
        while todo:
            serialise(todo.popitem()[0], records)
            if end is not None and time.perf_counter() >= end:
                break
        spent = time.perf_counter() - t0
        self._flush_cost += spent
        return spent

    def _serialise_before_change(self, key: str) -> None:
        """Serialise a key of the flush under way now, as it is, before the caller changes it."""
        del self._unserialised[key]
        t0 = time.perf_counter()
        self._serialise_key(key, self._flush_records)
        self._flush_cost += time.perf_counter() - t0

    def _serialise_key(self, key: str, out: list) -> None:
        st = self.cache[key]
        if type(st) is UserSessions:  # a user's ids live and go with its sessions: small
            self._table_writes(self.items, key.encode(), None, orjson.dumps(st.to_state()), self._partition(key), out)
        else:
            self._write_with_ids(key, st, out)

    def _freeze_survivors(self) -> None:
        """Move every object the collector tracks now out of its reach (gc.freeze), after each flush
        and each closing step, in a worker whose middle-generation collections are held off
        (settings.tune_gc ``freezes_survivors``): the item states, users and models a live feed
        keeps are millions of long-lived containers, and each of those collections traversed them
        again, 0.4-0.7 s every few seconds at 20,000 clicks/s, freeing nothing; the signals waited.
        A frozen object is still freed when its last reference goes (states hold no reference
        cycles); only a cycle that turns to garbage after it was frozen stays (``gc_frozen`` on
        /progress counts what is frozen)."""
        if gc.get_threshold()[1] >= GC_GEN1_BETWEEN_FREEZES:
            gc.freeze()
            self.gc_freezes += 1

    async def _serialise_then_deliver(self, prev, records: list, meta_records: list, events: list,
                                      routed: list, rows_queued: int) -> None:
        """A flush's task: serialise its states in slices, then deliver them. The agent comes first: a
        closing step (the signals' latency) stops the slices, and while envelopes keep coming a slice
        is followed by a pause of FLUSH_PAUSE_FACTOR times its length (a slice after each envelope left
        the agent a fifth of the worker, and it fell behind by seconds at every flush)."""
        try:
            while self._unserialised:
                if self._closing:
                    await asyncio.sleep(CLOSE_SLICE_S / 10)
                    continue
                applied = self.envelopes_processed
                spent = self._serialise_some(FLUSH_SLICE_S)
                await asyncio.sleep(0)
                if self.envelopes_processed != applied:
                    await asyncio.sleep(FLUSH_PAUSE_FACTOR * spent)
        except Exception as e:  # a bug: the agent's next flush raises it (see _flush), /healthz says so
            self.state_error = f"serialising state for the changelogs failed: {type(e).__name__}: {e}"
            raise
        finally:
            self._serialising = False  # else no flush would begin again to raise it
        self._freeze_survivors()
        cost = self._flush_cost
        self.last_flush = time.monotonic()
        self._flush_gap_s = max(self.flush_interval_s, FLUSH_COST_FACTOR * cost)
        self.metrics.items_tracked.set(len(self.cache))
        self.metrics.stage.labels("flush").observe(cost)
        await self._deliver(prev, records, meta_records, events, routed, rows_queued)

    async def _deliver(self, prev, state_records: list, meta_records: list, events: list, routed: list = (),
                       rows_queued: int = 0) -> None:
        """Send one flush's changelog records and acknowledge its envelopes once they are on the broker.

        Two phases: the partition metas (watermark, pending windows, sessions due) only once the
        states they describe are on the broker. A crash in between leaves an older meta, whose
        older watermark lets the replayed envelopes be applied again (deduplicated); a meta ahead
        of its states would refuse the replay as late and lose it. Then acknowledge: an
        acknowledged envelope may be committed at any moment, and a committed envelope must
        never need its state again, nor its signals: the windows these envelopes closed are scored
        first (the first ``rows_queued`` rows), their signals handed to the producer, which Faust
        flushes before it commits. A failed delivery acknowledges nothing, and neither does any
        later one (their envelopes are replayed after the restart this failure leads to).
        """
        try:
            if prev is not None:
                await prev
            for records in (state_records, meta_records):
                await self._send_records(records)
            if routed:
                await asyncio.gather(*routed)  # session records and marks the envelopes led to
            if self._rows_scored < rows_queued:
                await self._score_queued(rows_queued)
            for event in events:
                await self.ack_stream.ack(event)
        except Exception as e:
            self.state_error = f"writing state to the changelogs failed: {type(e).__name__}: {e}"
            raise

    async def _send_records(self, records: list) -> None:
        """Send (topic, key, value, partition) records in order and wait until the broker has them all.

        Through aiokafka's batch builder under Faust's producer: a flush sends tens of thousands of
        records, and ``send`` per record (a future and an accumulator call each) cost 17-20 us a
        record here against 4.5 us appended to a batch. A key's records keep their order: they go
        to one partition, in batches sent one after another.
        """
        prod = self.app.producer._ensure_producer()  # the AIOKafkaProducer Faust's producer wraps
        batches: dict[tuple, object] = {}
        futures = []
        for topic, key, value, part in records:
            tp = (topic, part)
            batch = batches.get(tp)
            if batch is None:
                batch = batches[tp] = prod.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start another
                futures.append(await prod.send_batch(batch, topic, partition=part))
                batch = batches[tp] = prod.create_batch()
                batch.append(key=key, value=value, timestamp=None)  # an empty batch takes any record
        for (topic, part), batch in batches.items():
            futures.append(await prod.send_batch(batch, topic, partition=part))
        if futures:
            await asyncio.gather(*futures)

    async def _delivered(self) -> None:
        """Wait until every flush so far is delivered and acknowledged (raises if one failed)."""
        if self._delivery is not None:
            await self._delivery

    def _replica_write(self, key: bytes, value: list, partition: int | None = None, out: list | None = None) -> None:
        self.totals.set_local(key, value)
        (self._pending_writes if out is None else out).append(
            (self.totals.topic, key, orjson.dumps(value), self._partition(key) if partition is None else partition))

    def _write_with_ids(self, key: str, st, out: list) -> None:
        """Queue an item's or a category's state, its new dedupe ids in a chunk of their own first.

        The chunks go to the state's own changelog partition, before the state: a state on the broker
        never points at a chunk that is not (a partition keeps its order). See models.dedupe.
        """
        kb = key.encode()
        part = self._partition(key)
        rng, chunks, garbage = plan_ids_write(st.seen, st.ids_persisted, self._ids_range.get(key))
        for n, ids in chunks:
            self._table_writes(self.items, chunk_key(kb, n), None, orjson.dumps(ids), part, out)
        if garbage:
            self._ids_garbage.extend((chunk_key(kb, n), part) for n in garbage)
        self._ids_range[key] = rng
        st.ids_persisted = len(st.seen)
        self._table_writes(self.items, kb, None, st.to_json(ids=rng), part, out)

    def _with_ids(self, key: str, doc: dict) -> tuple[dict, bool]:
        """A stored item or category state with its dedupe ids read back from their chunks; and whether
        they all were (an older state holds its ids inline)."""
        rng = doc.get("ids")
        if rng is None:
            return doc, False
        kb = key.encode()
        self._ids_range[key] = rng  # the next write compacts into a new chunk when the ids are incomplete
        ids = read_ids(_store(self.items).get, kb, rng)
        if ids is None:  # cannot happen in the order chunks are written; say so rather than stop
            log.error("dedupe ids of %s missing (chunks %s): records of its open windows read again would "
                      "count twice", key, rng)
            return doc, False
        return {**doc, "seen": ids}, True

    def _table_writes(self, table, key: bytes, value, raw: bytes | None, partition: int | None = None,
                      out: list | None = None) -> None:
        """Set a key in a table's local store and queue its changelog record (None: delete) in ``out``,
        else for the next flush.

        Faust's own ``table[key] = value`` sends each changelog record through its producer
        buffer one at a time (about 215 us a record here, see docs/design.md); a flush writes
        thousands, so the store is set directly and the records go out together through the
        producer, to the partition Faust itself would use (the default partitioner of the key).
        """
        store = _store(table)
        if raw is None:
            store.pop(key, None)
        else:
            store[key] = raw if value is None else value
        topic = self._changelog_names.get(id(table))
        if topic is None:  # fixed for the app's lifetime; Faust derives it again on every call
            topic = self._changelog_names[id(table)] = table.changelog_topic.get_topic_name()
        (self._pending_writes if out is None else out).append(
            (topic, key, raw, self._partition(key) if partition is None else partition))

    def _state(self, key: str):
        """The state behind a key: ItemState, or UserSessions (``user:``), or CategoryState (``category:``)."""
        st = self.cache.get(key)
        if st is not None:
            if key in self._unserialised:
                self._serialise_before_change(key)
            return st
        raw = _store(self.items).get(key.encode())
        if key.startswith(USER_KEY_PREFIX):
            st = UserSessions.from_state(orjson.loads(raw)) if raw else UserSessions(key)
        else:
            if raw:
                doc, complete = self._with_ids(key, orjson.loads(raw))
            if key.startswith(CATEGORY_KEY_PREFIX):
                st = CategoryState.from_state(doc) if raw else CategoryState(
                    key[len(CATEGORY_KEY_PREFIX):], new_windows=self.thresholds.new_item_windows)
            else:
                st = ItemState.from_state(doc) if raw else ItemState(
                    key, assoc=ItemAssociations(key, window_ms=self.cfg.size_ms, keep_windows=RECENT_WINDOWS,
                                                owner_prunes=True))
            if raw and complete:
                st.ids_persisted = len(st.seen)
        if len(self.cache) >= CACHE_MAX_ITEMS:
            # Evict clean entries only: dirty ones, and those the flush under way has yet to write, are written by a flush.
            unserialised = self._unserialised
            for k in [k for k in list(self.cache)[: CACHE_MAX_ITEMS // 5]
                      if k not in self.dirty_items and k not in unserialised]:
                del self.cache[k]
                self._ids_range.pop(k, None)
        self.cache[key] = st
        return st

    def peek(self, key: str):
        """An item's (or a ``category:`` key's) current state for the read path, or None."""
        if key.startswith(USER_KEY_PREFIX):
            return None  # sessions are not served
        st = self.cache.get(key)
        if st is not None:
            return st
        raw = self.items.get(key.encode())
        if not raw:
            return None
        cls = CategoryState if key.startswith(CATEGORY_KEY_PREFIX) else ItemState
        return cls.from_state(orjson.loads(raw))

    def _meta(self, partition: int) -> PartitionMeta:
        meta = self.metas.get(partition)
        if meta is None:
            meta = self.metas[partition] = PartitionMeta.from_bytes(self.meta.get(self.meta_keys[partition]))
        return meta

    def _apply_envelope(self, partition: int, value: bytes) -> None:
        t0 = time.perf_counter()
        m, cfg = self.metrics, self.cfg
        env = orjson.loads(value)
        recs = env["r"]
        meta = self._meta(partition)
        dirty = self.dirty_items
        late_before = meta.watermark - cfg.grace_ms
        wm_before = meta.watermark
        counted: dict[tuple, int] = {}  # (topic, outcome) -> events: metrics once per envelope
        pending_sets: dict[int, tuple] = {}  # window start -> (meta.pending sets of it and of its dormancy check)
        cache, state_of, deleted, unserialised = self.cache, self._state, self.deleted, self._unserialised
        dirty_totals, session_cfg, size_ms = self.dirty_totals, self.session_cfg, cfg.size_ms
        # A routed record's key is owned by the envelope's partition, which is also the partition of
        # the key's changelog records (one partitioner, murmur2 of the key): remembered for the flush,
        # which would otherwise hash every new key again (users come and go).
        remember_partition = self._partition.remember
        due_push = meta.due.push
        # Routed records, an item or user block counting the clicks it holds, a category block one
        # (as since categories were folded: the flush cadence, FLUSH_MAX_RECORDS, stays the same).
        n_records = len(recs)
        for rec in recs:
            rk = rec["k"]
            if rk == "I":
                self._apply_item_clicks(rec, partition, late_before, counted, pending_sets, meta)
                n_records += len(rec["id"]) - 1
                continue
            if rk == "U":
                self._apply_user_clicks(rec, partition, late_before, meta)
                n_records += len(rec["id"]) - 1
                continue
            key = rec.get("K")
            if key is None:
                key = rec["i"]
            st = cache.get(key)
            if st is None:
                st = state_of(key)
                remember_partition(key, partition)
            elif unserialised and key in unserialised:
                self._serialise_before_change(key)
            kind = type(st)
            if rk == "s":
                # A closed session, from its user's owner: never late (it carries the close time).
                if st.apply_session(rec, cfg):
                    dirty.add(key)
                    dirty_totals.add(key)
                continue
            if rk == "C":  # a category's clicks in columns (routing.fold_clicks); no metric counts them
                if st.apply_clicks(rec, cfg, late_before):
                    dirty.add(key)
                    if deleted:
                        deleted.discard(key)
                    meta.categories.add(key)
                continue
            # Late: older than every input partition's progress allows (the ingest stage cannot
            # judge it, it sees only its own partitions), or its window already closed for the key.
            if rec["t"] < late_before and rk != "g":  # catalog records count in no window
                outcome = LATE
            elif kind is UserSessions:
                outcome = st.apply(rec, session_cfg)
                due_push(key, st.next_due_ms(session_cfg))
            elif kind is ItemState and st.first_seen is None:
                outcome = st.apply(rec, cfg)
                self._cold_start(st)
            else:
                outcome = st.apply(rec, cfg)
            if rec["n"]:
                ck = (rec["o"][0], "rejected" if outcome == LATE else outcome)
                counted[ck] = counted.get(ck, 0) + 1
            if outcome != LATE:
                # Also on a duplicate: after a crash between writes of one flush, the replayed
                # duplicates rewrite what the lost writes held (all of these are idempotent).
                dirty.add(key)
                if deleted:
                    deleted.discard(key)
                if kind is ItemState and rec["i"] is not None:
                    start = rec["t"]
                    start -= start % size_ms  # cfg.start_of, inlined
                    sets = pending_sets.get(start)
                    if sets is None:
                        sets = self._window_pending(meta, start, pending_sets)
                    sets[0].add(key)
                    sets[1].add(key)
                    if rk == "o":
                        dirty_totals.add(key)
                        if rec["n"] and outcome == ACCEPTED:
                            self._primary_since += 1
                elif kind is CategoryState:
                    meta.categories.add(key)
            elif rec["n"]:
                self._dead_late(rec)
        for (topic, outcome), n in counted.items():
            m.events.labels(topic, outcome).inc(n)
        if "pw" in env:
            meta.hear(env["pw"], env["np"])
        self.dirty_metas.add(partition)
        consumed_at = env.get("at", time.time())
        if meta.watermark > wm_before:
            self._close_sessions(meta, consumed_at)
        self._consumed_at = consumed_at  # when ingest read the input behind the windows this may close
        self.envelopes_processed += 1
        self.records_processed += n_records
        m.stage.labels("state").observe(time.perf_counter() - t0)

    def _apply_item_clicks(self, block: dict, partition: int, late_before: int, counted: dict, pending_sets: dict,
                           meta: PartitionMeta) -> None:
        """Apply a block of item clicks (routing.fold_clicks, kind ``I``): each click as the loop of
        :meth:`_apply_envelope` applies its record, without a dict per click."""
        cfg = self.cfg
        size_ms = cfg.size_ms
        cache, state_of, remember_partition = self.cache, self._state, self._partition.remember
        dirty, deleted, cold_start, unserialised = self.dirty_items, self.deleted, self._cold_start, self._unserialised
        n_accepted = n_duplicate = 0
        late = []
        for j, (key, rid, ts, category, event, price) in enumerate(zip(block["i"], block["id"], block["t"],
                                                                        block["c"], block["e"], block["p"])):
            st = cache.get(key)
            if st is None:
                st = state_of(key)
                remember_partition(key, partition)
            elif unserialised and key in unserialised:
                self._serialise_before_change(key)
            if ts < late_before:
                late.append(j)
                continue
            if st.first_seen is None:
                outcome = st.apply_click(rid, ts, event, price, category, cfg)
                cold_start(st)
            else:
                outcome = st.apply_click(rid, ts, event, price, category, cfg)
            if outcome == ACCEPTED:
                n_accepted += 1
            elif outcome == LATE:
                late.append(j)
                continue
            else:
                n_duplicate += 1
            # Also on a duplicate (see _apply_envelope).
            dirty.add(key)
            if deleted:
                deleted.discard(key)
            start = ts - ts % size_ms
            sets = pending_sets.get(start)
            if sets is None:
                sets = self._window_pending(meta, start, pending_sets)
            sets[0].add(key)
            sets[1].add(key)
        topic = block["ot"]
        for outcome, n in ((ACCEPTED, n_accepted), (DUPLICATE, n_duplicate), ("rejected", len(late))):
            if n:
                counted[(topic, outcome)] = counted.get((topic, outcome), 0) + n
        for j in late:
            self._dead_late({"k": "c", "id": block["id"][j], "t": block["t"][j], "i": block["i"][j],
                             "c": block["c"][j], "e": block["e"][j], "p": block["p"][j], "n": 1,
                             "o": [topic, block["op"][j], block["oo"][j]]})

    def _window_pending(self, meta: PartitionMeta, start: int, pending_sets: dict) -> tuple:
        """The sets of a window's pending items and of those to visit again when they would go dormant
        (see ItemState.close_windows), kept in ``pending_sets``: looked up once per window and envelope."""
        pending = meta.pending
        sets = pending_sets[start] = (pending.setdefault(start, set()),
                                      pending.setdefault(dormancy_check_window(start, self.cfg), set()))
        return sets

    def _apply_user_clicks(self, block: dict, partition: int, late_before: int, meta: PartitionMeta) -> None:
        """Apply a block of clicks for their users' sessions (routing.fold_clicks, kind ``U``): each as
        the loop of :meth:`_apply_envelope` applies its record (none counts its event)."""
        session_cfg = self.session_cfg
        cache, state_of, remember_partition = self.cache, self._state, self._partition.remember
        dirty, deleted, due_push, unserialised = self.dirty_items, self.deleted, meta.due.push, self._unserialised
        for key, rid, ts, item, event, price, session in zip(block["K"], block["id"], block["t"], block["i"],
                                                             block["e"], block["p"], block["s"]):
            st = cache.get(key)
            if st is None:
                st = state_of(key)
                remember_partition(key, partition)
            elif unserialised and key in unserialised:
                self._serialise_before_change(key)
            if ts < late_before:
                continue
            outcome = st.apply_click(rid, ts, session, event, item, price, session_cfg)
            due_push(key, st.next_due_ms(session_cfg))
            if outcome != LATE:
                dirty.add(key)
                if deleted:
                    deleted.discard(key)

    def _dead_late(self, rec: dict) -> None:
        """A late event's dead letter, from the routed record that counts it."""
        topic = rec["o"][0]
        m = self.metrics
        m.late_events.labels(topic).inc()
        m.dead_letters.labels("late_event").inc()
        self.dead_topic.send_soon(value=orjson.dumps(dead_letter_record(
            topic, rec["o"][1], rec["o"][2], Rejection(None, "late_event",
            f"event time is more than the {self.cfg.grace_ms / 1000:.0f} s grace period behind the watermark "
            "of the input partitions, or its window had already closed for this item", orjson.dumps(rec)),
            None, int(time.time() * 1000))))

    def _closing_watermark(self) -> int | None:
        """The least watermark of the owned routed partitions (None: none owned): windows close by it."""
        owned = self._owned()
        return min(self._meta(p).watermark for p in owned) if owned else None

    def _owned(self) -> list[int]:
        """The routed partitions this worker owns (cached until the next rebalance)."""
        owned = self._owned_parts
        if owned is None:
            topic = self.s.routed_topic
            owned = self._owned_parts = sorted(tp.partition for tp in self.app.consumer.assignment()
                                               if tp.topic == topic)
        return owned

    async def _close_ready(self, consumed_at: float) -> None:
        """Close, one window at a time, the windows the closing watermark has passed, and decide on them.

        The closing watermark is the least watermark of the partitions this worker owns: by then
        each of them has applied its input up to the window's end, closed the sessions that ended
        by then and handed their records to their items (the owned ones directly, see
        _close_sessions), and closed its categories' windows. Windows close in order, the same
        window for every owned partition, so what a window's decisions read as of its end (an
        item's own counts, N, its partners' baskets, its category's prior, its sessions) is exact
        and the same whatever the timing of the run: the same replay gives the same signals on one
        worker. A step can be long (a replay's first watermark closes weeks of windows at once), so
        it yields to the event loop every CLOSE_SLICE_S: heartbeats, fetches, HTTP views and the
        flush go on meanwhile (no envelope is applied until it is done). With several workers, figures from another worker's items (their baskets, their
        sessions, a category it owns) come through the replicated totals and the routed topic,
        as of whenever they arrive (docs/design.md).
        """
        cfg = self.cfg
        closing = self._closing_watermark()
        if closing is None:
            return
        newest = cfg.start_of(closing - cfg.grace_ms) - cfg.size_ms  # the newest closable window
        if newest <= self._closed_through:
            return
        self._closed_through = newest
        metas = [self._meta(p) for p in self._owned()]
        # Categories close at the same windows, before the items of the next: a new item's trend
        # starts from its category as of the window before its first (_seed_new_item).
        cat_steps: dict[int, list] = {}
        for key in sorted({k for meta in metas for k in meta.categories}):
            st = self._state(key)
            if st.first_seen is not None:
                start = cfg.start_of(st.first_seen) if st.closed_through is None else st.closed_through + cfg.size_ms
                for w in close_steps(start, newest, st.windows, cfg.size_ms):
                    cat_steps.setdefault(w, []).append(st)
        ready = sorted({w for meta in metas for w in meta.pending if w <= newest} | set(cat_steps))
        if not ready:
            return
        as_of = _AsOf(self, ready[0])
        priors: dict[bytes, dict] = {}
        self._closing = True
        try:
            if not await self._close_windows(ready, cat_steps, metas, as_of, priors, consumed_at):
                return
        finally:
            self._closing = False
            if self._retired and (self._releasing is None or self._releasing.done()):
                # (a step abandoned for a rebalance or a stop has replaced models too)
                self._releasing = asyncio.ensure_future(self._release_retired())
        for pkey, doc in priors.items():  # replicated once per step, not once per window
            self._replica_write(pkey, doc)
        self._freeze_survivors()
        if self.score_queue:  # the step's last rows, now rather than at the scorer's interval
            self.score_wakeup.set()

    async def _close_windows(self, ready: list, cat_steps: dict, metas: list, as_of: "_AsOf", priors: dict,
                             consumed_at: float) -> bool:
        """_close_ready's closing step: the windows ``ready``, in order; False if it was abandoned."""
        cfg = self.cfg
        slice_end = time.monotonic() + CLOSE_SLICE_S
        generation = self._generation
        # N and the session totals, read once a step: no envelope is applied during it, so on one worker
        # they would not change (a scan of every total, 50 ms for 20,000 items and 50,000 users, was
        # repeated each time its time to live ran out within a step)
        live_n = (self.n_orders_total(), *self._n_sessions)
        for w in ready:
            wm = w + cfg.size_ms + cfg.grace_ms  # closes exactly the windows up to w
            for st in cat_steps.get(w, ()):
                self._close_category(st, wm, priors, consumed_at)
            keys: set[str] = set()
            for meta in metas:
                k = meta.pending.get(w)
                if k:
                    keys |= k
            closed: list[ClosedWindow] = []
            for key in self._close_order(keys):
                st = self._state(key)
                if st.closed_through is None:
                    self._seed_new_item(st)
                ahead = st.ahead
                closed.extend(st.close_windows(cfg, wm))
                if ahead is not None:
                    self._retired.append(ahead)  # (its models are freed after the step)
                self.dirty_items.add(key)
                if len(closed) >= 256:
                    self._decide_closed(closed, as_of, consumed_at, live_n)
                    closed = []
                    if time.monotonic() >= slice_end:
                        if not await self._yield_in_step(generation):
                            return False
                        slice_end = time.monotonic() + CLOSE_SLICE_S
            if closed:
                self._decide_closed(closed, as_of, consumed_at, live_n)
            # Only now: a step abandoned above (a rebalance, a stop) leaves the window pending in
            # the metas a flush writes, and its owner closes the rest of its items later (closing
            # an item's window again is a no-op). Popped before, the items not reached yet were
            # left open with nothing pending to close them.
            for meta in metas:
                meta.pending.pop(w, None)
            if time.monotonic() >= slice_end:
                if not await self._yield_in_step(generation):
                    return False
                slice_end = time.monotonic() + CLOSE_SLICE_S
        return True

    def _close_order(self, keys) -> list[str]:
        """The order a step closes a window's items in: the items bought most often first (one not in
        memory counts as never bought), then by key. Most signals come from them (bundles above all,
        then restocking and boosts), and a step's signals go out as its batches are scored: a live
        boundary's close takes a second or more. A window's decisions do not depend on the order (each
        reads as of the window's end, whatever its partners' owners have closed: see _close_ready),
        only when its signals go out does."""
        cache = self.cache

        def busiest_first(key: str):
            st = cache.get(key)
            return (-st.assoc.n_item if type(st) is ItemState else 0, key)

        return sorted(keys, key=busiest_first)

    def _start_learning_ahead(self) -> None:
        """Once the closing watermark passes the end of a window (not yet its close: the grace period
        is still to run), its items learn it ahead (_learn_ahead)."""
        cfg = self.cfg
        if (not cfg.grace_ms or not self.s.learn_ahead_max_items
                or (self._learning_ahead is not None and not self._learning_ahead.done())):
            return
        closing = self._closing_watermark()
        if closing is None:
            return
        ended = cfg.start_of(closing) - cfg.size_ms  # the newest window whose end the watermark passed
        if ended <= max(self._learnt_ahead_through, self._closed_through):
            return
        self._learnt_ahead_through = ended
        keys: dict[str, None] = {}
        for meta in (self._meta(p) for p in self._owned()):
            for w, ks in meta.pending.items():
                if self._closed_through < w <= ended:
                    keys.update(dict.fromkeys(ks))
        if keys:  # (bounded: the copies live until the close)
            todo = list(keys)[: self.s.learn_ahead_max_items]
            self._learning_ahead = asyncio.ensure_future(self._learn_ahead_or_say_so(ended, todo))

    async def _learn_ahead_or_say_so(self, ended: int, keys: list) -> None:
        try:
            await self._learn_ahead(ended, keys)
        except Exception as e:  # a bug: /healthz says so (the closes learn what it did not)
            self.state_error = f"learning windows ahead failed: {type(e).__name__}: {e}"
            log.exception("learning windows ahead failed")

    async def _learn_ahead(self, ended: int, keys: list) -> None:
        """Learn ahead (ItemState.learn_ahead) the window each of ``keys`` closes next, up to the window
        ``ended``, in slices: the agent comes first (as with the flush's slices), a closing step stops it
        (what is not learnt by then is learnt by the close), and so does a rebalance."""
        generation = self._generation
        cfg, cache = self.cfg, self.cache
        i = 0
        seen_applied = -1
        while i < len(keys):
            if (self._closing or generation != self._generation or self._closed_through >= ended
                    or self.app.should_stop):
                return
            applied = self.envelopes_processed
            if applied != seen_applied and time.time() - self._consumed_at > LEARN_AHEAD_BEHIND_S:
                seen_applied = applied  # (an agent with nothing more to apply is not behind)
                await asyncio.sleep(LEARN_AHEAD_SLICE_S)
                continue
            t0 = time.perf_counter()
            end = t0 + LEARN_AHEAD_SLICE_S
            while i < len(keys):
                st = cache.get(keys[i])
                i += 1
                # (an item's first window is left to the close, which seeds its trend first: _seed_new_item)
                if type(st) is ItemState and st.closed_through is not None:
                    w = st.closed_through + cfg.size_ms
                    if w <= ended and st.learn_ahead(cfg, w):
                        self.items_learnt_ahead += 1
                if not i % 32 and time.perf_counter() >= end:
                    break
            spent = time.perf_counter() - t0
            await asyncio.sleep(0)
            if self.envelopes_processed != applied:
                await asyncio.sleep(LEARN_AHEAD_PAUSE_FACTOR * spent)

    async def _release_retired(self) -> None:
        """Drop what closing steps replaced (the models that learning ahead superseded), in slices
        between which the event loop runs, and none while a closing step is under way."""
        retired = self._retired
        while retired:
            if self._closing:
                await asyncio.sleep(RELEASE_SLICE_S)
                continue
            end = time.perf_counter() + RELEASE_SLICE_S
            while retired and time.perf_counter() < end:
                del retired[-64:]
            await asyncio.sleep(0)

    def _hold_ahead(self, partition: int) -> None:
        """Pause fetching an owned routed partition whose watermark runs more than max_ahead_windows
        ahead of the closing watermark, and resume the paused ones once closing has caught up.

        Windows close only at the least watermark of the owned partitions (_close_ready). Without
        this, a catch-up or replay applies days of the partitions that fetch faster while the slowest
        holds closing back, and their items hold those open windows (and as-of partner counters) in
        memory meanwhile (measured: lower peak memory, same time to the final signals). The least
        partition is never paused, so closing always moves on; envelopes already fetched are still
        applied. If closing stops moving for a flush interval while partitions are paused, they are all
        resumed (_release_if_stalled). Opt-in (LAUNCHPULSE_MAX_AHEAD_WINDOWS, default 0): see docs/design.md.
        """
        if len(self._owned()) < 2:
            return
        closing = self._closing_watermark()
        limit = self._ahead_ms
        if self._paused and closing != self._paused_closing:
            self._paused_closing = closing
            go = [t for t in self._paused if self._meta(t.partition).watermark - closing <= limit]
            if go:
                for t in go:
                    del self._paused[t]
                self._resume_fetching(go)
        tp = TP(self.s.routed_topic, partition)  # Faust's own type: its consumer asserts it
        if tp not in self._paused and self._meta(partition).watermark - closing > limit:
            self._paused[tp] = None
            self._paused_closing = closing
            self.partition_pauses += 1
            self._pause_fetching([tp])

    def _pause_fetching(self, tps: list) -> None:
        """Stop fetching these routed partitions, and still deliver what is already fetched of them.

        Faust's ``pause_partitions`` takes a partition out of the active set by which its ``getmany``
        filters the fetch it is iterating: records of the partition fetched already (the fetch position
        has moved past them) were dropped, and never delivered until a restart replayed them from the
        committed offset. Counting stopped short and the commits stuck behind the gap: the stall the
        outage and determinism tests met with pausing on. Faust's own back-pressure (``on_buffer_full``)
        keeps such records by marking the partition buffered, which ``getmany`` lets through; so does this.
        """
        consumer = self.app.consumer
        consumer.pause_partitions(tps)
        consumer._buffered_partitions.update(tps)

    def _resume_fetching(self, tps) -> None:
        consumer = self.app.consumer
        consumer._buffered_partitions.difference_update(tps)
        consumer.resume_partitions(tps)

    async def _yield_in_step(self, generation: int) -> bool:
        """Let the event loop run; False if partitions were revoked or assigned meanwhile (the step's
        states and metas were flushed and dropped then, and the owners reload them to go on), or if
        the worker is stopping (Faust drops the tables' data as it stops: a step going on would
        close windows of empty, re-created states).

        The rows queued so far are scored meanwhile: a live feed's window boundary closes every
        active item at once (17,000 in 1.5-2 s at 20,000 clicks/s), and their signals waited for all
        of it (the scorer's task, woken, advanced one step per yield: one batch in a step)."""
        if self.score_queue:
            await self._score_queued(self._rows_queued)  # the model runs in its thread: the loop goes on
        else:
            await asyncio.sleep(0)
        return generation == self._generation and not self.app.should_stop

    def _decide_closed(self, closed: list[ClosedWindow], as_of: "_AsOf", consumed_at: float, live_n: tuple) -> None:
        """Feature rows and evidence of windows that just closed, as of each window's end; the scorer
        adds its prediction later, so results do not depend on scoring's timing. Latency is counted
        from when ingest read the input that moved the watermark. ``live_n``: N and the sessions with a
        view, with a cart, now (the substitute neighbourhood's totals)."""
        m, cfg = self.metrics, self.cfg
        n_total, n_views, n_carts = live_n
        baskets, view_counts, cart_counts = _Memo(self.totals_view), _Memo(self.view_counts), _Memo(self.cart_counts)
        th = self.thresholds
        for cw in closed:
            if cw.forecast_abs_error is not None:
                m.forecast_error.observe(cw.forecast_abs_error)
            a = cw.state.assoc
            if a.n_item >= DEFAULT_MIN_SUPPORT_COUNT:  # else no pair can reach the support floor: no bundle
                ev = features.evidence(cw, cfg, None, as_of.baskets(cw.start_ms), as_of.n_orders(cw.start_ms),
                                       assoc=a.as_of(cw.start_ms, DEFAULT_MIN_SUPPORT_COUNT))
            else:
                ev = features.evidence(cw, cfg, None)
            # Published with the item's totals: cold-start partners of its category's new items.
            # Counts, not lift: lift depends on N, which keeps growing after this close.
            top = [[p, co, cw.state.assoc.n_item] for p, co in strongest_partners(cw.state.assoc)]
            if top != self._published_top(cw.item_id):
                self.top_partners[cw.item_id] = top
                self.dirty_totals.add(cw.item_id)
            nb = None
            if ev.age_windows is not None and ev.age_windows <= th.new_item_windows and cw.state.assoc.n_view + cw.state.assoc.n_cart:
                nb = neighbourhood_evidence(cw.state.assoc, baskets, n_total, view_counts, n_views, cart_counts,
                                            n_carts, th)
            self.score_queue.append((consumed_at, cw, features.feature_row(cw, cfg), ev, nb))
            self._rows_queued += 1
        m.windows_closed.inc(len(closed))

    def _cold_start(self, st: ItemState) -> None:
        """A brand-new item of a known category starts its trend from the category's (provisional).

        The category's owner publishes what a new launch of it starts from at every closed window
        (see CategoryState.prior_for_new_items), replicated to every worker like the basket totals.
        """
        if st.category_id is None or st.first_seen is None:
            return
        prior = self.totals.get(CATEGORY_PRIOR_PREFIX + st.category_id.encode())
        if prior is not None:
            st.trend = self.prior_seeds.model(prior["trend"], prior["scale"])

    def _seed_new_item(self, st: ItemState) -> None:
        """Before an item's first window closes: its trend starts from its category's as of the window
        before its first (published by the category's owner, PRIOR_HISTORY_WINDOWS of them kept), so
        the seed does not depend on when the item was first seen; without that window's prior, from
        nothing. The seed of _cold_start (the category's latest) serves /trend until then."""
        first = self.cfg.start_of(st.first_seen)
        prior = None
        if st.category_id is not None:
            pkey = CATEGORY_PRIOR_PREFIX + st.category_id.encode()
            doc = self.category_priors.get(pkey) or self.totals.get(pkey)
            if doc is not None:
                prior = doc.get("by_window", {}).get(str(first - self.cfg.size_ms))
        if prior is not None:
            st.trend = self.prior_seeds.model(prior["trend"], prior["scale"])
        elif st.trend.seeded:
            st.trend = TrendModel()

    def _published_top(self, item: str) -> list:
        """The item's strongest partners to publish: chosen at its latest close and not yet flushed,
        else as last published."""
        v = self.top_partners.get(item)
        if v is not None:
            return v
        v = self.totals.get(item.encode())
        return v[5] if v is not None and len(v) > 5 else []

    def _published_partners(self, item: str) -> list[dict]:
        """An item's strongest partners as its owner published them ([partner, co_count, n_item] at its
        latest close): confidence as of that close, lift against the partner's support now."""
        v = self.totals.get(item.encode())
        if v is None or len(v) <= 5:
            return []
        n_total = self.n_orders_total()
        rows = []
        for p, co, n_item in v[5]:
            pv = self.totals.get(p.encode())
            n_p = pv[0] if pv is not None else 0
            if not (isinstance(co, int) and 0 < co <= n_item and n_p and n_total >= max(n_item, n_p)):
                continue  # an entry of an older format, or a partner not replicated here yet
            confidence = co / n_item
            if confidence * n_total <= n_p:
                continue  # lift <= 1: bought together no more than by chance
            rows.append({"item_id": p, "confidence": confidence, "lift": confidence * n_total / n_p})
        return rows

    def provisional_rows(self, st: ItemState, exclude: set, limit: int) -> list[dict]:
        """Cold-start partners of an item with little basket history (models.associations.provisional_partners):
        what its category's top sellers and its substitutes (its most co-viewed / co-carted items) are
        bought with, from the strongest partners every owner publishes with its items' totals."""
        category_rows: list[dict] = []
        if st.category_id is not None:
            prior = self.totals.get(CATEGORY_PRIOR_PREFIX + st.category_id.encode())
            for seller in (prior or {}).get("top_sellers", []):
                if seller != st.item_id:
                    category_rows += self._published_partners(seller)
        subs = [p for kind in ("view", "cart") for p, _, _ in st.assoc.counter(kind).items()[:5]]
        substitute_rows = {p: self._published_partners(p) for p in dict.fromkeys(subs) if p != st.item_id}
        return provisional_partners(category_rows, {k: v for k, v in substitute_rows.items() if v}, limit=limit,
                                    exclude=exclude | {st.item_id})

    def _close_sessions(self, meta: PartitionMeta, consumed_at: float) -> None:
        """Close the sessions the watermark passed: learn purchase propensity (predict, then learn),
        and hand each touched item the session's co-view / co-cart record: applied at once when this
        worker owns the item (so it counts before the windows the same watermark closes), sent to
        its owner through the routed topic otherwise."""
        scfg = self.session_cfg
        out: dict[int, list] = {}
        summaries = []
        for key in meta.due.pop_due(meta.watermark):
            st = self._state(key)
            summaries.extend(st.close(meta.watermark, scfg))
            self.dirty_items.add(key)
            if st.is_empty():
                self.deleted.add(key)
            else:
                meta.due.push(key, st.next_due_ms(scfg))
        # Predict-then-learn in one order whatever the watermark's steps were: by close time, then session.
        summaries.sort(key=lambda sm: (sm.close_ms, sm.session_key))
        model, score, totals, owner = meta.propensity, self.propensity_score, meta.session_totals, self._partition
        ordered = 0
        for summary in summaries:
            x, y = summary.propensity_example()
            p = model.predict_learn_one(x, y)
            score.update(y, p)
            totals.add(summary)
            ordered += y
            for item, rec in summary.item_records(round(p, 6)):
                out.setdefault(owner(item), []).append(rec)
        if summaries:  # counted once per step, not per session
            closed = self.metrics.sessions_closed
            closed.labels("ordered").inc(ordered)
            closed.labels("not_ordered").inc(len(summaries) - ordered)
        if score.n:
            auc, loss = score.auc(), score.logloss()
            if auc is not None:
                self.metrics.propensity_auc.set(auc)
            if loss is not None:
                self.metrics.propensity_log_loss.set(loss)
        owned = self._owned()
        for part, recs in out.items():
            if part in owned:
                self._apply_sessions(recs)
            else:  # owners learn them like any routed record; no watermark report rides along
                self._routed_out.append((part, orjson.dumps({"src": "sessions", "at": consumed_at, "r": recs})))

    def _apply_sessions(self, recs: list) -> None:
        cfg = self.cfg
        for rec in recs:
            key = rec["i"]
            if self._state(key).apply_session(rec, cfg):
                self.dirty_items.add(key)
                self.dirty_totals.add(key)

    def _close_category(self, st: CategoryState, watermark: int, priors: dict, consumed_at: float) -> None:
        """Close a category's windows up to the one ``watermark`` closes, decide its launch cadence on
        each, and keep the prior a new item of it starts from as of that window (the latest
        PRIOR_HISTORY_WINDOWS; published at the end of the closing step, read locally at once)."""
        cfg, th = self.cfg, self.thresholds
        got = st.close_windows(cfg, watermark)
        if not got:
            return
        mem = SignalMemory.from_state(st.signal_memory or None)
        for cw in got:
            ev = cadence_evidence(st, cfg, th, window_start=cw.start_ms)
            if ev is not None:
                for sig in decide_category(ev, mem, CADENCE_MODEL_VERSION, th):
                    self._emit_soon(sig, consumed_at)
        st.signal_memory = mem.to_state()
        self.dirty_items.add(CATEGORY_KEY_PREFIX + st.category_id)
        prior = st.prior_for_new_items(cfg)
        pkey = CATEGORY_PRIOR_PREFIX + st.category_id.encode()
        doc = self.category_priors.get(pkey) or self.totals.get(pkey) or {}
        by_window = dict(doc.get("by_window", {}))
        if prior is not None:
            by_window[str(st.closed_through)] = {"trend": prior["trend"], "scale": prior["scale"]}
            doc = prior
        elif not by_window:
            return
        keep = sorted(by_window, key=int)[-PRIOR_HISTORY_WINDOWS:]
        doc = {**doc, "by_window": {k: by_window[k] for k in keep}}
        priors[pkey] = self.category_priors[pkey] = doc
        self.totals.set_local(pkey, doc)

    def _emit_soon(self, sig: dict, enqueued: float) -> None:
        self.signals_topic.send_soon(key=sig["signal_id"].encode(), value=orjson.dumps(sig))
        self._count_signal(sig, enqueued)

    def _count_signal(self, sig: dict, enqueued: float) -> None:
        self.metrics.signals.labels(sig["type"]).inc()
        self.metrics.event_to_signal.observe(max(0.0, time.time() - enqueued))
        self.recent_signals.append(sig)
        self.signals_sent += 1
        self.last_signal_monotonic = time.monotonic()

    # -- scoring and decisions -----------------------------------------------------------
    def n_orders_total(self) -> int:
        """N, the accepted baskets: the sum of every item's primary-order count in the replicated totals.

        Each item's count is idempotent under replays (it moves with the item's deduplicated
        state), so N is too. Summed at most every N_TOTAL_TTL_S seconds (longer where the sum
        itself is slow, see N_TOTAL_MAX_SHARE), plus the primary orders accepted here since: N must
        never fall behind an owned item's own basket count (lift and the rule metrics refuse n_A > N).
        """
        now = time.monotonic()
        if now - self._n_total_at > max(N_TOTAL_TTL_S, self._n_total_cost / N_TOTAL_MAX_SHARE):
            cache = self.cache
            total = 0
            views = carts = 0
            for k, v in self.totals.items():
                if k[:1] == b"#":
                    if k.startswith(b"#sessions"):
                        views += v[0]
                        carts += v[1]
                elif type(cache.get(k.decode())) is not ItemState:
                    total += v[1]
            self._n_total = total + sum(st.primary_orders for st in cache.values() if type(st) is ItemState)
            self._n_sessions = (views, carts)
            self._n_total_at = now
            self._n_total_cost = time.monotonic() - now
            self._primary_since = 0
        return self._n_total + self._primary_since

    def n_orders_windows(self, lo: int, hi: int) -> int:
        """Accepted baskets with event time in windows lo..hi (window starts): N of window=recent.

        Summed at each call (the HTTP view only): owned items from their live state, the others from
        their replicated per-window counts.
        """
        cache = self.cache
        total = 0
        for k, v in self.totals.items():
            if k[:1] != b"#" and len(v) > 4 and type(cache.get(k.decode())) is not ItemState:
                total += sum(p for w, (_, p) in v[4].items() if lo <= int(w) <= hi)
        for st in cache.values():
            if type(st) is ItemState:
                total += sum(p for w, p in st.primary_windows.items() if lo <= w <= hi)
        return total

    def recent_range(self, partition: int) -> tuple[int, int] | None:
        """The window starts of window=recent: the newest window any input partition has reached (as
        reported to this owner partition) and the RECENT_WINDOWS - 1 before it. None before any report."""
        meta = self._meta(partition)
        if not meta.parts:
            return None
        hi = self.cfg.start_of(max(p[0] for p in meta.parts.values()))
        return hi - (RECENT_WINDOWS - 1) * self.cfg.size_ms, hi

    def n_sessions(self) -> tuple[int, int]:
        """Closed sessions with a view, with a cart (all partitions; the substitute test's totals)."""
        self.n_orders_total()
        return self._n_sessions

    async def _run_scorer(self) -> None:
        interval = self.s.score_interval_ms / 1000
        while True:
            try:
                await asyncio.wait_for(self.score_wakeup.wait(), timeout=interval)
            except asyncio.TimeoutError:
                pass
            self.score_wakeup.clear()
            # The rows queued by now, not those queued meanwhile: a flush waiting on the scorer
            # (_deliver) gets its turn instead of waiting while the agent keeps the queue fed.
            await self._score_queued(self._rows_queued)

    async def _score_queued(self, through: int | None = None) -> None:
        """Score and decide the queued rows in batches of at most score_max_rows: all of them, or until
        the first ``through`` rows ever queued are done."""
        loop = asyncio.get_running_loop()
        async with self._score_lock:
            while self.score_queue and (through is None or self._rows_scored < through):
                batch = self.score_queue[: self.s.score_max_rows]
                del self.score_queue[: len(batch)]
                try:
                    await self._score_batch(loop, batch)
                except Exception:
                    log.exception("scoring a batch of %d rows failed; the rows are dropped", len(batch))
                finally:
                    self._rows_scored += len(batch)

    async def _score_batch(self, loop, batch) -> None:
        windows = [b[1] for b in batch]
        rows = [b[2] for b in batch]
        t0 = time.perf_counter()
        preds = await loop.run_in_executor(self.executor, self.scorer.predict, rows, windows)
        self.metrics.scorer_batch.observe(time.perf_counter() - t0)
        self.metrics.scorer_rows.observe(len(rows))
        sent = []
        for (enqueued, cw, _, ev, nb), pred in zip(batch, preds):
            ev.predicted_demand = None if pred is None else [float(x) for x in pred]
            key = cw.item_id.encode()
            raw = _store(self.memory).get(key)
            mem = SignalMemory.from_state(orjson.loads(raw) if raw else None)
            for sig in decide_item(ev, mem, self.scorer.version, self.thresholds):
                sent.append((enqueued, sig))
            if nb is not None:
                for sig in decide_homogeneity(ev, nb, mem, HOMOGENEITY_MODEL_VERSION, self.thresholds):
                    sent.append((enqueued, sig))
            # Written back whenever anything moved: the last firings, and also the streaks and
            # confirmations (a rule held for k windows in a row) that fire nothing themselves.
            after = orjson.dumps(mem.to_state())
            if after != (raw or orjson.dumps(SignalMemory().to_state())):
                # Into the table's store now, to the changelog with the next flush (batched, like states).
                self._table_writes(self.memory, key, None, after)
        for enqueued, sig in sent:
            await self.signals_topic.send(key=sig["signal_id"].encode(), value=orjson.dumps(sig))
            self._count_signal(sig, enqueued)

    # -- ingest --------------------------------------------------------------------------
    async def _run_ingest(self) -> None:
        await self.ingest.start_retrying()
        try:
            await self.ingest.run()
        finally:
            await self.ingest.stop()

    # -- HTTP ----------------------------------------------------------------------------
    def health(self) -> tuple[bool, str]:
        if self.state_error:
            return False, self.state_error
        reason = self.ingest.health_reason()
        if reason:
            return False, reason
        return True, "consuming"

    def _routes(self) -> None:
        app, worker = self.app, self

        @app.page("/metrics")
        async def metrics(web, request):
            return web.bytes(worker.metrics.render(),
                             headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

        @app.page("/healthz")
        async def healthz(web, request):
            ok, reason = worker.health()
            worker.metrics.healthy.set(1 if ok else 0)
            return web.json({"status": "ok" if ok else "unhealthy", "reason": reason}, status=200 if ok else 503)

        @app.page("/progress")
        async def progress(web, request):
            if request.query.get("deep"):
                # Diagnostics: N summed from this worker's item states rather than the replicated totals.
                n_items = sum(orjson.loads(v)["primary_orders"] for v in worker.items.values())
                return web.json({"orders_total_from_items": n_items, "orders_total": worker.n_orders_total(),
                                 "items": len(worker.items), "totals_keys": len(worker.totals)})
            return web.json({"ingested_messages": worker.ingest.consumed, "records_processed": worker.records_processed,
                             "events_counted": worker.metrics.events_counted(), "state_error": worker.state_error,
                             "envelopes_processed": worker.envelopes_processed, "score_queue": len(worker.score_queue),
                             "signals_sent": worker.signals_sent, "orders_total": worker.n_orders_total(),
                             # routed partitions paused now for running ahead of closing, and pauses so far
                             "partitions_paused": len(worker._paused), "partition_pauses": worker.partition_pauses,
                             "pause_releases": worker.pause_releases,
                             # envelopes Faust never delivered, read back from the broker (_skipped_envelopes)
                             "envelopes_refetched": worker.envelopes_refetched,
                             # items that learnt a window into their trend models before it closed
                             "items_learnt_ahead": worker.items_learnt_ahead,
                             # objects out of the collector's reach, and freezes so far (_freeze_survivors)
                             "gc_frozen": gc.get_freeze_count(), "gc_freezes": worker.gc_freezes,
                             # the newest window closed (and decided) on this worker's partitions, by start
                             "windows_closed_through_ms": worker._closed_through if worker._closed_through >= 0 else None})

        @app.page("/signals/recent")
        async def recent(web, request):
            limit = _int_arg(request, "limit", 50, 1, 1000)
            if limit is None:
                return web.json({"error": "limit must be an integer between 1 and 1000"}, status=400)
            return web.json({"signals": list(worker.recent_signals)[-limit:][::-1]})

        @app.page("/items/{item_id}/associations")
        @app.table_route(table=self.items, match_info="item_id")
        async def associations(web, request, item_id):
            limit = _int_arg(request, "limit", 20, 1, 10000)
            min_count = _int_arg(request, "min_count", DEFAULT_MIN_SUPPORT_COUNT, 1, 1_000_000_000)
            window = request.query.get("window", "all")
            if limit is None:
                return web.json({"error": "limit must be an integer between 1 and 10000"}, status=400)
            if min_count is None:
                return web.json({"error": "min_count must be a positive integer"}, status=400)
            if window not in ("all", "recent"):
                return web.json({"error": "window must be 'all' or 'recent'"}, status=400)
            st = worker.peek(item_id)
            if type(st) is not ItemState:
                return web.json({"error": f"unknown item {item_id}"}, status=404)
            extra = {}
            if window == "all":
                n_views, n_carts = worker.n_sessions()
                rows = rank_associations(st.assoc, worker.totals_view, worker.n_orders_total(), limit=limit,
                                         min_support_count=min_count, window="all", view_counts=worker.view_counts, n_view_total=n_views,
                                         cart_counts=worker.cart_counts, n_cart_total=n_carts)
            else:
                rng = worker.recent_range(partition_for(item_id, worker.s.state_partitions))
                if rng is None or not st.assoc.window_ms:
                    rows = []  # no input heard yet, or a state from before recent windows were kept
                else:
                    lo, hi = rng
                    extra = {"window_start_ms": lo, "window_end_ms": hi + worker.cfg.size_ms}
                    # Co-purchases only: the session totals (substitute test) are kept all-time.
                    rows = rank_associations(st.assoc, _RecentBaskets(worker.totals, worker.cache, lo, hi),
                                             worker.n_orders_windows(lo, hi), limit=limit,
                                             min_support_count=min_count, window="recent", now_ms=hi)
            rows = [{k: r[k] for k in ("item_id", "co_count", "support", "confidence", "lift", "leverage", "conviction",
                                        "relation", "exact")} | {"provisional": False} for r in rows]
            if window == "all" and st.assoc.n_item < min_count and len(rows) < limit:
                # Little history of its own: partners borrowed from its category's top sellers and its
                # substitutes, marked provisional (after the item's own rows).
                rows += [{k: r[k] for k in ("item_id", "co_count", "support", "confidence", "lift", "leverage",
                                            "conviction", "relation", "exact", "provisional")}
                         for r in worker.provisional_rows(st, {r["item_id"] for r in rows}, limit - len(rows))]
            return web.json({"item_id": item_id, "window": window, **extra, "associations": rows})

        @app.page("/items/{item_id}/trend")
        @app.table_route(table=self.items, match_info="item_id")
        async def trend(web, request, item_id):
            series = request.query.get("series", "units")
            st = worker.peek(item_id)
            if st is None:
                return web.json({"error": f"unknown item {item_id}"}, status=404)
            if type(st) is CategoryState:
                # /items/category:<id>/trend: the category's series per closed window and its trend.
                if series not in ("units", "views", "carts", "revenue"):
                    return web.json({"error": "series must be 'units', 'views', 'carts' or 'revenue'"}, status=400)
                model = st.trend if series == "units" else st.series.get(series, TrendModel())
                return web.json({"item_id": item_id, "category_id": st.category_id, "window_ms": worker.cfg.size_ms,
                                 "windows": [{"start_ms": w.start_ms, "end_ms": w.end_ms, "launches": w.launches, "units": w.units,
                                              "views": w.views, "carts": w.carts, "revenue": w.revenue,
                                              "new_units": w.new_units}
                                             for w in st.closed(worker.cfg)[-worker.cfg.keep_closed:]],
                                 **summarise(model), "series": f"category {series} per window"})
            if series not in ("units", *ITEM_SERIES):
                return web.json({"error": f"series must be one of units, {', '.join(ITEM_SERIES)}"}, status=400)
            model = st.trend if series == "units" else st.series.get(series, TrendModel())
            return web.json({"item_id": item_id, "window_ms": worker.cfg.size_ms,
                             "windows": st.recent_windows(worker.cfg), **summarise(model),
                             "series": "units ordered per window" if series == "units" else f"{series} per window"})


class _AsOf:
    """Baskets as of the end of a window, for the windows one closing step decides on: N, and any
    item's basket count (owned items from their state, the others from their replicated totals), as
    the all-time figures less those of later windows. Every item keeps its windows after its last
    closed one (and the worker closes windows in order), so the figures are exact for the owner's
    items and for replicated items as far as the replica has caught up."""

    __slots__ = ("_w", "_first", "_n_now", "_later", "baskets_cache")

    def __init__(self, worker: "Worker", first: int):
        self._w, self._first = worker, first
        self._n_now: int | None = None
        self._later: dict[int, int] = {}
        # (item, window) -> baskets: nothing is applied while one closing step runs, and popular
        # partners are asked about for many items
        self.baskets_cache: dict[tuple, int | None] = {}

    def _scan(self) -> None:
        """N now and the primary orders per window after the first (once per closing step)."""
        w, first = self._w, self._first
        later: dict[int, int] = {}
        cache = w.cache
        n_now = 0
        for k, v in w.totals.items():
            if k[:1] == b"#" or type(cache.get(k.decode())) is ItemState:
                continue
            n_now += v[1]
            if len(v) > 4:
                for ws, (_, p) in v[4].items():
                    ws = int(ws)
                    if ws > first and p:
                        later[ws] = later.get(ws, 0) + p
        horizon = first + w.cfg.size_ms
        for st in cache.values():
            if type(st) is ItemState:
                n_now += st.primary_orders
                last = st.assoc.last_ts_ms
                if last is not None and last >= horizon:
                    for ws, p in st.primary_windows.items():
                        if ws > first:
                            later[ws] = later.get(ws, 0) + p
        self._n_now, self._later = n_now, later

    def n_orders(self, window_start: int) -> int:
        """N as of the end of the window starting at ``window_start``."""
        if self._n_now is None:
            self._scan()
        return self._n_now - sum(p for ws, p in self._later.items() if ws > window_start)

    def baskets(self, window_start: int) -> "_BasketsAsOf":
        return _BasketsAsOf(self, window_start)


class _BasketsAsOf:
    """Baskets holding an item as of the end of a window (see _AsOf)."""

    __slots__ = ("_a", "_ws")

    def __init__(self, as_of: _AsOf, window_start: int):
        self._a, self._ws = as_of, window_start

    def get(self, key: str, default=None):
        ws = self._ws
        cache = self._a.baskets_cache
        got = cache.get((key, ws), cache)
        if got is not cache:
            return default if got is None else got
        w = self._a._w
        st = w.cache.get(key)
        if type(st) is ItemState:
            total = st.assoc.n_item
        else:
            v = w.totals.get(key.encode())
            total = None if v is None else v[0]
        got = None if total is None else total - (_baskets_between(w.totals, w.cache, key, ws + 1, None) or 0)
        cache[(key, ws)] = got
        return default if got is None else got


class _RecentBaskets:
    """Baskets per item in the windows lo..hi (window starts), for window=recent: the owner's
    own state for items this worker holds, the replicated per-window totals for the others."""

    __slots__ = ("_t", "_own", "_lo", "_hi")

    def __init__(self, table, own: dict, lo: int, hi: int):
        self._t, self._own, self._lo, self._hi = table, own, lo, hi

    def get(self, key: str, default=None):
        got = _baskets_between(self._t, self._own, key, self._lo, self._hi)
        return default if got is None else got


def _baskets_between(table, own: dict, key: str, lo: int, hi: int | None) -> int | None:
    """Baskets holding an item in the windows starting lo..hi (None: no upper bound): from its state
    when this worker holds it, else from its replicated per-window counts (None when there are none)."""
    st = own.get(key)
    if type(st) is ItemState:
        return sum(row[6] for w, row in st.windows.items() if lo <= w and (hi is None or w <= hi))
    v = table.get(key.encode())
    if v is None or len(v) <= 4:
        return None
    return sum(n for w, (n, _) in v[4].items() if lo <= int(w) and (hi is None or int(w) <= hi))


def _store(table) -> dict:
    """The plain dict under a table's memory store (the app always uses ``memory://``): a key the
    table lacks costs a KeyError raised and caught through three layers of Faust's mappings,
    which a worker meets for every new key (about 5% of its time on a live clickstream)."""
    return table.data.data


def _raw_table(table, value: str = "raw"):
    """Raw byte keys (and raw or JSON values). Faust derives codecs from key/value types and builds
    the changelog topic as the table registers, so the topic is rebuilt with the right codecs:
    otherwise keys would be JSON-encoded in the changelog, hash to other partitions than the
    routed records, and come back from recovery as str instead of bytes."""
    table.key_serializer = "raw"
    table.value_serializer = value
    table._changelog_topic = None
    table.app.tables._changelogs[table.changelog_topic.get_topic_name()] = table
    return table


class _Memo:
    """A totals view read through a memo, for one batch of closed windows (_decide_closed): the totals
    do not change within it, and a popular item is a partner of many of the batch's items (their
    substitute neighbourhoods read it again and again, each time from its scattered state)."""

    __slots__ = ("_view", "_memo")

    def __init__(self, view):
        self._view = view
        self._memo: dict = {}

    def get(self, key: str, default=None):
        try:
            v = self._memo[key]
        except KeyError:
            v = self._memo[key] = self._view.get(key)
        return default if v is None else v


class _TotalsView:
    """Baskets per item for the pure read path: the owner's own state for items this worker owns,
    the replicated totals (stream/replica.py) for the others.

    The replica can lag (or briefly regress to an older record) for
    keys this worker writes itself, so an owned item is always read from its state.
    """

    __slots__ = ("_t", "_own", "_i", "_field")

    # Fields of a ``totals`` value: [baskets, primary orders, view sessions, cart sessions].
    FIELDS = {"n_item": 0, "n_view": 2, "n_cart": 3}

    def __init__(self, table, own: dict, field: str = "n_item"):
        self._t = table
        self._own = own
        self._i = self.FIELDS[field]
        self._field = field  # (the ItemAssociations property of the same name)

    def get(self, key: str, default=None):
        st = self._own.get(key)
        if type(st) is ItemState:
            return getattr(st.assoc, self._field)
        v = self._t.get(key.encode())
        return default if v is None or len(v) <= self._i else v[self._i]

    def __getitem__(self, key: str):
        v = self.get(key)
        if v is None:
            raise KeyError(key)
        return v

    def __contains__(self, key: str) -> bool:
        return type(self._own.get(key)) is ItemState or key.encode() in self._t


def _int_arg(request, name, default, lo, hi):
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError:
        return None
    return v if lo <= v <= hi else None


def _faust_credentials(s: Settings):
    if s.security_protocol == "PLAINTEXT":
        return None
    import ssl

    ctx = ssl.create_default_context(cafile=s.ssl_cafile) if "SSL" in s.security_protocol else None
    if s.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(username=s.sasl_username, password=s.sasl_password,
                                     mechanism=s.sasl_mechanism or "PLAIN", ssl_context=ctx)
    return faust.SSLCredentials(ctx)
