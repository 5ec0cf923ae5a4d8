"""One frozen settings object, read once from the environment and the command line."""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path

DEFAULT_BROKER = "kafka://127.0.0.1:9092"
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")  # user name and password mechanisms
# How long a consumer of ours lets the broker hold a fetch: the worker's Faust consumer (see
# faust_transport.py for why), the ingest and the replica consumers.
FETCH_MAX_WAIT_MS = 100


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"launchpulse: {name}={raw!r} is not an integer") from None


def _topics(prefix: str) -> dict:
    """Topic names, optionally prefixed (several deployments or test runs on one cluster)."""
    return {"topic_clickstream": prefix + "clickstream", "topic_orders": prefix + "orders",
            "topic_catalog": prefix + "catalog", "topic_signals": prefix + "launch-signals",
            "topic_dead_letter": prefix + "dead-letter"}


@dataclass(frozen=True)
class Settings:
    broker: str = DEFAULT_BROKER
    app_id: str = "launchpulse"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    data_dir: Path = Path("./launchpulse-data")
    # topics
    topic_clickstream: str = "clickstream"
    topic_orders: str = "orders"
    topic_catalog: str = "catalog"
    topic_signals: str = "launch-signals"
    topic_dead_letter: str = "dead-letter"
    input_partitions: int = 4
    state_partitions: int = 8  # partitions of the internal routed topic and of every table
    replication_factor: int = 1
    # windows (event time)
    window_ms: int = 3_600_000
    grace_ms: int = 600_000
    # scoring
    score_interval_ms: int = 250
    score_max_rows: int = 4096
    model_path: str | None = None  # None: the bundled model
    scorer: str = "model"  # "model": the trained PyTorch demand model; "trend": the trend forecaster alone
    # ingest
    ingest_max_records: int = 5000
    envelope_max_records: int = 2000
    # ingest in this many child processes (one consumer group: they split the input partitions), beside
    # the worker's event loop, which keeps the state stage; 0: on that loop (see stream/ingest_process.py)
    ingest_processes: int = 1
    # state: dirty state is written (and its envelopes acknowledged) at least this often; longer
    # intervals coalesce more rewrites of busy items and replay more after a crash
    flush_interval_ms: int = 5000
    # state: an owned routed partition whose watermark runs more than this many windows ahead of the
    # closing watermark (the least of the owned ones) is paused until closing catches up (or closing stalls
    # for a flush interval); 0 (the default): never. Lowers a replay's peak memory, not its time. Opt-in:
    # the stalls it met came from Faust's pause dropping fetched envelopes (fixed: Worker._pause_fetching; docs/design.md)
    max_ahead_windows: int = 0
    # Kafka security (passed to aiokafka and Faust)
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    # privacy
    pseudonym_key: bytes = field(default=b"", repr=False)
    # faust timing: Tansu holds a new group ~30 s with Faust's defaults
    rebalance_timeout_s: float = 4.0
    session_timeout_s: float = 10.0
    log_level: str = "INFO"
    # the garbage collector's young-generation threshold in the worker and its ingest children
    # (see tune_gc); 0: Python's own thresholds
    gc_gen0: int = 50_000
    # items that learn a window ahead, in its grace period, at most (about 14 KB each until the window
    # closes: their trend models copied); 0: none, the close learns every window (docs/design.md)
    learn_ahead_max_items: int = 50_000

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        key = os.environ.get("LAUNCHPULSE_PSEUDONYM_KEY", "")
        s = cls(
            broker=_env("LAUNCHPULSE_BROKER", DEFAULT_BROKER),
            app_id=_env("LAUNCHPULSE_APP_ID", "launchpulse"),
            **_topics(os.environ.get("LAUNCHPULSE_TOPIC_PREFIX", "")),
            web_host=_env("LAUNCHPULSE_WEB_HOST", "127.0.0.1"),
            web_port=_env_int("LAUNCHPULSE_WEB_PORT", 6066),
            data_dir=Path(_env("LAUNCHPULSE_DATA_DIR", "./launchpulse-data")),
            input_partitions=_env_int("LAUNCHPULSE_INPUT_PARTITIONS", 4),
            state_partitions=_env_int("LAUNCHPULSE_STATE_PARTITIONS", 8),
            window_ms=_env_int("LAUNCHPULSE_WINDOW_SECONDS", 3600) * 1000,
            grace_ms=_env_int("LAUNCHPULSE_GRACE_SECONDS", 600) * 1000,
            score_interval_ms=_env_int("LAUNCHPULSE_SCORE_INTERVAL_MS", 250),
            score_max_rows=_env_int("LAUNCHPULSE_SCORE_MAX_ROWS", 4096),
            flush_interval_ms=_env_int("LAUNCHPULSE_FLUSH_INTERVAL_MS", 5000),
            max_ahead_windows=_env_int("LAUNCHPULSE_MAX_AHEAD_WINDOWS", 0),
            ingest_processes=_env_int("LAUNCHPULSE_INGEST_PROCESSES", 1),
            model_path=os.environ.get("LAUNCHPULSE_MODEL") or None,
            scorer=_env("LAUNCHPULSE_SCORER", "model"),
            security_protocol=_env("LAUNCHPULSE_SECURITY_PROTOCOL", "PLAINTEXT"),
            sasl_mechanism=os.environ.get("LAUNCHPULSE_SASL_MECHANISM") or None,
            sasl_username=os.environ.get("LAUNCHPULSE_SASL_USERNAME") or None,
            sasl_password=os.environ.get("LAUNCHPULSE_SASL_PASSWORD") or None,
            ssl_cafile=os.environ.get("LAUNCHPULSE_SSL_CAFILE") or None,
            pseudonym_key=key.encode() if key else b"",
            log_level=_env("LAUNCHPULSE_LOG_LEVEL", "INFO").upper(),
            gc_gen0=_env_int("LAUNCHPULSE_GC_GEN0", 50_000),
            learn_ahead_max_items=_env_int("LAUNCHPULSE_LEARN_AHEAD_MAX_ITEMS", 50_000),
        )
        s = replace(s, **{k: v for k, v in overrides.items() if v is not None})
        return s.validated()

    def validated(self) -> "Settings":
        if not self.broker.startswith(("kafka://", "aiokafka://")):
            raise SystemExit(f"launchpulse: broker URL {self.broker!r} must start with kafka://")
        if self.window_ms <= 0 or self.grace_ms < 0:
            raise SystemExit("launchpulse: window must be > 0 s and grace >= 0 s")
        if self.scorer not in ("model", "trend"):
            raise SystemExit(f"launchpulse: LAUNCHPULSE_SCORER must be 'model' or 'trend', not {self.scorer!r}")
        if not (10 <= self.flush_interval_ms <= 600_000):
            raise SystemExit(f"launchpulse: LAUNCHPULSE_FLUSH_INTERVAL_MS={self.flush_interval_ms} must be 10..600000")
        if not (0 <= self.max_ahead_windows <= 10_000):
            raise SystemExit(f"launchpulse: LAUNCHPULSE_MAX_AHEAD_WINDOWS={self.max_ahead_windows} must be 0..10000 "
                             "(0: never pause a partition)")
        if not (0 <= self.ingest_processes <= 64):
            raise SystemExit(f"launchpulse: LAUNCHPULSE_INGEST_PROCESSES={self.ingest_processes} must be 0..64 "
                             "(0: ingest on the worker's own event loop)")
        if self.gc_gen0 < 0:
            raise SystemExit(f"launchpulse: LAUNCHPULSE_GC_GEN0={self.gc_gen0} must be >= 0 (0: Python's thresholds)")
        if self.learn_ahead_max_items < 0:
            raise SystemExit(f"launchpulse: LAUNCHPULSE_LEARN_AHEAD_MAX_ITEMS={self.learn_ahead_max_items} must be "
                             ">= 0 (0: the close learns every window)")
        if not (0 < self.web_port < 65536):
            raise SystemExit(f"launchpulse: web port {self.web_port} is out of range")
        self._check_security()
        if not self.pseudonym_key:
            # A per-process random key still pseudonymises; state written under it
            # cannot be linked across restarts, so production sets the variable.
            object.__setattr__(self, "pseudonym_key", secrets.token_bytes(32))
            object.__setattr__(self, "_ephemeral_key", True)
        return self

    def _check_security(self) -> None:
        """Refuse inconsistent Kafka security settings at start, with the variable to fix."""
        proto = self.security_protocol
        if proto not in SECURITY_PROTOCOLS:
            raise SystemExit(f"launchpulse: LAUNCHPULSE_SECURITY_PROTOCOL={proto!r} must be one of "
                             f"{', '.join(SECURITY_PROTOCOLS)}")
        sasl_set = [name for name, v in (("LAUNCHPULSE_SASL_MECHANISM", self.sasl_mechanism),
                                         ("LAUNCHPULSE_SASL_USERNAME", self.sasl_username),
                                         ("LAUNCHPULSE_SASL_PASSWORD", self.sasl_password)) if v]
        if proto.startswith("SASL_"):
            mech = self.sasl_mechanism or "PLAIN"
            if mech not in SASL_MECHANISMS:
                raise SystemExit(f"launchpulse: LAUNCHPULSE_SASL_MECHANISM={mech!r} must be one of "
                                 f"{', '.join(SASL_MECHANISMS)}")
            missing = [n for n, v in (("LAUNCHPULSE_SASL_USERNAME", self.sasl_username),
                                      ("LAUNCHPULSE_SASL_PASSWORD", self.sasl_password)) if not v]
            if missing:
                raise SystemExit(f"launchpulse: LAUNCHPULSE_SECURITY_PROTOCOL={proto} needs {' and '.join(missing)}")
        elif sasl_set:
            raise SystemExit(f"launchpulse: {', '.join(sasl_set)} set but LAUNCHPULSE_SECURITY_PROTOCOL={proto}: "
                             "use SASL_PLAINTEXT or SASL_SSL, or unset them")
        if self.ssl_cafile:
            if not proto.endswith("SSL"):
                raise SystemExit(f"launchpulse: LAUNCHPULSE_SSL_CAFILE set but LAUNCHPULSE_SECURITY_PROTOCOL={proto}: "
                                 "use SSL or SASL_SSL, or unset it")
            if not os.path.isfile(self.ssl_cafile):
                raise SystemExit(f"launchpulse: LAUNCHPULSE_SSL_CAFILE={self.ssl_cafile!r} is not a readable file")

    @property
    def ephemeral_key(self) -> bool:
        return getattr(self, "_ephemeral_key", False)

    @property
    def advertised_host(self) -> str:
        """The host name other workers use to reach this one's HTTP views (requests are routed to owners)."""
        explicit = os.environ.get("LAUNCHPULSE_WEB_ADVERTISED_HOST")
        if explicit:
            return explicit
        if self.web_host in ("0.0.0.0", "::"):
            import socket

            return socket.gethostname()
        return self.web_host

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(u.split("://", 1)[1] for u in self.broker.split(";"))

    @property
    def routed_topic(self) -> str:
        return f"{self.app_id}-routed"

    @property
    def totals_topic(self) -> str:
        """Per-item totals every worker replicates (see stream/replica.py); compacted."""
        return f"{self.app_id}-totals"

    @property
    def input_topics(self) -> dict:
        return {self.topic_clickstream: "clickstream", self.topic_orders: "order", self.topic_catalog: "catalog"}

    def kafka_security(self) -> dict:
        """aiokafka keyword arguments for the configured security protocol."""
        kw: dict = {"security_protocol": self.security_protocol}
        if self.security_protocol in ("SSL", "SASL_SSL"):
            import ssl

            kw["ssl_context"] = ssl.create_default_context(cafile=self.ssl_cafile)
        if self.security_protocol.startswith("SASL"):
            kw.update(sasl_mechanism=self.sasl_mechanism or "PLAIN", sasl_plain_username=self.sasl_username,
                      sasl_plain_password=self.sasl_password)
        return kw


