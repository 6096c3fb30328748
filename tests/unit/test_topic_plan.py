"""Topic planning (meterstream/core/topics.py plan_topics): what a start creates, reports
and refuses, given the topics that exist and the configuration."""

from __future__ import annotations

import pytest

from meterstream.core.config import ConfigError, Settings
from meterstream.core.topics import (
    ExistingTopic,
    Topics,
    TopicSpec,
    TopicsRefused,
    plan_topics,
)

CLUSTER = {"METERSTREAM_NAMESPACE": "ms", "METERSTREAM_PARTITIONS": "8",
           "METERSTREAM_REPLICATION_FACTOR": "3", "METERSTREAM_MIN_INSYNC_REPLICAS": "2"}


def every_topic(topics: Topics) -> list[TopicSpec]:
    """Every topic a pipeline creates (the worker's list, the widest)."""
    return [topics.raw, topics.dead_letters, topics.alerts, topics.deployments,
            topics.faust_leader, topics.changelog("seen"), topics.changelog("usage"),
            topics.records("function_execution"), topics.records("other")]


def as_existing(spec: TopicSpec, **changes: int) -> ExistingTopic:
    """The topic as the cluster would describe it had it been created from `spec`."""
    fields = {"partitions": spec.partitions, "replication": spec.replication,
              "min_insync": int(spec.config["min.insync.replicas"]), **changes}
    return ExistingTopic(**fields)


def test_every_topic_is_created_with_the_configured_replication() -> None:
    topics = Topics.of(Settings.from_env(CLUSTER))
    specs = every_topic(topics)
    plan = plan_topics(specs, {})
    assert plan.create == tuple(specs)
    assert plan.differences == ()
    for spec in plan.create:
        assert spec.replication == 3, spec.name
        assert spec.config["min.insync.replicas"] == "2", spec.name
    # The topics' own settings survive beside min.insync.replicas.
    assert topics.deployments.config["cleanup.policy"] == "compact"
    assert topics.raw.config["retention.ms"] == str(7 * 24 * 3600 * 1000)


def test_the_defaults_suit_one_broker() -> None:
    settings = Settings.from_env({})
    assert (settings.replication_factor, settings.min_insync_replicas) == (1, 1)
    spec = Topics.of(settings).raw
    assert spec.replication == 1
    assert spec.config["min.insync.replicas"] == "1"


def test_matching_topics_need_nothing() -> None:
    specs = every_topic(Topics.of(Settings.from_env(CLUSTER)))
    plan = plan_topics(specs, {spec.name: as_existing(spec) for spec in specs})
    assert plan.create == ()
    assert plan.differences == ()


def test_only_missing_topics_are_created() -> None:
    topics = Topics.of(Settings.from_env(CLUSTER))
    plan = plan_topics([topics.raw, topics.alerts], {topics.raw.name: as_existing(topics.raw)})
    assert [s.name for s in plan.create] == ["ms.alerts"]


def test_another_replication_factor_is_reported_not_refused() -> None:
    topics = Topics.of(Settings.from_env(CLUSTER))
    plan = plan_topics([topics.raw], {topics.raw.name: as_existing(topics.raw, replication=1)})
    assert plan.create == ()
    assert plan.refusals == ()
    (warning,) = plan.warnings
    assert (warning.topic, warning.what, warning.have, warning.want) == (
        "ms.raw", "replication factor", 1, 3)
    assert "ms.raw" in warning.message
    assert "METERSTREAM_REPLICATION_FACTOR" in warning.message
    assert "is 1" in warning.message
    assert "wants 3" in warning.message


def test_another_min_insync_is_reported() -> None:
    topics = Topics.of(Settings.from_env(CLUSTER))
    plan = plan_topics([topics.deployments],
                       {topics.deployments.name: as_existing(topics.deployments, min_insync=1)})
    (warning,) = plan.warnings
    assert (warning.what, warning.have, warning.want, warning.setting) == (
        "min.insync.replicas", 1, 2, "METERSTREAM_MIN_INSYNC_REPLICAS")


def test_an_unknown_min_insync_is_not_a_difference() -> None:
    topics = Topics.of(Settings.from_env(CLUSTER))
    existing = ExistingTopic(topics.raw.partitions, topics.raw.replication, None)
    assert plan_topics([topics.raw], {topics.raw.name: existing}).differences == ()


@pytest.mark.parametrize("topic", ["raw", "records", "alerts", "changelog"])
def test_a_keyed_topic_of_another_partition_count_is_refused(topic: str) -> None:
    topics = Topics.of(Settings.from_env(CLUSTER))
    spec = {"raw": topics.raw, "records": topics.records("function_execution"),
            "alerts": topics.alerts, "changelog": topics.changelog("usage")}[topic]
    plan = plan_topics([spec], {spec.name: as_existing(spec, partitions=4, replication=1)})
    (refusal,) = plan.refusals
    assert (refusal.topic, refusal.have, refusal.want) == (spec.name, 4, 8)
    assert spec.name in refusal.message
    assert "METERSTREAM_PARTITIONS is 8" in refusal.message
    assert "METERSTREAM_PARTITIONS=4" in refusal.message  # what to set to use it as it is
    # The replication factor is reported beside it, not refused.
    assert [w.what for w in plan.warnings] == ["replication factor"]


def test_an_unkeyed_topic_of_another_partition_count_is_only_reported() -> None:
    topics = Topics.of(Settings.from_env(CLUSTER))
    spec = topics.dead_letters
    plan = plan_topics([spec], {spec.name: as_existing(spec, partitions=3)})
    assert plan.refusals == ()
    (warning,) = plan.warnings
    assert (warning.what, warning.have, warning.want) == ("partitions", 3, 1)


def test_a_refusal_is_a_configuration_error_listing_each_topic() -> None:
    topics = Topics.of(Settings.from_env(CLUSTER))
    specs = [topics.raw, topics.alerts]
    plan = plan_topics(specs, {s.name: as_existing(s, partitions=16) for s in specs})
    error = TopicsRefused("; ".join(d.message for d in plan.refusals),
                          tuple(d.message for d in plan.refusals))
    assert isinstance(error, ConfigError)
    assert len(error.problems) == 2
    assert "ms.raw" in error.problems[0]
    assert "ms.alerts" in error.problems[1]


def test_min_insync_above_the_replication_factor_is_refused_with_the_other_problems() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"METERSTREAM_REPLICATION_FACTOR": "2",
                           "METERSTREAM_MIN_INSYNC_REPLICAS": "3",
                           "METERSTREAM_RECEIVER_PORT": "eighty"})
    problems = caught.value.problems
    assert len(problems) == 2
    assert any(p.startswith("METERSTREAM_MIN_INSYNC_REPLICAS (3) must be at most "
                            "METERSTREAM_REPLICATION_FACTOR (2)") for p in problems)
    assert any(p.startswith("METERSTREAM_RECEIVER_PORT") for p in problems)


@pytest.mark.parametrize(("name", "value"), [
    ("METERSTREAM_REPLICATION_FACTOR", "0"),
    ("METERSTREAM_REPLICATION_FACTOR", "three"),
    ("METERSTREAM_MIN_INSYNC_REPLICAS", "0"),
])
def test_bad_replication_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_a_local_cluster_may_list_every_node() -> None:
    settings = Settings.from_env(
        {"METERSTREAM_KAFKA": "127.0.0.1:9192,127.0.0.1:9194,127.0.0.1:9196"})
    assert settings.kafka_port == 9192
