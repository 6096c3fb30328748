"""The sink: every record topic and the alerts from Kafka into ClickHouse.

`Sink` only consumes and writes; the `meterstream sink` process around it (the engine
lock, the SQL socket, migrations, health, the invoice scheduler, signals) is
meterstream/processes/sink.py.

One consumer (one group) reads `<ns>.function_execution`, `<ns>.current_storage_usage`,
`<ns>.storage_api_bandwidth`, `<ns>.log_stream_egress`, `<ns>.agent_usage`, `<ns>.other`
and `<ns>.alerts`, each into its table (meterstream/core/tables.py). A record topic
carries both record formats (meterstream/core/record_format.py), mixed on one
partition while workers are upgraded: version 2 messages (header `format: arrow-1`) are
Arrow batches of one raw body's rows, read without Python per row; version 1 messages
(no header) are JSON records, turned into rows by the table's spec. Per table:

- each message's rows are admitted against the table's high-water marks
  (sinks/high_water.py: `admit` per record for version 1, `admit_batch` per message
  and month for version 2, the same rule): a row whose origin is stored or buffered
  already is skipped (counted in meterstream_sink_duplicates_skipped_total), whichever
  version stored it;
- the admitted records wait in the table's buffer, grouped by month, until it
  holds METERSTREAM_SINK_BATCH_ROWS rows or its oldest is
  METERSTREAM_SINK_BATCH_SECONDS old;
- the batch is inserted one month at a time as one Arrow table (`insert_arrow`; each
  insert atomic, carrying an insert_deduplication_token: sinks/writer.py), and only
  then are its offsets committed.

So a crash anywhere repeats work but never counts twice: a batch read again
after a crash, whatever its boundaries, is skipped by its origins, and so are
the copies a crashed worker makes when it processes raw messages again.

When ClickHouse refuses a table's insert or cannot be reached, the table's
partitions are paused (nothing more is fetched for them), the insert is retried
with exponential backoff (0.5 s doubling to 30 s) while the consumer keeps
polling (so it stays in its group), and consumption resumes after it succeeds.
A record that can never be stored (a field of the wrong type) goes to the
dead-letter topic with the reason, and the rest of its batch is stored. A version 2
message that is not one Arrow batch of its table's schema, or whose rows are not of one
raw body or hold a time ClickHouse cannot store, goes to the dead-letter topic whole
(`{"reason", "topic", "partition", "offset", "value_base64"}`); its rows are in their
column types already, so the per-record checks are for version 1 records only.

A record the checks let through but ClickHouse refuses for its data (a constraint,
a value it cannot convert: `about_the_data`) would block its table forever. After
METERSTREAM_SINK_MAX_ATTEMPTS such refusals the batch is stored one origin message at
a time, each its own atomic insert, in arrival order; the messages refused go to the
dead-letter topic and are skipped, and the offsets are committed as usual. That stays
exactly-once: the rows of one origin message are one insert, and per origin partition
the inserts go in origin-offset order, so after a crash the high-water marks (the
highest origin offset stored) skip exactly the messages stored. A refusal that is
not about the data (ClickHouse away, the table missing, out of memory or space)
keeps pausing and retrying, as above.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import struct
import time
from dataclasses import dataclass, field

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

from meterstream.core import record_format
from meterstream.core.config import Settings
from meterstream.core.events import EventType
from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.lag import LagMeter
from meterstream.core.record_format import DecodeError
from meterstream.core.records import Record
from meterstream.core.service import Readiness
from meterstream.core.tables import SPECS, BadMessage, TableSpec
from meterstream.core.topics import Topics, partition_counts
from sinks import metrics
from sinks.batching import Batch, BatchBuffer
from sinks.committer import Committer
from sinks.high_water import Admitted, HighWater, PartitionMismatch
from sinks.writer import TableWriter

log = logging.getLogger("meterstream.sink")

FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
# Bound on the final flush and on closing the consumer, so that a stop with
# Kafka or ClickHouse gone cannot hang.
SHUTDOWN_SECONDS = 20.0
# How long a revoke tries to store what is buffered before dropping it (it is not
# committed, so the partitions' next owner reads it again).
REVOKE_FLUSH_SECONDS = 10.0
MAX_POLL_MESSAGES = 500
# ClickHouse error codes that say a row's data cannot be stored: a constraint, a value
# it cannot parse, convert or fit. Any other code is about the server or the table.
DATA_ERROR_CODES = frozenset({
    6, 27, 38, 41, 53, 69, 70, 72, 117, 131, 190, 321, 349, 469,
})
_CODE = re.compile(r"\bCode: (\d+)\.")


def about_the_data(exc: BaseException) -> bool:
    """Whether an insert failed because of the rows it carried, so that retrying it can
    never succeed: a ClickHouse error with a data error code, or an error building the
    columns in Python (a value that does not fit its column type)."""
    if isinstance(exc, OperationalError):
        return False
    if isinstance(exc, ClickHouseError):
        match = _CODE.search(str(exc))
        return match is not None and int(match.group(1)) in DATA_ERROR_CODES
    return isinstance(exc, TypeError | ValueError | OverflowError | struct.error)


POLL_MS = 500
FETCH_MIN_BYTES = 1 << 20
"""A fetch the broker answers before its wait is up holds at least this much. With the
default of one byte every record message the workers produce made a fetch of its own:
at a paced 2,000 events/s the sink made hundreds of fetches a second, each over all
record partitions, for rows that then wait for their batch anyway."""


def fetch_wait_ms(batch_seconds: float) -> int:
    """How long the broker may hold a fetch for FETCH_MIN_BYTES: a quarter of the
    batch's time (at most aiokafka's default, 500 ms), so that rows wait at most a
    quarter longer than METERSTREAM_SINK_BATCH_SECONDS says."""
    return max(1, min(500, int(batch_seconds * 250)))


@dataclass
class TableSink:
    spec: TableSpec
    topic: str
    writer: TableWriter
    buffer: BatchBuffer
    high_water: HighWater
    pending: Batch | None = None
    """A taken batch not stored yet (its insert failed; retried at retry_at)."""
    retry_at: float = 0.0
    backoff: float = FIRST_BACKOFF_SECONDS
    partitions: set[int] = field(default_factory=set)

    @property
    def failing(self) -> bool:
        return self.pending is not None and self.retry_at > 0.0

    def due(self, now: float) -> bool:
        if self.pending is not None:
            return now >= self.retry_at
        return self.buffer.due()

    def seconds_left(self, now: float) -> float:
        if self.pending is not None:
            return max(0.0, self.retry_at - now)
        return self.buffer.seconds_left() if not self.buffer.empty else POLL_MS / 1000


class Sink:
    def __init__(self, settings: Settings, client: Client, consumer: AIOKafkaConsumer,
                 producer: AIOKafkaProducer, stop: asyncio.Event) -> None:
        topics = Topics.of(settings)
        self.max_attempts = settings.sink_max_attempts
        self.client = client
        self.consumer = consumer
        self.producer = producer
        self.stop = stop
        self.dead_letter_topic = topics.dead_letters.name
        self.tables: dict[str, TableSink] = {}
        for spec in SPECS:
            topic = topic_of(topics, spec)
            self.tables[topic] = TableSink(
                spec, topic, TableWriter(client, spec),
                BatchBuffer(spec.columns, spec.schema, settings.sink_batch_rows,
                            settings.sink_batch_seconds),
                HighWater(spec, sync_replica=bool(settings.clickhouse.cluster)))
        # Held while messages are admitted or batches flushed, and by the rebalance
        # callbacks, which aiokafka runs in its own task.
        self.lock = asyncio.Lock()
        self.committer = Committer(consumer)
        self.need_high_water = False
        self.high_water_retry_at = 0.0
        self.high_water_backoff = FIRST_BACKOFF_SECONDS
        self.assigned = False
        """True from an assignment to the next revoke: the sink owns its partitions."""

    @property
    def topics(self) -> list[str]:
        return list(self.tables)

    @property
    def ready(self) -> bool:
        """Whether the sink owns its partitions and has their high-water marks, so that
        it stores what it reads (before, it holds its partitions paused)."""
        return self.assigned and not self.need_high_water

    async def prepare(self) -> None:
        for table in self.tables.values():
            await asyncio.to_thread(table.writer.column_types)
            metrics.PAUSED.labels(table.spec.table).set(0)
            metrics.BUFFERED.labels(table.spec.table).set(0)

    # The loop ------------------------------------------------------------------------

    async def run(self) -> None:
        while not self.stop.is_set():
            fetched = await self.consumer.getmany(timeout_ms=self._wait_ms(),
                                                  max_records=MAX_POLL_MESSAGES)
            async with self.lock:
                if self.need_high_water:
                    await self._load_high_water()
                assignment = self.consumer.assignment()
                for tp, messages in fetched.items():
                    # Fetched before a rebalance took the partition away; its next owner
                    # reads the messages again from the committed offset.
                    if tp not in assignment:
                        continue
                    if self.need_high_water:
                        # Not admitted without the marks: read them again once they load.
                        self.consumer.seek(tp, messages[0].offset)
                        continue
                    table = self.tables[tp.topic]
                    for message in messages:
                        await self._admit(table, tp, message)
                        if len(table.buffer) >= table.buffer.max_rows and table.pending is None:
                            await self._flush(table)
                now = time.monotonic()
                for table in self.tables.values():
                    if table.due(now):
                        await self._flush(table)
                self._apply_pauses()

    def _wait_ms(self) -> int:
        now = time.monotonic()
        seconds = min(table.seconds_left(now) for table in self.tables.values())
        if self.need_high_water:
            seconds = min(seconds, max(0.0, self.high_water_retry_at - now))
        return max(1, min(POLL_MS, int(seconds * 1000)))

    def _apply_pauses(self) -> None:
        """Pauses the partitions of failing tables (all of them while the high-water marks
        are not loaded) and resumes the others."""
        assignment = self.consumer.assignment()
        paused = {tp for tp in assignment
                  if self.need_high_water or self.tables[tp.topic].failing}
        if paused:
            self.consumer.pause(*paused)
        running = assignment - paused
        if running:
            self.consumer.resume(*running)
        for table in self.tables.values():
            metrics.PAUSED.labels(table.spec.table).set(
                1 if self.need_high_water or table.failing else 0)

    # Admitting messages ---------------------------------------------------------------

    async def _admit(self, table: TableSink, tp: TopicPartition,
                     message: ConsumerRecord[bytes, bytes]) -> None:
        value = message.value or b""
        if table.spec.event_type is not None and record_format.is_arrow(message.headers):
            await self._admit_batch(table, tp, message, table.spec.event_type, value)
            return
        try:
            records = table.spec.decode(value, tp.partition, message.offset)
            months, skipped, updates = table.high_water.admit(records, tp.partition)
            table.buffer.add(tp, message.offset, months)
        except PartitionMismatch:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            months, skipped, updates = await self._admit_slowly(table, tp, message, exc)
            table.buffer.add(tp, message.offset, months)
        table.high_water.advance(updates)
        if skipped:
            metrics.DUPLICATES.labels(table.spec.table).inc(skipped)
        metrics.BUFFERED.labels(table.spec.table).set(len(table.buffer))

    async def _admit_batch(self, table: TableSink, tp: TopicPartition,
                           message: ConsumerRecord[bytes, bytes],
                           event_type: EventType, value: bytes) -> None:
        """A version 2 message: its rows admitted whole per month, or dead-lettered whole."""
        try:
            # Nulls are looked for once per insert (sinks/batching.py Columns.table).
            batch = record_format.decode(event_type, value, nulls=False)
            months, skipped, updates = table.high_water.admit_batch(batch, tp.partition)
        except (DecodeError, BadMessage) as exc:
            await self._dead_letter(table, {
                "reason": f"sink: {exc}"[:1000], "topic": tp.topic, "partition": tp.partition,
                "offset": message.offset, "value_base64": base64.b64encode(value).decode()})
            months, skipped, updates = {}, 0, {}
        table.buffer.add(tp, message.offset, months)
        table.high_water.advance(updates)
        if skipped:
            metrics.DUPLICATES.labels(table.spec.table).inc(skipped)
        metrics.BUFFERED.labels(table.spec.table).set(len(table.buffer))

    async def _admit_slowly(self, table: TableSink, tp: TopicPartition,
                            message: ConsumerRecord[bytes, bytes], error: Exception
                            ) -> Admitted:
        """A message the fast path refused: store its good records, dead-letter the rest."""
        value = message.value or b""
        where = {"topic": tp.topic, "partition": tp.partition, "offset": message.offset}
        try:
            records = table.spec.decode(value, tp.partition, message.offset)
        except Exception as exc:
            await self._dead_letter(table, {
                "reason": f"sink: undecodable message: {exc or error}"[:1000], **where,
                "value": value.decode(errors="replace")})
            return {}, 0, {}
        good = []
        for record in records:
            try:
                table.spec.check(record)
            except BadMessage as bad:
                await self._dead_letter(table, _letter(str(bad), record, where))
                continue
            good.append(record)
        return table.high_water.admit(good, tp.partition)

    async def _dead_letter(self, table: TableSink, letter: Record) -> None:
        log.error("record cannot be stored; sent to the dead-letter topic",
                  extra={"table": table.spec.table, "reason": letter["reason"]})
        event = letter.get("event")
        deployment = event.get("deployment") if isinstance(event, dict) else None
        key = deployment.encode() if isinstance(deployment, str) else None
        await self.producer.send_and_wait(self.dead_letter_topic,
                                          orjson.dumps(letter, default=str), key=key)
        metrics.DEAD_LETTERS.labels(table.spec.table).inc()

    # Storing --------------------------------------------------------------------------

    async def _flush(self, table: TableSink) -> bool:
        """Stores the pending batch, else the buffer, and commits its offsets. False when
        ClickHouse failed: the batch stays pending and its partitions are paused."""
        if table.pending is None:
            if table.buffer.empty:
                return True
            table.pending = table.buffer.take()
            metrics.BUFFERED.labels(table.spec.table).set(0)
        batch = table.pending
        if not await self._store(table, batch):
            table.retry_at = time.monotonic() + table.backoff
            table.backoff = min(table.backoff * 2, MAX_BACKOFF_SECONDS)
            self._apply_pauses()
            return False
        if table.retry_at:
            log.info("insert succeeded again; resuming", extra={"table": table.spec.table})
        table.pending, table.retry_at, table.backoff = None, 0.0, FIRST_BACKOFF_SECONDS
        self.committer.add(batch.commit_offsets())
        return True

    async def _store(self, table: TableSink, batch: Batch) -> bool:
        for month in sorted(batch.months):
            columns = batch.months[month]
            if month in batch.stored or not columns.rows:
                continue
            started = time.perf_counter()
            try:
                if batch.refusals >= self.max_attempts:
                    await self._store_by_message(table, batch, month)
                else:
                    await asyncio.to_thread(table.writer.insert, columns, batch.token(month))
            except Exception as exc:
                metrics.INSERT_FAILURES.labels(table.spec.table).inc()
                log.warning("insert failed; partitions paused, retrying", extra={
                    "table": table.spec.table, "month": month, "rows": columns.rows,
                    "retry_in_s": table.backoff, "error": str(exc)[:500]})
                if not isinstance(exc, OperationalError) and not batch.checked:
                    # Refused, not unreachable: maybe a record ClickHouse cannot take.
                    batch.checked = True
                    if await self._remove_bad_records(table, batch):
                        return await self._store(table, batch)
                if batch.refusals < self.max_attempts and about_the_data(exc):
                    batch.refusals += 1
                    if batch.refusals == self.max_attempts:
                        log.warning("ClickHouse keeps refusing the batch's data; storing it "
                                    "message by message", extra={"table": table.spec.table})
                        return await self._store(table, batch)
                return False
            batch.stored.add(month)
            metrics.INSERT_SECONDS.labels(table.spec.table).observe(
                time.perf_counter() - started)
            metrics.INSERTS.labels(table.spec.table).inc()
            metrics.ROWS.labels(table.spec.table).inc(columns.rows)
        return True

    async def _store_by_message(self, table: TableSink, batch: Batch, month: int) -> None:
        """Stores one month of the batch one origin message at a time (each its own atomic
        insert, in arrival order), dead-lettering the messages refused for their data.
        Raises on any other failure; a retry goes on after the messages done."""
        columns = batch.months[month]
        ranges = columns.messages(table.spec.origin_fields)
        for number in range(batch.by_message.get(month, 0), len(ranges)):
            first, stop = ranges[number]
            part = columns.slice(first, stop)
            try:
                await asyncio.to_thread(table.writer.insert, part,
                                        f"{batch.token(month)}|rows:{first}-{stop}")
            except Exception as exc:
                if not about_the_data(exc):
                    raise
                metrics.POISON.labels(table.spec.table).inc()
                reason = (f"ClickHouse refused this message's records {self.max_attempts} "
                          f"times: {type(exc).__name__}: {str(exc)[:1000]}")
                for record in part.records():
                    await self._dead_letter(table, _letter(reason, record, {}))
            batch.by_message[month] = number + 1

    async def _remove_bad_records(self, table: TableSink, batch: Batch) -> bool:
        """Moves the batch's records that cannot be stored to the dead letters; True if any.
        Only version 1 records are checked: version 2 rows were decoded in their types."""
        removed = False
        for month in [m for m in batch.months if m not in batch.stored]:
            for reason, record in batch.months[month].remove_bad(table.spec.check):
                await self._dead_letter(table, _letter(reason, record, {}))
                removed = True
        return removed

    async def flush_all(self, deadline: float) -> bool:
        """Stores and commits everything buffered, retrying until `deadline`; True if done."""
        for table in self.tables.values():
            while table.pending is not None or not table.buffer.empty:
                if await self._flush(table):
                    continue
                wait = min(table.retry_at, deadline) - time.monotonic()
                if time.monotonic() >= deadline:
                    return False
                await asyncio.sleep(max(0.0, wait))
        return True

    def drop_all(self) -> int:
        """Forgets every buffered and pending row (not committed: read again later)."""
        dropped = 0
        for table in self.tables.values():
            dropped += len(table.buffer) + (table.pending.rows if table.pending else 0)
            table.buffer.drop()
            table.pending, table.retry_at, table.backoff = None, 0.0, FIRST_BACKOFF_SECONDS
            metrics.BUFFERED.labels(table.spec.table).set(0)
        return dropped

    # Rebalances -----------------------------------------------------------------------

    async def on_revoked(self) -> None:
        async with self.lock:
            if not await self.flush_all(time.monotonic() + REVOKE_FLUSH_SECONDS):
                log.warning("could not store the buffered rows before the partitions moved; "
                            "they are read again", extra={"rows": self.drop_all()})
            await self.committer.commit()
            self.committer.forget()
            self.need_high_water = True
            self.assigned = False

    async def on_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self.lock:
            for table in self.tables.values():
                table.partitions = {tp.partition for tp in assigned if tp.topic == table.topic}
            self.need_high_water = True
            self.assigned = True
            self.high_water_retry_at = 0.0
            await self._load_high_water()
            self._apply_pauses()
            metrics.ASSIGNED.set(len(assigned))
        log.info("partitions assigned", extra={"partitions": len(assigned)})

    async def _load_high_water(self) -> None:
        if time.monotonic() < self.high_water_retry_at:
            return
        try:
            for table in self.tables.values():
                await asyncio.to_thread(table.high_water.load, self.client,
                                        sorted(table.partitions))
        except Exception as exc:
            log.warning("cannot read the high-water marks from ClickHouse; consumption "
                        "paused, retrying", extra={"retry_in_s": self.high_water_backoff,
                                                    "error": str(exc)[:500]})
            self.high_water_retry_at = time.monotonic() + self.high_water_backoff
            self.high_water_backoff = min(self.high_water_backoff * 2, MAX_BACKOFF_SECONDS)
            return
        self.need_high_water = False
        self.high_water_backoff = FIRST_BACKOFF_SECONDS


def topic_of(topics: Topics, spec: TableSpec) -> str:
    return topics.alerts.name if spec.route == "alerts" else topics.records(spec.route).name


def _letter(reason: str, record: Record, where: dict[str, object]) -> Record:
    get = record.get if isinstance(record, dict) else (lambda _key: None)
    return {"reason": f"sink: {reason}", "raw_partition": get("raw_partition"),
            "raw_offset": get("raw_offset"), "event_index": get("event_index"),
            "event": record, **where}


class Rebalance(ConsumerRebalanceListener):
    """Stores and commits what is buffered before partitions move; reloads the high-water
    marks of the partitions assigned."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.sink.on_revoked()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.sink.on_assigned(assigned)


