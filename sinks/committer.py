"""Committing the offsets of stored batches, in the background.

A commit is never needed for exactness (what is read again is skipped by its
origin, sinks/high_water.py), only so that a restarted sink reads less again.
So commits run beside the inserts instead of between them: a Kafka coordinator
that is slow or gone never holds ClickHouse inserts, and a failed commit is
retried with the next one (offsets only move forward).
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition

from meterstream.core.cancellation import raise_if_cancelled
from sinks import metrics

log = logging.getLogger("meterstream.sink")

COMMIT_TIMEOUT_SECONDS = 10.0
RETRY_SECONDS = 1.0


class Committer:
    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer
        self.pending: dict[TopicPartition, int] = {}
        self._wake = asyncio.Event()

    def add(self, offsets: dict[TopicPartition, int]) -> None:
        self._merge(offsets)
        self._wake.set()

    def _merge(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            if offset > self.pending.get(tp, -1):
                self.pending[tp] = offset

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            committed = await self.commit()
            raise_if_cancelled()  # a cancel lost in commit's wait_for (core/cancellation.py)
            if not committed:
                await asyncio.sleep(RETRY_SECONDS)
                self._wake.set()

    async def commit(self) -> bool:
        """Commits what is pending for the assigned partitions, waiting at most
        COMMIT_TIMEOUT_SECONDS; False if that failed (it stays pending)."""
        assigned = self.consumer.assignment()
        offsets = {tp: offset for tp, offset in self.pending.items() if tp in assigned}
        self.pending = {}
        if not offsets:
            return True
        try:
            await asyncio.wait_for(self.consumer.commit(offsets), COMMIT_TIMEOUT_SECONDS)
        except Exception as exc:
            self._merge(offsets)
            metrics.COMMIT_FAILURES.inc()
            log.warning("offset commit failed after the rows were stored; retrying (what is "
                        "read again is skipped)", extra={"error": repr(exc)[:500]})
            return False
        return True

    def forget(self) -> None:
        """Drops what is pending (the partitions were revoked: their next owner reads from
        the last commit and skips what is stored)."""
        self.pending = {}
