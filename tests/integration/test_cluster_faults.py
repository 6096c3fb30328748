"""A local three-broker cluster (`meterstream kafka start --brokers 3`) with replication
factor 3 and min.insync.replicas 2: a broker killed with SIGKILL in the middle of a load
loses and repeats nothing (every body answered 200 is in ClickHouse exactly once, a body
Kafka could not store got 503), the pipeline goes on by itself (receiver, registry, worker
and its tables, sink), and stays exact when the broker returns. Also: every topic the
pipeline creates carries the replication settings, and existing topics that differ are
reported, or refused when their partition count would move deployments."""

from __future__ import annotations

import asyncio
import copy
import random
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.topics import ExistingTopic, TopicSpec, ensure_topics, existing_topics
from tests.support import (
    REPO,
    convex_examples,
    free_port,
    meterstream,
    metric_sample,
)
from tests.support import wait_for as _wait_for
from tests.support.clock import settled
from tests.support.function_totals import rows_per_sequence
from tests.support.pipeline import Pipeline, running_pipeline, worker_page
from tests.support.sink_load import sink_metric, start_sink
from tests.support.workers import raw_batches, start_worker, worker_processes

BROKERS = 3
REPLICATED = {"METERSTREAM_REPLICATION_FACTOR": "3", "METERSTREAM_MIN_INSYNC_REPLICAS": "2"}
SECRET = "cluster-secret-0123456789"
EVENTS_PER_BODY = 2
PARTITIONS = 8

T = TypeVar("T")


def wait_for(condition: Callable[[], T | None], timeout: float, what: str) -> T:
    """tests.support.wait_for, printing how long each wait took (shown with -s, and in
    a failure's captured output): where the module's minutes go."""
    started = time.monotonic()
    try:
        return _wait_for(condition, timeout, what)
    finally:
        print(f"cluster test: {time.monotonic() - started:5.1f}s waiting for {what}")


@dataclass(frozen=True)
class Cluster:
    env: dict[str, str]
    """METERSTREAM_DATA_DIR, METERSTREAM_KAFKA (every node) and the controller port."""

    @property
    def bootstrap(self) -> str:
        return self.env["METERSTREAM_KAFKA"]

    def kafka(self, *args: str) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        result = meterstream(["kafka", *args], self.env, timeout=600)
        print(f"cluster test: {time.monotonic() - started:5.1f}s for kafka {' '.join(args)}")
        return result


def _six_free_ports() -> int:
    """A port p with p to p + 5 free: brokers on p, p + 2, p + 4 and their controllers on
    p + 1, p + 3, p + 5 (deploy/kafka.sh puts node k on the ports + 2(k - 1)). Drawn below
    the kernel's ephemeral range (from 32768 here), which free_port() and every outgoing
    connection draw from: six ports there were taken by another process between this
    check and the brokers' start (seen: a controller failed to bind)."""
    while True:
        base = random.randrange(20000, 32000 - 6)
        try:
            for port in range(base, base + 6):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    home = tmp_path_factory.mktemp("cluster")
    base = _six_free_ports()
    env = {
        "METERSTREAM_DATA_DIR": str(home / "ms"),
        "METERSTREAM_KAFKA": ",".join(f"127.0.0.1:{base + 2 * k}" for k in range(BROKERS)),
        "METERSTREAM_KAFKA_CONTROLLER_PORT": str(base + 1),
    }
    # The jars the session broker resolved, so that no Maven run is needed.
    libs = REPO / ".meterstream-test" / "kafka" / "libs"
    if libs.is_dir():
        (home / "ms" / "kafka").mkdir(parents=True)
        (home / "ms" / "kafka" / "libs").symlink_to(libs)
    cluster = Cluster(env)
    try:
        started = cluster.kafka("start", "--brokers", str(BROKERS))
        assert f"cluster of {BROKERS} on {env['METERSTREAM_KAFKA']}" in started.stdout
        yield cluster
    finally:
        meterstream(["kafka", "stop"], env, timeout=180, check=False)


