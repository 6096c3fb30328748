"""Reading what topics exist creates none: the broker auto-creates a topic that a metadata
request names (auto.create.topics.enable defaults to true), so the readers ask for all
topics and pick theirs."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka.admin import AIOKafkaAdminClient

from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.topics import TopicSpec, ensure_topics, existing_topics, partition_counts


async def _names(kafka: KafkaConnection) -> set[str]:
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def test_partition_counts_and_existing_topics_create_nothing(kafka_bootstrap: str) -> None:
    kafka = KafkaConnection(kafka_bootstrap)
    prefix = f"t{uuid.uuid4().hex[:10]}"
    present, missing = f"{prefix}.present", f"{prefix}.missing"
    asyncio.run(ensure_topics(kafka, [TopicSpec(present, 3, {})]))

    assert asyncio.run(partition_counts(kafka, [present, missing])) == {present: 3, missing: 0}
    found = asyncio.run(existing_topics(kafka, [present, missing]))
    assert set(found) == {present}
    assert found[present].partitions == 3
    assert missing not in asyncio.run(_names(kafka))
