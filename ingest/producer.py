"""The receiver's door to Kafka: an idempotent acks=all producer with a bound on
waiting produces and a running view of whether Kafka answers.

Kafka being away never stops the receiver: it keeps answering 503 until the
producer (re)connects, and then stores again without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from ingest import metrics
from meterstream.config import Settings
from meterstream.topics import TopicSpec, ensure_topics

log = logging.getLogger("meterstream.receiver.kafka")

PROBE_INTERVAL_SECONDS = 2.0


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

    @property
    def healthy(self) -> bool:
        return self._producer is not None and self._healthy

    def start(self) -> None:
        self._task = asyncio.create_task(self._connect_and_watch(), name="kafka-producer")

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
            raise Unavailable(repr(exc)) from exc
        finally:
            self._in_flight -= 1
            metrics.IN_FLIGHT.dec()
        metrics.PRODUCE_SECONDS.observe(time.perf_counter() - started)
        self._healthy = True
        return int(stored.offset)

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id=f"{self.settings.namespace}-receiver",
            acks="all",
            enable_idempotence=True,
            linger_ms=1,
            max_request_size=self.settings.max_body_bytes + 65536,
            request_timeout_ms=int(self.timeout * 1000),
        )

    async def _connect_and_watch(self) -> None:
        backoff = 0.5
        while self._producer is None:
            producer = self._new_producer()
            try:
                # The topics exist before the first produce, or Kafka would auto-create
                # them with one partition.
                await ensure_topics(self.settings.kafka_bootstrap, self.topics)
                await producer.start()
            except (KafkaError, OSError, RuntimeError) as exc:
                await producer.stop()
                log.warning("Kafka unreachable; retrying",
                            extra={"error": repr(exc), "retry_in_s": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            self._producer = producer
            self._healthy = True
            self.connected.set()
            log.info("connected to Kafka", extra={"bootstrap": self.settings.kafka_bootstrap})
        while True:
            await asyncio.sleep(PROBE_INTERVAL_SECONDS)
            try:
                await asyncio.wait_for(self._producer.client.fetch_all_metadata(),
                                       PROBE_INTERVAL_SECONDS)
            except (KafkaError, OSError, TimeoutError):
                if self._healthy:
                    log.warning("Kafka stopped answering")
                self._healthy = False
            else:
                if not self._healthy:
                    log.info("Kafka answers again")
                self._healthy = True
