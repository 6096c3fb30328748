"""meterstream/core/lag.py on the real broker: a group's lag per owned partition rises with
records it has not committed and returns to 0 once it commits them."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client import CollectorRegistry, Gauge

from meterstream.core.config import KafkaSecurity
from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.lag import LagMeter


def _gauge_values(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {(sample.labels["topic"], sample.labels["partition"]): sample.value
            for family in registry.collect() for sample in family.samples}


async def _scenario(bootstrap: str) -> None:
    topic, group = f"lag-{uuid.uuid4().hex[:8]}", f"lag-group-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    # A group that commits by hand, on partitions it was given (no rebalance to wait for).
    group_consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                      enable_auto_commit=False)
    await group_consumer.start()
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    group_consumer.assign([p0, p1])
    registry = CollectorRegistry()
    gauge = Gauge("test_consumer_lag", "lag", ["topic", "partition"], registry=registry)
    owned = {(topic, 0), (topic, 1)}
    meter = LagMeter(KafkaConnection(bootstrap, KafkaSecurity()), group, gauge,
                     lambda: owned)
    try:
        # The group's coordinator may still be loading on a fresh broker: a look fails
        # (counted and logged) until it answers.
        for _ in range(600):
            if await meter.look_or_log():
                break
            await asyncio.sleep(0.1)
        assert _gauge_values(registry) == {(topic, "0"): 0.0, (topic, "1"): 0.0}

        for n in range(5):
            await producer.send_and_wait(topic, b"p0-%d" % n, partition=0)
        for n in range(2):
            await producer.send_and_wait(topic, b"p1-%d" % n, partition=1)
        # Nothing committed yet: counted from the log start.
        assert await meter.look() == {(topic, 0): 5, (topic, 1): 2}
        assert _gauge_values(registry) == {(topic, "0"): 5.0, (topic, "1"): 2.0}

        await group_consumer.commit({p0: 3})
        assert await meter.look() == {(topic, 0): 2, (topic, 1): 2}

        await group_consumer.commit({p0: 5, p1: 2})
        assert await meter.look() == {(topic, 0): 0, (topic, 1): 0}
        assert _gauge_values(registry) == {(topic, "0"): 0.0, (topic, "1"): 0.0}

        for n in range(4):
            await producer.send_and_wait(topic, b"again-%d" % n, partition=1)
        assert await meter.look() == {(topic, 0): 0, (topic, 1): 4}

        # A partition that moved to another process loses its series here.
        owned.discard((topic, 0))
        assert await meter.look() == {(topic, 1): 4}
        assert _gauge_values(registry) == {(topic, "1"): 4.0}
        owned.clear()
        assert await meter.look() == {}
        assert _gauge_values(registry) == {}
    finally:
        await meter.close()
        await group_consumer.stop()
        await producer.stop()


def test_lag_rises_with_uncommitted_records_and_returns_to_zero(kafka_bootstrap: str) -> None:
    asyncio.run(_scenario(kafka_bootstrap))
