"""Automatic invoices: a month is invoiced once every event that can still count in it is
stored.

An event counts in its month when the receiver acknowledged it within
METERSTREAM_LATE_GRACE after its time (the worker dead-letters it otherwise), so the
last event of a month can reach the raw topic until the month's end + the grace + the
receiver's longest wait for Kafka (METERSTREAM_PRODUCE_TIMEOUT: a body stamped
`received_at` just inside the grace is acknowledged no later than that, or answered
503). That instant is the period's *cut-off* (`run_time`). The run then waits for the
pipeline to catch up past it (`Gate`):

1. the raw topic's end offsets, read once at or after the cut-off (the *raw targets*):
   every acknowledged body of the period is before them;
2. the worker's consumer group (the Faust app id, the namespace) has committed at least
   the raw targets on every raw partition. The worker commits a raw offset only once
   Kafka stored everything it forwarded from the messages before it
   (processors/delivery_acks.py), so from then on the period's records are all in the
   record topics;
3. the billed record topics' end offsets, read once after step 2 (the *record
   targets*), and the sink's group (`<ns>-sink`) has committed at least them: the sink
   commits only after inserting (sinks/sink.py), so every record of the period is
   in ClickHouse.

Only then is the period invoiced. A partition's target counts as reached when the
group's committed offset, or the partition's first retained offset when that is
higher (nothing older is left to process), is at least the target. The targets are
fixed when first read, so a busy pipeline that keeps receiving still lets the run
happen: only what was there at the cut-off must be processed.

The task runs inside the sink, the process that holds the embedded engine. At start
it goes through the gate for the latest period whose cut-off has passed, so a sink
that was down at the time catches up; generation never duplicates, so running it
again is harmless, and adjusts for usage stored since the last run (docs/billing.md,
"Usage that lands after an invoice").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from billing import invoices, pricebook
from billing.database import Database
from billing.metrics import LAST_RUN, LOOKS, NEXT_RUN, RUN_SECONDS, RUNS, WAITING
from billing.periods import Period
from billing.pricebook import PriceBook
from billing.registry import owners
from meterstream.core.clickhouse import connect
from meterstream.core.config import Settings
from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.registry import RegistryView
from meterstream.core.tables import (
    AGENT_USAGE,
    FILE_DOWNLOADS,
    FUNCTION_EXECUTIONS,
    LOG_STREAM_EGRESS,
    STORAGE_SNAPSHOTS,
)
from meterstream.core.topics import Topics, ensure_topics, partition_counts

log = logging.getLogger("meterstream.billing")

RETRY_SECONDS = 300.0
# Longest single wait, so that a changed clock is noticed within the hour.
MAX_WAIT_SECONDS = 3600.0
# How often the gate looks at the consumer groups' progress while it waits for them.
POLL_SECONDS = 10.0
# The record topics whose tables invoices read (not `other`, not the alerts).
BILLED_ROUTES: tuple[str, ...] = tuple(spec.route for spec in (
    FUNCTION_EXECUTIONS, STORAGE_SNAPSHOTS, FILE_DOWNLOADS, LOG_STREAM_EGRESS, AGENT_USAGE))

Clock = Callable[[], float]
Offsets = Mapping[TopicPartition, int]


def cut_off_ms(settings: Settings) -> int:
    """How long after a period's end its run may start: the late grace plus the receiver's
    longest wait for Kafka (ms)."""
    return int((settings.late_grace + settings.produce_timeout) * 1000)


def run_time(period: Period, wait_ms: int) -> int:
    """The period's cut-off: its end + `wait_ms` (ms). The run happens then at the
    earliest, once the pipeline caught up (`Gate`)."""
    return period.end_ms + wait_ms


def last_due(now_ms: int, wait_ms: int) -> Period:
    """The latest period whose cut-off has come."""
    period = Period.containing(now_ms - wait_ms)
    return period.previous()


class Stage(StrEnum):
    """What a period's run waits for; its value labels meterstream_billing_invoice_run_waiting."""

    GRACE = "grace"
    """the cut-off has not come"""
    RAW_ENDS = "raw_ends"
    """the raw targets are to be read"""
    WORKER = "worker"
    """the worker's group to commit the raw targets"""
    RECORD_ENDS = "record_ends"
    """the record targets are to be read"""
    SINK = "sink"
    """the sink's group to commit the record targets"""
    DUE = "due"
    """nothing: invoice the period"""


