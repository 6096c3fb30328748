"""The automatic invoice run's gate (billing/scheduler.py) with fake offsets and a fake
clock: it waits for the period's end + the late grace + the produce timeout, then for the
worker's group to commit the raw topic's end offsets of then, then for the sink's group
to commit the record topics' end offsets read after that."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from billing.periods import Period
from billing.scheduler import (
    Gate,
    Pipeline,
    Stage,
    cut_off_ms,
    lagging,
    last_due,
    run_time,
    wait_for_pipeline,
)
from meterstream.core.config import Settings
from tests.support.billing_data import ms

OCTOBER = Period(2026, 10)
WAIT_MS = (86_400 + 10) * 1000  # METERSTREAM_LATE_GRACE + METERSTREAM_PRODUCE_TIMEOUT
RAW = "ns.raw"
RAW0, RAW1 = TopicPartition(RAW, 0), TopicPartition(RAW, 1)
FX0, FX1 = TopicPartition("ns.function_execution", 0), TopicPartition("ns.function_execution", 1)
PIPELINE = Pipeline(RAW, "ns", ["ns.function_execution"], "ns-sink")


def test_the_cut_off_is_the_grace_plus_the_produce_timeout_after_the_month() -> None:
    assert cut_off_ms(Settings.from_env({})) == WAIT_MS
    assert cut_off_ms(Settings.from_env({"METERSTREAM_LATE_GRACE": "3600",
                                         "METERSTREAM_PRODUCE_TIMEOUT": "5"})) == 3_605_000
    assert run_time(OCTOBER, WAIT_MS) == ms("2026-11-02T00:00:10")
    assert last_due(ms("2026-11-02T00:00:09.999"), WAIT_MS) == Period(2026, 9)
    assert last_due(ms("2026-11-02T00:00:10"), WAIT_MS) == OCTOBER
    assert last_due(ms("2026-12-01T10:00:00"), WAIT_MS) == OCTOBER
    # A leap February's run: its end is 2028-03-01.
    assert run_time(Period(2028, 2), WAIT_MS) == ms("2028-03-02T00:00:10")
    # With a week of grace, October is due on November 8.
    week = 7 * 86_400_000
    assert last_due(ms("2026-11-07T23:59:59"), week) == Period(2026, 9)
    assert last_due(ms("2026-11-08T00:00:00"), week) == OCTOBER


def test_lagging_counts_what_each_partition_has_left() -> None:
    targets = {RAW0: 10, RAW1: 3}
    assert lagging(targets, {RAW0: 10, RAW1: 3}, {}) == {}
    assert lagging(targets, {RAW0: 12, RAW1: 4}, {}) == {}  # beyond: later messages
    assert lagging(targets, {RAW0: 7, RAW1: 3}, {}) == {RAW0: 3}
    # No commit at all: everything since the first retained offset is left.
    assert lagging(targets, {RAW0: None, RAW1: None}, {RAW0: 0, RAW1: 0}) == {RAW0: 10, RAW1: 3}
    assert lagging(targets, {}, {}) == {RAW0: 10, RAW1: 3}
    # Messages deleted by retention are not waited for; an empty partition is done.
    assert lagging(targets, {RAW0: 2, RAW1: None}, {RAW0: 10, RAW1: 3}) == {}
    assert lagging({RAW0: 0}, {RAW0: None}, {RAW0: 0}) == {}


def test_the_gate_goes_through_its_stages_in_order_with_fixed_targets() -> None:
    gate = Gate(OCTOBER, run_time(OCTOBER, WAIT_MS))
    assert gate.stage(gate.opens_at - 1) is Stage.GRACE
    assert gate.stage(gate.opens_at) is Stage.RAW_ENDS
    gate.took_raw_ends({RAW0: 10, RAW1: 3})
    gate.took_raw_ends({RAW0: 50, RAW1: 50})  # later messages do not move the targets
    assert gate.raw_targets == {RAW0: 10, RAW1: 3}
    assert gate.stage(gate.opens_at) is Stage.WORKER
    assert not gate.saw_worker({RAW0: 10, RAW1: 2}, {})
    assert gate.behind == {RAW1: 1}
    assert gate.stage(gate.opens_at + 3_600_000) is Stage.WORKER
    with pytest.raises(ValueError, match="only after the worker caught up"):
        gate.took_record_ends({FX0: 4})
    assert gate.saw_worker({RAW0: 10, RAW1: 3}, {})
    assert gate.stage(gate.opens_at) is Stage.RECORD_ENDS
    gate.took_record_ends({FX0: 4, FX1: 0})
    gate.took_record_ends({FX0: 40, FX1: 40})
    assert gate.record_targets == {FX0: 4, FX1: 0}
    assert gate.stage(gate.opens_at) is Stage.SINK
    assert not gate.saw_sink({FX0: 3, FX1: None}, {FX0: 0, FX1: 0})
    assert gate.behind == {FX0: 1}
    assert gate.stage(gate.opens_at) is Stage.SINK
    assert gate.saw_sink({FX0: 4, FX1: None}, {FX0: 0, FX1: 0})
    assert gate.stage(gate.opens_at) is Stage.DUE


def test_the_gate_refuses_to_read_progress_before_its_targets() -> None:
    gate = Gate(OCTOBER, 0)
    with pytest.raises(ValueError, match="raw targets are read before"):
        gate.saw_worker({}, {})
    with pytest.raises(ValueError, match="record targets are read before"):
        gate.saw_sink({}, {})


class FakeProgress:
    """Offsets that change as the scenario says, recording each read with the clock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.ends_now: dict[TopicPartition, int] = {}
        self.groups: dict[str, dict[TopicPartition, int | None]] = {"ns": {}, "ns-sink": {}}
        self.reads: list[tuple[str, int]] = []
        self.on_read: list = []

    async def ends(self, topics: list[str]) -> dict[TopicPartition, int]:
        self.reads.append((f"ends {','.join(topics)}", self.clock.ms))
        return {tp: o for tp, o in self.ends_now.items() if tp.topic in topics}

    async def earliest(self, topics: list[str]) -> dict[TopicPartition, int]:
        return {tp: 0 for tp in self.ends_now if tp.topic in topics}

    async def committed(self, group: str, topics: list[str]
                        ) -> dict[TopicPartition, int | None]:
        self.reads.append((f"committed {group}", self.clock.ms))
        found = {tp: o for tp, o in self.groups[group].items() if tp.topic in topics}
        if self.on_read:
            self.on_read.pop(0)()
        return found


