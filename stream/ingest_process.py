"""The ingest stage in child processes of its own, beside the worker's Faust agent.

Why: on a single-event feed ingest (fetch, parse, validate, pseudonymise, route, pack and send
envelopes) takes about a third of a worker's event loop, and it keeps no state: its own consumer
group commits a batch only once the batch's envelopes are on the broker. Run in child processes
that join that same group (``LAUNCHPULSE_INGEST_PROCESSES``), it takes the input partitions between
them on other cores, and the worker's event loop is left to the state stage. The guarantees are
those of the in-process stage (``stream/ingest.py``): it is the same code.

Parent and child talk over the child's standard streams:

* the parent writes the pickled :class:`Settings` (pseudonymisation key included: every process
  of a worker must give a user the same pseudonym) to the child's stdin and keeps stdin open.
  The child stops when stdin closes, so a worker that dies, ``SIGKILL`` included, leaves no
  ingest behind to hold input partitions;
* the child writes one JSON line to stdout every REPORT_S: the messages consumed so far, why it
  is unhealthy ("" when it is not) and the metric updates since its last line, which the parent
  replays on the worker's own metrics (one ``/metrics`` per worker, as before). Logs go to stderr.
"""
from __future__ import annotations

import asyncio
import logging
import os
import pickle
import sys
import threading
import time

import orjson

from .settings import Settings, tune_gc

log = logging.getLogger("launchpulse.ingest")

REPORT_S = 0.5
STALE_REPORT_S = 15.0  # health: a child silent this long is not ingesting
RESTART_BACKOFF_S = (1.0, 30.0)  # first and longest wait before a dead child is started again
STOP_GRACE_S = 10.0  # a child asked to stop (stdin closed) is killed after this long


class MetricUpdates:
    """Stands in for :class:`~.metrics.Metrics` in an ingest child: records what the stage does to its
    metrics, to be replayed by the parent. Only the metrics the ingest stage uses exist here; any other
    is an AttributeError, not a silently lost figure.

    >>> u = MetricUpdates()
    >>> u.messages.labels("clickstream").inc(3); u.messages.labels("clickstream").inc(2)
    >>> u.lag.labels("orders", "0").set(7); u.stage.labels("ingest").observe(0.25)
    >>> u.take()
    {'inc': [['messages', ['clickstream'], 5]], 'set': [['lag', ['orders', '0'], 7]], 'obs': [['stage', ['ingest'], 0.25]]}
    >>> u.take()
    {'inc': [], 'set': [], 'obs': []}
    """

    NAMES = ("events", "messages", "dead_letters", "broker_errors", "lag", "stage")

    def __init__(self) -> None:
        self._inc: dict[tuple, float] = {}
        self._set: dict[tuple, float] = {}
        self._obs: list[list] = []
        for name in self.NAMES:
            setattr(self, name, _Recorded(self, name))

    def take(self) -> dict:
        """The updates since the last call, as plain lists (for JSON)."""
        out = {"inc": [[n, list(lb), v] for (n, lb), v in self._inc.items()],
               "set": [[n, list(lb), v] for (n, lb), v in self._set.items()], "obs": self._obs}
        self._inc, self._set, self._obs = {}, {}, []
        return out


class _Recorded:
    __slots__ = ("_updates", "_name", "_labels")

    def __init__(self, updates: MetricUpdates, name: str, labels: tuple = ()):
        self._updates, self._name, self._labels = updates, name, labels

    def labels(self, *labels) -> "_Recorded":
        return _Recorded(self._updates, self._name, tuple(str(x) for x in labels))

    def inc(self, n: float = 1) -> None:
        key = (self._name, self._labels)
        inc = self._updates._inc
        inc[key] = inc.get(key, 0) + n

    def set(self, v: float) -> None:
        self._updates._set[(self._name, self._labels)] = v

    def observe(self, v: float) -> None:
        self._updates._obs.append([self._name, list(self._labels), v])


def apply_updates(metrics, report: dict) -> None:
    """Replay a child's metric updates on the worker's metrics."""
    for name, labels, n in report.get("inc", ()):
        m = getattr(metrics, name)
        (m.labels(*labels) if labels else m).inc(n)
    for name, labels, v in report.get("set", ()):
        m = getattr(metrics, name)
        (m.labels(*labels) if labels else m).set(v)
    for name, labels, v in report.get("obs", ()):
        m = getattr(metrics, name)
        (m.labels(*labels) if labels else m).observe(v)


