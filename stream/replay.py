"""Send events to the input topics: a JSON Lines file or a bundled data set."""
from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Iterable, Iterator

import orjson
from aiokafka import AIOKafkaProducer

from .settings import Settings

KIND_TOPIC = {"clickstream": "topic_clickstream", "order": "topic_orders", "catalog": "topic_catalog"}


class ReplayError(Exception):
    pass


def read_jsonl(path: str) -> Iterator[dict]:
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                raise ReplayError(f"{path}:{n}: not valid JSON ({e})") from None
            if not isinstance(obj, dict) or obj.get("kind") not in KIND_TOPIC:
                raise ReplayError(f"{path}:{n}: each line must be an object with kind clickstream, order or catalog")
            yield obj


STALL_REPORT_S = 5.0  # no acknowledgement for this long while messages are pending: say so
DELIVERY_TIMEOUT_MS = 120_000  # aiokafka retries a batch inside this long, in order, before failing it


async def replay(settings: Settings, events: Iterable[dict], rate: float | None = None, batch: int = 1,
                 progress: bool | None = None, total: int | None = None, retries: int = 10) -> dict:
    """Send events in order; ``batch`` > 1 packs that many same-topic events per message (a JSON array).

    Returns counts. Broker errors are retried and reported on stderr, never dropped silently:

    * while the broker is unreachable aiokafka keeps each batch and retries it, in order, for up
      to DELIVERY_TIMEOUT_MS; a watchdog prints when no acknowledgement has come for
      STALL_REPORT_S while messages are pending, and when acknowledgements resume
      (``stalls``, ``stalled_s`` in the counts);
    * a message whose delivery still fails, or whose hand-over to the producer fails, is sent
      again (``retries`` times, with backoff; ``retried`` counts them). Resent messages can come
      after newer ones, and a copy may arrive twice: consumers deduplicate by event id.
    """
    progress = sys.stderr.isatty() if progress is None else progress
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=10,
                                enable_idempotence=False, max_request_size=8 * 1024 * 1024,
                                request_timeout_ms=DELIVERY_TIMEOUT_MS, **settings.kafka_security())
    for attempt in range(retries + 1):
        try:
            await producer.start()
            break
        except Exception as e:
            if attempt == retries:
                with contextlib.suppress(Exception):  # closing what never connected; the error below says why
                    await producer.stop()
                raise ReplayError(f"cannot reach the broker at {settings.broker} "
                                  f"({settings.security_protocol}): {e}") from e
            print(f"launchpulse replay: broker not reachable ({e}); retrying", file=sys.stderr)
            await asyncio.sleep(min(5.0, 0.5 * 2 ** attempt))
    sent = messages = retried = stalls = 0
    stalled_s = 0.0
    t0 = time.monotonic()
    pending: dict[str, list] = {}
    inflight: list[tuple] = []  # (delivery future, topic, value, attempt)
    last_ack = time.monotonic()

    def acked(fut) -> None:
        nonlocal last_ack
        if not fut.cancelled() and fut.exception() is None:
            last_ack = time.monotonic()

    async def send(topic: str, value: bytes, first_attempt: int = 0) -> None:
        nonlocal messages, retried
        for attempt in range(first_attempt, retries + 1):
            try:
                fut = await producer.send(topic, value)
            except Exception as e:
                if attempt == retries:
                    raise ReplayError(f"giving up on a message to {topic}: {e}") from e
                retried += 1
                print(f"launchpulse replay: send failed ({e}); retry {attempt + 1}", file=sys.stderr)
                await asyncio.sleep(min(5.0, 0.5 * 2 ** attempt))
                continue
            fut.add_done_callback(acked)
            inflight.append((fut, topic, value, attempt))
            messages += 1
            return

    async def settle() -> None:
        """Wait for every pending delivery; send again what failed, until all are acknowledged."""
        nonlocal retried, messages
        while inflight:
            batch_ = inflight[:]
            inflight.clear()
            await asyncio.gather(*(f for f, *_ in batch_), return_exceptions=True)
            failed = [(fut.exception(), topic, value, attempt) for fut, topic, value, attempt in batch_
                      if fut.exception() is not None]
            if not failed:
                continue
            e, topic, _, attempt = max(failed, key=lambda x: x[3])
            if attempt >= retries:
                raise ReplayError(f"giving up on a message to {topic} after {attempt + 1} deliveries: {e}")
            retried += len(failed)
            messages -= len(failed)  # counted again when resent
            print(f"launchpulse replay: {len(failed)} deliveries failed ({type(e).__name__}: {e}); sending them "
                  f"again (retry {attempt + 1})", file=sys.stderr)
            await asyncio.sleep(min(5.0, 0.5 * 2 ** attempt))
            for _, topic, value, attempt in failed:
                await send(topic, value, attempt + 1)

    stall_since: float | None = None

    def check_stall() -> None:
        """Report a stall once it lasts STALL_REPORT_S, and its end once acknowledgements resume."""
        nonlocal stalls, stalled_s, stall_since
        now = time.monotonic()
        waiting = any(not f.done() for f, *_ in inflight)
        if stall_since is None and waiting and now - last_ack >= STALL_REPORT_S:
            stall_since = last_ack
            stalls += 1
            print(f"launchpulse replay: no acknowledgement from the broker at {settings.broker} for "
                  f"{now - stall_since:.0f} s; the producer keeps retrying", file=sys.stderr)
        elif stall_since is not None and (last_ack > stall_since or not waiting):
            lasted = (last_ack if last_ack > stall_since else now) - stall_since
            stalled_s += lasted
            print(f"launchpulse replay: the broker acknowledges again after {lasted:.0f} s", file=sys.stderr)
            stall_since = None

    async def watchdog() -> None:
        while True:
            await asyncio.sleep(1.0)
            check_stall()

    dog = asyncio.create_task(watchdog())
    try:
        for ev in events:
            topic = getattr(settings, KIND_TOPIC[ev["kind"]])
            body = {k: v for k, v in ev.items() if k != "kind"}
            if batch <= 1:
                await send(topic, orjson.dumps(body))
            else:
                buf = pending.setdefault(topic, [])
                buf.append(body)
                if len(buf) >= batch:
                    # Every topic's batch goes with it, so no topic's events trail the others' by more
                    # than one batch: a sparse topic (the catalog) held back until it filled its own
                    # batch would reach the worker days of event time behind the rest of the replay.
                    for t, b in pending.items():
                        if b:
                            await send(t, orjson.dumps(b))
                    pending = {}
            sent += 1
            if rate:
                lag = sent / rate - (time.monotonic() - t0)
                if lag > 0:
                    await asyncio.sleep(lag)
            if len(inflight) >= 10000:
                await settle()
            if progress and sent % 5000 == 0:
                _bar(sent, total, t0)
        for topic, buf in pending.items():
            if buf:
                await send(topic, orjson.dumps(buf))
        await settle()
        await producer.flush()
        check_stall()
    finally:
        dog.cancel()
        await producer.stop()
    if progress:
        _bar(sent, total, t0)
        print(file=sys.stderr)
    return {"events": sent, "messages": messages, "retried": retried, "stalls": stalls,
            "stalled_s": round(stalled_s, 1), "seconds": round(time.monotonic() - t0, 3)}


def _bar(done: int, total: int | None, t0: float) -> None:
    rate = done / max(time.monotonic() - t0, 1e-9)
    if total:
        w = 30
        k = int(w * done / total)
        sys.stderr.write(f"\r[{'#' * k}{'.' * (w - k)}] {done}/{total} events, {rate:,.0f}/s")
    else:
        sys.stderr.write(f"\r{done} events, {rate:,.0f}/s")
    sys.stderr.flush()
