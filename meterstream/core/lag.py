"""Consumer lag: how far a consumer group is behind on the partitions this process owns.

A partition's lag is its end offset (the next offset a producer writes) minus the group's
committed offset (the next one the group is to process); with nothing committed yet, or a
commit older than the log start, it counts from the log start, where a consumer with
`auto_offset_reset=earliest` begins. It is measured from the broker, not from the
consumer: a crash makes a restarted consumer read from the committed offset again, so
that is the work outstanding. It therefore trails the processing by one commit interval.

Each process reports only the partitions assigned to it, so the series of all the
processes of a group sum to the group's lag with none counted twice, and a gauge has at
most one series per partition of the topics it reads (no series per deployment). A
partition that moves to another process loses its series here at the next look.

A look that fails (the broker or the group coordinator away) leaves the gauge as it was
and counts in `meterstream_consumer_lag_failures_total`; the next look starts with new
clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge

from meterstream.core.cancellation import raise_if_cancelled
from meterstream.core.kafka_client import KafkaConnection

log = logging.getLogger("meterstream.lag")

LOOK_FAILURES = Counter(
    "meterstream_consumer_lag_failures_total",
    "Looks at the consumer lag that failed (the broker or the group coordinator did not "
    "answer); the lag gauges keep their last values until a look succeeds.",
)

# One look waits at most this long for the broker, so that a stuck look cannot stop the
# next ones.
LOOK_TIMEOUT_SECONDS = 30.0

Owned = Callable[[], Iterable[tuple[str, int]]]
"""The (topic, partition)s this process owns now."""


class LagMeter:
    """Looks at a group's lag on the partitions `owned` returns and sets `gauge`, labelled
    `topic` and `partition`, to it."""

    def __init__(self, kafka: KafkaConnection, group: str, gauge: Gauge, owned: Owned,
                 client_id: str = "lag-meter") -> None:
        self.kafka = kafka
        self.group = group
        self.gauge = gauge
        self.owned = owned
        self.client_id = client_id
        self._reported: set[tuple[str, int]] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None

    async def look(self) -> dict[tuple[str, int], int]:
        """Measures the lag of every owned partition once, sets the gauge and removes the
        series of partitions no longer owned; returns the lag measured."""
        owned = sorted(set(self.owned()))
        lag = await self._lag(owned) if owned else {}
        for topic, partition in self._reported - set(lag):
            with contextlib.suppress(KeyError):
                self.gauge.remove(topic, str(partition))
        for (topic, partition), value in lag.items():
            self.gauge.labels(topic, str(partition)).set(value)
        self._reported = set(lag)
        return lag

    async def _lag(self, owned: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        consumer, admin = await self._clients()
        partitions = [TopicPartition(topic, partition) for topic, partition in owned]
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        committed = await admin.list_consumer_group_offsets(self.group, partitions=partitions)
        lag: dict[tuple[str, int], int] = {}
        for tp in partitions:
            start, end = starts[tp], ends[tp]
            meta = committed.get(tp)
            # -1: the group committed nothing for the partition.
            position = max(meta.offset if meta is not None else -1, start)
            lag[(tp.topic, tp.partition)] = max(0, end - position)
        return lag

    async def _clients(self) -> tuple[AIOKafkaConsumer, AIOKafkaAdminClient]:
        if self._consumer is None:
            # No group: this client only asks for offsets and never joins the group it
            # measures (that would take partitions from the consumers it watches).
            consumer = AIOKafkaConsumer(**self.kafka.client_options(),
                                        client_id=self.client_id)
            self._consumer = consumer  # closed by close() even if it fails to start
            await consumer.start()
        if self._admin is None:
            admin = AIOKafkaAdminClient(**self.kafka.client_options(),
                                        client_id=self.client_id)
            self._admin = admin
            await admin.start()
        return self._consumer, self._admin

    async def look_or_log(self) -> bool:
        """One look; a failure is logged and counted instead of raised. True if it
        succeeded."""
        try:
            await asyncio.wait_for(self.look(), LOOK_TIMEOUT_SECONDS)
        except (KafkaError, OSError, TimeoutError) as exc:
            LOOK_FAILURES.inc()
            log.warning("consumer lag not available; looking again later",
                        extra={"group": self.group, "error": repr(exc)[:500]})
            await self.close()  # new clients start from the bootstrap servers again
            return False
        return True

    async def run(self, interval: float) -> None:
        """Looks every `interval` seconds until cancelled; closes its clients then."""
        try:
            while True:
                await self.look_or_log()
                # A cancel during the look may have come back as the look's own outcome,
                # which look_or_log takes for a failed look (meterstream/core/cancellation.py).
                raise_if_cancelled()
                await asyncio.sleep(interval)
        finally:
            await self.close()

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        admin, self._admin = self._admin, None
        for closing in ((consumer.stop() if consumer else None),
                        (admin.close() if admin else None)):
            if closing is not None:
                with contextlib.suppress(KafkaError, OSError):
                    await closing
