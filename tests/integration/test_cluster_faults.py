"""A local three-broker cluster (`meterstream kafka start --brokers 3`) with replication
factor 3 and min.insync.replicas 2: a broker killed with SIGKILL in the middle of a load
loses and repeats nothing (every body answered 200 is in ClickHouse exactly once, a body
Kafka could not store got 503), the pipeline goes on by itself (receiver, registry, worker
and its tables, sink), and stays exact when the broker returns. Also: every topic the
pipeline creates carries the replication settings, and existing topics that differ are
reported, or refused when their partition count would move deployments."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.topics import ExistingTopic, TopicSpec, ensure_topics, existing_topics
from tests.support import free_port, meterstream, metric_sample
from tests.support.clock import settled
from tests.support.cluster import (
    EVENTS_PER_BODY,
    PARTITIONS,
    REPLICATED,
    SECRET,
    Cluster,
    Sender,
    broker_killed_mid_load,
    exactly_once,
    fully_replicated,
    leaders,
    local_cluster,
    wait_for,
)
from tests.support.pipeline import running_pipeline
from tests.support.sink_load import sink_metric, start_sink
from tests.support.workers import raw_batches, start_worker, worker_processes


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with local_cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


def _namespace_topics(bootstrap: str, namespace: str) -> dict[str, ExistingTopic]:
    async def names() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return [t for t in await admin.list_topics() if t.startswith(namespace)]
        finally:
            await admin.close()

    return asyncio.run(existing_topics(KafkaConnection(bootstrap), asyncio.run(names())))


def test_every_topic_is_created_replicated(cluster: Cluster, tmp_path: Path) -> None:
    """The receiver, the worker and the sink create their topics with replication factor 3
    and min.insync.replicas 2, Faust's changelog and leader topics included."""
    with running_pipeline(cluster.bootstrap, tmp_path, command="up --workers 1",
                          extra_env=REPLICATED) as pipeline:
        worker_port = int(pipeline.env["METERSTREAM_WORKER_PORT"])
        wait_for(lambda: sink_metric(pipeline.env["METERSTREAM_SINK_PORT"],
                                     "meterstream_sink_assigned_partitions") > 0,
                 timeout=120, what="the sink to consume")
        wait_for(lambda: metric_sample(str(worker_port),
                                       "meterstream_worker_raw_partitions") == PARTITIONS,
                 timeout=120, what="the worker to own the raw partitions")
        topics = _namespace_topics(cluster.bootstrap, pipeline.namespace)
    ns = pipeline.namespace
    for name in (f"{ns}.raw", f"{ns}.function_execution", f"{ns}.alerts", f"{ns}.deadletter",
                 f"{ns}.deployments", f"{ns}-seen-changelog", f"{ns}-usage-changelog",
                 f"{ns}-__assignor-__leader"):
        assert name in topics, sorted(topics)
    assert {name: (t.replication, t.min_insync) for name, t in topics.items()} == {
        name: (3, 2) for name in topics}


def test_existing_topics_that_differ_are_reported_or_refused(cluster: Cluster,
                                                             tmp_path: Path) -> None:
    """A raw topic of 4 partitions and a registry topic of one replica, made beforehand:
    the worker and the receiver report the registry topic's replication factor and refuse
    the raw topic, naming it and METERSTREAM_PARTITIONS, and exit."""
    namespace = f"t{uuid.uuid4().hex[:10]}"
    asyncio.run(ensure_topics(KafkaConnection(cluster.bootstrap), [
        TopicSpec(f"{namespace}.raw", 4, {}, replication=1),
        TopicSpec(f"{namespace}.deployments", 1, {"cleanup.policy": "compact"}, replication=1),
    ]))
    env = {**cluster.env, **REPLICATED, "METERSTREAM_NAMESPACE": namespace,
           "METERSTREAM_DATA_DIR": str(tmp_path / "ms"),
           "METERSTREAM_RECEIVER_PORT": str(free_port()),
           "METERSTREAM_ADMIN_PORT": str(free_port()),
           "METERSTREAM_WORKER_PORT": str(free_port())}
    for command in ("worker", "receiver"):
        result = meterstream([command], env, timeout=120, check=False)
        assert result.returncode == 1, (command, result.stderr[-3000:])
        refusal = result.stderr.strip().splitlines()[-1]
        assert refusal.startswith(f"meterstream {command}: configuration error: "
                                  f"topic {namespace}.raw has 4 partitions but "
                                  "METERSTREAM_PARTITIONS is 8"), refusal
        warning = (f"topic {namespace}.deployments: replication factor is 1, the "
                   "configuration wants 3 (METERSTREAM_REPLICATION_FACTOR)")
        assert warning in result.stderr, (command, result.stderr[-3000:])
    # Refused before anything was created: the worker's other topics do not exist.
    assert set(_namespace_topics(cluster.bootstrap, namespace)) == {
        f"{namespace}.raw", f"{namespace}.deployments"}


