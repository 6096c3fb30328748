"""The stall guard's admission of raw messages: a gap in a partition's offsets is
rewound once, what lies beyond it dropped until the gap's first record comes again,
and what was processed already skipped (processors/stall_guard.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from faust.types import TP

from meterstream.core.kafka_client import KafkaConnection
from processors.stall_guard import Admission, StallGuard, untrack, untrack_from


def _start(start: dict[int, int]) -> Callable[[int], Awaitable[int]]:
    async def start_offset(partition: int) -> int:
        return start[partition]

    return start_offset


def _guard(start: dict[int, int]) -> tuple[StallGuard, list[int]]:
    asked: list[int] = []

    async def start_offset(partition: int) -> int:
        asked.append(partition)
        return start[partition]

    return StallGuard("raw", idle_seconds=5.0, start_offset=start_offset), asked


def _admit(guard: StallGuard, partition: int, offset: int) -> Admission:
    return asyncio.run(guard.admit(partition, offset))


def test_a_partition_starts_at_the_committed_offset_asked_once() -> None:
    guard, asked = _guard({0: 49, 1: 0})
    assert _admit(guard, 0, 49) is Admission.PROCESS
    guard.processed(0, 49)
    assert _admit(guard, 0, 50) is Admission.PROCESS
    assert _admit(guard, 1, 0) is Admission.PROCESS
    assert asked == [0, 1]


def test_a_gap_is_rewound_once_and_what_lies_beyond_it_dropped_until_it_comes() -> None:
    """Raw offsets 49-53 lost from the stream after a rebalance, 54 delivered next."""
    guard, _ = _guard({3: 49})
    assert _admit(guard, 3, 54) is Admission.REWIND
    assert guard.next_offset[3] == 49  # where the partition is sought back to
    assert [_admit(guard, 3, offset) for offset in (55, 56)] == [Admission.DROP] * 2
    for offset in range(49, 60):  # the re-fetch, in order
        assert _admit(guard, 3, offset) is Admission.PROCESS
        guard.processed(3, offset)
    assert guard.next_offset[3] == 60


def test_a_rewind_that_brings_nothing_is_repeated_while_the_partition_keeps_coming() -> None:
    """Seen under steady load: the re-fetch after a rewind lost, the partition's later
    messages dropped for 95 s while the agent, busy with other partitions, was never idle
    for the idle check to see it."""
    now = [100.0]
    guard = StallGuard("raw", idle_seconds=5.0, start_offset=_start({0: 0}),
                       clock=lambda: now[0])
    assert _admit(guard, 0, 2) is Admission.REWIND
    now[0] += 4.9
    assert _admit(guard, 0, 3) is Admission.DROP  # the re-fetch may still be on its way
    now[0] += 0.2
    assert _admit(guard, 0, 4) is Admission.REWIND  # it is not: again
    assert guard.next_offset[0] == 0
    assert _admit(guard, 0, 5) is Admission.DROP  # the new rewind's own wait
    assert _admit(guard, 0, 0) is Admission.PROCESS
    guard.processed(0, 0)
    now[0] += 60
    assert _admit(guard, 0, 1) is Admission.PROCESS  # a later copy of what came: in order
    guard.processed(0, 1)
    assert _admit(guard, 0, 0) is Admission.SKIP


def test_a_second_gap_after_the_first_is_rewound_again() -> None:
    guard, _ = _guard({0: 10})
    assert _admit(guard, 0, 12) is Admission.REWIND
    assert _admit(guard, 0, 10) is Admission.PROCESS
    guard.processed(0, 10)
    assert _admit(guard, 0, 13) is Admission.REWIND  # 11 and 12 missing now
    assert _admit(guard, 0, 11) is Admission.PROCESS


def test_what_was_processed_already_is_skipped() -> None:
    guard, _ = _guard({0: 5})
    assert _admit(guard, 0, 3) is Admission.SKIP  # below the committed offset
    assert _admit(guard, 0, 5) is Admission.PROCESS
    guard.processed(0, 5)
    assert _admit(guard, 0, 5) is Admission.SKIP  # fetched again by a rewind


def test_a_revoked_partition_asks_for_its_start_again() -> None:
    guard, asked = _guard({2: 7})
    assert _admit(guard, 2, 7) is Admission.PROCESS
    guard.processed(2, 7)
    guard.forget_partitions({2})
    assert _admit(guard, 2, 7) is Admission.PROCESS  # the committed offset, asked again
    assert asked == [2, 2]


class _Consumer:
    """What StallGuard.check uses of Faust's consumer."""

    def __init__(self, ends: dict[int, int]) -> None:
        self.ends = ends
        self.sought: list[tuple[int, int]] = []

    def assignment(self) -> set[Any]:
        return {TP("raw", partition) for partition in self.ends}

    async def highwaters(self, *tps: Any) -> dict[Any, int]:
        return {tp: self.ends[tp.partition] for tp in tps}

    async def position(self, tp: Any) -> int:
        return self.ends[tp.partition]

    def resume_partitions(self, tps: set[Any]) -> None:
        pass

    async def seek(self, tp: Any, offset: int) -> None:
        self.sought.append((tp.partition, offset))


