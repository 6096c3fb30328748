"""Collecting records from Kafka messages into batches, cut by size or by age.

The buffer remembers, per partition, the first and last offset it holds, so
that a flushed batch knows exactly which offsets to commit and which range
its insert stands for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition

Record = dict[str, Any]


@dataclass
class Batch:
    records: list[Record] = field(default_factory=list)
    offsets: dict[TopicPartition, tuple[int, int]] = field(default_factory=dict)
    """First and last offset of the messages behind the records, per partition."""

    def commit_offsets(self) -> dict[TopicPartition, int]:
        """Offsets to commit once the batch is stored: the next one to read, per partition."""
        return {tp: last + 1 for tp, (_, last) in self.offsets.items()}

    def token(self) -> str:
        """Names the offset ranges behind the batch; the same ranges give the same token."""
        return ",".join(f"{tp.topic}:{tp.partition}:{first}-{last}"
                        for tp, (first, last) in sorted(self.offsets.items()))


class BatchBuffer:
    def __init__(self, max_rows: int, max_seconds: float) -> None:
        self.max_rows = max_rows
        self.max_seconds = max_seconds
        self._batch = Batch()
        self._opened: float | None = None

    def add(self, tp: TopicPartition, offset: int, records: list[Record]) -> None:
        """Adds the records of one message; a message with no records still moves the offsets."""
        if self._opened is None:
            self._opened = time.monotonic()
        self._batch.records.extend(records)
        first, _ = self._batch.offsets.get(tp, (offset, offset))
        self._batch.offsets[tp] = (first, offset)

    def __len__(self) -> int:
        return len(self._batch.records)

    @property
    def empty(self) -> bool:
        return not self._batch.offsets

    def seconds_left(self) -> float:
        """Time until the oldest record is due; max_seconds when the buffer is empty."""
        if self._opened is None:
            return self.max_seconds
        return max(0.0, self._opened + self.max_seconds - time.monotonic())

    def due(self) -> bool:
        return not self.empty and (len(self) >= self.max_rows or self.seconds_left() == 0.0)

    def take(self) -> Batch:
        batch, self._batch, self._opened = self._batch, Batch(), None
        return batch