class FakeClock:
    def __init__(self, at_ms: int) -> None:
        self.ms = at_ms
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.ms / 1000

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.ms += round(seconds * 1000)


def test_usage_stored_late_is_waited_for_before_the_run() -> None:
    """Issue 12's case: a body acknowledged just inside October's grace is in the raw topic
    at the cut-off; the worker is behind, and then the sink. The run waits for both, and
    what came after the cut-off is not waited for."""
    clock = FakeClock(ms("2026-11-02T00:00:00"))
    progress = FakeProgress(clock)
    gate = Gate(OCTOBER, run_time(OCTOBER, WAIT_MS))
    # At the cut-off: 10 + 3 raw messages, the last of them the late body; the worker has
    # done 9 and 3.
    progress.ends_now = {RAW0: 13 - 3, RAW1: 3, FX0: 2, FX1: 0}
    progress.groups["ns"] = {RAW0: 9, RAW1: 3}
    progress.groups["ns-sink"] = {FX0: 2, FX1: None}

    def worker_catches_up() -> None:
        # More bodies arrive (November's), and the worker forwards the late body's
        # records (FX0: 2 -> 3) and commits it.
        progress.ends_now.update({RAW0: 25, RAW1: 9, FX0: 3})
        progress.groups["ns"] = {RAW0: 10, RAW1: 4}

    def record_topics_grow() -> None:
        progress.ends_now[FX0] = 30  # November's records: not waited for

    def sink_stores_the_late_records() -> None:
        progress.groups["ns-sink"] = {FX0: 3, FX1: None}

    # Each callback runs after the committed offsets of that look were read.
    progress.on_read = [lambda: None, worker_catches_up, lambda: None, record_topics_grow,
                        sink_stores_the_late_records]
    asyncio.run(wait_for_pipeline(gate, PIPELINE, progress, clock, clock.sleep,
                                  poll_seconds=10))
    assert gate.stage(clock.ms) is Stage.DUE
    assert gate.raw_targets == {RAW0: 10, RAW1: 3}
    assert gate.record_targets == {FX0: 3, FX1: 0}
    cut_off = ms("2026-11-02T00:00:10")
    assert progress.reads == [
        ("ends ns.raw", cut_off),  # not before the cut-off
        ("committed ns", cut_off),  # 9 of 10: behind
        ("committed ns", cut_off + 10_000),  # still 9 (it commits just after)
        ("committed ns", cut_off + 20_000),  # caught up
        ("ends ns.function_execution", cut_off + 20_000),  # after the worker caught up
        ("committed ns-sink", cut_off + 20_000),  # 2 of 3: behind
        ("committed ns-sink", cut_off + 30_000),  # still 2
        ("committed ns-sink", cut_off + 40_000),  # the late records stored
    ]
    # Until the cut-off, then between looks that found a group behind.
    assert clock.sleeps == [10.0] * 5


def test_a_kafka_error_while_looking_is_retried() -> None:
    clock = FakeClock(ms("2026-11-02T00:00:10"))
    progress = FakeProgress(clock)
    failures = [OSError("broker away")]
    real_ends = progress.ends

    async def flaky_ends(topics: list[str]) -> dict[TopicPartition, int]:
        if failures:
            raise failures.pop()
        return await real_ends(topics)

    progress.ends = flaky_ends  # type: ignore[method-assign]
    gate = Gate(OCTOBER, run_time(OCTOBER, WAIT_MS))
    asyncio.run(wait_for_pipeline(gate, PIPELINE, progress, clock, clock.sleep,
                                  poll_seconds=7))
    assert gate.stage(clock.ms) is Stage.DUE
    assert clock.sleeps == [7.0]
