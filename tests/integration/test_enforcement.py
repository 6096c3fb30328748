"""Enforcement at the source on the real broker, against the stand-in Platform API.

The first test runs the loop (processors/enforcer.enforce_from_alerts) in the test's
process, with a clock the test moves, on a namespace of its own: the registry record and the quota
alerts are on the real topics as the admin API and the worker store them. A restart is
the loop cancelled and started again in its consumer group. The second runs the whole
pipeline: usage crossing a hard quota, the worker restarted, the quota raised."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from meterstream.core import secret_box
from meterstream.core.config import Settings
from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.registry import Deployment, RegistryView
from meterstream.core.topics import Topics, ensure_topics
from meterstream.core.windows import label, window_end, window_start
from processors import metrics
from processors.enforcer import enforce_from_alerts
from tests.support import free_port, metric_sample, read_topic, wait_for
from tests.support.clock import settled
from tests.support.convex_standin import ConvexStandIn
from tests.support.load import function_load
from tests.support.pipeline import running_pipeline

NAME = "capped-otter-123"
KEY = "prod:capped-otter-123|0123456789abcdef"
VAR = "APP_OVER_QUOTA"
HARD = {"metric": "function_calls", "period": "month", "limit": 1000, "hard": True}


@pytest.fixture
def convex() -> Iterator[ConvexStandIn]:
    standin = ConvexStandIn().start()
    standin.add(NAME, KEY)
    try:
        yield standin
    finally:
        standin.stop()


class Scene:
    def __init__(self, bootstrap: str, tmp_path: Path, convex: ConvexStandIn) -> None:
        self.bootstrap = bootstrap
        self.convex = convex
        self.settings = Settings.from_env({
            "METERSTREAM_KAFKA": bootstrap,
            "METERSTREAM_NAMESPACE": f"t{uuid.uuid4().hex[:10]}",
            "METERSTREAM_DATA_DIR": str(tmp_path),
            "METERSTREAM_PARTITIONS": "2",
            "METERSTREAM_CONVEX_API_URL": convex.url_template,
            "METERSTREAM_ENFORCE_VARIABLE": VAR,
            "METERSTREAM_ENFORCE_INTERVAL": "0.1",
        })
        self.topics = Topics.of(self.settings)
        self.now = int(datetime.now(UTC).timestamp() * 1000)
        self.period = window_start("month", self.now)
        self.registry = RegistryView(KafkaConnection.of(self.settings),
                                     self.topics.deployments.name)
        self.producer: AIOKafkaProducer | None = None
        self.loop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        secret_box.install(secret_box.load(self.settings, create=True))
        await ensure_topics(KafkaConnection.of(self.settings),
                            [self.topics.alerts, self.topics.deployments])
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await self.producer.start()
        self.registry.start()

    async def stop(self) -> None:
        await self.stop_loop()
        await self.registry.stop()
        if self.producer is not None:
            await self.producer.stop()
        secret_box.install(None)

    def start_loop(self) -> None:
        self.loop_task = asyncio.create_task(enforce_from_alerts(
            self.settings, self.registry, self.topics.alerts.name,
            f"{self.settings.namespace}-enforcement", clock=lambda: self.now))

    async def stop_loop(self) -> None:
        if self.loop_task is not None:
            self.loop_task.cancel()
            await asyncio.gather(self.loop_task, return_exceptions=True)
            self.loop_task = None

    async def restart_loop(self) -> None:
        """Stops the loop, starts it again, and returns once it made a pass over both
        partitions read to their end (the gauge is set at the end of each full pass)."""
        await self.stop_loop()
        metrics.ENFORCEMENT_PARTITIONS.set(0)
        self.start_loop()
        await wait(lambda: metrics.ENFORCEMENT_PARTITIONS._value.get() == 2,
                   "a full pass of the restarted loop")

    async def register(self, quotas: list[dict[str, Any]]) -> None:
        """The record as the admin API stores it (the deploy key sealed)."""
        assert self.producer is not None
        record = Deployment(NAME, quotas=quotas, enforce_at_source=True, deploy_key=KEY)
        sent = await self.producer.send_and_wait(self.topics.deployments.name,
                                                 record.to_json(), key=NAME.encode())
        await self.registry.wait_applied(sent.offset)

    async def quota_alert(self, threshold: float, usage: int) -> None:
        """As the worker publishes it (processors/due_alerts.quota_alert)."""
        assert self.producer is not None
        alert = {"id": f"quota|{NAME}|function_calls|month|{label(self.period)}|{threshold}",
                 "kind": "quota", "deployment": NAME, "metric": "function_calls",
                 "period": label(self.period), "period_unit": "month",
                 "threshold": threshold, "usage": usage, "limit": 1000, "hard": True,
                 "at": self.now}
        await self.producer.send_and_wait(self.topics.alerts.name, orjson.dumps(alert),
                                          key=NAME.encode())

    @property
    def updates(self) -> list[list[dict[str, Any]]]:
        return self.convex.deployments[NAME].env_updates

    def variable(self) -> str | None:
        return self.convex.deployments[NAME].env.get(VAR)


async def wait(condition: Callable[[], bool], what: str) -> None:
    """Waits for a condition on what the stand-in's thread or the loop's task changes,
    polled in a thread of its own so that the loop runs meanwhile."""
    await asyncio.to_thread(wait_for, lambda: condition() or None, 60, what)


def test_the_variable_is_set_once_survives_a_restart_and_goes_at_the_period_end(
        kafka_bootstrap: str, tmp_path: Path, convex: ConvexStandIn) -> None:
    scene = Scene(kafka_bootstrap, tmp_path, convex)
    until = datetime.fromtimestamp(window_end("month", scene.period) / 1000, UTC)
    expected = orjson.dumps({"exceeded": [{
        "metric": "function_calls", "period": "month",
        "until": until.strftime("%Y-%m-%dT%H:%M:%SZ")}]}).decode()

    async def scenario() -> None:
        await scene.start()
        try:
            await scene.register([HARD])
            scene.start_loop()
            await scene.quota_alert(0.8, 800)  # a warning: nothing to enforce
            await scene.quota_alert(1.0, 1000)
            await wait(lambda: scene.variable() is not None, "the variable set")
            assert scene.variable() == expected
            assert scene.updates == [[{"name": VAR, "value": expected}]]

            # A restart reads its own record back and changes nothing.
            await scene.restart_loop()
            assert len(scene.updates) == 1

            # The quota raised above the usage: removed; lowered again: set again.
            await scene.register([{**HARD, "limit": 5000}])
            await wait(lambda: scene.variable() is None, "the variable removed")
            await scene.register([HARD])
            await wait(lambda: scene.variable() is not None, "the variable set again")

            # The next period: removed, once.
            scene.now = window_end("month", scene.period)
            await wait(lambda: len(scene.updates) == 4, "the variable removed at the end")
            assert scene.variable() is None
            await scene.restart_loop()
            assert len(scene.updates) == 4
        finally:
            await scene.stop()

    asyncio.run(scenario())
    assert scene.updates == [[{"name": VAR, "value": expected}], [{"name": VAR}],
                             [{"name": VAR, "value": expected}], [{"name": VAR}]]
    recorded = [orjson.loads(m.value) for m in read_topic(kafka_bootstrap,
                                                          scene.topics.alerts.name)]
    enforcement = [a for a in recorded if a["kind"] == "enforcement"]
    assert [(a["id"], a["action"], a["value"]) for a in enforcement] == [
        (f"enforcement|{NAME}|1", "set", expected),
        (f"enforcement|{NAME}|2", "removed", None),
        (f"enforcement|{NAME}|3", "set", expected),
        (f"enforcement|{NAME}|4", "removed", None)]
    assert all(a["deployment"] == NAME and a["variable"] == VAR for a in enforcement)


def test_the_worker_enforces_crossed_usage_across_a_restart_until_the_quota_is_raised(
        kafka_bootstrap: str, tmp_path: Path, convex: ConvexStandIn) -> None:
    """The whole way: provisioned with --enforce, signed bodies through the receiver, the
    worker's quota alert, its enforcement loop; the pipeline stopped and started again."""
    name = "pipeline-otter-7"
    convex.add(name, KEY)
    now = int(time.time() * 1000)
    at = settled(now, 5_000, "day", before_ms=10_000)
    load = function_load(name, bodies=2, events_per_body=25, at_ms=at)
    calls = load.totals["function_calls"]
    receiver_port = free_port()
    env = {"METERSTREAM_NAMESPACE": f"t{uuid.uuid4().hex[:10]}",
           "METERSTREAM_PARTITIONS": "2",
           "METERSTREAM_RECEIVER_PORT": str(receiver_port),
           "METERSTREAM_PUBLIC_URL": f"http://127.0.0.1:{receiver_port}",
           "METERSTREAM_CONVEX_API_URL": convex.url_template,
           "METERSTREAM_ENFORCE_VARIABLE": VAR,
           "METERSTREAM_ENFORCE_INTERVAL": "0.2"}
    deployment = convex.deployments[name]
    with running_pipeline(kafka_bootstrap, tmp_path, extra_env=env) as pipeline:
        status, answer = pipeline.admin("POST", f"/v1/deployments/{name}/provision",
                                        {"deploy_key": KEY, "enforce_at_source": True})
        assert status == 200, answer
        assert answer["enforce_at_source"] is True
        assert "deploy_key" not in answer
        status, _ = pipeline.admin("PUT", f"/v1/deployments/{name}/quotas", {"quotas": [
            {"metric": "function_calls", "period": "day", "limit": calls, "hard": True}]})
        assert status == 200
        stream = deployment.live()
        assert stream is not None
        assert pipeline.post(load.bodies[0], stream.secret)[0] == 200
        port = pipeline.env["METERSTREAM_WORKER_PORT"]
        wait_for(lambda: metric_sample(port, "meterstream_worker_enforcement_partitions") == 2,
                 60, "the enforcement loop holding both partitions")
        assert deployment.env_updates == []  # half the limit: nothing to enforce
        assert pipeline.post(load.bodies[1], stream.secret)[0] == 200
        value = wait_for(lambda: deployment.env.get(VAR), 60, "the variable set")
        day_end = datetime.fromtimestamp(window_end("day", window_start("day", at)) / 1000, UTC)
        assert orjson.loads(value) == {"exceeded": [{
            "metric": "function_calls", "period": "day",
            "until": day_end.strftime("%Y-%m-%dT%H:%M:%SZ")}]}
        assert deployment.env_updates == [[{"name": VAR, "value": value}]]

    # The same namespace and data directory again: the worker restarts.
    env["METERSTREAM_WORKER_PORT"] = str(free_port())
    with running_pipeline(kafka_bootstrap, tmp_path, extra_env=env) as pipeline:
        port = pipeline.env["METERSTREAM_WORKER_PORT"]
        wait_for(lambda: metric_sample(port, "meterstream_worker_enforcement_partitions") == 2,
                 120, "the restarted enforcement loop's pass over both partitions")
        assert len(deployment.env_updates) == 1
        status, _ = pipeline.admin("PUT", f"/v1/deployments/{name}/quotas", {"quotas": [
            {"metric": "function_calls", "period": "day", "limit": calls + 1, "hard": True}]})
        assert status == 200
        wait_for(lambda: VAR not in deployment.env or None, 60, "the variable removed")
        assert deployment.env_updates[1:] == [[{"name": VAR}]]
        alerts = [orjson.loads(m.value)
                  for m in read_topic(kafka_bootstrap, f"{pipeline.namespace}.alerts")]
    assert [a["id"] for a in alerts if a["kind"] == "quota"] == [
        f"quota|{name}|function_calls|day|{label(window_start('day', at))}|{t}"
        for t in (0.8, 1.0)]
    assert [(a["action"], a["value"]) for a in alerts if a["kind"] == "enforcement"] == [
        ("set", value), ("removed", None)]
