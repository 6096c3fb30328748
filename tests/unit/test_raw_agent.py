"""The worker's agent loop (processors/raw_agent.py) driven by a fake Faust stream, no
broker: raw messages are acked in order and only once what came out of them is
delivered; a message that keeps failing is retried, then dead-lettered and acked in its
place; a failure that is not the message's stops the agent without an ack."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError

from meterstream.core.topics import ORIGIN_HEADER, RECEIVED_AT_HEADER, WEBHOOK_ORIGIN
from processors import metrics
from processors.raw_agent import RawAgent, RawStream
from processors.stall_guard import StallGuard
from tests.support import until

RAW = "test.raw"
MAX_ATTEMPTS = 3


@dataclass
class Message:
    partition: int
    offset: int
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp: float = 1_700_000_000.0

    @property
    def tp(self) -> tuple[str, int]:
        return (RAW, self.partition)


@dataclass
class Event:
    message: Message
    key: bytes | None = b"dep-a"


class Channel:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[Event, bytes] | None] = asyncio.Queue()


class FakeStream:
    """Yields the events put into it until closed; records what was acked."""

    def __init__(self) -> None:
        self.channel = Channel()
        self.current_event: Any = None
        self.acked: list[int] = []
        self.noack_called = False

    def noack(self) -> RawStream:
        self.noack_called = True
        return self

    def put(self, event: Event, body: bytes = b"[]") -> None:
        self.channel.queue.put_nowait((event, body))

    def close(self) -> None:
        self.channel.queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (item := await self.channel.queue.get()) is not None:
            self.current_event, body = item
            yield body

    async def ack(self, event: Any) -> bool:
        self.acked.append(event.message.offset)
        return True


class FakeProcessor:
    """Per raw offset, what processing does: a list of deliveries (futures the test
    resolves), None (a repeated body) or an exception to raise on every attempt."""

    def __init__(self) -> None:
        self.stage = "start"
        self.outcomes: dict[int, Any] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.forgotten: set[int] = set()

    async def process(self, key: bytes, body: bytes, partition: int, offset: int,
                      received_at: int, now_ms: int, origin: bytes | None, /
                      ) -> list[Awaitable[Any]] | None:
        self.calls.append((key, body, partition, offset, received_at, origin))
        outcome = self.outcomes.get(offset, [])
        if isinstance(outcome, BaseException):
            self.stage = "split"
            raise outcome
        if callable(outcome):
            result: list[Awaitable[Any]] | None = outcome()
            return result
        return cast(list[Awaitable[Any]] | None, outcome)

    def forget_partitions(self, partitions: set[int]) -> None:
        self.forgotten |= partitions


class Registry:
    def __init__(self) -> None:
        self.loaded = asyncio.Event()

    async def wait_loaded(self) -> None:
        await self.loaded.wait()


@dataclass
class Harness:
    stream: FakeStream
    processor: FakeProcessor
    registry: Registry
    guard: StallGuard
    agent: RawAgent
    sent: list[tuple[str, bytes, bytes]]
    crashed: list[BaseException]
    sought: list[tuple[Any, int]]
    untracked: list[int]


def harness(start: dict[int, int]) -> Harness:
    """`start`: each partition's committed offset, as the stall guard reads it."""
    sent: list[tuple[str, bytes, bytes]] = []
    crashed: list[BaseException] = []
    sought: list[tuple[Any, int]] = []
    untracked: list[int] = []
    loop = asyncio.get_running_loop()

    async def send(route: str, key: bytes, value: bytes) -> Any:
        sent.append((route, key, value))
        delivered = loop.create_future()
        delivered.set_result(None)
        return delivered

    async def crash(exc: BaseException) -> None:
        crashed.append(exc)

    async def seek(tp: Any, offset: int) -> None:
        sought.append((tp, offset))

    async def start_offset(partition: int) -> int:
        return start[partition]

    processor, registry = FakeProcessor(), Registry()
    guard = StallGuard(RAW, idle_seconds=5.0, start_offset=start_offset)
    agent = RawAgent(processor, guard, registry, send, crash, MAX_ATTEMPTS, seek,
                     lambda message: untracked.append(message.offset))
    return Harness(FakeStream(), processor, registry, guard, agent, sent, crashed, sought,
                   untracked)


