"""Collecting one table's records from Kafka messages into batches, cut by size or by age.

A buffer holds the admitted records as columns, per month (each month is one insert),
and remembers, per partition, the first and last offset of the messages behind them,
so that a flushed batch knows which offsets to commit and which range its inserts
stand for.

Records become columns message by message, as they are admitted: transposing a
message's records while they are fresh in the CPU cache, and freeing the dicts at
once, is about a third faster than transposing a whole batch of dicts at the insert.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from operator import itemgetter

from aiokafka import TopicPartition

from meterstream.core.records import Record

ORIGIN_FIELDS = (("raw_partition", "raw_offset", "event_index"),
                 ("kafka_partition", "kafka_offset"))


class Columns:
    """Records of one table and month, column by column, in arrival order."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.getter = itemgetter(*names)
        self.data: list[list[object]] = [[] for _ in names]
        self.rows = 0
        origin = next(o for o in ORIGIN_FIELDS if set(o) <= set(names))
        self._origin = [names.index(name) for name in origin]

    def add(self, records: list[Record]) -> None:
        """Appends the records; raises KeyError (and appends nothing) if one lacks a column."""
        if not records:
            return
        transposed = list(zip(*map(self.getter, records), strict=True))
        for column, values in zip(self.data, transposed, strict=True):
            column.extend(values)
        self.rows += len(records)

    def records(self) -> list[Record]:
        """The rows as records again (for the slow path of a refused insert)."""
        return [dict(zip(self.names, row, strict=True)) for row in zip(*self.data, strict=True)]

    def replace(self, records: list[Record]) -> None:
        self.data = [[] for _ in self.names]
        self.rows = 0
        self.add(records)

    def origin(self, row: int) -> str:
        return ":".join(str(self.data[index][row]) for index in self._origin)

    def messages(self, origin_fields: tuple[str, str]) -> list[tuple[int, int]]:
        """[first, stop) row ranges of consecutive rows from one origin message (the
        (partition, offset) named by `origin_fields`), in order."""
        partitions, offsets = (self.data[self.names.index(name)] for name in origin_fields)
        ranges: list[tuple[int, int]] = []
        first = 0
        for row in range(1, self.rows + 1):
            if row == self.rows or (partitions[row], offsets[row]) != (
                    partitions[first], offsets[first]):
                ranges.append((first, row))
                first = row
        return ranges

    def slice(self, first: int, stop: int) -> Columns:
        part = Columns(self.names)
        part.data = [column[first:stop] for column in self.data]
        part.rows = stop - first
        return part


@dataclass
class Batch:
    months: dict[int, Columns] = field(default_factory=dict)
    """Rows per YYYYMM month."""
    offsets: dict[TopicPartition, tuple[int, int]] = field(default_factory=dict)
    """First and last offset of the messages behind the rows, per partition."""
    stored: set[int] = field(default_factory=set)
    """Months inserted already (a batch whose later month failed is retried without them)."""
    checked: bool = False
    """Whether its rows went through the slow per-record check after a refused insert."""
    refusals: int = 0
    """Inserts ClickHouse refused for the data (sinks/sink.py about_the_data)."""
    by_message: dict[int, int] = field(default_factory=dict)
    """Once stored message by message: per month, how many messages are done."""

    @property
    def rows(self) -> int:
        return sum(columns.rows for columns in self.months.values())

    def commit_offsets(self) -> dict[TopicPartition, int]:
        """Offsets to commit once the batch is stored: the next one to read, per partition."""
        return {tp: last + 1 for tp, (_, last) in self.offsets.items()}

    def token(self, month: int) -> str:
        """Names one month's insert: the offset ranges behind the batch, the month, the row
        count and the first and last row's origin. The same messages admitted the same
        way give the same token, so a retried insert is a no-op; the count and origins keep
        tokens apart should a topic be recreated and its offsets start again."""
        columns = self.months[month]
        ranges = ",".join(f"{tp.topic}:{tp.partition}:{first}-{last}"
                          for tp, (first, last) in sorted(self.offsets.items()))
        return (f"{ranges}|{month}|{columns.rows}|{columns.origin(0)}|"
                f"{columns.origin(columns.rows - 1)}")


class BatchBuffer:
    def __init__(self, names: tuple[str, ...], max_rows: int, max_seconds: float) -> None:
        self.names = names
        self.max_rows = max_rows
        self.max_seconds = max_seconds
        self._batch = Batch()
        self._rows = 0
        self._opened: float | None = None

    def add(self, tp: TopicPartition, offset: int, months: dict[int, list[Record]]) -> None:
        """Adds the admitted records of one message; a message with none still moves the
        offsets, so that it is committed with the batch. Raises KeyError, adding nothing,
        when a record lacks a column."""
        added: list[Columns] = []
        for records in months.values():
            columns = Columns(self.names)
            columns.add(records)  # raises before anything is in the batch
            added.append(columns)
        for month, columns in zip(months, added, strict=True):
            held = self._batch.months.get(month)
            if held is None:
                self._batch.months[month] = columns
            else:
                for column, values in zip(held.data, columns.data, strict=True):
                    column.extend(values)
                held.rows += columns.rows
            self._rows += columns.rows
        if self._opened is None:
            self._opened = time.monotonic()
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
