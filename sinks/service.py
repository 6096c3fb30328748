"""`meterstream sink`: normalised records from Kafka into ClickHouse.

The loop: read messages, buffer their records, and when the buffer is due
(size or age) insert it in one columnar insert, then commit the offsets.
Offsets are committed only after ClickHouse stored the rows, so a crash
repeats work but loses nothing; the insert carries a deduplication token
named after the offset ranges, so repeating the same batch is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from clickhouse_connect.driver.client import Client

from billing import scheduler as invoice_schedule
from meterstream.config import Settings
from meterstream.service import healthz, metrics_page, start_site, stop_event
from meterstream.topics import Topics, ensure_topics
from sinks import function_executions, metrics, migrate
from sinks.batching import Batch, BatchBuffer
from sinks.clickhouse import EngineLock, connect
from sinks.query import serve_queries

log = logging.getLogger("meterstream.sink")

MAX_BACKOFF_SECONDS = 30.0
# Bound on the final flush and on closing the consumer, so that a stop with
# Kafka or ClickHouse gone cannot hang.
SHUTDOWN_SECONDS = 20.0


class FunctionExecutionSink:
    def __init__(self, settings: Settings, client: Client, consumer: AIOKafkaConsumer,
                 stop: asyncio.Event) -> None:
        self.client = client
        self.consumer = consumer
        self.stop = stop
        self.buffer = BatchBuffer(settings.sink_batch_rows, settings.sink_batch_seconds)

    async def run(self) -> None:
        while not self.stop.is_set():
            timeout_ms = max(1, int(self.buffer.seconds_left() * 1000))
            fetched = await self.consumer.getmany(timeout_ms=min(timeout_ms, 500),
                                                  max_records=self.buffer.max_rows)
            for tp, messages in fetched.items():
                for message in messages:
                    self.buffer.add(tp, message.offset, orjson.loads(message.value))
            if self.buffer.due():
                await self.flush()

    async def flush(self) -> None:
        if self.buffer.empty:
            return
        batch = self.buffer.take()
        if batch.records:
            await self._insert(batch)
        await self.consumer.commit(batch.commit_offsets())

    async def _insert(self, batch: Batch) -> None:
        backoff = 0.5
        token = batch.token()
        while True:
            started = time.perf_counter()
            try:
                await asyncio.to_thread(function_executions.insert, self.client,
                                        batch.records, token)
            except Exception as exc:
                metrics.INSERT_FAILURES.labels(function_executions.TABLE).inc()
                log.warning("insert failed; retrying", extra={
                    "table": function_executions.TABLE, "rows": len(batch.records),
                    "retry_in_s": backoff, "error": str(exc)[:500]})
                if self.stop.is_set():
                    # Not committed: the rows are read again at the next start.
                    raise
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                continue
            metrics.INSERT_SECONDS.labels(function_executions.TABLE).observe(
                time.perf_counter() - started)
            metrics.ROWS.labels(function_executions.TABLE).inc(len(batch.records))
            return


class _FlushOnRevoke(ConsumerRebalanceListener):
    """Stores and commits what is buffered before partitions move to another sink."""

    def __init__(self) -> None:
        self.sink: FunctionExecutionSink | None = None

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        if self.sink is not None and revoked:
            await self.sink.flush()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"partitions": sorted(tp.partition
                                                                    for tp in assigned)})


async def serve(settings: Settings) -> None:
    stop = stop_event()
    target = settings.clickhouse
    lock = EngineLock(target.chdb_path) if target.chdb_path is not None else None
    if lock is not None:
        lock.acquire()
    try:
        await _serve(settings, stop)
    finally:
        if lock is not None:
            lock.release()


async def _serve(settings: Settings, stop: asyncio.Event) -> None:
    topics = Topics.of(settings)
    target = settings.clickhouse
    runners: list[web.AppRunner] = []
    try:
        # One client for inserts and one for user queries: each is used by one thread at a time.
        insert_client = connect(target)
        if target.chdb_path is not None:
            runners.append(await serve_queries(connect(target), target.chdb_path))
        applied = await asyncio.to_thread(migrate.apply, insert_client)
        log.info("schema ready", extra={"clickhouse": target.display, "applied": applied})
        site = web.Application()
        site.router.add_get("/healthz", healthz)
        site.router.add_get("/metrics", metrics_page)
        runners.append(await start_site(site, settings.bind_host, settings.sink_port))
        await ensure_topics(settings.kafka_bootstrap, [topics.function_executions])
        schedule = invoice_schedule.start(settings)  # invoices on day 2 (billing/scheduler.py)
        try:
            await _consume(settings, insert_client, stop)
        finally:
            await schedule.stop()
    finally:
        for runner in runners:
            await runner.cleanup()
    log.info("sink stopped")


async def _consume(settings: Settings, client: Client, stop: asyncio.Event) -> None:
    topic = Topics.of(settings).function_executions.name
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"{settings.namespace}-sink-function-executions",
        client_id=f"{settings.namespace}-sink",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    listener = _FlushOnRevoke()
    consumer.subscribe([topic], listener=listener)
    await consumer.start()
    try:
        sink = FunctionExecutionSink(settings, client, consumer, stop)
        listener.sink = sink
        log.info("sink consuming", extra={"topic": topic, "table": function_executions.TABLE})
        await sink.run()
        log.info("sink stopping: flushing and committing what is buffered")
        try:
            await asyncio.wait_for(sink.flush(), SHUTDOWN_SECONDS)
        except TimeoutError:
            # Not committed: read again at the next start, and the insert token makes
            # a repeated batch a no-op.
            log.error("could not flush within the shutdown time; stopping anyway",
                      extra={"seconds": SHUTDOWN_SECONDS})
    finally:
        try:
            await asyncio.wait_for(consumer.stop(), SHUTDOWN_SECONDS)
        except TimeoutError:
            log.error("the Kafka consumer did not close in time")


def main(settings: Settings) -> None:
    asyncio.run(serve(settings))