async def check_partition_counts(kafka: KafkaConnection, topics: Topics,
                                 names: list[str]) -> None:
    """The high-water marks need each record topic partitioned like the raw topic."""
    counts = await partition_counts(kafka, [topics.raw.name, *names])
    raw = counts[topics.raw.name]
    for name in names:
        if name != topics.alerts.name and counts[name] != raw:
            raise PartitionMismatch(
                f"{name} has {counts[name]} partitions and {topics.raw.name} {raw}: the sink "
                "counts exactly once only when they are equal (recreate the topic)")


async def consume(settings: Settings, client: Client, stop: asyncio.Event,
                  readiness: Readiness | None = None) -> None:
    """Consumes into ClickHouse through `client` until `stop` is set, then stores and
    commits what is buffered. `readiness` gets the check "partitions": assigned, and
    their high-water marks loaded."""
    topics = Topics.of(settings)
    kafka = KafkaConnection.of(settings)
    consumer = AIOKafkaConsumer(
        **kafka.client_options(),
        group_id=f"{settings.namespace}-sink",
        client_id=f"{settings.namespace}-sink",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        fetch_min_bytes=FETCH_MIN_BYTES,
        fetch_max_wait_ms=fetch_wait_ms(settings.sink_batch_seconds),
    )
    producer = AIOKafkaProducer(**kafka.client_options(), acks="all",
                                enable_idempotence=True, max_request_size=16 * 1024 * 1024)
    sink = Sink(settings, client, consumer, producer, stop)
    if readiness is not None:
        readiness.add("partitions", lambda: sink.ready)
    await sink.prepare()
    await consumer.start()
    await producer.start()
    try:
        await check_partition_counts(kafka, topics, sink.topics)
        consumer.subscribe(sink.topics, listener=Rebalance(sink))
        log.info("sink consuming", extra={"topics": sink.topics})
        committer = asyncio.create_task(sink.committer.run())
        lag = asyncio.create_task(LagMeter(
            kafka, f"{settings.namespace}-sink", metrics.CONSUMER_LAG,
            lambda: [(tp.topic, tp.partition) for tp in consumer.assignment()],
            client_id=f"{settings.namespace}-sink-lag").run(settings.lag_interval))
        try:
            await sink.run()
            log.info("sink stopping: flushing and committing what is buffered")
            async with sink.lock:
                if not await sink.flush_all(time.monotonic() + SHUTDOWN_SECONDS):
                    # Not committed: read again at the next start and skipped where stored.
                    log.error("could not flush within the shutdown time; stopping anyway",
                              extra={"seconds": SHUTDOWN_SECONDS})
                await sink.committer.commit()
        finally:
            committer.cancel()
            lag.cancel()
            # Its clients closed; bounded like every other step of a stop.
            _, running = await asyncio.wait([lag], timeout=SHUTDOWN_SECONDS)
            if running:
                log.error("the lag meter did not stop in time", extra={
                    "seconds": SHUTDOWN_SECONDS})
    finally:
        for closing, what in ((consumer.stop(), "consumer"), (producer.stop(), "producer")):
            try:
                await asyncio.wait_for(closing, SHUTDOWN_SECONDS)
            except TimeoutError:
                log.error("a Kafka client did not close in time", extra={"client": what})
