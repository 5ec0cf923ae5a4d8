"""launchpulse command line: demo, broker, worker, replay."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from .settings import Settings, tune_gc
from .argtypes import port as _port, positive as _positive


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line, exit 2 (argparse prints usage too by default)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_broker(p):
    p.add_argument("--broker", help="Kafka URL, e.g. kafka://127.0.0.1:9092 (default: $LAUNCHPULSE_BROKER or "
                                    "kafka://127.0.0.1:9092)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="launchpulse", description="Launch-adjustment signals from live clickstream and orders on Kafka.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    d = sub.add_parser("demo", help="embedded broker + worker + real-data replay; prints signals as JSON lines")
    _add_broker(d)
    d.add_argument("--events", type=_positive, default=None, help="replay only the first N events (default: all 179,373)")
    d.add_argument("--batch", type=_positive, default=100, help="events packed per Kafka message (default 100)")
    d.add_argument("--web-port", type=_port, default=None, help="worker HTTP port (default: a free port)")
    d.add_argument("--opening-stock", type=int, default=40,
                   help="stated demo assumption: units in stock at each product's launch (default 40)")
    b = sub.add_parser("broker", help="the embedded Kafka-compatible broker (Tansu) on 127.0.0.1, in the foreground")
    b.add_argument("--port", type=_port, default=9092, help="port (default 9092)")
    w = sub.add_parser("worker", help="one stream worker; several with the same broker share the partitions")
    _add_broker(w)
    w.add_argument("--web-port", type=_port, default=None, help="HTTP port for /metrics, /healthz and views (default 6066)")
    w.add_argument("--data-dir", default=None, help="worker data directory (default ./launchpulse-data)")
    w.add_argument("--web-host", default=None, help="HTTP bind address (default 127.0.0.1)")
    r = sub.add_parser("replay", help="send a JSON Lines file or a bundled data set to the input topics")
    r.add_argument("source", help="path of a JSON Lines file (each line has kind: clickstream, order or catalog) "
                                  "or a bundled data set name: instacart")
    _add_broker(r)
    r.add_argument("--rate", type=float, default=None, help="events per second (default: as fast as possible)")
    r.add_argument("--batch", type=_positive, default=1, help="events packed per message as a JSON array (default 1)")
    r.add_argument("--limit", type=_positive, default=None, help="send only the first N events")
    r.add_argument("--create-topics", action="store_true", help="create the topics first if missing")
    from . import backtest, train

    train.add_parser(sub)
    backtest.add_parser(sub)
    return p


def _setup_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level, logging.INFO),
                        format='{"ts":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}')


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "broker":
            return cmd_broker(args)
        if args.command == "worker":
            return cmd_worker(args)
        if args.command == "replay":
            return cmd_replay(args)
        if args.command == "demo":
            return cmd_demo(args)
        if args.command == "train":
            from . import train

            return train.run(args)
        if args.command == "backtest":
            from . import backtest

            return backtest.run(args)
    except KeyboardInterrupt:
        return 130
    return 2


def cmd_broker(args) -> int:
    from .broker import BrokerError, EmbeddedBroker

    broker = EmbeddedBroker(port=args.port)
    try:
        broker.start(stdout=sys.stderr)
    except BrokerError as e:
        print(f"launchpulse broker: {e}", file=sys.stderr)
        return 1
    print(f"launchpulse broker: listening on {broker.url} (memory storage; data lives while it runs)", file=sys.stderr)
    try:
        while broker.proc.poll() is None:
            time.sleep(0.5)
        return broker.proc.returncode or 0
    except KeyboardInterrupt:
        return 0
    finally:
        broker.stop()


def cmd_worker(args) -> int:
    settings = Settings.from_env(broker=args.broker, web_port=args.web_port, web_host=args.web_host,
                                 data_dir=Path(args.data_dir) if args.data_dir else None)
    _setup_logging(settings.log_level)
    if settings.ephemeral_key:
        logging.getLogger("launchpulse").warning(
            "LAUNCHPULSE_PSEUDONYM_KEY is not set: user ids are pseudonymised with a per-process random key")
    import faust

    from .admin import ensure_topics
    from .pipeline import Worker

    asyncio.run(ensure_topics(settings))
    worker = Worker(settings, scorer=_load_scorer(settings))
    tune_gc(settings.gc_gen0, freezes_survivors=True)
    fw = faust.Worker(worker.app, loglevel=settings.log_level.lower(), quiet=True, redirect_stdouts=False)
    # At WARNING and above Faust keeps a terminal spinner that sets the root logger to DEBUG, so every
    # aiokafka debug line (one per produced record) is formatted for it: measured at 2-5% of the worker.
    fw.spinner = None
    fw.execute_from_commandline()
    return 0


def _load_scorer(settings: Settings):
    """The trained demand model (bundled, or LAUNCHPULSE_MODEL), or the trend forecaster when asked."""
    log = logging.getLogger("launchpulse.worker")
    if settings.scorer == "trend":
        from launchpulse.models.scorer import TrendScorer

        return TrendScorer()
    import torch

    torch.set_num_threads(1)  # one scoring thread beside the event loop; more threads were slower on 2 cores
    from .train import load_scorer

    scorer = load_scorer(settings.model_path)
    log.info("scorer %s on %s", scorer.version, scorer.device)
    return scorer


def cmd_replay(args) -> int:
    from .replay import ReplayError, read_jsonl, replay

    settings = Settings.from_env(broker=args.broker)
    if os.path.exists(args.source):
        events = read_jsonl(args.source)
        total = None
    else:
        from .datasets import DATASETS, load

        if args.source not in DATASETS:
            print(f"launchpulse replay: {args.source!r} is neither a file nor a bundled data set ({', '.join(DATASETS)})",
                  file=sys.stderr)
            return 2
        events = load(args.source, limit=args.limit)
        total = len(events)
    if args.limit and total is None:
        import itertools

        events = itertools.islice(events, args.limit)
    try:
        if args.create_topics:
            from .admin import ensure_topics

            asyncio.run(ensure_topics(settings))
        report = asyncio.run(replay(settings, events, rate=args.rate, batch=args.batch, total=total))
    except ReplayError as e:
        print(f"launchpulse replay: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report), file=sys.stderr)
    return 0


# -- demo --------------------------------------------------------------------------------

def _get_json(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def cmd_demo(args) -> int:
    from .broker import EmbeddedBroker, free_port
    from .datasets import instacart_events

    _setup_logging(os.environ.get("LAUNCHPULSE_LOG_LEVEL", "INFO").upper())
    log = logging.getLogger("launchpulse.demo")
    broker = None
    if args.broker is None:
        broker = EmbeddedBroker(port=free_port()).start()
        broker_url = broker.url
        log.info("embedded broker on %s", broker_url)
    else:
        broker_url = args.broker
    web_port = args.web_port or free_port()
    data_dir = tempfile.mkdtemp(prefix="launchpulse-demo-")
    env = dict(os.environ, LAUNCHPULSE_BROKER=broker_url, LAUNCHPULSE_PSEUDONYM_KEY=os.environ.get(
        # A fixed key for the public demo data unless one is set: which owner partition (and so which
        # partition's purchase-propensity model) a user's sessions fall to follows the pseudonym, so a
        # per-run random key would make two runs of the same replay differ.
        "LAUNCHPULSE_PSEUDONYM_KEY", "launchpulse-demo"), LAUNCHPULSE_WINDOW_SECONDS=os.environ.get(
        "LAUNCHPULSE_WINDOW_SECONDS", "86400"), LAUNCHPULSE_GRACE_SECONDS=os.environ.get("LAUNCHPULSE_GRACE_SECONDS", "3600"))
    # The worker's windows (daily by default: the data are daily), for the end-of-replay check.
    settings = dataclasses.replace(Settings.from_env(broker=broker_url),
                                   window_ms=int(env["LAUNCHPULSE_WINDOW_SECONDS"]) * 1000,
                                   grace_ms=int(env["LAUNCHPULSE_GRACE_SECONDS"]) * 1000)
    worker = None
    try:
        from .admin import ensure_topics

        asyncio.run(ensure_topics(settings))
        worker = subprocess.Popen([sys.executable, "-m", "launchpulse.stream.cli", "worker", "--broker", broker_url,
                                   "--web-port", str(web_port), "--data-dir", data_dir], env=env,
                                  stdout=sys.stderr, stderr=sys.stderr)
        events = instacart_events(opening_stock=args.opening_stock, limit=args.events)
        rc = asyncio.run(_demo_run(settings, events, args.batch, web_port, worker, log))
        return rc
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
        if broker is not None:
            broker.stop()


async def _demo_run(settings: Settings, events: list, batch: int, web_port: int, worker, log) -> int:
    from aiokafka import AIOKafkaConsumer

    from .replay import replay

    base = f"http://127.0.0.1:{web_port}"
    deadline = time.monotonic() + 120
    while True:  # wait for the worker to answer and consume
        if worker.poll() is not None:
            log.error("the worker exited with code %s", worker.returncode)
            return 1
        try:
            if _get_json(base + "/healthz").get("status") == "ok":
                break
        except Exception:
            pass
        if time.monotonic() > deadline:
            log.error("the worker did not become healthy within 120 s")
            return 1
        await asyncio.sleep(0.5)
    consumer = AIOKafkaConsumer(settings.topic_signals, bootstrap_servers=settings.bootstrap_servers,
                                auto_offset_reset="earliest", enable_auto_commit=False, group_id=None)
    await consumer.start()
    printed = 0
    types: dict[str, int] = {}

    async def drain(timeout_ms: int) -> int:
        nonlocal printed
        got = 0
        batches = await consumer.getmany(timeout_ms=timeout_ms, max_records=10000)
        for msgs in batches.values():
            for m in msgs:
                sys.stdout.write(m.value.decode("utf-8") + "\n")
                t = json.loads(m.value)["type"]
                types[t] = types.get(t, 0) + 1
                got += 1
        sys.stdout.flush()
        printed += got
        return got

    size = settings.window_ms
    last_ts = max(e["ts"] for e in events if isinstance(e.get("ts"), int))
    last_window = (last_ts - settings.grace_ms) - (last_ts - settings.grace_ms) % size - size
    try:
        report = await replay(settings, events, batch=batch, total=len(events))
        log.info("replayed %s events in %s messages", report["events"], report["messages"])
        quiet_since = None
        last = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            await drain(500)
            if worker.poll() is not None:
                log.error("the worker exited with code %s", worker.returncode)
                return 1
            try:
                prog = _get_json(base + "/progress")
            except Exception:
                continue
            if prog.get("state_error"):
                log.error("the worker's state stage failed: %s", prog["state_error"])
                return 1
            # Done: every replayed event has its outcome counted, every window the replay lets close has
            # closed (once the input is idle, the watermark reaches the last event), scoring is idle,
            # nothing moved for 3 s.
            done = (prog["events_counted"] >= report["events"] and prog["score_queue"] == 0
                    and (prog.get("windows_closed_through_ms") or -1) >= last_window)
            snapshot = (prog["records_processed"], prog["signals_sent"])
            if done and snapshot == last:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 3:
                    break
            else:
                quiet_since = None
            last = snapshot
        else:
            log.error("the worker did not process the replay within 600 s (last progress: %s)", last)
            return 1
        while await drain(1000):
            pass
    finally:
        await consumer.stop()
    log.info("demo done: %d signals (%s)", printed, ", ".join(f"{k}={v}" for k, v in sorted(types.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