class IngestProcesses:
    """N ingest children, supervised; the same face to the worker as the in-process :class:`~.ingest.Ingest`
    (``start_retrying``, ``run``, ``stop``, ``health_reason``, ``consumed``). A child that dies is started again
    after a growing pause, and the worker reports unhealthy meanwhile."""

    def __init__(self, settings: Settings, metrics, n: int):
        self.s = settings
        self.m = metrics
        self.n = n
        self.healthy_reason = "starting"  # until start_retrying, as Ingest has
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._reasons: dict[int, str] = {i: "ingest process starting" for i in range(n)}
        self._heard: dict[int, float] = {}
        self._consumed: dict[int, int] = {}  # the running child's count
        self._consumed_before: dict[int, int] = {i: 0 for i in range(n)}  # its dead predecessors' counts
        self.restarts = 0

    @property
    def consumed(self) -> int:
        return sum(self._consumed_before.values()) + sum(self._consumed.values())

    async def start_retrying(self) -> None:
        self.healthy_reason = ""  # each child starts (and retries) its own ingest

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._supervise(i), name=f"ingest-process-{i}") for i in range(self.n)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()

    async def stop(self) -> None:
        procs = [p for p in self._procs.values() if p.returncode is None]
        for p in procs:
            if p.stdin is not None and not p.stdin.is_closing():
                p.stdin.close()  # the child leaves its group and exits
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), STOP_GRACE_S)
        except asyncio.TimeoutError:
            log.warning("an ingest process did not stop within %.0f s; killing it", STOP_GRACE_S)
        finally:
            for p in procs:
                if p.returncode is None:
                    p.kill()

    async def _supervise(self, i: int) -> None:
        backoff = RESTART_BACKOFF_S[0]
        while True:
            started = time.monotonic()
            try:
                rc = await self._run_child(i)
                why = f"exited with code {rc}"
            except OSError as e:  # could not start it (no memory, no more processes)
                why = f"could not be started: {e}"
            self._consumed_before[i] += self._consumed.pop(i, 0)
            self._reasons[i] = f"ingest process {i} {why}; starting it again"
            self.restarts += 1
            log.warning("ingest process %d %s; starting it again in %.0f s", i, why, backoff)
            await asyncio.sleep(backoff)
            # A child that ran a good while before dying starts again quickly; one dying at start backs off.
            backoff = RESTART_BACKOFF_S[0] if time.monotonic() - started > 60 else min(backoff * 2, RESTART_BACKOFF_S[1])

    async def _run_child(self, i: int) -> int:
        """Start child i, hand it the settings, take its reports until it exits; its exit code."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "launchpulse.stream.ingest_process", str(i),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=16 * 1024 * 1024)
        self._procs[i] = proc
        self._heard[i] = time.monotonic()
        self._reasons[i] = "ingest process starting"
        try:
            proc.stdin.write(pickle.dumps(self.s))
            await proc.stdin.drain()
            async for line in proc.stdout:
                try:
                    report = orjson.loads(line)
                    consumed, health = report["consumed"], report["health"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    log.warning("ingest process %d wrote a line that is not a report: %r", i, line[:200])
                    continue
                self._heard[i] = time.monotonic()
                self._consumed[i] = consumed
                self._reasons[i] = health
                apply_updates(self.m, report)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the child died at once; its exit code says why
        return await proc.wait()

    def health_reason(self) -> str:
        """Why ingest is not healthy (the first child's reason), or "" when every child is."""
        if self.healthy_reason:
            return self.healthy_reason
        now = time.monotonic()
        for i in range(self.n):
            if self._reasons.get(i):
                return self._reasons[i]
            silent = now - self._heard.get(i, now)
            if silent > STALE_REPORT_S:
                return f"ingest process {i} has not reported for {silent:.0f} s"
        return ""


# -- the child -----------------------------------------------------------------------------------

async def _child(settings: Settings, stop: asyncio.Event, reports) -> None:
    from launchpulse.models.windows import WindowConfig

    from .ingest import Ingest

    updates = MetricUpdates()
    ingest = Ingest(settings, updates, WindowConfig(size_ms=settings.window_ms, grace_ms=settings.grace_ms))
    # The loop's pipe transport buffers what the parent has not read yet: a busy parent never blocks ingest.
    out, _ = await asyncio.get_running_loop().connect_write_pipe(asyncio.Protocol, reports)

    def report() -> None:
        line = {"consumed": ingest.consumed, "health": ingest.health_reason(), **updates.take()}
        out.write(orjson.dumps(line) + b"\n")

    async def reporter() -> None:
        while True:
            report()
            await asyncio.sleep(REPORT_S)

    async def serve() -> None:
        await ingest.start_retrying()  # the broker may not answer yet
        await ingest.run()  # returns only by raising: the exit code says so

    rep = asyncio.create_task(reporter())
    task = asyncio.create_task(serve())
    waiter = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
    finally:
        task.cancel()
        waiter.cancel()
        rep.cancel()
        await ingest.stop()
        report()  # the last updates (if the parent is gone, nobody reads them)
        for _ in range(20):
            if not out.get_write_buffer_size() or out.is_closing():
                break
            await asyncio.sleep(0.05)
        out.close()


def main(argv: list[str]) -> int:
    settings = pickle.load(sys.stdin.buffer)
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, settings.log_level, logging.INFO),
                        format='{"ts":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s",'
                               f'"ingest_process":{int(argv[0]) if argv else 0},"msg":"%(message)s"}}')
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def watch_parent() -> None:
        """stdin closes when the worker stops or dies: then leave the group and exit."""
        try:
            while sys.stdin.buffer.read(65536):
                pass
        finally:
            loop.call_soon_threadsafe(stop.set)
            time.sleep(STOP_GRACE_S)  # still here: a stop that hangs on a lost broker
            os._exit(0)

    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    # Reports go to the parent on the original stdout; anything else written to fd 1 (a library's print)
    # goes to stderr with the logs, instead of into the report stream.
    reports = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    tune_gc(settings.gc_gen0)
    try:
        loop.run_until_complete(_child(settings, stop, reports))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
