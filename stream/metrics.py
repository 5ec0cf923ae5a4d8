"""Prometheus metrics of one worker process (each worker exports its own; nothing is summed here)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import ProcessCollector, PlatformCollector


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.events = Counter("launchpulse_events", "Input events consumed, by topic and outcome (accepted, rejected, duplicate)",
                              ["topic", "outcome"], registry=r)
        self.messages = Counter("launchpulse_messages", "Input Kafka messages consumed", ["topic"], registry=r)
        self.dead_letters = Counter("launchpulse_dead_letter", "Dead-letter records written, by code", ["code"], registry=r)
        self.late_events = Counter("launchpulse_late_events", "Events refused as later than the grace period", ["topic"], registry=r)
        self.signals = Counter("launchpulse_signals", "Launch signals emitted, by type", ["type"], registry=r)
        self.event_to_signal = Histogram("launchpulse_event_to_signal_seconds",
                                         "Wall time from ingest reading the input that closed a window to emitting its signals",
                                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.scorer_batch = Histogram("launchpulse_scorer_batch_seconds", "Scorer wall time per batch",
                                      buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1), registry=r)
        self.scorer_rows = Histogram("launchpulse_scorer_batch_rows", "Rows per scorer batch",
                                     buckets=(1, 8, 32, 128, 512, 1024, 2048, 4096, 8192), registry=r)
        self.stage = Histogram("launchpulse_stage_seconds", "Processing time per stage and batch", ["stage"],
                               buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5), registry=r)
        self.lag = Gauge("launchpulse_consumer_lag", "Messages behind the high watermark, by topic and partition",
                         ["topic", "partition"], registry=r)
        self.items_tracked = Gauge("launchpulse_items_tracked", "Items held in this worker's state", registry=r)
        self.forecast_error = Histogram("launchpulse_trend_forecast_abs_error_units",
                                        "Absolute error of the trend's one-step forecast of units per window, "
                                        "evaluated as each window closes",
                                        buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100), registry=r)
        self.windows_closed = Counter("launchpulse_windows_closed", "Item windows closed", registry=r)
        self.healthy = Gauge("launchpulse_healthy", "1 while the worker is consuming and its broker answers", registry=r)
        self.broker_errors = Counter("launchpulse_broker_errors", "Errors talking to the broker", ["stage"], registry=r)
        self.sessions_closed = Counter("launchpulse_sessions_closed", "Shopping sessions closed, by label (ordered or not)",
                                       ["label"], registry=r)
        self.propensity_auc = Gauge("launchpulse_propensity_auc",
                                    "Purchase propensity ROC AUC, predicted before learning each closed session "
                                    "(this process's sessions)", registry=r)
        self.propensity_log_loss = Gauge("launchpulse_propensity_log_loss",
                                         "Purchase propensity mean log-loss, predict-then-learn (this process's sessions)",
                                         registry=r)
        # NaN until the first closed session is scored: "not evaluated yet", not a score of 0.
        self.propensity_auc.set(float("nan"))
        self.propensity_log_loss.set(float("nan"))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def events_counted(self) -> int:
        """Input events whose outcome has been counted (every outcome): the demo's and benchmarks' progress."""
        return int(sum(s.value for m in self.events.collect() for s in m.samples if s.name.endswith("_total")))