def test_an_idle_stream_short_of_the_end_is_rewound_to_its_next_offset() -> None:
    guard, _ = _guard({0: 30, 1: 4})
    guard.processed(0, 40)
    guard.last_progress -= 10  # idle longer than idle_seconds
    consumer = _Consumer({0: 45, 1: 4})
    assert asyncio.run(guard.check(consumer, True, consumer.seek)) == 1
    assert consumer.sought == [(0, 41)]  # partition 1 is at its end


def test_a_busy_stream_is_not_rewound() -> None:
    guard, _ = _guard({0: 0})
    guard.started()
    guard.last_progress -= 10
    consumer = _Consumer({0: 45})
    assert asyncio.run(guard.check(consumer, True, consumer.seek)) == 0
    assert asyncio.run(guard.check(consumer, False, consumer.seek)) == 0
    assert consumer.sought == []


def test_untrack_lets_faust_forget_a_message_without_acking_it() -> None:
    """What Faust's rebalance waits on (`_unacked_messages`) loses the message, and
    nothing enters what Faust commits."""
    from faust.types.tuples import Message

    class Consumer:
        def __init__(self) -> None:
            self._unacked_messages: set[Any] = set()
            self._acked: dict[Any, list[int]] = {}

    consumer = Consumer()
    message = Message("raw", 3, 54, 0.0, 0, None, b"dep", b"[]", None)
    consumer._unacked_messages.add(message)
    untrack(consumer, message)
    assert consumer._unacked_messages == set()
    assert consumer._acked == {}
    assert message.acked  # a late ack of this copy does nothing


def test_a_seek_back_forgets_the_partitions_stale_copies_and_nothing_else() -> None:
    """Records fetched before a seek back to offset 51 and cleared from the agent's queue
    (51 itself, and 53 beyond the gap) are forgotten; what is still in flight below 51,
    and other partitions, stay tracked for their acks."""
    from faust.types.tuples import Message

    class Consumer:
        def __init__(self) -> None:
            self._unacked_messages: set[Any] = set()
            self._acked: dict[Any, list[int]] = {}

    consumer = Consumer()
    stale = [Message("raw", 3, offset, 0.0, 0, None, b"dep", b"[]", None)
             for offset in (51, 53)]
    in_flight = Message("raw", 3, 50, 0.0, 0, None, b"dep", b"[]", None)
    other = Message("raw", 4, 60, 0.0, 0, None, b"dep", b"[]", None)
    consumer._unacked_messages.update([*stale, in_flight, other])
    untrack_from(consumer, TP("raw", 3), 51)
    assert consumer._unacked_messages == {in_flight, other}
    assert all(message.acked for message in stale)
    assert not in_flight.acked
    assert consumer._acked == {}


def test_the_committed_offset_is_asked_again_through_a_new_client_when_kafka_fails(
        monkeypatch: Any) -> None:
    """A broker down makes the question fail (seen: NodeNotReadyError from a killed
    broker, which crashed the worker from its stall check): asked again, not raised."""
    from aiokafka.errors import NodeNotReadyError

    from processors import stall_guard

    clients: list[Any] = []

    class Admin:
        def __init__(self, **_: Any) -> None:
            self.closed = False
            clients.append(self)

        async def start(self) -> None:
            pass

        async def close(self) -> None:
            self.closed = True

        async def list_consumer_group_offsets(self, group: str,
                                              partitions: list[Any]) -> dict[Any, Any]:
            if len(clients) < 3:
                raise NodeNotReadyError("node 2")
            return {partitions[0]: type("Committed", (), {"offset": 57})()}

    monkeypatch.setattr(stall_guard, "AIOKafkaAdminClient", Admin)
    committed = stall_guard.CommittedOffsets(KafkaConnection("127.0.0.1:1"), "ns", first_retry=0.0)
    assert asyncio.run(committed.offset("ns.raw", 3)) == 57
    assert len(clients) == 3
    assert [client.closed for client in clients] == [True, True, False]