def test_a_broker_killed_mid_load_loses_and_repeats_nothing(cluster: Cluster,
                                                           tmp_path: Path) -> None:
    broker_killed_mid_load(cluster, tmp_path)


def test_a_worker_killed_while_a_broker_is_down_moves_its_partitions_exactly(
        cluster: Cluster, tmp_path: Path) -> None:
    """Two workers share the raw partitions; a broker is killed, then one worker too, so
    that the group rebalances with the broker down and the other worker restores the
    moved partitions' tables from their changelogs. It comes back, the broker too (two
    more rebalances): totals still exact in ClickHouse and in the live usage."""
    deployments = [f"pair-otter-{k}" for k in range(4)]
    at_ms = settled(int(time.time() * 1000), EVENTS_PER_BODY, "day")
    extra = {**REPLICATED, "METERSTREAM_PRODUCE_TIMEOUT": "5"}
    with running_pipeline(cluster.bootstrap, tmp_path, command="receiver",
                          extra_env=extra) as receiver, worker_processes() as processes:
        for deployment in deployments:
            receiver.register(deployment, webhook_secret=SECRET)
        ports = [free_port(), free_port()]
        processes.extend(start_worker(receiver.env, tmp_path / f"worker-{k}.log", port)
                         for k, port in enumerate(ports))
        sink_env = {**receiver.env, "METERSTREAM_SINK_PORT": str(free_port())}
        processes.append(start_sink(sink_env, tmp_path / "sink.log"))

        def owned() -> list[float]:
            return [metric_sample(str(port), "meterstream_worker_raw_partitions")
                    for port in ports]

        wait_for(lambda: all(n > 0 for n in owned()) and sum(owned()) == PARTITIONS,
                 timeout=120, what="the two workers to share the raw partitions")
        sender = Sender(receiver, deployments, at_ms)
        sender.start()
        try:
            wait_for(lambda: sender.count(200) >= 100, timeout=120, what="100 acknowledged")
            wait_for(lambda: all(raw_batches(port) > 0 for port in ports), timeout=120,
                     what="both workers processing")
            raw = f"{receiver.namespace}.raw"
            victim = asyncio.run(leaders(cluster.connection, raw))[0][0]
            cluster.kafka("kill", "--node", str(victim))
            processes[0].send_signal(signal.SIGKILL)
            processes[0].wait(30)
            wait_for(lambda: metric_sample(str(ports[1]),
                                           "meterstream_worker_raw_partitions") == PARTITIONS,
                     timeout=120, what="the other worker to take every raw partition")
            acknowledged = sender.count(200)
            processed = raw_batches(ports[1])
            wait_for(lambda: sender.count(200) >= acknowledged + 100
                     and raw_batches(ports[1]) >= processed + 100,
                     timeout=180, what="the pipeline to go on with one worker, one broker down")

            # The worker returns (its local state is not clean: restored from the
            # changelogs), then the broker.
            processes[0] = start_worker(receiver.env, tmp_path / "worker-0.log", ports[0])
            wait_for(lambda: all(n > 0 for n in owned()) and sum(owned()) == PARTITIONS,
                     timeout=120, what="the returned worker to get partitions back")
            cluster.kafka("start", "--node", str(victim))
            wait_for(lambda: fully_replicated(cluster.connection, raw), timeout=120,
                     what="the returned broker back in every raw partition's ISR")
            acknowledged = sender.count(200)
            wait_for(lambda: sender.count(200) >= acknowledged + 50, timeout=120,
                     what="ingestion after both returned")
        finally:
            sender.halt.set()
            sender.join(60)
        statuses = exactly_once(receiver, [sender], sink_env["METERSTREAM_SINK_PORT"],
                                 ports[1], processes, at_ms)
        print(f"two-worker cluster test: {statuses}, node {victim} killed and restarted")