async def _leaders(bootstrap: str, topic: str) -> dict[int, tuple[int, int]]:
    """partition -> (leader node id, in-sync replicas)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return {p["partition"]: (p["leader"], len(p["isr"])) for p in described["partitions"]}


def _fully_replicated(bootstrap: str, topic: str) -> bool:
    try:
        leaders = asyncio.run(_leaders(bootstrap, topic))
    except Exception:  # a node still starting answers with errors: look again
        return False
    return bool(leaders) and all(isr == BROKERS for _, isr in leaders.values())


def _namespace_topics(bootstrap: str, namespace: str) -> dict[str, ExistingTopic]:
    async def names() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return [t for t in await admin.list_topics() if t.startswith(namespace)]
        finally:
            await admin.close()

    return asyncio.run(existing_topics(KafkaConnection(bootstrap), asyncio.run(names())))


class Sender(threading.Thread):
    """Posts numbered bodies until stopped, noting each answer, body n for deployment n
    modulo their number. Body n holds EVENTS_PER_BODY function executions whose
    database_io_read_bytes is n + 1 (n from `first`), so ClickHouse tells which bodies it
    holds and how often."""

    def __init__(self, pipeline: Pipeline, deployments: list[str], at_ms: int,
                 first: int = 0) -> None:
        super().__init__(daemon=True)
        self.pipeline = pipeline
        self.deployments = deployments
        self.at_ms = at_ms
        self.first = first
        self.answers: list[tuple[int, int]] = []  # (sequence number, status)
        self.halt = threading.Event()
        self.template = next(e for e in convex_examples()["events"]
                             if e["topic"] == "function_execution")

    def deployment(self, sequence: int) -> str:
        return self.deployments[sequence % len(self.deployments)]

    def body(self, sequence: int) -> bytes:
        events = []
        for index in range(EVENTS_PER_BODY):
            event = copy.deepcopy(self.template)
            event["convex"]["deployment_name"] = self.deployment(sequence)
            event["timestamp"] = self.at_ms + index
            event["usage"]["database_io_read_bytes"] = sequence + 1
            events.append(event)
        return orjson.dumps(events)

    def run(self) -> None:
        sequence = self.first
        while not self.halt.is_set():
            status, _ = self.pipeline.post(self.body(sequence), SECRET)
            self.answers.append((sequence, status))
            sequence += 1

    def count(self, status: int) -> int:
        return sum(1 for _, s in list(self.answers) if s == status)


def _live_calls(worker_port: int, deployment: str, at_ms: int) -> int | None:
    """The worker's live function calls of the deployment this month (its `usage` table)."""
    try:
        report = orjson.loads(worker_page(worker_port, f"/v1/quota/{deployment}?at={at_ms}"))
    except OSError:
        return None
    if "periods" not in report:
        return None
    return int(report["periods"]["month"]["usage"]["function_calls"])


