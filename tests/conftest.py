"""Test fixtures: a real Kafka-protocol broker and real worker processes.

The broker is chosen in this order: ``LAUNCHPULSE_TEST_BROKER`` (a URL such as
kafka://host:9092), a testcontainers Kafka when a Docker engine answers, else the
embedded Tansu broker (what runs on machines without Docker, CI included).
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from launchpulse.stream.broker import EmbeddedBroker, free_port


def _docker_answers() -> bool:
    try:
        import docker  # testcontainers' dependency

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def broker_url():
    url = os.environ.get("LAUNCHPULSE_TEST_BROKER")
    if url:
        yield url if "://" in url else f"kafka://{url}"
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield "kafka://" + kafka.get_bootstrap_server()
        return
    broker = EmbeddedBroker(port=free_port()).start()
    try:
        yield broker.url
    finally:
        broker.stop()


def http_json(url: str, timeout: float = 5.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def http_text(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


class WorkerProc:
    """One ``launchpulse worker`` process on the test broker, its output in a log file."""

    def __init__(self, env: dict, data_dir: Path, log_path: Path, broker: str):
        self.web_port = free_port()
        self.base = f"http://127.0.0.1:{self.web_port}"
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "launchpulse.stream.cli", "worker", "--broker", broker,
             "--web-port", str(self.web_port), "--data-dir", str(data_dir)],
            env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"worker exited {self.proc.returncode}:\n{self.tail()}"
            try:
                if http_json(self.base + "/healthz", 1.0)[0] == 200:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.3)
        raise AssertionError(f"worker not healthy after {timeout} s:\n{self.tail()}")

    def metric(self, name: str, **labels) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for fam in text_string_to_metric_families(http_text(self.base + "/metrics")):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, sig=None) -> None:
        if self.proc.poll() is None:
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@pytest.fixture
def deployment(broker_url, tmp_path):
    """A fresh namespace on the broker (own topics and app id) and a factory of workers in it."""
    ns = "t" + uuid.uuid4().hex[:8]
    env = dict(os.environ, LAUNCHPULSE_BROKER=broker_url, LAUNCHPULSE_APP_ID=f"lp-{ns}",
               LAUNCHPULSE_TOPIC_PREFIX=f"{ns}-", LAUNCHPULSE_PSEUDONYM_KEY="test-key",
               LAUNCHPULSE_WINDOW_SECONDS=os.environ.get("LAUNCHPULSE_WINDOW_SECONDS", "3600"),
               LAUNCHPULSE_GRACE_SECONDS="600", LAUNCHPULSE_LOG_LEVEL="INFO")
    workers: list[WorkerProc] = []

    class Deployment:
        prefix = f"{ns}-"
        environ = env
        url = broker_url

        def settings(self, **kw):
            from launchpulse.stream.settings import Settings

            old = dict(os.environ)
            os.environ.update(env)
            try:
                return Settings.from_env(**kw)
            finally:
                os.environ.clear()
                os.environ.update(old)

        def worker(self, data_dir: str | None = None, **extra_env) -> WorkerProc:
            d = tmp_path / (data_dir or f"data-{len(workers)}")
            d.mkdir(exist_ok=True)
            w = WorkerProc(dict(env, **extra_env), d, tmp_path / f"worker-{len(workers)}.log", broker_url)
            workers.append(w)
            return w

    dep = Deployment()
    yield dep
    for w in workers:
        w.stop()


def run(coro):
    return asyncio.run(coro)
