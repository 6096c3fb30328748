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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from processors import metrics

log = logging.getLogger(__name__)

Publish = Callable[[bytes, bytes], Awaitable[Any]]


class AlertLog:
    def __init__(self, bootstrap: str, topic: str, publish: Publish) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.publish_raw = publish
        self._published: dict[int, set[str]] = {}

    def forget_partitions(self, partitions: set[int]) -> None:
        for partition in partitions:
            self._published.pop(partition, None)

    async def ensure_loaded(self, partition: int, assigned: set[int]) -> None:
        """Reads what is on the alert partitions this worker holds, once per assignment:
        all of them in one pass, so a fresh worker pays one read, not one per partition."""
        if partition not in self._published:
            wanted = {p for p in assigned if p not in self._published} | {partition}
            self._published.update(await self._read_ids(wanted))

    async def _read_ids(self, partitions: set[int]) -> dict[int, set[str]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
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
        published = self._published[partition]
        sent = []
        for alert in alerts:
            if alert["id"] in published:
                continue
            alert["at"] = int(time.time() * 1000)
            sent.append((alert, await self.publish_raw(alert["deployment"].encode(),
                                                        orjson.dumps(alert))))
        for alert, future in sent:
            await future
            published.add(alert["id"])
            metrics.ALERTS.labels(alert["kind"]).inc()
            log.info("alert", extra={k: v for k, v in alert.items() if k != "at"})