def _exactly_once(receiver: Pipeline, senders: list[Sender], sink_port: str, worker_port: int,
                  processes: list[subprocess.Popen[bytes]], at_ms: int) -> Counter[int]:
    """Checks, once the senders stopped, that every body answered 200 is in ClickHouse
    exactly once, no body is there twice, and the worker's live usage counted each stored
    body once; returns the answers' statuses."""
    answers = [answer for sender in senders for answer in sender.answers]
    statuses = Counter(status for _, status in answers)
    assert set(statuses) <= {200, 503, 429}, statuses
    acknowledged = {seq for seq, status in answers if status == 200}

    def all_stored() -> Counter[int] | None:
        rows = rows_per_sequence(receiver.env)
        return rows if rows is not None and acknowledged <= set(rows) else None

    wait_for(all_stored, timeout=300, what="every acknowledged body stored")
    wait_for(lambda: sink_metric(sink_port, "meterstream_sink_buffered_rows") == 0,
             timeout=60, what="an idle sink")
    rows = rows_per_sequence(receiver.env)
    assert rows is not None
    assert [p.poll() for p in processes] == [None] * len(processes), "a process stopped"
    # Every acknowledged body exactly once; a body answered 503 may have reached Kafka all
    # the same (then once), and nothing else is there.
    assert {seq: rows[seq] for seq in acknowledged} == dict.fromkeys(
        acknowledged, EVENTS_PER_BODY)
    assert set(rows) <= {seq for seq, _ in answers}
    assert set(rows.values()) == {EVENTS_PER_BODY}
    assert len(acknowledged) == statuses[200]
    # The worker's live usage (its tables, restored from their changelogs on the cluster
    # after any move) counted each stored body once too. Any worker answers for every
    # deployment (Faust forwards the request to the owner).
    owner = {seq: sender.deployment(seq) for sender in senders for seq, _ in sender.answers}
    calls = Counter[str]()
    for seq in rows:
        calls[owner[seq]] += EVENTS_PER_BODY
    for deployment in {d for sender in senders for d in sender.deployments}:
        def counted(deployment: str = deployment) -> bool:
            return _live_calls(worker_port, deployment, at_ms) == calls[deployment]

        wait_for(counted, timeout=60,
                 what=f"{deployment}'s live usage of {calls[deployment]} calls")
    return statuses


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
    first, second = "cluster-otter-1", "cluster-otter-2"
    at_ms = settled(int(time.time() * 1000), EVENTS_PER_BODY, "day")
    # 5 s for Kafka to acknowledge: a body whose leader died waits for the next leader.
    extra = {**REPLICATED, "METERSTREAM_PRODUCE_TIMEOUT": "5"}
    with running_pipeline(cluster.bootstrap, tmp_path, command="receiver",
                          extra_env=extra) as receiver, worker_processes() as processes:
        receiver.register(first, webhook_secret=SECRET)
        worker_port = free_port()
        processes.append(start_worker(receiver.env, tmp_path / "worker.log", worker_port))
        sink_env = {**receiver.env, "METERSTREAM_SINK_PORT": str(free_port())}
        processes.append(start_sink(sink_env, tmp_path / "sink.log"))
        senders = [Sender(receiver, [first], at_ms)]
        senders[0].start()
        try:
            wait_for(lambda: senders[0].count(200) >= 100, timeout=120,
                     what="100 acknowledged")
            wait_for(lambda: sink_metric(sink_env["METERSTREAM_SINK_PORT"],
                                         "meterstream_sink_rows_inserted_total") > 0,
                     timeout=120, what="rows stored before the kill")
            # The node leading the first deployment's raw partition: its bodies must
            # find the partition's next leader.
            raw = f"{receiver.namespace}.raw"
            partition = DefaultPartitioner()(first.encode(), list(range(PARTITIONS)), [])
            victim = asyncio.run(_leaders(cluster.bootstrap, raw))[partition][0]
            assert "killed" in cluster.kafka("kill", "--node", str(victim)).stdout
            acknowledged_at_kill = senders[0].count(200)

            # A registry change while the broker is down reaches the receiver.
            wait_for(lambda: receiver.admin("PUT", f"/v1/deployments/{second}",
                                            {"webhook_secret": SECRET})[0] == 200,
                     timeout=120, what="the registry to take a new deployment")
            senders.append(Sender(receiver, [second], at_ms, first=1_000_000))
            senders[1].start()
            wait_for(lambda: senders[0].count(200) >= acknowledged_at_kill + 100
                     and senders[1].count(200) >= 50,
                     timeout=180, what="ingestion to go on without the broker")
            processed_without = raw_batches(worker_port)
            wait_for(lambda: raw_batches(worker_port) >= processed_without + 50,
                     timeout=120, what="the worker to go on without the broker")

            assert "ready" in cluster.kafka("start", "--node", str(victim)).stdout
            wait_for(lambda: _fully_replicated(cluster.bootstrap, raw), timeout=120,
                     what="the returned broker back in every raw partition's ISR")
            acknowledged_at_return = senders[0].count(200)
            wait_for(lambda: senders[0].count(200) >= acknowledged_at_return + 50,
                     timeout=120, what="ingestion after the broker returned")
        finally:
            for sender in senders:
                sender.halt.set()
            for sender in senders:
                sender.join(60)

        statuses = _exactly_once(receiver, senders, sink_env["METERSTREAM_SINK_PORT"],
                                 worker_port, processes, at_ms)
        print(f"cluster fault test: {statuses}, node {victim} killed and restarted, "
              f"{sum(len(sender.answers) for sender in senders)} bodies sent")


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
            victim = asyncio.run(_leaders(cluster.bootstrap, raw))[0][0]
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
            wait_for(lambda: _fully_replicated(cluster.bootstrap, raw), timeout=120,
                     what="the returned broker back in every raw partition's ISR")
            acknowledged = sender.count(200)
            wait_for(lambda: sender.count(200) >= acknowledged + 50, timeout=120,
                     what="ingestion after both returned")
        finally:
            sender.halt.set()
            sender.join(60)
        statuses = _exactly_once(receiver, [sender], sink_env["METERSTREAM_SINK_PORT"],
                                 ports[1], processes, at_ms)
        print(f"two-worker cluster test: {statuses}, node {victim} killed and restarted")
