"""meterstream/core/cancellation.py: a cancel CPython 3.11's wait_for lost is noticed, and
the loops stopped by a cancel stop even then (the lag meter's own case is in
tests/unit/test_consumer_lag.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition

from meterstream.core.cancellation import raise_if_cancelled
from sinks.committer import Committer


def test_no_cancel_and_a_handled_timeout_do_not_raise() -> None:
    """(A cancel that does raise: the committer below, and the lag meter's test.)"""
    async def scenario() -> list[str]:
        seen = []
        raise_if_cancelled()  # nothing asked
        seen.append("not cancelled")
        try:
            async with asyncio.timeout(0.01):  # a timeout cancels and takes it back
                await asyncio.sleep(1)
        except TimeoutError:
            raise_if_cancelled()
            seen.append("timed out")
        try:
            await asyncio.wait_for(asyncio.sleep(1), 0.01)
        except TimeoutError:
            raise_if_cancelled()
            seen.append("wait_for timed out")
        return seen

    assert asyncio.run(scenario()) == ["not cancelled", "timed out", "wait_for timed out"]


class _Consumer:
    """Commits that finish only when told to."""

    def __init__(self) -> None:
        self.tp = TopicPartition("t", 0)
        self.committing = asyncio.Event()
        self.go = asyncio.Event()
        self.commits = 0

    def assignment(self) -> set[TopicPartition]:
        return {self.tp}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits += 1
        self.committing.set()
        await self.go.wait()


def test_a_cancel_lost_inside_a_commit_still_stops_the_committer() -> None:
    async def scenario() -> None:
        consumer = _Consumer()
        committer = Committer(cast_consumer(consumer))
        task = asyncio.create_task(committer.run())
        committer.add({consumer.tp: 10})
        await consumer.committing.wait()
        consumer.go.set()  # the commit finishes in the same turn as the cancel comes
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=5)
        assert done == {task}, "the committer still runs"
        assert task.cancelled()
        assert consumer.commits == 1

    asyncio.run(scenario())


def cast_consumer(consumer: _Consumer) -> Any:
    return consumer
