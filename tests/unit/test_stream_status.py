"""The Convex stream status check (processors/stream_status.py): what a LogStreamConfig
means, which worker checks a deployment, and one `stream_failed` per episode with its
recovery, numbered from what is on the alert topic (so a restart repeats nothing)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import murmur2

from meterstream.core import secret_box
from meterstream.core.registry import Deployment, InvalidDeployment, updated
from meterstream.core.secret_box import Keyring
from processors import metrics
from processors.app import run_check
from processors.health_check import HealthCheck
from processors.stream_health import HealthRules, StreamHealth
from processors.stream_status import (
    PlatformStatus,
    StreamStatus,
    StreamStatusCheck,
    owner_partition,
)
from tests.support.alerts import ListedAlerts

HERE = "https://meter.example/v1/convex/logs"
NOW = 1_795_000_000_000
judge = PlatformStatus("http://convex.invalid/d/{deployment}/api/v1", HERE).judge


def config(kind: str, url: str = HERE, reason: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"type": kind}
    if reason is not None:
        status["reason"] = reason
    return {"logStreamType": "webhook", "id": "ls1", "status": status, "url": url,
            "format": "jsonl"}


def test_a_config_means_failed_gone_elsewhere_or_convex_s_own_status() -> None:
    assert judge(config("failed", reason="verification got 404")) == StreamStatus(
        "failed", "verification got 404", HERE)
    assert judge(config("active")) == StreamStatus("active", None, HERE)
    assert judge(config("pending")).state == "pending"
    assert judge(config("restarting")).state == "restarting"
    assert judge(config("deleting")).state == "gone"
    elsewhere = judge(config("active", url="https://other.example/hook"))
    assert (elsewhere.state, elsewhere.reason) == (
        "elsewhere", "the log stream sends to https://other.example/hook")
    assert judge(["not", "a", "config"]).state == "unknown"


def test_the_owner_is_the_partition_the_receiver_writes_the_deployment_to() -> None:
    for name in ("happy-otter-123", "a", "x" * 128):
        assert owner_partition(name, 12) == (murmur2(name.encode()) & 0x7FFFFFFF) % 12
    assert owner_partition("happy-otter-123", 1) == 0


class Registry:
    def __init__(self, *records: Deployment) -> None:
        self.records = {record.name: record for record in records}

    def all(self) -> list[Deployment]:
        return [self.records[name] for name in sorted(self.records)]


def provisioned(name: str, **changes: Any) -> Deployment:
    return Deployment(name=name, log_stream_id="ls1", deploy_key="prod:key-0123456789",
                      **changes)


class Convex:
    """The statuses the stand-in answers, per deployment, and who asked with which key."""

    def __init__(self) -> None:
        self.states: dict[str, StreamStatus] = {}
        self.asked: list[tuple[str, str, str]] = []

    async def __call__(self, deployment: str, key: str, stream_id: str) -> StreamStatus:
        self.asked.append((deployment, key, stream_id))
        return self.states[deployment]


def test_one_failed_alert_per_episode_and_its_recovery_across_a_restart() -> None:
    convex = Convex()
    alerts = ListedAlerts()
    registry = Registry(provisioned("app-one"))

    def check() -> StreamStatusCheck:
        return StreamStatusCheck(registry, alerts, lambda: {0}, 1,  # type: ignore[arg-type]
                                 convex, lambda: NOW)

    async def scenario() -> None:
        worker = check()
        convex.states["app-one"] = StreamStatus("active", None, HERE)
        await worker.run()
        convex.states["app-one"] = StreamStatus("failed", "verification got 404", HERE)
        await worker.run()
        await worker.run()  # still failed: the same episode
        assert worker.failing("app-one")
        assert worker.report("app-one") == {"state": "failed",
                                            "reason": "verification got 404", "url": HERE}
        convex.states["app-one"] = StreamStatus("restarting")
        await worker.run()  # on its way back: no change
        # A new worker (restart, rebalance) reads the topic: no second alert.
        restarted = check()
        alerts.forget_partitions({0})
        await restarted.run()
        convex.states["app-one"] = StreamStatus("active", None, HERE)
        await restarted.run()
        await restarted.run()
        assert not restarted.failing("app-one")
        convex.states["app-one"] = StreamStatus("gone", "log stream ls1 does not exist")
        await restarted.run()  # a second episode

    asyncio.run(scenario())
    assert [(a["id"], a["kind"]) for a in alerts.stored] == [
        ("stream_failed|app-one|stream_status|1", "stream_failed"),
        ("stream_recovered|app-one|stream_status|1", "stream_recovered"),
        ("stream_failed|app-one|stream_status|2", "stream_failed")]
    first, recovered, second = alerts.stored
    assert (first["status"], first["reason"], first["log_stream_id"]) == (
        "failed", "verification got 404", "ls1")
    assert recovered["recovers"] == first["id"]
    assert (second["status"], second["reason"]) == ("gone", "log stream ls1 does not exist")
    assert set(convex.asked) == {("app-one", "prod:key-0123456789", "ls1")}


def test_only_provisioned_deployments_of_this_worker_are_asked() -> None:
    convex = Convex()
    names = [f"app-{n}" for n in range(20)]
    mine = {name for name in names if owner_partition(name, 2) == 0}
    registry = Registry(*(provisioned(name) for name in names),
                        Deployment(name="registered-only"),  # no stream, no key
                        Deployment(name="no-key", log_stream_id="ls9"),
                        provisioned("removed-one", removed_at=NOW))
    for name in names:
        convex.states[name] = StreamStatus("active", None, HERE)
    check = StreamStatusCheck(registry, ListedAlerts(), lambda: {0}, 2,  # type: ignore[arg-type]
                              convex, lambda: NOW)
    asyncio.run(check.run())
    assert 0 < len(mine) < len(names)
    assert {name for name, _, _ in convex.asked} == mine


def test_a_failed_stream_counts_as_failed_in_the_health_views() -> None:
    """Even for a deployment that never sent an event (its stream failed at creation)."""
    table: dict[str, Any] = {}
    health = StreamHealth(table, SimpleNamespace(remember=lambda *_: None), HealthRules())
    health.observe("app-seen", {"function_execution": NOW}, 0, 1)
    failing = {"app-seen", "app-never"}
    registry = Registry(Deployment(name="app-seen"), Deployment(name="app-never"),
                        Deployment(name="app-fine"))
    check = HealthCheck(health, registry, ListedAlerts(), lambda: {0},  # type: ignore[arg-type]
                        lambda: NOW, lambda name: name in failing)
    assert asyncio.run(check.run()) == {"failed": 2, "stale": 0, "silent": 0, "ok": 0}
    assert check.local_counts()["counts"] == {"failed": 2, "stale": 0, "silent": 0, "ok": 0}


def test_the_deploy_key_is_sealed_at_rest_kept_by_updates_and_never_shown() -> None:
    key = "prod:app-one|eyJ2IjoiZGVwbG95LWtleSJ9"
    secret_box.install(Keyring(bytes(range(32))))
    try:
        record = provisioned("app-one", webhook_secret="s" * 32)
        record = Deployment(**{**record.__dict__, "deploy_key": key})
        stored = record.to_json()
        assert key.encode() not in stored
        assert secret_box.is_sealed(orjson.loads(stored)["deploy_key"])
        assert Deployment.from_json(stored).deploy_key == key
        assert key not in json.dumps(record.public())
        assert key not in repr(record)
        # A PUT of other fields keeps it; a PUT cannot set it.
        assert updated(record, "app-one", {"team": "acme"}).deploy_key == key
        with pytest.raises(InvalidDeployment) as refused:
            updated(record, "app-one", {"deploy_key": "prod:other|x"})
        assert "deploy_key" in refused.value.fields
    finally:
        secret_box.install(None)


def test_a_check_that_raises_is_counted_and_logged_not_fatal(
        caplog: pytest.LogCaptureFixture) -> None:
    class Broken(StreamStatusCheck):
        async def run(self) -> None:
            raise ConnectionError("the alert topic cannot be read")

    broken = Broken(Registry(), ListedAlerts(), lambda: {0}, 1,  # type: ignore[arg-type]
                    Convex(), lambda: NOW)
    failures = metrics.HEALTH_CHECK_FAILURES.labels("Broken")
    before = failures._value.get()
    assert asyncio.run(run_check(broken)) is False
    assert failures._value.get() == before + 1
    assert "stream health check failed" in caplog.text
    fine = StreamStatusCheck(Registry(), ListedAlerts(), lambda: {0}, 1,  # type: ignore[arg-type]
                             Convex(), lambda: NOW)
    assert asyncio.run(run_check(fine)) is True
