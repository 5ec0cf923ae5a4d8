"""Topic creation with aiokafka's admin client."""
from __future__ import annotations

import asyncio

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from .settings import Settings


async def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> None:
    """Create the input, output and internal topics if they do not exist."""
    want = {t: settings.input_partitions for t in settings.input_topics}
    want[settings.topic_signals] = settings.input_partitions
    want[settings.topic_dead_letter] = 1
    want[settings.routed_topic] = settings.state_partitions
    want[settings.totals_topic] = settings.state_partitions
    compacted = {settings.totals_topic}
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, **settings.kafka_security())
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            await admin.start()
            break
        except Exception as e:  # broker not up yet
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"cannot reach the broker at {settings.broker}: {e}") from e
            await asyncio.sleep(0.5)
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(t, n, settings.replication_factor,
                        topic_configs={"cleanup.policy": "compact"} if t in compacted else None)
               for t, n in want.items() if t not in existing]
        if new:
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()
