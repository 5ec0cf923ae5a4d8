"""Send events to the input topics: a JSON Lines file or a bundled data set."""
from __future__ import annotations

import asyncio
import sys
import time
from typing import Iterable, Iterator

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


async def replay(settings: Settings, events: Iterable[dict], rate: float | None = None, batch: int = 1,
                 progress: bool | None = None, total: int | None = None, retries: int = 10) -> dict:
    """Send events in order; ``batch`` > 1 packs that many same-topic events per message (a JSON array).

    Returns counts. Transient broker errors are retried (``retries`` times, with backoff) and reported.
    """
    progress = sys.stderr.isatty() if progress is None else progress
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=10,
                                enable_idempotence=False, max_request_size=8 * 1024 * 1024, **settings.kafka_security())
    for attempt in range(retries + 1):
        try:
            await producer.start()
            break
        except Exception as e:
            if attempt == retries:
                raise ReplayError(f"cannot reach the broker at {settings.broker}: {e}") from e
            print(f"launchpulse replay: broker not reachable ({e}); retrying", file=sys.stderr)
            await asyncio.sleep(min(5.0, 0.5 * 2 ** attempt))
    sent = messages = retried = 0
    t0 = time.monotonic()
    pending: dict[str, list] = {}
    futures = []

    async def send(topic: str, value: bytes) -> None:
        nonlocal messages, retried
        for attempt in range(retries + 1):
            try:
                futures.append(await producer.send(topic, value))
                messages += 1
                return
            except Exception as e:
                if attempt == retries:
                    raise ReplayError(f"giving up on a message to {topic}: {e}") from e
                retried += 1
                print(f"launchpulse replay: send failed ({e}); retry {attempt + 1}", file=sys.stderr)
                await asyncio.sleep(min(5.0, 0.5 * 2 ** attempt))

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
                    await send(topic, orjson.dumps(buf))
                    pending[topic] = []
            sent += 1
            if rate:
                lag = sent / rate - (time.monotonic() - t0)
                if lag > 0:
                    await asyncio.sleep(lag)
            if len(futures) >= 10000:
                await asyncio.gather(*futures)
                futures.clear()
            if progress and sent % 5000 == 0:
                _bar(sent, total, t0)
        for topic, buf in pending.items():
            if buf:
                await send(topic, orjson.dumps(buf))
        await asyncio.gather(*futures)
        await producer.flush()
    finally:
        await producer.stop()
    if progress:
        _bar(sent, total, t0)
        print(file=sys.stderr)
    return {"events": sent, "messages": messages, "retried": retried, "seconds": round(time.monotonic() - t0, 3)}


def _bar(done: int, total: int | None, t0: float) -> None:
    rate = done / max(time.monotonic() - t0, 1e-9)
    if total:
        w = 30
        k = int(w * done / total)
        sys.stderr.write(f"\r[{'#' * k}{'.' * (w - k)}] {done}/{total} events, {rate:,.0f}/s")
    else:
        sys.stderr.write(f"\r{done} events, {rate:,.0f}/s")
    sys.stderr.flush()
