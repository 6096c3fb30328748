"""The Kafka topics meterstream owns, and their creation.

Topics are created before any service reads or writes them: Faust does not
create the source topics of its agents, and a consumer that subscribed before
a topic was auto-created would not see it until its next metadata refresh.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from meterstream.core.config import ConfigError, Settings
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
    replication: int = 1
    keyed: bool = False
    """Keyed by deployment and read per partition (dedup, windows, the sink's marks): an
    existing topic of another partition count is refused, not used."""


@dataclass(frozen=True)
class Topics:
    """Names of the pipeline's topics under one namespace, and how they are created."""

    namespace: str
    partitions: int
    replication: int = 1
    min_insync: int = 1

    def _spec(self, name: str, partitions: int, config: dict[str, str],
              keyed: bool = False) -> TopicSpec:
        # Every topic carries min.insync.replicas itself, so that the broker's default
        # (often 1) never decides how many copies an acknowledged message has.
        return TopicSpec(name, partitions,
                         {**config, "min.insync.replicas": str(self.min_insync)},
                         self.replication, keyed)

    @property
    def raw(self) -> TopicSpec:
        """Webhook bodies exactly as Convex sent them, keyed by deployment name."""
        return self._spec(f"{self.namespace}.raw", self.partitions,
                          {"retention.ms": str(WEEK_MS), "max.message.bytes": "16777216"},
                          keyed=True)

    def records(self, route: str) -> TopicSpec:
        """Normalised records of one event type (processors/split.py ROUTES, or "other"):
        one message per raw body, a JSON array, keyed by deployment."""
        return self._spec(f"{self.namespace}.{route}", self.partitions,
                          {"retention.ms": str(WEEK_MS), "max.message.bytes": "16777216"},
                          keyed=True)

    @property
    def deployments(self) -> TopicSpec:
        """The deployment registry: one record per deployment, compacted; a delete is a
        tombstone. One partition, so every reader sees the changes in one order."""
        return self._spec(f"{self.namespace}.deployments", 1,
                          {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"})

    @property
    def read_tokens(self) -> TopicSpec:
        """Read tokens of the scoped usage view (meterstream/core/read_tokens.py): one
        record per token id, compacted, one partition, like the registry."""
        return self._spec(f"{self.namespace}.read-tokens", 1,
                          {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"})

    @property
    def dead_letters(self) -> TopicSpec:
        """Events that could not be understood, with the reason."""
        return self._spec(f"{self.namespace}.deadletter", 1,
                          {"retention.ms": str(4 * WEEK_MS), "max.message.bytes": "16777216"})

    @property
    def alerts(self) -> TopicSpec:
        """Quota and runaway alerts, keyed by deployment with the raw topic's partitions,
        so the worker that owns a deployment also owns (and can re-read) its alerts."""
        return self._spec(f"{self.namespace}.alerts", self.partitions,
                          {"retention.ms": str(8 * WEEK_MS)}, keyed=True)

    def changelog(self, table: str) -> TopicSpec:
        """The changelog of a worker table, named as Faust names it. Created with the other
        topics before the worker starts: when Faust creates it, its consumer may cache the
        topic's metadata from before the partitions exist, and every table write then fails
        with PartitionsMismatch until the metadata is refreshed minutes later."""
        return self._spec(f"{self.namespace}-{table}-changelog", self.partitions,
                          {"cleanup.policy": "compact"}, keyed=True)

    @property
    def faust_leader(self) -> TopicSpec:
        """The topic Faust's assignor elects its leader by, named as Faust names it.
        Created here so that it carries min.insync.replicas too: Faust would create it
        with the replication factor but with no topic configuration."""
        return self._spec(f"{self.namespace}-__assignor-__leader", 1, {})

    @classmethod
    def of(cls, settings: Settings) -> Topics:
        return cls(settings.namespace, settings.partitions, settings.replication_factor,
                   settings.min_insync_replicas)


# The setting that decides each compared property, for the messages.
PARTITIONS_SETTING = "METERSTREAM_PARTITIONS"
REPLICATION_SETTING = "METERSTREAM_REPLICATION_FACTOR"
MIN_INSYNC_SETTING = "METERSTREAM_MIN_INSYNC_REPLICAS"


@dataclass(frozen=True)
class ExistingTopic:
    """What the cluster says of a topic that exists."""

    partitions: int
    replication: int
    min_insync: int | None = None
    """Its min.insync.replicas; None when not known."""


@dataclass(frozen=True)
class Difference:
    """An existing topic that is not as the configuration would create it."""

    topic: str
    what: str
    have: int
    want: int
    setting: str
    refused: bool

    @property
    def message(self) -> str:
        if self.refused:
            return (f"topic {self.topic} has {self.have} partitions but {self.setting} is "
                    f"{self.want}: its messages are keyed by deployment, and another "
                    "partition count moves deployments to other partitions, which breaks "
                    "deduplication, the live windows and the sink's exactly-once marks. Set "
                    f"{self.setting}={self.have}, or start afresh under a new "
                    "METERSTREAM_NAMESPACE")
        return (f"topic {self.topic}: {self.what} is {self.have}, the configuration wants "
                f"{self.want} ({self.setting}); Kafka keeps the topic's own, change it with "
                "Kafka's tools (kafka-reassign-partitions, kafka-configs) to apply it")


@dataclass(frozen=True)
class TopicPlan:
    create: tuple[TopicSpec, ...]
    differences: tuple[Difference, ...]

    @property
    def warnings(self) -> tuple[Difference, ...]:
        return tuple(d for d in self.differences if not d.refused)

    @property
    def refusals(self) -> tuple[Difference, ...]:
        return tuple(d for d in self.differences if d.refused)


class TopicsRefused(ConfigError):
    """Existing topics the pipeline cannot use as configured; the message names each topic
    and the setting. A configuration error: the process stops instead of retrying."""


def plan_topics(wanted: Sequence[TopicSpec],
                existing: Mapping[str, ExistingTopic]) -> TopicPlan:
    """What to do with `wanted` given the topics that exist: create the missing ones,
    report each existing one whose partitions, replication factor or min.insync.replicas
    differ from its spec, and refuse a keyed one whose partition count differs."""
    create: list[TopicSpec] = []
    differences: list[Difference] = []
    for spec in wanted:
        have = existing.get(spec.name)
        if have is None:
            create.append(spec)
            continue
        if have.partitions != spec.partitions:
            differences.append(Difference(spec.name, "partitions", have.partitions,
                                          spec.partitions, PARTITIONS_SETTING, spec.keyed))
        if have.replication != spec.replication:
            differences.append(Difference(spec.name, "replication factor", have.replication,
                                          spec.replication, REPLICATION_SETTING, False))
        want_isr = spec.config.get("min.insync.replicas")
        if want_isr is not None and have.min_insync is not None \
                and have.min_insync != int(want_isr):
            differences.append(Difference(spec.name, "min.insync.replicas", have.min_insync,
                                          int(want_isr), MIN_INSYNC_SETTING, False))
    return TopicPlan(tuple(create), tuple(differences))


# Kafka's answer to a topic created with more replicas than it has brokers.
INVALID_REPLICATION_FACTOR = 38


async def ensure_topics(kafka: KafkaConnection, specs: list[TopicSpec]) -> None:
    """Creates the topics that do not exist yet; existing ones are left as they are, each
    difference from its spec logged, and a keyed topic of another partition count refused
    (TopicsRefused)."""
    admin = AIOKafkaAdminClient(**kafka.client_options(), client_id="meterstream-admin")
    await admin.start()
    try:
        plan = plan_topics(specs, await _existing(admin, [s.name for s in specs]))
        for difference in plan.warnings:
            log.warning(difference.message, extra={
                "topic": difference.topic, "property": difference.what,
                "have": difference.have, "want": difference.want,
                "setting": difference.setting})
        if plan.refusals:
            raise TopicsRefused("; ".join(d.message for d in plan.refusals),
                                tuple(d.message for d in plan.refusals))
        if not plan.create:
            return
        missing = plan.create
        new = [NewTopic(s.name, s.partitions, s.replication, topic_configs=s.config)
               for s in missing]
        try:
            response = await admin.create_topics(new)
        except TopicAlreadyExistsError:
            return
        for name, code, message in _topic_errors(response):
            if code == INVALID_REPLICATION_FACTOR:
                raise RuntimeError(
                    f"creating topic {name} failed: {REPLICATION_SETTING} asks for more "
                    f"replicas than the cluster has brokers up ({message or ''})")
            # 36 = TOPIC_ALREADY_EXISTS: another service created it meanwhile.
            if code not in (0, 36):
                raise RuntimeError(f"creating topic {name} failed: error {code} {message or ''}")
        log.info("created topics", extra={"topics": [s.name for s in missing],
                                           "replication": missing[0].replication})
    finally:
        await admin.close()


async def existing_topics(kafka: KafkaConnection, names: list[str]) -> dict[str, ExistingTopic]:
    """The named topics that exist, as the cluster describes them (none is created)."""
    admin = AIOKafkaAdminClient(**kafka.client_options(), client_id="meterstream-admin")
    await admin.start()
    try:
        return await _existing(admin, names)
    finally:
        await admin.close()


async def _existing(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, ExistingTopic]:
    """The named topics that exist, as the cluster describes them. All topics' metadata is
    asked for: a metadata request naming a missing topic may auto-create it."""
    wanted = set(names)
    found: dict[str, tuple[int, int]] = {}
    for topic in await admin.describe_topics():
        if topic["topic"] in wanted and topic.get("error_code", 0) == 0:
            partitions = topic["partitions"]
            found[topic["topic"]] = (len(partitions), max(
                (len(p["replicas"]) for p in partitions), default=0))
    min_insync = await _min_insync(admin, list(found)) if found else {}
    return {name: ExistingTopic(count, replication, min_insync.get(name))
            for name, (count, replication) in found.items()}


async def _min_insync(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    """min.insync.replicas of each named topic (its own or the broker's default)."""
    resources = [ConfigResource(ConfigResourceType.TOPIC, name,
                                configs={"min.insync.replicas": None}) for name in names]
    values: dict[str, int] = {}
    for response in await admin.describe_configs(resources):
        for resource in response.to_object()["resources"]:
            if resource["error_code"] != 0:
                continue
            for entry in resource["config_entries"]:
                if entry["config_names"] == "min.insync.replicas" and entry["config_value"]:
                    values[resource["resource_name"]] = int(entry["config_value"])
    return values


async def partition_counts(kafka: KafkaConnection, names: list[str]) -> dict[str, int]:
    """Partitions of each named topic (0 for a topic that does not exist). Read as
    `existing_topics` reads them, so that asking creates no topic either."""
    found = await existing_topics(kafka, names)
    return {name: found[name].partitions if name in found else 0 for name in names}


def _topic_errors(response: object) -> list[tuple[str, int, str | None]]:
    errors = []
    for entry in getattr(response, "topic_errors", []):
        name, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 else None
        errors.append((name, code, message))
    return errors