async def _settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


def _start(h: Harness) -> asyncio.Task[None]:
    return asyncio.ensure_future(h.agent.run(cast(Any, h.stream)))


def test_acks_in_order_only_after_the_deliveries_and_only_once_the_registry_loaded() -> None:
    async def scenario() -> None:
        h = harness(start={0: 0})
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        h.processor.outcomes = {0: [first], 1: [second], 2: None}
        batches = metrics.RAW_BATCHES._value.get()
        run = _start(h)
        for offset in range(3):
            h.stream.put(Event(Message(0, offset, [(RECEIVED_AT_HEADER, b"1234"),
                                                   (ORIGIN_HEADER, WEBHOOK_ORIGIN)])))
        await _settle()
        assert h.stream.noack_called
        assert h.processor.calls == []  # quotas unknown yet: nothing is judged
        h.registry.loaded.set()
        await until(lambda: len(h.processor.calls) == 3, "all processed")
        assert h.processor.calls[0] == (b"dep-a", b"[]", 0, 0, 1234, WEBHOOK_ORIGIN)
        second.set_result(None)
        await _settle()
        assert h.stream.acked == []  # offset 1 and 2 wait for offset 0
        first.set_result(None)
        await until(lambda: len(h.stream.acked) == 3, "all acked")
        assert h.stream.acked == [0, 1, 2]
        # The repeated body (None) is acked but not counted as a processed batch.
        assert metrics.RAW_BATCHES._value.get() == batches + 2
        assert h.guard.next_offset == {0: 3}
        assert not h.guard.busy
        h.stream.close()
        await run
        assert h.crashed == []
        assert h.sent == []

    asyncio.run(scenario())


def test_a_message_that_keeps_failing_is_dead_lettered_and_acked_in_its_place() -> None:
    async def scenario() -> None:
        h = harness(start={2: 4})
        h.registry.loaded.set()
        h.processor.outcomes = {5: ValueError("tenant's bug")}
        poison, failures = metrics.POISON._value.get(), metrics.MESSAGE_FAILURES._value.get()
        run = _start(h)
        for offset in (4, 5, 6):
            h.stream.put(Event(Message(2, offset), key=b"dep-b"), body=b"body")
        await until(lambda: len(h.stream.acked) == 3, "all acked")
        h.stream.close()
        await run
        assert h.stream.acked == [4, 5, 6]
        assert [call[3] for call in h.processor.calls] == [4, 5, 5, 5, 6]  # 3 attempts
        assert metrics.MESSAGE_FAILURES._value.get() == failures + MAX_ATTEMPTS
        assert metrics.POISON._value.get() == poison + 1
        [(route, key, value)] = h.sent
        assert (route, key) == ("dead_letter", b"dep-b")
        letter = orjson.loads(value)
        assert letter["raw_partition"] == 2
        assert letter["raw_offset"] == 5
        assert letter["key"] == "dep-b"
        assert letter["body_bytes"] == 4
        assert letter["attempts"] == MAX_ATTEMPTS
        assert letter["stage"] == "split"
        assert letter["error_type"] == "ValueError"
        assert h.guard.next_offset == {2: 7}

    asyncio.run(scenario())


def test_a_failure_that_passes_is_retried_without_a_dead_letter() -> None:
    async def scenario() -> None:
        h = harness(start={0: 0})
        h.registry.loaded.set()
        tries = iter([ValueError("a moment's failure"), None])

        def flaky() -> list[Awaitable[Any]]:
            failure = next(tries)
            if failure is not None:
                raise failure
            return []

        h.processor.outcomes = {0: flaky}
        run = _start(h)
        h.stream.put(Event(Message(0, 0)))
        await until(lambda: h.stream.acked == [0], "acked")
        h.stream.close()
        await run
        assert len(h.processor.calls) == 2
        assert h.sent == []

    asyncio.run(scenario())


