"""The worker's one agent: reads the raw messages and hands each to the RawProcessor.

Per message, in order: wait until the registry is loaded (quotas must be known before
usage is judged), process the message (processors/raw_processor.py) with retries, and
dead-letter it when every attempt raised for a reason of its own (processors/poison.py).
Its pending deliveries (forwarded records, alerts, the dead letter) go to a Deliveries
queue (processors/delivery_acks.py), which acks the message to Faust only once they
are stored, in message order, while the agent already works on the next messages.
The stream is a `noack` stream for that reason: Faust would otherwise ack a message as
soon as the agent took the next one, and commit an offset whose output is not stored.

The agent also admits every message through the StallGuard (processors/stall_guard.py),
which catches the gaps Faust's rebalance race can leave in a partition, keeps it told of
its progress, and the stall check looks at the agent's stream queue.

Faust runs `RawAgent.run` with concurrency 1 (processors/app.py says why).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, cast

import faust
import orjson

from meterstream.core.topics import ORIGIN_HEADER, RECEIVED_AT_HEADER
from processors import metrics
from processors.delivery_acks import Crash, Deliveries
from processors.poison import Poison, with_retries
from processors.stall_guard import Admission, StallGuard

Send = Callable[[str, bytes, bytes], Awaitable[Any]]
"""Sends (route, key, value) to the route's topic; its result is the delivery to await."""

Seek = Callable[[Any, int], Awaitable[None]]
"""Seeks a raw partition (Faust's TP) of the consumer back to an offset."""

Untrack = Callable[[Any], None]
"""Makes Faust forget a dropped message without acking it (processors/stall_guard.py)."""


class Processor(Protocol):
    """What the agent needs of processors/raw_processor.py's RawProcessor."""

    stage: str

    async def process(self, key: bytes, body: bytes, partition: int, offset: int,
                      received_at: int, now_ms: int, origin: bytes | None, /
                      ) -> list[Awaitable[Any]] | None: ...

    def forget_partitions(self, partitions: set[int]) -> None: ...


class Registry(Protocol):
    async def wait_loaded(self) -> None: ...


class RawStream(Protocol):
    """What the agent uses of a Faust Stream (faust.StreamT declares neither `noack` nor
    the channel's queue, which faust.Stream has)."""

    current_event: faust.EventT[bytes] | None
    channel: Any

    def noack(self) -> RawStream: ...

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def ack(self, event: faust.EventT[bytes]) -> bool: ...


class RawAgent:
    def __init__(self, processor: Processor, guard: StallGuard, registry: Registry,
                 send: Send, crash: Crash, max_attempts: int, seek: Seek,
                 untrack: Untrack) -> None:
        self.processor = processor
        self.guard = guard
        self.seek = seek
        self.untrack = untrack
        self.registry = registry
        self.send = send
        self.crash = crash
        self.max_attempts = max_attempts
        self.stream: RawStream | None = None
        """The agent's current (noack) stream; None until Faust started the agent."""

    async def run(self, stream: faust.StreamT[bytes]) -> None:
        manual = cast(RawStream, stream).noack()
        self.stream = manual

        async def ack(done: tuple[faust.EventT[bytes], bool]) -> None:
            event, counted = done
            await manual.ack(event)
            if counted:  # a repeated body is counted as a duplicate instead
                metrics.RAW_BATCHES.inc()

        deliveries = Deliveries(ack, self.crash)
        deliveries.start()
        try:
            async for body in manual:
                event = manual.current_event
                assert event is not None
                await self.handle(event, body, deliveries)
        finally:
            await deliveries.stop()

    async def handle(self, event: faust.EventT[bytes], body: bytes,
                     deliveries: Deliveries) -> None:
        """Processes one raw message and queues its ack behind its deliveries; skips one
        processed already and rewinds over a gap in the partition (processors/stall_guard.py)."""
        message = event.message
        admission = await self.guard.admit(message.partition, message.offset)
        if admission is Admission.SKIP:  # acked behind what is still in flight, not counted
            await deliveries.add((event, False), [])
            return
        if admission is Admission.REWIND:
            self.untrack(message)
            await self.seek(message.tp, self.guard.next_offset[message.partition])
            return
        if admission is Admission.DROP:
            self.untrack(message)
            return
        self.guard.started()
        # Quotas must be known before usage is judged. (Waited for here, not before the
        # loop: an agent that starts iterating late can miss its subscription.)
        await self.registry.wait_loaded()
        key = event.key or b""
        try:
            pending = await with_retries(
                attempt(self.processor, key, body, message), self.max_attempts,
                {"raw_partition": message.partition, "raw_offset": message.offset,
                 "key": key.decode(errors="replace"), "body_bytes": len(body)},
                lambda: self.processor.stage)
        except Poison as poison:
            metrics.POISON.inc()
            pending = [await self.send("dead_letter", key, orjson.dumps(poison.letter))]
        self.guard.processed(message.partition, message.offset)
        # None: a repeated body, acked but not counted as a processed batch.
        await deliveries.add((event, pending is not None), pending or [])

    def forget_partitions(self, partitions: set[int]) -> None:
        """Partitions revoked: their live state and stall bookkeeping go with them."""
        self.processor.forget_partitions(partitions)
        self.guard.forget_partitions(partitions)

    async def check_stalls(self, consumer: Any) -> int:
        """Rewinds the raw partitions the stream stalled on (processors/stall_guard.py)."""
        if self.stream is None:
            return 0
        return await self.guard.check(consumer, self.stream.channel.queue.empty(), self.seek)


def header(message: Any, wanted: str) -> bytes | None:
    """The value of a raw message's header (meterstream/core/topics.py), None when absent."""
    for name, value in message.headers or ():
        if name == wanted:
            return bytes(value)
    return None


def received_at(message: Any) -> int:
    """When the receiver acknowledged the body (ms): the reference time for late events,
    the same however late the worker processes it."""
    value = header(message, RECEIVED_AT_HEADER)
    return int(value) if value is not None else int(message.timestamp * 1000)


def attempt(processor: Processor, key: bytes, body: bytes,
            message: Any) -> Callable[[], Awaitable[list[Awaitable[Any]] | None]]:
    """One try at processing a raw message (the clock read at each try)."""
    return lambda: processor.process(key, body, message.partition, message.offset,
                                     received_at(message), int(time.time() * 1000),
                                     # None from a receiver that predates the header
                                     header(message, ORIGIN_HEADER))
