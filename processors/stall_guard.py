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
"""

from __future__ import annotations

import logging
import time
from typing import Any

from processors import metrics

log = logging.getLogger(__name__)


class StallGuard:
    def __init__(self, topic: str, idle_seconds: float) -> None:
        self.topic = topic
        self.idle_seconds = idle_seconds
        self.next_offset: dict[int, int] = {}
        self.busy = False
        self.last_progress = time.monotonic()

    def started(self) -> None:
        self.busy = True

    def processed(self, partition: int, offset: int) -> None:
        self.next_offset[partition] = offset + 1
        self.busy = False
        self.last_progress = time.monotonic()

    def forget_partitions(self, partitions: set[int]) -> None:
        for partition in partitions:
            self.next_offset.pop(partition, None)

    async def check(self, consumer: Any, queue_empty: bool) -> int:
        """Rewinds each stalled partition; returns how many it rewound."""
        if self.busy or not queue_empty or (
                time.monotonic() - self.last_progress < self.idle_seconds):
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
                # the committed one (Faust keeps it; None when nothing was ever committed).
                expected = consumer._committed_offset.get(tp) or 0
            end = ends.get(tp)
            if end is not None and end > expected:
                log.warning("stream idle with unprocessed records; rewinding",
                            extra={"partition": tp.partition, "end_offset": end,
                                   "next_offset": expected,
                                   "position": await consumer.position(tp)})
                consumer.resume_partitions({tp})
                await consumer.seek(tp, expected)
                metrics.REWINDS.inc()
                rewound += 1
        if rewound:
            self.last_progress = time.monotonic()  # give the rewind time to deliver
        return rewound
