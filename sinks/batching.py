"""Collecting one table's records from Kafka messages into batches, cut by size or by age.

A buffer holds the admitted records grouped by month (each month is one insert)
and remembers, per partition, the first and last offset of the messages behind
them, so that a flushed batch knows which offsets to commit and which range its
inserts stand for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiokafka import TopicPartition

from processors.records import Record


@dataclass
class Batch:
    months: dict[int, list[Record]] = field(default_factory=dict)
    """Records per YYYYMM month, in arrival order."""
    offsets: dict[TopicPartition, tuple[int, int]] = field(default_factory=dict)
    """First and last offset of the messages behind the records, per partition."""
    stored: set[int] = field(default_factory=set)
    """Months inserted already (a batch whose later month failed is retried without them)."""
    checked: bool = False
    """Whether its records went through the slow per-record check after a failed insert."""

    @property
    def rows(self) -> int:
        return sum(len(records) for records in self.months.values())

    def commit_offsets(self) -> dict[TopicPartition, int]:
        """Offsets to commit once the batch is stored: the next one to read, per partition."""
        return {tp: last + 1 for tp, (_, last) in self.offsets.items()}

    def token(self, month: int) -> str:
        """Names one month's insert: the offset ranges behind the batch, the month, the row
        count and the first and last record's origin. The same messages admitted the same
        way give the same token, so a retried insert is a no-op; the count and origins keep
        tokens apart should a topic be recreated and its offsets start again."""
        records = self.months[month]
        ranges = ",".join(f"{tp.topic}:{tp.partition}:{first}-{last}"
                          for tp, (first, last) in sorted(self.offsets.items()))
        return f"{ranges}|{month}|{len(records)}|{_origin(records[0])}|{_origin(records[-1])}"


def _origin(record: Record) -> str:
    if "raw_offset" in record:
        return f"{record['raw_partition']}:{record['raw_offset']}:{record['event_index']}"
    return f"{record.get('kafka_partition')}:{record.get('kafka_offset')}"


class BatchBuffer:
    def __init__(self, max_rows: int, max_seconds: float) -> None:
        self.max_rows = max_rows
        self.max_seconds = max_seconds
        self._batch = Batch()
        self._rows = 0
        self._opened: float | None = None

    def add(self, tp: TopicPartition, offset: int, months: dict[int, list[Record]]) -> None:
        """Adds the admitted records of one message; a message with none still moves the
        offsets, so that it is committed with the batch."""
        if self._opened is None:
            self._opened = time.monotonic()
        for month, records in months.items():
            held = self._batch.months.get(month)
            if held is None:
                self._batch.months[month] = records
            else:
                held.extend(records)
            self._rows += len(records)
        first, _ = self._batch.offsets.get(tp, (offset, offset))
        self._batch.offsets[tp] = (first, offset)

    def __len__(self) -> int:
        return self._rows

    @property
    def empty(self) -> bool:
        return not self._batch.offsets

    def seconds_left(self) -> float:
        """Time until the oldest record is due; max_seconds when the buffer is empty."""
        if self._opened is None:
            return self.max_seconds
        return max(0.0, self._opened + self.max_seconds - time.monotonic())

    def due(self) -> bool:
        return not self.empty and (self._rows >= self.max_rows or self.seconds_left() == 0.0)

    def take(self) -> Batch:
        batch, self._batch, self._rows, self._opened = self._batch, Batch(), 0, None
        return batch

    def drop(self) -> None:
        """Forgets what is buffered (not committed: it is read again)."""
        self.take()
