"""Acknowledging raw messages only once everything forwarded from them is stored.

The agent does not wait for Kafka between raw messages: it hands each message's
pending deliveries (the futures of its forwarded records and dead letters) to
this queue and goes on with the next message. A task awaits them in message
order and only then acks the message to Faust, so an offset is committed only
after what came out of it is safe. (Faust also flushes its producer before every
commit; acking after delivery additionally keeps a delivery that *failed* from
being committed over: the failure stops the worker instead, and the message is
processed again after the restart.)

The queue is bounded, so a slow broker slows the agent down instead of letting
undelivered records pile up in memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

Ack = Callable[[Any], Awaitable[Any]]
Crash = Callable[[BaseException], Awaitable[None]]


class Deliveries:
    def __init__(self, ack: Ack, crash: Crash, max_pending: int = 64) -> None:
        self._ack = ack
        self._crash = crash
        self._queue: asyncio.Queue[tuple[Any, list[Awaitable[Any]]]] = asyncio.Queue(max_pending)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def add(self, message: Any, pending: list[Awaitable[Any]]) -> None:
        """Queues `message` to be acked once `pending` completed; waits while the queue is full."""
        await self._queue.put((message, pending))

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    async def _run(self) -> None:
        while True:
            message, pending = await self._queue.get()
            try:
                for delivery in pending:
                    await delivery
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("forwarding failed; stopping so the message is processed again",
                          extra={"error": repr(exc)})
                await self._crash(exc)
                return
            await self._ack(message)
