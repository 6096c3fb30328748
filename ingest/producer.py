"""The receiver's door to Kafka: an idempotent acks=all producer with a bound on
waiting produces and a running view of whether Kafka answers.

Kafka being away never stops the receiver: it keeps answering 503 until the
producer (re)connects, and then stores again without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)

from ingest import metrics
from meterstream.core.cancellation import raise_if_cancelled
from meterstream.core.config import Settings
from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.topics import TopicSpec, TopicsRefused, ensure_topics

log = logging.getLogger("meterstream.receiver.kafka")

PROBE_INTERVAL_SECONDS = 2.0
# After these the idempotent producer's sequence is broken for good: a produce that timed
# out during an outage leaves a gap the broker will not accept. aiokafka does not reset
# its producer id, so a new producer (a new id) takes over.
BROKEN_STATE = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch,
                ProducerFenced)


class Unavailable(RuntimeError):
    """Kafka did not store the record (unreachable, too slow, or not connected yet)."""


class Overloaded(RuntimeError):
    """Too many produces are already waiting for Kafka."""


class Producer:
    def __init__(self, settings: Settings, topics: list[TopicSpec]) -> None:
        self.settings = settings
        self.topics = topics
        self.max_in_flight = settings.max_in_flight
        self.timeout = settings.produce_timeout
        self._producer: AIOKafkaProducer | None = None
        self._in_flight = 0
        self._healthy = False
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        """Set once the topics exist and the producer is connected."""
        self._broken = asyncio.Event()
        self._closing: set[asyncio.Task[None]] = set()
        self.refused = asyncio.Event()
        """Set when existing topics cannot be used as configured: the producer gave up
        (`refusal` says why) and the receiver should stop."""
        self.refusal: TopicsRefused | None = None

    @property
    def healthy(self) -> bool:
        return self._producer is not None and self._healthy

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kafka-producer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._producer is not None:
            await self._producer.stop()

    async def store(self, topic: str, key: bytes, value: bytes | None,
                    headers: list[tuple[str, bytes]]) -> int:
        """Returns the record's offset once Kafka acknowledged it with acks=all."""
        producer = self._producer
        if producer is None:
            raise Unavailable("not connected to Kafka yet")
        if self._in_flight >= self.max_in_flight:
            raise Overloaded(f"{self._in_flight} produces already waiting for Kafka")
        self._in_flight += 1
        metrics.IN_FLIGHT.inc()
        started = time.perf_counter()
        try:
            stored = await asyncio.wait_for(
                producer.send_and_wait(topic, value=value, key=key, headers=headers),
                timeout=self.timeout)
        except (KafkaError, TimeoutError) as exc:
            self._healthy = False
            if isinstance(exc, BROKEN_STATE) and producer is self._producer:
                self._broken.set()
            raise Unavailable(repr(exc)) from exc
        finally:
            self._in_flight -= 1
            metrics.IN_FLIGHT.dec()
        metrics.PRODUCE_SECONDS.observe(time.perf_counter() - started)
        self._healthy = True
        return int(stored.offset)

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            **KafkaConnection.of(self.settings).client_options(),
            client_id=f"{self.settings.namespace}-receiver",
            acks="all",
            enable_idempotence=True,
            linger_ms=1,
            # A webhook body is stored as received (at most max_body_bytes); agent records
            # are split into messages of at most max_body_bytes (agent_usage.split_records):
            # the 64 KiB left over holds key, headers and the batch's framing.
            max_request_size=self.settings.max_body_bytes + 65536,
            request_timeout_ms=int(self.timeout * 1000),
        )

    async def _run(self) -> None:
        while True:
            self._producer = await self._connect()
            self._healthy = True
            self.connected.set()
            await self._watch()
            # The producer's state is broken: replace it. Its pending sends fail (503).
            old, self._producer, self._healthy = self._producer, None, False
            self._broken.clear()
            log.warning("replacing the Kafka producer after a broken sequence")
            closing = asyncio.create_task(_close(old))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def _connect(self) -> AIOKafkaProducer:
        backoff = 0.5
        while True:
            producer = self._new_producer()
            try:
                # The topics exist before the first produce, or Kafka would auto-create
                # them with one partition.
                await ensure_topics(KafkaConnection.of(self.settings), self.topics)
                await producer.start()
            except TopicsRefused as exc:
                # Not Kafka being away: retrying cannot help.
                await producer.stop()
                self.refusal = exc
                self.refused.set()
                raise
            except (KafkaError, OSError, RuntimeError) as exc:
                await producer.stop()
                log.warning("Kafka unreachable; retrying",
                            extra={"error": repr(exc), "retry_in_s": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            log.info("connected to Kafka", extra={"bootstrap": self.settings.kafka_bootstrap})
            return producer

    async def _watch(self) -> None:
        """Probes Kafka every few seconds; returns when the producer must be replaced."""
        assert self._producer is not None
        while not self._broken.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._broken.wait(), PROBE_INTERVAL_SECONDS)
            # After each wait, whatever it ended with: stop() cancels and waits
            # (meterstream/core/cancellation.py).
            raise_if_cancelled()
            if self._broken.is_set():
                return
            try:
                await asyncio.wait_for(self._producer.client.fetch_all_metadata(),
                                       PROBE_INTERVAL_SECONDS)
            except (KafkaError, OSError, TimeoutError):
                raise_if_cancelled()
                if self._healthy:
                    log.warning("Kafka stopped answering")
                self._healthy = False
            else:
                raise_if_cancelled()
                if not self._healthy:
                    log.info("Kafka answers again")
                self._healthy = True


async def _close(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), 30)
    except Exception as exc:
        log.warning("closing the old Kafka producer failed", extra={"error": repr(exc)})
