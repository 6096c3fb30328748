"""The Kafka topics meterstream owns, and their creation.

Topics are created before any service reads or writes them: Faust does not
create the source topics of its agents, and a consumer that subscribed before
a topic was auto-created would not see it until its next metadata refresh.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from meterstream.core.config import Settings
from meterstream.core.kafka_client import KafkaConnection

log = logging.getLogger(__name__)

WEEK_MS = 7 * 24 * 3600 * 1000

# Headers of raw messages: the receiver sets them (ingest/receiver.py), the worker reads
# them (processors/raw_agent.py).
RECEIVED_AT_HEADER = "received_at"
"""When the receiver stored the body (ms, ASCII digits)."""
ORIGIN_HEADER = "origin"
"""The door the body came in by: WEBHOOK_ORIGIN or AGENT_ORIGIN."""
WEBHOOK_ORIGIN = b"webhook"
AGENT_ORIGIN = b"agent"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Topics:
    """Names of the pipeline's topics under one namespace."""

    namespace: str
    partitions: int

    @property
    def raw(self) -> TopicSpec:
        """Webhook bodies exactly as Convex sent them, keyed by deployment name."""
        return TopicSpec(f"{self.namespace}.raw", self.partitions,
                         {"retention.ms": str(WEEK_MS), "max.message.bytes": "16777216"})

    def records(self, route: str) -> TopicSpec:
        """Normalised records of one event type (processors/split.py ROUTES, or "other"):
        one message per raw body, a JSON array, keyed by deployment."""
        return TopicSpec(f"{self.namespace}.{route}", self.partitions,
                         {"retention.ms": str(WEEK_MS), "max.message.bytes": "16777216"})

    @property
    def deployments(self) -> TopicSpec:
        """The deployment registry: one record per deployment, compacted; a delete is a
        tombstone. One partition, so every reader sees the changes in one order."""
        return TopicSpec(f"{self.namespace}.deployments", 1,
                         {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"})

    @property
    def dead_letters(self) -> TopicSpec:
        """Events that could not be understood, with the reason."""
        return TopicSpec(f"{self.namespace}.deadletter", 1,
                         {"retention.ms": str(4 * WEEK_MS), "max.message.bytes": "16777216"})

    @property
    def alerts(self) -> TopicSpec:
        """Quota and runaway alerts, keyed by deployment with the raw topic's partitions,
        so the worker that owns a deployment also owns (and can re-read) its alerts."""
        return TopicSpec(f"{self.namespace}.alerts", self.partitions,
                         {"retention.ms": str(8 * WEEK_MS)})

    def changelog(self, table: str) -> TopicSpec:
        """The changelog of a worker table, named as Faust names it. Created with the other
        topics before the worker starts: when Faust creates it, its consumer may cache the
        topic's metadata from before the partitions exist, and every table write then fails
        with PartitionsMismatch until the metadata is refreshed minutes later."""
        return TopicSpec(f"{self.namespace}-{table}-changelog", self.partitions,
                         {"cleanup.policy": "compact"})

    @classmethod
    def of(cls, settings: Settings) -> Topics:
        return cls(settings.namespace, settings.partitions)


async def ensure_topics(kafka: KafkaConnection, specs: list[TopicSpec]) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are."""
    admin = AIOKafkaAdminClient(**kafka.client_options(), client_id="meterstream-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if not missing:
            return
        new = [NewTopic(s.name, s.partitions, 1, topic_configs=s.config) for s in missing]
        try:
            response = await admin.create_topics(new)
        except TopicAlreadyExistsError:
            return
        for name, code, message in _topic_errors(response):
            # 36 = TOPIC_ALREADY_EXISTS: another service created it meanwhile.
            if code not in (0, 36):
                raise RuntimeError(f"creating topic {name} failed: error {code} {message or ''}")
        log.info("created topics", extra={"topics": [s.name for s in missing]})
    finally:
        await admin.close()


async def partition_counts(kafka: KafkaConnection, names: list[str]) -> dict[str, int]:
    """Partitions of each named topic (0 for a topic that does not exist)."""
    admin = AIOKafkaAdminClient(**kafka.client_options(), client_id="meterstream-admin")
    await admin.start()
    try:
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    counts = dict.fromkeys(names, 0)
    for topic in described:
        if topic.get("error_code", 0) == 0:
            counts[topic["topic"]] = len(topic["partitions"])
    return counts


def _topic_errors(response: object) -> list[tuple[str, int, str | None]]:
    errors = []
    for entry in getattr(response, "topic_errors", []):
        name, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 else None
        errors.append((name, code, message))
    return errors