def test_a_failure_not_of_the_messages_making_stops_the_agent_without_an_ack() -> None:
    async def scenario() -> None:
        h = harness(start={0: 0})
        h.registry.loaded.set()
        h.processor.outcomes = {1: KafkaConnectionError("broker away")}
        run = _start(h)
        h.stream.put(Event(Message(0, 0)))
        h.stream.put(Event(Message(0, 1)))
        h.stream.put(Event(Message(0, 2)))
        with pytest.raises(KafkaConnectionError):
            await run
        assert [call[3] for call in h.processor.calls] == [0, 1]  # no retry, no next
        assert h.sent == []
        assert 1 not in h.stream.acked
        assert 2 not in h.stream.acked

    asyncio.run(scenario())


def test_a_failed_delivery_crashes_the_worker_and_acks_nothing_after_it() -> None:
    async def scenario() -> None:
        h = harness(start={0: 0})
        h.registry.loaded.set()
        loop = asyncio.get_running_loop()
        failed = loop.create_future()
        failed.set_exception(KafkaConnectionError("not stored"))
        h.processor.outcomes = {0: [failed]}
        run = _start(h)
        h.stream.put(Event(Message(0, 0)))
        h.stream.put(Event(Message(0, 1)))
        await until(lambda: h.crashed, "crashed")
        await until(lambda: len(h.processor.calls) == 2, "both processed")
        await _settle()
        h.stream.close()
        await run
        assert h.stream.acked == []
        assert isinstance(h.crashed[0], KafkaConnectionError)

    asyncio.run(scenario())


def test_revoked_partitions_are_forgotten_and_the_stall_check_waits_for_the_stream() -> None:
    async def scenario() -> None:
        h = harness(start={0: 7, 1: 3})

        class Consumer:
            def assignment(self) -> set[Any]:
                raise AssertionError("an idle guard before the stream must not look")

        assert await h.agent.check_stalls(Consumer()) == 0  # the agent has not started
        h.registry.loaded.set()
        run = _start(h)
        h.stream.put(Event(Message(0, 7)))
        h.stream.put(Event(Message(1, 3)))
        await until(lambda: len(h.stream.acked) == 2, "acked")
        assert h.guard.next_offset == {0: 8, 1: 4}
        h.agent.forget_partitions({1})
        assert h.processor.forgotten == {1}
        assert h.guard.next_offset == {0: 8}
        # Not idle long enough: the check does not look at the consumer either.
        assert await h.agent.check_stalls(Consumer()) == 0
        h.stream.close()
        await run

    asyncio.run(scenario())


def test_a_gap_in_a_partition_is_rewound_and_nothing_beyond_it_processed_before_it() -> None:
    """Faust's rebalance race: records 49-53 of partition 3 cleared from the queue, the
    stream going on at 54. The agent seeks back to 49 once, drops 54 and 55, processes
    49-55 in order when they come again, and skips (acks, uncounted) what it had already."""

    async def scenario() -> None:
        h = harness(start={3: 49})
        h.registry.loaded.set()
        run = _start(h)
        for offset in (54, 55):
            h.stream.put(Event(Message(3, offset)))
        await until(lambda: len(h.sought) == 1, "the rewind")
        await _settle()
        assert h.sought == [((RAW, 3), 49)]
        assert h.processor.calls == []
        for offset in [*range(49, 56), 50]:  # the re-fetch; 50 once more
            h.stream.put(Event(Message(3, offset)))
        await until(lambda: len(h.stream.acked) == 8, "all acked")
        h.stream.close()
        await run
        assert [call[3] for call in h.processor.calls] == list(range(49, 56))
        assert h.stream.acked == [*range(49, 56), 50]
        assert h.guard.next_offset == {3: 56}
        assert h.sought == [((RAW, 3), 49)]
        # The first copies of 54 and 55: never acked, and Faust told not to wait for them.
        assert h.untracked == [54, 55]

    asyncio.run(scenario())
