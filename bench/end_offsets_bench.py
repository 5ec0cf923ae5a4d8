"""What reading end offsets right costs: ``stream/offsets.end_offsets`` against ListOffsets alone.

    python bench/end_offsets_bench.py              # embedded broker, 200 calls each
    python bench/end_offsets_bench.py --calls 1000

Two topics of 4 partitions, one of them holding 100 records sent as batches, the other empty
(the ingest asks for the input partitions that look idle; recovery for a table's changelog).
Both calls run against the same broker in the same process, alternately warmed up. Also prints
what each says for the partitions with data against the true end (last offset + 1), which on the
embedded broker differ (see stream/offsets.py).
"""
from __future__ import annotations

import argparse
import asyncio
import platform
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from launchpulse.stream.broker import EmbeddedBroker, free_port
from launchpulse.stream.offsets import end_offsets


async def run(bootstrap: str, calls: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic("full", 4, 1), NewTopic("empty", 4, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=50)
    await producer.start()
    try:
        sent = await asyncio.gather(*[await producer.send("full", b"x" * 20, partition=i % 4) for i in range(100)])
    finally:
        await producer.stop()
    truth = {}
    for md in sent:
        tp = TopicPartition(md.topic, md.partition)
        truth[tp] = max(truth.get(tp, 0), md.offset + 1)
    tps = [TopicPartition(t, p) for t in ("full", "empty") for p in range(4)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        for name, call in (("ListOffsets alone", lambda: consumer.end_offsets(tps)),
                           ("end_offsets (ListOffsets + one fetch)", lambda: end_offsets(consumer, tps))):
            got = await call()
            t0 = time.perf_counter()
            for _ in range(calls):
                await call()
            per_call = (time.perf_counter() - t0) / calls * 1000
            right = sum(got[tp] == n for tp, n in truth.items())
            print(f"| {name} | {per_call:.2f} ms | {right} of {len(truth)} partitions with data right |")
    finally:
        await consumer.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=200, help="calls timed per variant (default 200)")
    args = ap.parse_args()
    print(f"{time.strftime('%Y-%m-%d')} {platform.machine()} Python {platform.python_version()}, embedded broker")
    print("| call | time per call | end offsets |\n|---|---|---|")
    broker = EmbeddedBroker(port=free_port()).start()
    try:
        asyncio.run(run(broker.url.split("://", 1)[1], args.calls))
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
