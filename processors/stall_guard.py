"""A guard against a Faust race that silently stops a stream after a restart.

At the end of table recovery Faust resumes the stream partitions, seeks them to their
committed offsets and only then resumes its flow control, which clears every stream
queue (mode's FlowControlEvent.resume). Records the consumer fetched in between are
cleared from the agent's queue although Faust already counts them as read, so the agent
waits forever for the next message while its partition's fetch position is past it.
Seen here after kill -9 of a worker in about half of the restarts.

The guard notices it: the agent has been idle for a while, its queue is empty, and a
raw partition holds records beyond the next offset the agent should process. It then
resumes that partition (a rebalance can also leave one paused) and seeks it back to that
offset, so the records are fetched again. Processing a message
again is harmless (processors/state.py), so a rewind can never double count.

The same race can also leave a gap *inside* the stream: records fetched before the
seek are cleared from the queue, Faust's read offset has moved past them so it drops
their re-fetch, and the stream goes on with the records after them. The agent would
never see the records in the gap (seen here: raw offsets 49-53 of a partition skipped
after a rebalance, 54-59 processed, the live usage short by five bodies and the
partition's commits stuck at 49 until the next restart). So the guard also admits
every message: it knows the next offset to process of each partition (after an
assignment, the group's committed offset on the broker, which no earlier owner can
move any more), and

- a message at that offset is processed;
- one below it was processed already (a re-fetch after a rewind): it is skipped, and
  acknowledged behind what is still in flight;
- one above it means a gap: the partition is sought back to the offset, and the
  message, like every other one above the offset until it arrives, is dropped without
  an acknowledgement (it comes again after the records before it). Faust is told to
  stop tracking it (`untrack`): it would otherwise wait for its ack at the next
  rebalance and hold the rebalance up (seen: "wait_empty: Waiting for tasks"), while
  an ack would count its offset as done before its second delivery is processed.
If the rewind itself is lost, it is repeated: by the idle check above when the stream
goes quiet, and, while other partitions keep the agent busy (so it never is idle), by the
admission as soon as a message beyond the gap arrives `idle_seconds` after the rewind
still without the gap's first record (seen in a benchmark: a partition's re-fetch lost
under steady load left its deployments unmetered for 95 s, until the load stopped). A
rewind repeated while a long queue is still draining costs a second fetch of the same
records and nothing else: whichever copy of the gap's first record comes first is
processed, the later copies are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from meterstream.core.kafka_client import KafkaConnection
from processors import metrics

log = logging.getLogger(__name__)


class Admission(Enum):
    PROCESS = "process"
    SKIP = "skip"  # processed already
    DROP = "drop"  # beyond a gap, while a rewind to the gap is under way
    REWIND = "rewind"  # beyond a gap: seek the partition back to `next_offset`


StartOffset = Callable[[int], Awaitable[int]]
"""The offset to process first in a partition just assigned: the group's committed
offset, or the log start when there is none."""


class StallGuard:
    def __init__(self, topic: str, idle_seconds: float, start_offset: StartOffset,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.topic = topic
        self.idle_seconds = idle_seconds
        self.start_offset = start_offset
        self.clock = clock
        self.next_offset: dict[int, int] = {}
        self.rewinding: dict[int, tuple[int, float]] = {}
        """partition -> (the offset a rewind for a gap sought it to, when)"""
        self.busy = False
        self.last_progress = clock()

    async def admit(self, partition: int, offset: int) -> Admission:
        """What to do with the message at `offset` of `partition` (module docstring)."""
        expected = self.next_offset.get(partition)
        if expected is None:
            expected = self.next_offset[partition] = await self.start_offset(partition)
        if offset == expected:
            return Admission.PROCESS
        if offset < expected:
            return Admission.SKIP
        now = self.clock()
        rewind = self.rewinding.get(partition)
        if rewind is not None and rewind[0] == expected:
            if now - rewind[1] < self.idle_seconds:
                return Admission.DROP
            log.warning("rewind did not bring the gap's first record; rewinding again",
                        extra={"partition": partition, "offset": offset,
                               "next_offset": expected,
                               "seconds": round(now - rewind[1], 1)})
        else:
            log.warning("gap in the stream; rewinding", extra={
                "partition": partition, "offset": offset, "next_offset": expected})
        self.rewinding[partition] = (expected, now)
        metrics.REWINDS.inc()
        return Admission.REWIND

    def started(self) -> None:
        self.busy = True

    def processed(self, partition: int, offset: int) -> None:
        self.next_offset[partition] = offset + 1
        self.rewinding.pop(partition, None)
        self.busy = False
        self.last_progress = self.clock()

    def forget_partitions(self, partitions: set[int]) -> None:
        for partition in partitions:
            self.next_offset.pop(partition, None)
            self.rewinding.pop(partition, None)

    async def check(self, consumer: Any, queue_empty: bool,
                    seek: Callable[[Any, int], Awaitable[None]]) -> int:
        """Rewinds each stalled partition (with `seek`, which must run in the consumer's
        thread); returns how many it rewound."""
        if self.busy or not queue_empty or (
                self.clock() - self.last_progress < self.idle_seconds):
            return 0
        partitions = [tp for tp in consumer.assignment() if tp.topic == self.topic]
        if not partitions:
            return 0
        ends = await consumer.highwaters(*partitions)
        rewound = 0
        for tp in partitions:
            expected = self.next_offset.get(tp.partition)
            if expected is None:
                # Nothing processed since the partition was assigned: the next offset is
                # the committed one.
                expected = self.next_offset[tp.partition] = await self.start_offset(
                    tp.partition)
            end = ends.get(tp)
            if end is not None and end > expected:
                log.warning("stream idle with unprocessed records; rewinding",
                            extra={"partition": tp.partition, "end_offset": end,
                                   "next_offset": expected,
                                   "position": await consumer.position(tp)})
                consumer.resume_partitions({tp})
                await seek(tp, expected)
                metrics.REWINDS.inc()
                rewound += 1
        if rewound:
            self.last_progress = self.clock()  # give the rewind time to deliver
        return rewound


class CommittedOffsets:
    """The consumer group's committed offsets, read from the broker (not from Faust,
    which learns them only when it seeks after the recovery, the very race above)."""

    def __init__(self, kafka: KafkaConnection, group: str, first_retry: float = 0.2) -> None:
        self.kafka = kafka
        self.group = group
        self.first_retry = first_retry
        self._admin: AIOKafkaAdminClient | None = None

    async def offset(self, topic: str, partition: int) -> int:
        """The next offset the group is to process; -1 when it committed none. Asks until
        the broker answers: with a broker of the cluster down the question can fail (its
        node not ready, the group's coordinator moving), and an error here would crash the
        worker (the stall check runs in a Faust timer, the admission in the agent) where
        waiting a few seconds for the cluster to elect new leaders is all it takes."""
        retry = self.first_retry
        while True:
            try:
                return await self._offset(topic, partition)
            except (KafkaError, OSError) as exc:
                log.warning("committed offset not available; asking again", extra={
                    "topic": topic, "partition": partition, "error": repr(exc),
                    "retry_in_s": retry})
                await self.close()  # a new client starts from the bootstrap servers
                await asyncio.sleep(retry)
                retry = min(retry * 2, 5.0)

    async def _offset(self, topic: str, partition: int) -> int:
        if self._admin is None:
            admin = AIOKafkaAdminClient(**self.kafka.client_options(),
                                        client_id="stall-guard")
            await admin.start()
            self._admin = admin
        tp = TopicPartition(topic, partition)
        found = await self._admin.list_consumer_group_offsets(self.group, partitions=[tp])
        return found[tp].offset if tp in found else -1

    async def close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            with contextlib.suppress(KafkaError, OSError):
                await admin.close()


def untrack_from(consumer: Any, tp: Any, offset: int) -> None:
    """Before `tp` is sought back to `offset`: makes Faust forget every message of it at or
    beyond `offset` that it still counts as in flight. Those were fetched before the seek
    and then cleared from the agent's queue (the race above), so they are never acked: the
    copies fetched again are tracked anew. Left tracked, one holds the next rebalance up
    for good (seen on a three-broker cluster with a broker killed: the stale copy of a
    gap's first record, "wait_empty: Waiting for tasks", until the group expelled the
    worker a minute later). Everything below `offset` was processed, so none of what is
    still in flight for `tp` is touched."""
    for message in [m for m in consumer._unacked_messages
                    if m.tp == tp and m.offset >= offset]:
        untrack(consumer, message)


def untrack(consumer: Any, message: Any) -> None:
    """Makes Faust forget a message the agent dropped beyond a gap, without acknowledging
    it: its offset stays out of what Faust commits (the copy fetched again after the
    rewind is processed and acked), and a rebalance or shutdown no longer waits for it.
    (Faust has no public call for this: `_unacked_messages` is what its `wait_empty`
    waits on, and `acked` keeps a late ack of this copy from counting.)"""
    message.acked = True
    consumer._unacked_messages.discard(message)
