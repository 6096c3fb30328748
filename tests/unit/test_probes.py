"""/healthz, /readyz and /metrics of the receiver and the sink: where they are served
(on the service's port, or only on METERSTREAM_METRICS_HOST's listener), and when
/readyz says ready. The worker's are in tests/unit/test_worker_web.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import TopicPartition

from ingest.receiver import Receiver
from meterstream.core.config import Settings
from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.registry import RegistryView
from meterstream.core.service import Readiness, add_probes
from meterstream.core.topics import Topics
from sinks.sink import Sink

PROBES = ("/healthz", "/readyz", "/metrics")


def _serve(app: web.Application,
           scenario: Callable[[TestClient[Any, Any]], Awaitable[None]]) -> None:
    async def run() -> None:
        async with TestClient(TestServer(app)) as client:
            await scenario(client)

    asyncio.run(asyncio.wait_for(run(), 30))


def _statuses(app: web.Application, paths: tuple[str, ...]) -> dict[str, int]:
    found: dict[str, int] = {}

    async def scenario(client: TestClient[Any, Any]) -> None:
        for path in paths:
            found[path] = (await client.get(path)).status

    _serve(app, scenario)
    return found


class _Producer:
    """What the receiver asks of its Kafka producer here."""

    healthy = False

    async def store(self, *_: Any) -> None:
        raise AssertionError("nothing is stored by a probe")


def _receiver(tmp_path: Path, **env: str) -> tuple[Receiver, _Producer, RegistryView]:
    settings = Settings.from_env({"METERSTREAM_DATA_DIR": str(tmp_path), **env})
    topics = Topics.of(settings)
    producer = _Producer()
    registry = RegistryView(KafkaConnection.of(settings), topics.deployments.name)
    return Receiver(settings, producer, registry, topics), producer, registry  # type: ignore[arg-type]


def test_readiness_names_every_check_and_is_ready_only_when_all_hold() -> None:
    readiness = Readiness()
    assert readiness.answer() == (200, {"ready": True})
    state = {"kafka": False, "registry": True}
    readiness.add("kafka", lambda: state["kafka"])
    readiness.add("registry", lambda: state["registry"])
    assert readiness.answer() == (503, {"ready": False, "kafka": False, "registry": True})
    state["kafka"] = True
    assert readiness.answer() == (200, {"ready": True, "kafka": True, "registry": True})
    readiness.add("kafka", lambda: False)  # replaced, not added
    assert readiness.answer() == (503, {"ready": False, "kafka": False, "registry": True})


def test_the_receiver_is_ready_once_kafka_answers_and_the_registry_is_read(
        tmp_path: Path) -> None:
    receiver, producer, registry = _receiver(tmp_path)
    answers: list[tuple[int, dict[str, bool]]] = []

    async def scenario(client: TestClient[Any, Any]) -> None:
        for step in ("start", "kafka", "registry"):
            if step == "kafka":
                producer.healthy = True
            if step == "registry":
                registry._loaded.set()
            answer = await client.get("/readyz")
            answers.append((answer.status, await answer.json()))
        assert (await client.get("/healthz")).status == 200

    _serve(receiver.app(), scenario)
    assert answers == [
        (503, {"ready": False, "kafka": False, "registry": False}),
        (503, {"ready": False, "kafka": True, "registry": False}),
        (200, {"ready": True, "kafka": True, "registry": True}),
    ]


def test_the_receivers_probes_are_on_its_public_port_by_default(tmp_path: Path) -> None:
    receiver, _, _ = _receiver(tmp_path)
    assert _statuses(receiver.app(), PROBES) == {
        "/healthz": 200, "/readyz": 503, "/metrics": 200}
    # The admin listener says whether it is alive and the receiver ready; no metrics.
    assert _statuses(receiver.admin_app(), PROBES) == {
        "/healthz": 200, "/readyz": 503, "/metrics": 404}


def test_with_a_metrics_host_the_receivers_probes_leave_the_public_port(
        tmp_path: Path) -> None:
    receiver, _, _ = _receiver(tmp_path, METERSTREAM_METRICS_HOST="10.0.0.5")
    assert _statuses(receiver.app(), PROBES) == {"/healthz": 404, "/readyz": 404,
                                                 "/metrics": 404}
    assert _statuses(receiver.probe_app(), PROBES) == {
        "/healthz": 200, "/readyz": 503, "/metrics": 200}
    # The probe listener serves nothing else.
    assert _statuses(receiver.probe_app(), ("/v1/convex/logs", "/v1/deployments")) == {
        "/v1/convex/logs": 404, "/v1/deployments": 404}
    assert _statuses(receiver.admin_app(), ("/healthz", "/readyz")) == {
        "/healthz": 200, "/readyz": 503}


def test_probes_on_any_application() -> None:
    readiness = Readiness()
    readiness.add("schema", lambda: True)
    assert _statuses(add_probes(web.Application(), readiness), PROBES) == {
        "/healthz": 200, "/readyz": 200, "/metrics": 200}


class _Rows:
    def __init__(self) -> None:
        self.result_rows: list[Any] = []


class _ClickHouse:
    """Answers the high-water marks' query, or fails like a server that is away."""

    def __init__(self) -> None:
        self.away = True

    def query(self, _sql: str) -> _Rows:
        if self.away:
            raise ConnectionError("ClickHouse is away")
        return _Rows()


class _Consumer:
    def __init__(self) -> None:
        self.assigned: set[TopicPartition] = set()

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def pause(self, *_: TopicPartition) -> None:
        pass

    def resume(self, *_: TopicPartition) -> None:
        pass


def test_the_sink_is_ready_while_it_owns_partitions_with_their_high_water_marks(
        tmp_path: Path) -> None:
    settings = Settings.from_env({"METERSTREAM_DATA_DIR": str(tmp_path)})
    clickhouse, consumer = _ClickHouse(), _Consumer()

    async def scenario() -> list[bool]:
        sink = Sink(settings, clickhouse, consumer, None, asyncio.Event())  # type: ignore[arg-type]
        readiness = Readiness()
        readiness.add("partitions", lambda: sink.ready)
        seen = [sink.ready]
        assigned = [TopicPartition(topic, 0) for topic in sink.topics]
        consumer.assigned = set(assigned)
        await sink.on_assigned(assigned)  # the marks cannot be read: paused, not ready
        seen.append(sink.ready)
        clickhouse.away = False
        await sink.on_revoked()
        seen.append(sink.ready)
        await sink.on_assigned(assigned)
        seen.append(sink.ready)
        assert readiness.answer() == (200, {"ready": True, "partitions": True})
        await sink.on_revoked()  # partitions moving: not ready until the next assignment
        seen.append(sink.ready)
        return seen

    assert asyncio.run(scenario()) == [False, False, False, True, False]