# With survivors frozen (the worker): young collections between two freezes, at most, before a
# middle-generation collection. Far more than a worker makes between its freezes (one per flush and
# per closing step), so those collections, which found nothing, no longer run.
GC_GEN1_BETWEEN_FREEZES = 100_000


def tune_gc(gen0: int, freezes_survivors: bool = False) -> None:
    """Keep the cyclic garbage collector off the hot path (the worker's and each ingest child's).

    Everything imported so far (Faust, aiokafka, torch: hundreds of thousands of objects) is
    moved out of the collector's reach, and young collections run every ``gen0`` allocations
    instead of 700 (0 keeps Python's thresholds): the state stage allocates a few dicts and lists
    per record, the ingest a few per message, and with the default threshold collections took a
    large share of the worker's time and some of the ingest's (1,400 collections in 200,000 clicks,
    2-17% of its CPU across runs: bench/ingest_stage_bench.py). Item states and routed records hold
    no reference cycles, so nothing is kept alive longer by this.

    ``freezes_survivors``: for a process that freezes what survives its young collections at points of
    its own (the worker: ``Worker._freeze_survivors``). Its item states are millions of long-lived
    containers, which each middle-generation collection traversed again (0.4-0.7 s, every few seconds
    on a live feed at 20,000 clicks/s, finding nothing: the signals waited); those no longer run.
    """
    import gc

    gc.collect()
    gc.freeze()
    if gen0 > 0:
        gc.set_threshold(gen0, GC_GEN1_BETWEEN_FREEZES if freezes_survivors else 20, 10)
