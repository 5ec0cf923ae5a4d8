"""The worker: a Faust app whose agent keeps per-item state in tables, plus ingest, scoring and HTTP.

Data flows one way: input topics -> :mod:`ingest` (validate, pseudonymise, dead-letter,
route) -> ``<app_id>-routed`` (envelopes of records packed per owner partition) ->
the ``process`` agent (dedupe, windows, associations, trends; one table write per
touched item per envelope) -> scorer batches -> decisions -> ``launch-signals``.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import faust
import orjson

from launchpulse.models import features
from launchpulse.models.decisions import SignalMemory, Thresholds, decide_item
from launchpulse.models.itemstate import ACCEPTED, LATE, ClosedWindow, ItemState
from launchpulse.models.scorer import TrendScorer
from launchpulse.models.trends import summarise
from launchpulse.models.associations import rank_associations
from launchpulse.models.windows import WindowConfig
from launchpulse.schemas.validate import Rejection, dead_letter_record

from .ingest import Ingest
from .metrics import Metrics
from .settings import Settings

log = logging.getLogger("launchpulse.worker")

N_KEY_PREFIX = "#orders:"  # per-partition accepted basket count in the totals table


class PartitionMeta:
    """Per routed partition: event-time watermark and the items still closing windows."""

    __slots__ = ("watermark", "closed_boundary", "active")

    def __init__(self, watermark=0, closed_boundary=None, active=None):
        self.watermark = watermark
        self.closed_boundary = closed_boundary
        self.active = active or {}

    def to_bytes(self) -> bytes:
        return orjson.dumps({"version": 1, "watermark": self.watermark, "closed_boundary": self.closed_boundary,
                             "active": self.active})

    @classmethod
    def from_bytes(cls, b: bytes | None) -> "PartitionMeta":
        if not b:
            return cls()
        d = orjson.loads(b)
        return cls(d["watermark"], d["closed_boundary"], d["active"])


class Worker:
    """Holds the Faust app, its topics and tables, and the worker's in-process services."""

    def __init__(self, settings: Settings, scorer=None, thresholds: Thresholds = Thresholds()):
        self.s = s = settings
        self.cfg = WindowConfig(size_ms=s.window_ms, grace_ms=s.grace_ms)
        self.metrics = Metrics()
        self.thresholds = thresholds
        self.scorer = scorer or TrendScorer()
        self.ingest = Ingest(s, self.metrics, self.cfg)
        self.recent_signals: deque = deque(maxlen=1000)
        self.score_queue: list[tuple[float, ClosedWindow]] = []
        self.score_wakeup = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer")
        self.envelopes_processed = 0
        self.records_processed = 0
        self.signals_sent = 0
        self.last_signal_monotonic = 0.0
        self.app = app = faust.App(
            s.app_id, broker=s.broker, datadir=str(s.data_dir), store="memory://",
            web_port=s.web_port, web_bind=s.web_host, web_host=s.web_host,
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
        # Keys are UTF-8 bytes with the raw codec, so a key hashes to the partition its routed records use.
        self.items = _raw_table(app.Table("items", key_type=bytes, value_type=bytes, partitions=s.state_partitions))
        self.meta = _raw_table(app.Table("partition-meta", key_type=bytes, value_type=bytes,
                                         partitions=s.state_partitions))
        # Baskets per item and per partition, replicated to every worker (lift needs n_B of any B).
        self.totals = _raw_table(app.GlobalTable("totals", key_type=bytes, value_type=int,
                                                 partitions=s.state_partitions), value="json")
        # Cooldown memory of the decisions, written by the scorer outside stream iteration,
        # so keys go through the partitioner (item keys hash like the routed records).
        self.memory = _raw_table(app.Table("signal-memory", key_type=bytes, value_type=bytes,
                                           partitions=s.state_partitions, use_partitioner=True))
        self.totals_view = _TotalsView(self.totals)
        app.agent(self.routed, name="process")(self._process)
        app.task(self._run_ingest)
        app.task(self._run_scorer)
        self._routes()

    # -- stateful stage ------------------------------------------------------------------
    async def _process(self, stream):
        async for event in stream.events():
            self._apply_envelope(event.message.partition, event.value)
            if self.score_queue and len(self.score_queue) >= self.s.score_max_rows:
                self.score_wakeup.set()

    def _load(self, key: str) -> ItemState:
        raw = self.items.get(key.encode())
        return ItemState.from_state(orjson.loads(raw)) if raw else ItemState(key)

    def _apply_envelope(self, partition: int, value: bytes) -> None:
        t0 = time.perf_counter()
        m, cfg = self.metrics, self.cfg
        recs = orjson.loads(value)
        meta_key = str(partition).encode()
        meta = PartitionMeta.from_bytes(self.meta.get(meta_key))
        states: dict[str, ItemState] = {}
        dirty_totals: set[str] = set()
        new_baskets = 0
        for rec in recs:
            key = rec["i"] if rec["i"] is not None else "session:" + rec["s"]
            st = states.get(key)
            if st is None:
                st = states[key] = self._load(key)
            outcome = st.apply(rec, cfg)
            topic = rec["o"][0]
            if rec["n"]:
                m.events.labels(topic, "rejected" if outcome == LATE else outcome).inc()
            if outcome == ACCEPTED:
                if rec["i"] is not None:
                    meta.active[key] = max(meta.active.get(key, 0), cfg.start_of(rec["t"]))
                if rec["k"] == "o":
                    dirty_totals.add(key)
                    if rec["n"]:
                        new_baskets += 1
                if rec["t"] > meta.watermark:
                    meta.watermark = rec["t"]
            elif outcome == LATE and rec["n"]:
                m.late_events.labels(topic).inc()
                m.dead_letters.labels("late_event").inc()
                self.dead_topic.send_soon(value=orjson.dumps(dead_letter_record(
                    topic, rec["o"][1], rec["o"][2], Rejection(None, "late_event",
                    "the event's window had already closed for this item", orjson.dumps(rec)), None, int(time.time() * 1000))))
        closed = self._close_windows(meta, states)
        for key, st in states.items():
            self.items[key.encode()] = orjson.dumps(st.to_state())
        for key in dirty_totals:
            self.totals[key.encode()] = states[key].assoc.n_item
        if new_baskets:
            nk = (N_KEY_PREFIX + meta_key.decode()).encode()
            self.totals[nk] = self.totals.get(nk, 0) + new_baskets
        self.meta[meta_key] = meta.to_bytes()
        if closed:
            now = time.monotonic()
            self.score_queue.extend((now, cw) for cw in closed)
            m.windows_closed.inc(len(closed))
        self.envelopes_processed += 1
        self.records_processed += len(recs)
        m.stage.labels("state").observe(time.perf_counter() - t0)

    def _close_windows(self, meta: PartitionMeta, states: dict) -> list[ClosedWindow]:
        cfg = self.cfg
        boundary = cfg.start_of(max(0, meta.watermark - cfg.grace_ms))
        if meta.closed_boundary is not None and boundary <= meta.closed_boundary:
            return []
        meta.closed_boundary = boundary
        closed: list[ClosedWindow] = []
        for key in sorted(meta.active):
            st = states.get(key)
            if st is None:
                st = states[key] = self._load(key)
            closed.extend(st.close_windows(cfg, meta.watermark))
            if cfg.is_idle(meta.active[key], meta.watermark):
                del meta.active[key]
        return closed

    # -- scoring and decisions -----------------------------------------------------------
    def n_orders_total(self) -> int:
        prefix = N_KEY_PREFIX.encode()
        return sum(self.totals.get(prefix + str(p).encode(), 0) for p in range(self.s.state_partitions))

    async def _run_scorer(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.s.score_interval_ms / 1000
        while True:
            try:
                await asyncio.wait_for(self.score_wakeup.wait(), timeout=interval)
            except asyncio.TimeoutError:
                pass
            self.score_wakeup.clear()
            while self.score_queue:
                batch = self.score_queue[: self.s.score_max_rows]
                del self.score_queue[: len(batch)]
                try:
                    await self._score_batch(loop, batch)
                except Exception:
                    log.exception("scoring a batch of %d rows failed; the rows are dropped", len(batch))

    async def _score_batch(self, loop, batch) -> None:
        cfg = self.cfg
        windows = [cw for _, cw in batch]
        rows = [features.feature_row(cw, cfg) for cw in windows]
        t0 = time.perf_counter()
        preds = await loop.run_in_executor(self.executor, self.scorer.predict, rows, windows)
        self.metrics.scorer_batch.observe(time.perf_counter() - t0)
        self.metrics.scorer_rows.observe(len(rows))
        n_total = self.n_orders_total()
        sent = []
        for (enqueued, cw), pred in zip(batch, preds):
            ev = features.evidence(cw, cfg, pred, self.totals_view, n_total)
            raw = self.memory.get(cw.item_id.encode())
            mem = SignalMemory.from_state(orjson.loads(raw) if raw else None)
            before = dict(mem.last)
            for sig in decide_item(ev, mem, self.scorer.version, self.thresholds):
                sent.append((enqueued, sig))
            if mem.last != before:
                self.memory[cw.item_id.encode()] = orjson.dumps(mem.to_state())
        for enqueued, sig in sent:
            await self.signals_topic.send(key=sig["signal_id"].encode(), value=orjson.dumps(sig))
            self.metrics.signals.labels(sig["type"]).inc()
            self.metrics.event_to_signal.observe(time.monotonic() - enqueued)
            self.recent_signals.append(sig)
        self.signals_sent += len(sent)
        if sent:
            self.last_signal_monotonic = time.monotonic()

    # -- ingest --------------------------------------------------------------------------
    async def _run_ingest(self) -> None:
        while True:
            try:
                await self.ingest.start()
                break
            except Exception as e:
                self.ingest.healthy_reason = f"cannot start ingest: {e}"
                await self.ingest.stop()
                await asyncio.sleep(1.0)
        try:
            await self.ingest.run()
        finally:
            await self.ingest.stop()

    # -- HTTP ----------------------------------------------------------------------------
    def health(self) -> tuple[bool, str]:
        reason = self.ingest.healthy_reason
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
            return web.json({"ingested_messages": worker.ingest.consumed, "records_processed": worker.records_processed,
                             "envelopes_processed": worker.envelopes_processed, "score_queue": len(worker.score_queue),
                             "signals_sent": worker.signals_sent})

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
            window = request.query.get("window", "all")
            if limit is None:
                return web.json({"error": "limit must be an integer between 1 and 10000"}, status=400)
            if window not in ("all", "recent"):
                return web.json({"error": "window must be 'all' or 'recent'"}, status=400)
            raw = worker.items.get(item_id.encode())
            if not raw:
                return web.json({"error": f"unknown item {item_id}"}, status=404)
            st = ItemState.from_state(orjson.loads(raw))
            rows = rank_associations(st.assoc, worker.totals_view, worker.n_orders_total(), limit=limit, window=window,
                                     now_ms=None)
            return web.json({"item_id": item_id, "window": window, "associations": [
                {k: r[k] for k in ("item_id", "co_count", "support", "confidence", "lift", "leverage", "conviction",
                                   "relation", "exact")} for r in rows]})

        @app.page("/items/{item_id}/trend")
        @app.table_route(table=self.items, match_info="item_id")
        async def trend(web, request, item_id):
            raw = worker.items.get(item_id.encode())
            if not raw:
                return web.json({"error": f"unknown item {item_id}"}, status=404)
            st = ItemState.from_state(orjson.loads(raw))
            return web.json({"item_id": item_id, "window_ms": worker.cfg.size_ms,
                             "windows": st.recent_windows(worker.cfg), **summarise(st.trend),
                             "series": "units ordered per window"})


def _raw_table(table, value: str = "raw"):
    table.key_serializer = "raw"
    table.value_serializer = value
    return table


class _TotalsView:
    """Read-only str-keyed mapping over the bytes-keyed totals table, for the pure read path."""

    __slots__ = ("_t",)

    def __init__(self, table):
        self._t = table

    def get(self, key: str, default=None):
        return self._t.get(key.encode(), default)

    def __getitem__(self, key: str):
        v = self._t.get(key.encode())
        if v is None:
            raise KeyError(key)
        return v

    def __contains__(self, key: str) -> bool:
        return key.encode() in self._t


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
