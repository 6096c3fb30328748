"""Alerts on `<ns>.alerts`, each exactly once.

An alert has a deterministic id: `quota|{deployment}|{metric}|{period}|{period start}|
{threshold}` (with `|user:{id}` for a per-user quota) or `runaway|{deployment}|{episode
start}`. The worker decides from the live state which alerts are due and publishes
those whose id is not on the topic yet:

- the topic is keyed by deployment and has the raw topic's partitions, so the worker
  that owns a deployment's raw partition also owns its alerts;
- before it processes the first message of a partition it was given (at start, after
  a crash, after a rebalance), it reads that alert partition to its end, so it knows
  what an earlier owner already published;
- alerts due are re-derived from the state for every message processed, so a crash
  after the state was written but before the alert was stored still publishes it when
  the message is processed again.

Publishing is awaited before the raw offset can be committed; Faust waits for the
message in flight before it gives a partition away.

Per-user quota alerts are bounded: once `max_user_alerts` users of a deployment,
quota and period have had an alert (as the topic shows), the alerts due for further
users are replaced by one `quota_users` alert per threshold, with the number of users
folded into it. Which users get their own alert is decided in the order the alerts
are due, against the users already on the topic, so processing a message again
after a crash (which re-derives the same alerts due from the same state) decides
the same; a `quota_users` alert, like any other, is published once by its id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from meterstream.core.kafka_client import KafkaConnection
from processors import metrics

log = logging.getLogger(__name__)

Publish = Callable[[bytes, bytes], Awaitable[Any]]
DEFAULT_MAX_USER_ALERTS = 100


def user_alert_group(alert_id: str) -> tuple[str, str] | None:
    """(deployment, quota and period, user) of a per-user quota alert's id, else None.
    The id is quota|{deployment}|{metric}|{period}|{start}|{threshold}|user:{id}; only the
    user id may hold a "|"."""
    if not alert_id.startswith("quota|"):
        return None
    parts = alert_id.split("|", 6)
    if len(parts) < 7 or not parts[6].startswith("user:"):
        return None
    return "|".join(parts[:5]), parts[6][len("user:"):]


def bound_user_alerts(alerts: list[dict[str, Any]], alerted: dict[str, set[str]],
                      max_users: int) -> list[dict[str, Any]]:
    """`alerts` with the per-user ones beyond `max_users` users per group (deployment,
    quota, period) replaced by one `quota_users` alert per group and threshold.
    `alerted`: the users of each group that have an alert already (not changed)."""
    out: list[dict[str, Any]] = []
    taken: dict[str, set[str]] = {}
    folded: dict[tuple[str, float], dict[str, Any]] = {}
    for alert in alerts:
        grouped = user_alert_group(alert["id"]) if "user" in alert else None
        if grouped is None:
            out.append(alert)
            continue
        group, user = grouped
        before = alerted.get(group, set())
        mine = taken.setdefault(group, set())
        if user in before or user in mine:
            out.append(alert)
            continue
        if len(before) + len(mine) < max_users:
            mine.add(user)  # a user with no alert yet
            out.append(alert)
            continue
        aggregate = folded.get((group, alert["threshold"]))
        if aggregate is None:
            aggregate = folded[(group, alert["threshold"])] = {
                **{k: v for k, v in alert.items() if k not in ("user", "usage")},
                "id": f"{group}|{alert['threshold']}|users", "kind": "quota_users",
                "users": 0, "max_user_alerts": max_users}
            out.append(aggregate)
        aggregate["users"] += 1
        metrics.USER_ALERTS_FOLDED.inc()
    return out


class AlertLog:
    def __init__(self, kafka: KafkaConnection, topic: str, publish: Publish,
                 max_user_alerts: int = DEFAULT_MAX_USER_ALERTS) -> None:
        self.kafka = kafka
        self.topic = topic
        self.publish_raw = publish
        self.max_user_alerts = max_user_alerts
        self._published: dict[int, set[str]] = {}
        self._alerted: dict[int, dict[str, set[str]]] = {}
        """partition -> group (deployment, quota, period) -> users with an alert"""
        self._lock = asyncio.Lock()
        """One load or publish at a time: the agent's and the stream health check's (a
        timer) could otherwise both find an id unpublished and both send it, or a load
        that started before a publish could replace what the publish remembered."""

    def forget_partitions(self, partitions: set[int]) -> None:
        for partition in partitions:
            self._published.pop(partition, None)
            self._alerted.pop(partition, None)

    def _remember(self, partition: int, alert_id: str) -> None:
        published = self._published.get(partition)
        if published is None:  # given away meanwhile: its next owner reads the topic
            return
        published.add(alert_id)
        grouped = user_alert_group(alert_id)
        if grouped is not None:
            self._alerted.setdefault(partition, {}).setdefault(grouped[0], set()).add(
                grouped[1])

    def published(self, partition: int) -> frozenset[str]:
        """The ids on a loaded partition of the topic (empty if it is not loaded)."""
        return frozenset(self._published.get(partition, ()))

    async def ensure_loaded(self, partition: int, assigned: set[int]) -> None:
        """Reads what is on the alert partitions this worker holds, once per assignment:
        all of them in one pass, so a fresh worker pays one read, not one per partition."""
        if partition in self._published:
            return
        async with self._lock:
            if partition in self._published:  # loaded while this one waited
                return
            wanted = {p for p in assigned if p not in self._published} | {partition}
            for loaded, ids in (await self._read_ids(wanted)).items():
                self._published[loaded] = set()
                self._alerted[loaded] = {}
                for alert_id in ids:
                    self._remember(loaded, alert_id)

    async def _read_ids(self, partitions: set[int]) -> dict[int, set[str]]:
        consumer = AIOKafkaConsumer(**self.kafka.client_options(), group_id=None,
                                    enable_auto_commit=False, client_id="alert-log",
                                    auto_offset_reset="earliest", fetch_max_wait_ms=10)
        await consumer.start()
        try:
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            ids: dict[int, set[str]] = {tp.partition: set() for tp in tps}
            pending = {tp for tp in tps if ends[tp] > 0}
            while pending:
                batch = await consumer.getmany(*pending, timeout_ms=1000)
                for tp, messages in batch.items():
                    for message in messages:
                        if message.offset < ends[tp] and message.value:
                            ids[tp.partition].add(orjson.loads(message.value)["id"])
                for tp in list(pending):
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
            log.info("alert log loaded", extra={
                "partitions": sorted(partitions), "alerts": sum(map(len, ids.values()))})
            return ids
        finally:
            await consumer.stop()

    async def publish(self, partition: int, alerts: list[dict[str, Any]]) -> None:
        """Publishes the alerts not yet on the topic and waits until Kafka stored them."""
        if not alerts:
            return
        async with self._lock:
            await self._publish(partition, alerts)

    async def _publish(self, partition: int, alerts: list[dict[str, Any]]) -> None:
        published = self._published.get(partition)
        if published is None:
            # Revoked since it was loaded (the health check runs beside the agent, and
            # Faust waits only for the agent): the next owner derives these alerts again.
            return
        sent = []
        for alert in bound_user_alerts(alerts, self._alerted.get(partition, {}),
                                       self.max_user_alerts):
            if alert["id"] in published:
                continue
            alert["at"] = int(time.time() * 1000)
            sent.append((alert, await self.publish_raw(alert["deployment"].encode(),
                                                        orjson.dumps(alert))))
        for alert, future in sent:
            await future
            self._remember(partition, alert["id"])
            metrics.ALERTS.labels(alert["kind"]).inc()
            log.info("alert", extra={k: v for k, v in alert.items() if k != "at"})
