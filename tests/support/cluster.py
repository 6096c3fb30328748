"""A local three-broker cluster for the cluster tests (`meterstream kafka start --brokers 3`,
in clear or over SASL_SSL), a sender of numbered bodies, and the check that every body
answered 200 is in ClickHouse exactly once and counted once in the worker's live usage."""

from __future__ import annotations

import asyncio
import copy
import random
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import orjson
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

from meterstream.core.config import Settings
from meterstream.core.kafka_client import KafkaConnection
from tests.support import REPO, convex_examples, free_port, meterstream
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
    sasl_ssl: bool = False
    clients: dict[str, str] = field(default_factory=dict)
    """With SASL_SSL: the settings `kafka start` printed for clients to connect with."""

    @property
    def bootstrap(self) -> str:
        return self.env["METERSTREAM_KAFKA"]

    @property
    def connection(self) -> KafkaConnection:
        return KafkaConnection.of(Settings.from_env({**self.env, **self.clients}))

    def kafka(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`meterstream kafka ARGS` (a start with --sasl-ssl on a SASL_SSL cluster)."""
        command = ["kafka", *args, *(["--sasl-ssl"] if self.sasl_ssl and args[0] == "start"
                                     else [])]
        started = time.monotonic()
        result = meterstream(command, self.env, timeout=600)
        print(f"cluster test: {time.monotonic() - started:5.1f}s for kafka {' '.join(args)}")
        return result


def six_free_ports() -> int:
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


@contextmanager
def local_cluster(home: Path, sasl_ssl: bool = False) -> Iterator[Cluster]:
    """`meterstream kafka start --brokers 3` (with `--sasl-ssl`: SCRAM over TLS, the
    client settings it printed in Cluster.clients) in `home`; stopped on the way out."""
    base = six_free_ports()
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
    try:
        started = Cluster(env, sasl_ssl).kafka("start", "--brokers", str(BROKERS))
        assert f"cluster of {BROKERS} on {env['METERSTREAM_KAFKA']}" in started.stdout
        clients: dict[str, str] = {}
        if sasl_ssl:
            clients = dict(line.strip().split("=", 1) for line in started.stdout.splitlines()
                           if line.startswith("  METERSTREAM_"))
            assert clients["METERSTREAM_KAFKA"] == env["METERSTREAM_KAFKA"], started.stdout
            assert clients["METERSTREAM_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        yield Cluster(env, sasl_ssl, clients)
    finally:
        meterstream(["kafka", "stop"], env, timeout=180, check=False)


async def leaders(kafka: KafkaConnection, topic: str) -> dict[int, tuple[int, int]]:
    """partition -> (leader node id, in-sync replicas)."""
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return {p["partition"]: (p["leader"], len(p["isr"])) for p in described["partitions"]}


def fully_replicated(kafka: KafkaConnection, topic: str) -> bool:
    try:
        found = asyncio.run(leaders(kafka, topic))
    except Exception:  # a node still starting answers with errors: look again
        return False
    return bool(found) and all(isr == BROKERS for _, isr in found.values())


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


def live_calls(worker_port: int, deployment: str, at_ms: int) -> int | None:
    """The worker's live function calls of the deployment this month (its `usage` table)."""
    try:
        report = orjson.loads(worker_page(worker_port, f"/v1/quota/{deployment}?at={at_ms}"))
    except OSError:
        return None
    if "periods" not in report:
        return None
    return int(report["periods"]["month"]["usage"]["function_calls"])


def exactly_once(receiver: Pipeline, senders: list[Sender], sink_port: str, worker_port: int,
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
            return live_calls(worker_port, deployment, at_ms) == calls[deployment]

        wait_for(counted, timeout=60,
                 what=f"{deployment}'s live usage of {calls[deployment]} calls")
    return statuses


def broker_killed_mid_load(cluster: Cluster, tmp_path: Path) -> None:
    """A sender posts to one deployment; the node leading its raw partition is killed with
    SIGKILL, a second deployment is registered and sent for while it is down, the node
    returns: every body answered 200 is in ClickHouse exactly once (`exactly_once`)."""
    first, second = "cluster-otter-1", "cluster-otter-2"
    at_ms = settled(int(time.time() * 1000), EVENTS_PER_BODY, "day")
    # 5 s for Kafka to acknowledge: a body whose leader died waits for the next leader.
    extra = {**REPLICATED, "METERSTREAM_PRODUCE_TIMEOUT": "5", **cluster.clients}
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
            victim = asyncio.run(leaders(cluster.connection, raw))[partition][0]
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
            wait_for(lambda: fully_replicated(cluster.connection, raw), timeout=120,
                     what="the returned broker back in every raw partition's ISR")
            acknowledged_at_return = senders[0].count(200)
            wait_for(lambda: senders[0].count(200) >= acknowledged_at_return + 50,
                     timeout=120, what="ingestion after the broker returned")
        finally:
            for sender in senders:
                sender.halt.set()
            for sender in senders:
                sender.join(60)

        statuses = exactly_once(receiver, senders, sink_env["METERSTREAM_SINK_PORT"],
                                 worker_port, processes, at_ms)
        print(f"cluster fault test: {statuses}, node {victim} killed and restarted, "
              f"{sum(len(sender.answers) for sender in senders)} bodies sent")
