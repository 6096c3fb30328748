"""Enforcement at the source, the loop: reads `<ns>.alerts`, and for each opted-in
deployment whose variable should change (processors/enforcement.py decides), makes the
change at Convex (processors/convex_env.py), then records it as an `enforcement` alert.

It runs in the worker process in its own consumer group (`<ns>-enforcement`), outside
Faust, like alert delivery: Convex being slow holds neither rebalances nor usage. Each
partition it is given is read from its beginning (the topic keeps 8 weeks, longer than
any quota period), and nothing is changed for a partition's deployments until it has
read to the end the partition had when it was given: what was applied before a restart
or a rebalance is known before anything is decided, so a restart changes nothing (no
flapping) and no offsets need committing.

Exactly once per change: a change is made only while the last recorded state differs
from the wanted one, and is recorded (keyed by deployment, so on the same partition)
once Convex took it. A crash between the two repeats the request after the restart;
the request is idempotent (it sets the value the variable already has), so the
deployment sees one change and the topic one record. A change Convex does not take is
tried again on later ticks, waiting twice as long after each failure (up to an hour).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Protocol

import faust
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener

from meterstream.core.config import Settings
from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.registry import Deployment, RegistryView
from processors import metrics
from processors.background import run_beside
from processors.convex_env import ConvexEnv, EnvUpdateFailed
from processors.enforcement import (
    DeploymentEnforcement,
    changes,
    enforcement_alert,
    exceeded,
    note,
    value_of,
)

log = logging.getLogger(__name__)

MAX_RETRY_MS = 3_600_000
Record = Callable[[bytes, bytes], Awaitable[None]]
"""Stores (key, value) on the alerts topic and returns once Kafka has it."""


class Registry(Protocol):
    def get(self, name: str) -> Deployment | None: ...


class Env(Protocol):
    async def update(self, deployment: str, deploy_key: str,
                     changes: list[dict[str, str]]) -> int: ...


class Enforcer:
    """The state of the partitions this loop holds, and the changes it makes."""

    def __init__(self, registry: Registry, env: Env, record: Record, variable: str,
                 clock: Callable[[], int], retry_ms: int = 5_000) -> None:
        self.registry = registry
        self.env = env
        self.record = record
        self.variable = variable
        self.clock = clock
        self.retry_ms = retry_ms
        self._partitions: dict[int, dict[str, DeploymentEnforcement]] = {}
        self._ready: set[int] = set()
        self._failures: dict[str, tuple[int, int]] = {}
        """deployment -> (failures in a row, when (ms) to try again)"""

    def assign(self, partitions: Collection[int]) -> None:
        """Partitions given: their state is rebuilt from their beginning."""
        for partition in partitions:
            self._partitions[partition] = {}
            self._ready.discard(partition)

    def revoke(self, partitions: Collection[int]) -> None:
        for partition in partitions:
            self._partitions.pop(partition, None)
            self._ready.discard(partition)

    def caught_up(self, partition: int) -> None:
        """The partition was read to its end as of its assignment: act on it from now on."""
        if partition in self._partitions:
            self._ready.add(partition)

    def take(self, partition: int, value: bytes | None) -> str | None:
        """Takes in one alert; returns its deployment, or None for a message to ignore."""
        deployments = self._partitions.get(partition)
        if deployments is None or not value:
            return None
        try:
            alert = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(alert, dict) or not isinstance(alert.get("deployment"), str):
            return None
        name = alert["deployment"]
        note(deployments.setdefault(name, DeploymentEnforcement()), alert)
        return str(name)

    async def enforce(self, only: Collection[str] | None = None) -> None:
        """Makes the changes due in the partitions read to their end (for `only` these
        deployments, when given)."""
        now = self.clock()
        enforced = 0
        for partition in sorted(self._ready):
            for name, state in list(self._partitions.get(partition, {}).items()):
                if only is None or name in only:
                    await self._enforce_one(name, state, now)
                if state.applied is not None and state.applied.value is not None:
                    enforced += 1
        if only is None:
            metrics.ENFORCED_DEPLOYMENTS.set(enforced)
            metrics.ENFORCEMENT_PARTITIONS.set(len(self._ready))

    async def _enforce_one(self, name: str, state: DeploymentEnforcement, now: int) -> None:
        record = self.registry.get(name)
        found = exceeded(state, record, now)
        value = value_of(found)
        wanted = changes(state.applied, self.variable, value)
        if not wanted:
            self._failures.pop(name, None)
            return
        failures, retry_at = self._failures.get(name, (0, 0))
        if now < retry_at:
            return
        fields = {"deployment": name, "variable": self.variable, "value": value}
        deploy_key = None if record is None else record.deploy_key
        try:
            if deploy_key is None:
                raise EnvUpdateFailed("no deploy key stored (provision the deployment)",
                                      final=True)
            attempts = await self.env.update(name, deploy_key, wanted)
        except EnvUpdateFailed as exc:
            reason = ("no_deploy_key" if deploy_key is None
                      else "refused" if exc.final else "unavailable")
            metrics.ENFORCEMENT_FAILURES.labels(reason).inc()
            wait = min(MAX_RETRY_MS, self.retry_ms * 2 ** min(failures, 20))
            self._failures[name] = (failures + 1, now + wait)
            log.error("enforcement change not made; trying again later", extra={
                **fields, "reason": reason, "error": str(exc), "retry_in_s": wait / 1000})
            return
        self._failures.pop(name, None)
        alert = enforcement_alert(name, state.applied, self.variable, value, found,
                                  int(time.time() * 1000))
        await self.record(name.encode(), orjson.dumps(alert))
        note(state, alert)
        metrics.ENFORCEMENT_CHANGES.labels(alert["action"]).inc()
        log.info("enforcement variable " + alert["action"],
                 extra={**fields, "attempts": attempts, "id": alert["id"]})


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, consumer: AIOKafkaConsumer, enforcer: Enforcer) -> None:
        self.consumer = consumer
        self.enforcer = enforcer
        self.ends: dict[Any, int] = {}

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.enforcer.revoke([tp.partition for tp in revoked])
        for tp in revoked:
            self.ends.pop(tp, None)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        tps = list(assigned)
        self.enforcer.assign([tp.partition for tp in tps])
        if tps:
            await self.consumer.seek_to_beginning(*tps)
            self.ends.update(await self.consumer.end_offsets(tps))

    async def check_caught_up(self) -> bool:
        """Marks the partitions read to their end; True if there were any."""
        became = False
        for tp, end in list(self.ends.items()):
            if await self.consumer.position(tp) >= end:
                self.enforcer.caught_up(tp.partition)
                del self.ends[tp]
                became = True
        return became


async def enforce_from_alerts(settings: Settings, registry: RegistryView, alerts_topic: str,
                              group: str, clock: Callable[[], int] | None = None,
                              env: Env | None = None) -> None:
    """Runs the loop until cancelled. `clock` (ms) decides when periods end."""
    kafka = KafkaConnection.of(settings)
    consumer = AIOKafkaConsumer(**kafka.client_options(), group_id=group,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                client_id="enforcement")
    producer = AIOKafkaProducer(**kafka.client_options(), acks="all",
                                enable_idempotence=True, client_id="enforcement")

    async def record(key: bytes, value: bytes) -> None:
        await (await producer.send(alerts_topic, value, key=key))

    enforcer = Enforcer(registry, env or ConvexEnv(settings.convex_api_url), record,
                        settings.enforce_variable,
                        clock or (lambda: int(time.time() * 1000)),
                        retry_ms=int(settings.enforce_interval * 1000))
    listener = _Rebalance(consumer, enforcer)
    await registry.wait_loaded()
    await producer.start()
    try:
        await consumer.start()
        consumer.subscribe([alerts_topic], listener=listener)
        interval_ms = int(settings.enforce_interval * 1000)
        next_tick = 0.0
        loop = asyncio.get_running_loop()
        while True:
            batches = await consumer.getmany(timeout_ms=interval_ms)
            touched = {name for tp, messages in batches.items() for message in messages
                       if (name := enforcer.take(tp.partition, message.value)) is not None}
            if await listener.check_caught_up() or loop.time() >= next_tick:
                next_tick = loop.time() + settings.enforce_interval
                await enforcer.enforce()
            elif touched:
                await enforcer.enforce(touched)
    finally:
        await consumer.stop()
        await producer.stop()


def attach_enforcement(app: faust.App, settings: Settings, registry: RegistryView,
                       alerts_topic: str) -> None:
    """Runs the enforcement loop beside the worker's agents."""

    run_beside(app, "enforcement",
               lambda: enforce_from_alerts(settings, registry, alerts_topic,
                                           f"{settings.namespace}-enforcement"),
               "the state is rebuilt from the alerts topic")