def lagging(targets: Offsets, committed: Mapping[TopicPartition, int | None],
            earliest: Offsets) -> dict[TopicPartition, int]:
    """Partitions whose group has not consumed up to its target, with how many messages
    are left. A partition without a commit is at its earliest retained offset (0 if not
    known): older messages are gone, so nothing is left to wait for below it."""
    behind = {}
    for tp, target in targets.items():
        done = max(committed.get(tp) or 0, earliest.get(tp, 0))
        if done < target:
            behind[tp] = target - done
    return behind


@dataclass
class Gate:
    """The decision for one period, fed with what the loop reads. Pure: no I/O, no clock.

    Invariants: `record_targets` is set only after the worker's group was seen at or past
    `raw_targets`; `stage()` is DUE only after the sink's group was seen at or past
    `record_targets`; each target is set once and never moves."""

    period: Period
    opens_at: int
    raw_targets: dict[TopicPartition, int] | None = None
    worker_caught_up: bool = False
    record_targets: dict[TopicPartition, int] | None = None
    sink_caught_up: bool = False
    behind: dict[TopicPartition, int] = field(default_factory=dict)
    """What the last look found left to consume, per partition."""

    def stage(self, now_ms: int) -> Stage:
        if now_ms < self.opens_at:
            return Stage.GRACE
        if self.raw_targets is None:
            return Stage.RAW_ENDS
        if not self.worker_caught_up:
            return Stage.WORKER
        if self.record_targets is None:
            return Stage.RECORD_ENDS
        if not self.sink_caught_up:
            return Stage.SINK
        return Stage.DUE

    def took_raw_ends(self, ends: Offsets) -> None:
        if self.raw_targets is None:
            self.raw_targets = dict(ends)

    def saw_worker(self, committed: Mapping[TopicPartition, int | None],
                   earliest: Offsets) -> bool:
        """True once the worker's group reached the raw targets."""
        if self.raw_targets is None:
            raise ValueError("the raw targets are read before the worker's progress")
        self.behind = lagging(self.raw_targets, committed, earliest)
        self.worker_caught_up = self.worker_caught_up or not self.behind
        return self.worker_caught_up

    def took_record_ends(self, ends: Offsets) -> None:
        if not self.worker_caught_up:
            raise ValueError("the record targets are read only after the worker caught up")
        if self.record_targets is None:
            self.record_targets = dict(ends)

    def saw_sink(self, committed: Mapping[TopicPartition, int | None],
                 earliest: Offsets) -> bool:
        """True once the sink's group reached the record targets."""
        if self.record_targets is None:
            raise ValueError("the record targets are read before the sink's progress")
        self.behind = lagging(self.record_targets, committed, earliest)
        self.sink_caught_up = self.sink_caught_up or not self.behind
        return self.sink_caught_up


class Progress(Protocol):
    """What the gate reads from Kafka (KafkaProgress; a fake in the unit tests)."""

    async def ends(self, topics: list[str]) -> dict[TopicPartition, int]: ...

    async def earliest(self, topics: list[str]) -> dict[TopicPartition, int]: ...

    async def committed(self, group: str, topics: list[str]
                        ) -> dict[TopicPartition, int | None]: ...


