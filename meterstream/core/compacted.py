"""Following a compacted, single-partition Kafka topic: read from the start, loaded once
the end seen at start is reached, then every new record as it comes.

A subclass says what one record does (`_apply`) and what reaching the end first does
(`_on_loaded`); this class keeps the position, the loaded flag and read-your-writes
(`wait_applied`), and reconnects with backoff when Kafka goes away. The deployment
registry (meterstream/core/registry.py) and the read tokens
(meterstream/core/read_tokens.py) follow their topics with it.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from meterstream.core.cancellation import raise_if_cancelled
from meterstream.core.kafka_client import KafkaConnection

log = logging.getLogger("meterstream.compacted")

END_OFFSETS_SECONDS = 5.0


class CompactedView:
    """What this process has read of one compacted topic (partition 0)."""

    end_offsets_seconds = END_OFFSETS_SECONDS
    """How long one client may take to say where the topic ends before a new one asks."""

    def __init__(self, kafka: KafkaConnection, topic: str, client_id: str) -> None:
        self.kafka = kafka
        self.topic = topic
        self.client_id = client_id
        self._loaded = asyncio.Event()
        self._position = 0
        self._advanced = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        """Takes one record into the view (value None: a tombstone)."""
        raise NotImplementedError

    def _on_loaded(self) -> None:
        """Runs once, when the records up to the end seen at start are in, before the view
        says it is loaded."""
        log.info("topic loaded", extra={"topic": self.topic})

    @property
    def loaded(self) -> bool:
        return self._loaded.is_set()

    async def wait_loaded(self) -> None:
        await self._loaded.wait()

    def start(self, after: asyncio.Event | None = None) -> None:
        """Starts following the topic; once `after` is set, when given (the topic must exist)."""
        self._task = asyncio.create_task(self._follow(after), name=self.client_id)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def wait_applied(self, offset: int) -> None:
        """Returns once the record at `offset` is in this view (read-your-writes)."""
        async with self._advanced:
            await self._advanced.wait_for(lambda: self._position > offset)

    async def _follow(self, after: asyncio.Event | None) -> None:
        if after is not None:
            await after.wait()
        backoff = 0.5
        while True:
            # earliest: compaction may have removed the offsets before the first record kept.
            consumer = AIOKafkaConsumer(**self.kafka.client_options(), group_id=None,
                                        enable_auto_commit=False, client_id=self.client_id,
                                        auto_offset_reset="earliest")
            try:
                await consumer.start()
                tp = TopicPartition(self.topic, 0)
                consumer.assign([tp])
                consumer.seek(tp, self._position)
                # Briefly: a topic created a moment ago may be missing from this client's
                # metadata, and a new client (after the backoff) asks again, where this one
                # would wait out its request timeout.
                end = (await asyncio.wait_for(consumer.end_offsets([tp]),
                                              self.end_offsets_seconds))[tp]
                raise_if_cancelled()  # stop() cancels and waits (core/cancellation.py)
                if self._position >= end:
                    self._loaded.set()
                backoff = 0.5
                while True:
                    batch = await consumer.getmany(tp, timeout_ms=1000)
                    for message in batch.get(tp, []):
                        self._apply(message.key, message.value)
                    async with self._advanced:
                        self._position = await consumer.position(tp)
                        self._advanced.notify_all()
                    if not self.loaded and self._position >= end:
                        self._on_loaded()
                        self._loaded.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("lost Kafka while following a topic; retrying",
                            extra={"topic": self.topic, "error": repr(exc),
                                   "retry_in_s": backoff},
                            exc_info=not isinstance(exc, KafkaError | OSError | TimeoutError))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                await consumer.stop()