class KafkaProgress:
    """End, earliest and committed offsets from the broker, with clients opened per look
    (the gate looks every POLL_SECONDS for a short while each month)."""

    def __init__(self, kafka: KafkaConnection) -> None:
        self.kafka = kafka

    async def _partitions(self, topics: list[str]) -> list[TopicPartition]:
        counts = await partition_counts(self.kafka, topics)
        return [TopicPartition(t, p) for t in topics for p in range(counts[t])]

    async def _offsets(self, topics: list[str], end: bool) -> dict[TopicPartition, int]:
        partitions = await self._partitions(topics)
        if not partitions:
            return {}
        consumer = AIOKafkaConsumer(**self.kafka.client_options(),
                                    client_id="meterstream-invoice-gate",
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            found = await (consumer.end_offsets(partitions) if end
                           else consumer.beginning_offsets(partitions))
        finally:
            await consumer.stop()
        return {tp: int(offset) for tp, offset in found.items()}

    async def ends(self, topics: list[str]) -> dict[TopicPartition, int]:
        return await self._offsets(topics, end=True)

    async def earliest(self, topics: list[str]) -> dict[TopicPartition, int]:
        return await self._offsets(topics, end=False)

    async def committed(self, group: str, topics: list[str]
                        ) -> dict[TopicPartition, int | None]:
        partitions = await self._partitions(topics)
        admin = AIOKafkaAdminClient(**self.kafka.client_options(),
                                    client_id="meterstream-invoice-gate")
        await admin.start()
        try:
            found = await admin.list_consumer_group_offsets(group, partitions=partitions)
        finally:
            await admin.close()
        # -1: no commit for that partition.
        return {tp: (found[tp].offset if tp in found and found[tp].offset >= 0 else None)
                for tp in partitions}


@dataclass(frozen=True)
class Pipeline:
    """The topics and groups the gate watches."""

    raw_topic: str
    worker_group: str
    record_topics: list[str]
    sink_group: str

    @classmethod
    def of(cls, settings: Settings) -> Pipeline:
        topics = Topics.of(settings)
        return cls(topics.raw.name, settings.namespace,
                   [topics.records(route).name for route in BILLED_ROUTES],
                   f"{settings.namespace}-sink")


async def look(gate: Gate, now_ms: int, pipeline: Pipeline, progress: Progress) -> Stage:
    """Reads what the gate needs next and feeds it; returns the stage it is at after."""
    stage = gate.stage(now_ms)
    if stage is Stage.RAW_ENDS:
        gate.took_raw_ends(await progress.ends([pipeline.raw_topic]))
    elif stage is Stage.WORKER:
        topics = [pipeline.raw_topic]
        gate.saw_worker(await progress.committed(pipeline.worker_group, topics),
                        await progress.earliest(topics))
    elif stage is Stage.RECORD_ENDS:
        gate.took_record_ends(await progress.ends(pipeline.record_topics))
    elif stage is Stage.SINK:
        topics = pipeline.record_topics
        gate.saw_sink(await progress.committed(pipeline.sink_group, topics),
                      await progress.earliest(topics))
    else:
        return stage
    return gate.stage(now_ms)


Sleep = Callable[[float], Awaitable[None]]


def now_ms(clock: Clock) -> int:
    """The clock in ms, rounded: truncating s x 1000 can land a millisecond early, and a
    gate that opens at that millisecond would then wait 0 s again and again."""
    return round(clock() * 1000)


async def wait_for_pipeline(gate: Gate, pipeline: Pipeline, progress: Progress,
                            clock: Clock, sleep: Sleep = asyncio.sleep,
                            poll_seconds: float = POLL_SECONDS) -> None:
    """Returns once `gate` is DUE; sleeps until the cut-off, then polls the groups."""
    while True:
        now = now_ms(clock)
        stage = gate.stage(now)
        for each in Stage:
            WAITING.labels(each.value).set(1 if each is stage and stage is not Stage.DUE else 0)
        if stage is Stage.DUE:
            return
        if stage is Stage.GRACE:
            await sleep(min((gate.opens_at - now) / 1000, MAX_WAIT_SECONDS))
            continue
        looked_at = stage
        try:
            stage = await look(gate, now, pipeline, progress)
        except Exception as exc:  # Kafka away: look again later
            log.warning("cannot read the pipeline's progress for the invoice run; retrying",
                        extra={"period": gate.period.label, "error": repr(exc)[:500]})
            await sleep(poll_seconds)
            continue
        LOOKS.labels(stage.value).inc()
        # Still behind after a look at a group's progress: look again later. (After reading
        # targets the group is looked at at once.)
        if stage is looked_at and stage in (Stage.WORKER, Stage.SINK):
            log.info("invoice run waits for the pipeline", extra={
                "period": gate.period.label, "waiting_for": stage.value,
                "messages_left": sum(gate.behind.values())})
            await sleep(poll_seconds)


class Schedule:
    """The running task; `stop()` ends it."""

    def __init__(self, task: asyncio.Task[None], view: RegistryView) -> None:
        self.task = task
        self.view = view

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.view.stop()


def start(settings: Settings, clock: Clock = time.time, progress: Progress | None = None,
          poll_seconds: float = POLL_SECONDS) -> Schedule:
    """Starts the schedule; stops the process at once when the price book is unusable."""
    try:
        book = pricebook.load(settings.price_book)
    except pricebook.PriceBookError as exc:
        log.error("unusable price book", extra={"error": str(exc)})
        raise SystemExit(f"meterstream: {exc}") from None
    topic = Topics.of(settings).deployments
    view = RegistryView(KafkaConnection.of(settings), topic.name)
    task = asyncio.create_task(
        _run(settings, book, view, clock, progress or KafkaProgress(KafkaConnection.of(settings)),
             poll_seconds), name="invoice-schedule")
    return Schedule(task, view)


async def _run(settings: Settings, book: PriceBook, view: RegistryView, clock: Clock,
               progress: Progress, poll_seconds: float) -> None:
    await ensure_topics(KafkaConnection.of(settings), [Topics.of(settings).deployments])
    view.start()
    await view.wait_loaded()
    # Its own client (clients share the process's embedded engine), kept for the process.
    db = Database.of_client(await asyncio.to_thread(connect, settings.clickhouse))
    pipeline = Pipeline.of(settings)
    wait_ms = cut_off_ms(settings)
    done: Period | None = None
    while True:
        now = now_ms(clock)
        due = last_due(now, wait_ms)
        if due != done:
            gate = Gate(due, run_time(due, wait_ms))
            NEXT_RUN.set(gate.opens_at / 1000)
            await wait_for_pipeline(gate, pipeline, progress, clock, poll_seconds=poll_seconds)
            if await _generate(db, book, view, due, now_ms(clock),
                               bool(settings.clickhouse.cluster)):
                done = due
                LAST_RUN.set(clock())
            else:
                await asyncio.sleep(RETRY_SECONDS)
                continue
        upcoming = run_time(due.next(), wait_ms)
        NEXT_RUN.set(upcoming / 1000)
        await asyncio.sleep(min(max((upcoming - now) / 1000, 0.0), MAX_WAIT_SECONDS))


async def _generate(db: Database, book: PriceBook, view: RegistryView, period: Period,
                    now: int, replicated: bool) -> bool:
    started = time.perf_counter()
    try:
        run = await asyncio.to_thread(invoices.generate, db, period, book, owners(view.all()),
                                      now, False, replicated)
    except Exception:
        RUNS.labels("error").inc()
        log.exception("scheduled invoice run failed; retrying",
                      extra={"period": period.label, "retry_in_s": RETRY_SECONDS})
        return False
    RUN_SECONDS.observe(time.perf_counter() - started)
    RUNS.labels("problems" if run.problems else "ok").inc()
    if run.problems:
        log.error("scheduled invoice run could not invoice some subjects",
                  extra={"period": period.label, "problems": run.problems})
    return True

