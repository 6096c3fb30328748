"""Collecting one table's records from Kafka messages into batches, cut by size or by age.

A buffer holds the admitted rows per month (each month is one insert), and
remembers, per partition, the first and last offset of the messages behind them,
so that a flushed batch knows which offsets to commit and which range its inserts
stand for.

Rows come in two shapes, kept in arrival order as the parts of a month's Columns:
Arrow record batches (record format version 2, already in the table's types, held
as they were decoded) and columns of Python values (version 1 JSON records, and the
alerts). Version 1 records become columns message by message, as they are admitted:
transposing a message's records while they are fresh in the CPU cache, and freeing
the dicts at once, is about a third faster than transposing a whole batch of dicts at
the insert. Consecutive version 1 messages share one part; at the insert each such
part becomes one Arrow batch of the table's schema (`Columns.table`), so that one
Arrow table, whatever the mix, is one insert.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from operator import itemgetter
from typing import Any, TypeAlias

import pyarrow as pa
from aiokafka import TopicPartition

from meterstream.core.records import Record
from meterstream.core.tables import BadMessage

ORIGIN_FIELDS = (("raw_partition", "raw_offset", "event_index"),
                 ("kafka_partition", "kafka_offset"))

Lists: TypeAlias = list[list[object]]
"""Version 1 rows, column by column."""
Part: TypeAlias = "pa.RecordBatch | Lists"


@cache
def _layout(names: tuple[str, ...]) -> tuple[itemgetter[Any], list[int]]:
    """(the getter of a record's columns, the indexes of its origin columns)"""
    origin = next(o for o in ORIGIN_FIELDS if set(o) <= set(names))
    return itemgetter(*names), [names.index(name) for name in origin]


class Columns:
    """Rows of one table and month, in arrival order, as parts (see the module's text)."""

    def __init__(self, names: tuple[str, ...], schema: pa.Schema) -> None:
        self.names = names
        self.schema = schema
        # One Columns per message and month: what depends only on the table is computed once.
        self.getter, self._origin = _layout(names)
        self.parts: list[Part] = []
        self.rows = 0

    def add(self, records: list[Record]) -> None:
        """Appends version 1 records; raises KeyError (and appends nothing) if one lacks a
        column."""
        if not records:
            return
        transposed = list(zip(*map(self.getter, records), strict=True))
        last = self.parts[-1] if self.parts else None
        if isinstance(last, list):
            for column, values in zip(last, transposed, strict=True):
                column.extend(values)
        else:
            self.parts.append([list(values) for values in transposed])
        self.rows += len(records)

    def add_batch(self, batch: pa.RecordBatch) -> None:
        """Appends the rows of a version 2 message (of this table's schema)."""
        if batch.num_rows:
            self.parts.append(batch)
            self.rows += batch.num_rows

    def extend(self, other: Columns) -> None:
        for part in other.parts:
            if isinstance(part, list):
                last = self.parts[-1] if self.parts else None
                if isinstance(last, list):
                    for column, values in zip(last, part, strict=True):
                        column.extend(values)
                    continue
                part = [list(values) for values in part]
            self.parts.append(part)
        self.rows += other.rows

    def table(self) -> pa.Table:
        """The rows as one Arrow table of the schema (an insert), in one chunk. Raises
        ValueError, TypeError or OverflowError when a version 1 value does not fit its
        column."""
        table = pa.Table.from_batches([part if isinstance(part, pa.RecordBatch)
                                       else self._arrow(part) for part in self.parts],
                                      schema=self.schema)
        # One record batch instead of one per message: the engine reads a batch of a few
        # hundred rows at a cost that a copy here is a fraction of (measured with chdb:
        # 8.3 CPU µs per row inserted as 128-row batches, 2.8 as one).
        table = table.combine_chunks()
        # Version 2 messages are decoded without looking for nulls (sinks/sink.py): a null
        # would be stored as the column's default, so the whole insert is checked here,
        # once per column instead of once per column and message.
        for name, column in zip(self.names, table.columns, strict=True):
            if column.null_count:
                raise ValueError(f"{name}: a value is missing (null)")
        return table

    def _arrow(self, lists: Lists) -> pa.RecordBatch:
        arrays = [pa.array(values, type=f.type) for values, f in zip(lists, self.schema,
                                                                      strict=True)]
        for name, array in zip(self.names, arrays, strict=True):
            if array.null_count:
                raise ValueError(f"{name}: a value is missing (null)")
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def records(self) -> list[Record]:
        """The rows as records again, as version 1 would carry them (times in ms, maps as
        objects), for the slow paths and the dead letters."""
        out: list[Record] = []
        for part in self.parts:
            if isinstance(part, list):
                out.extend(dict(zip(self.names, row, strict=True))
                           for row in zip(*part, strict=True))
            else:
                out.extend(self._records_of(part))
        return out

    def _records_of(self, batch: pa.RecordBatch) -> list[Record]:
        columns: list[list[object]] = []
        for column in batch.columns:
            if pa.types.is_timestamp(column.type):
                columns.append(column.view(pa.int64()).to_pylist())
            elif pa.types.is_map(column.type):
                columns.append([dict(pairs) for pairs in column.to_pylist()])
            else:
                columns.append(column.to_pylist())
        return [dict(zip(self.names, row, strict=True)) for row in zip(*columns, strict=True)]

    def remove_bad(self, check: Callable[[Record], None]) -> list[tuple[str, Record]]:
        """Takes out the version 1 rows `check` refuses (BadMessage); returns each with the
        reason. Version 2 rows are in their column types already and are kept."""
        bad: list[tuple[str, Record]] = []
        for number, part in enumerate(self.parts):
            if not isinstance(part, list):
                continue
            good: list[Record] = []
            for record in (dict(zip(self.names, row, strict=True))
                           for row in zip(*part, strict=True)):
                try:
                    check(record)
                except BadMessage as exc:
                    bad.append((str(exc), record))
                    continue
                good.append(record)
            self.rows -= len(part[0]) - len(good) if part else 0
            self.parts[number] = [list(values) for values in zip(*map(self.getter, good),
                                                                 strict=True)] \
                if good else [[] for _ in self.names]
        return bad

    def origin(self, row: int) -> str:
        for part in self.parts:
            size = len(part[0]) if isinstance(part, list) else part.num_rows
            if row < size:
                if isinstance(part, list):
                    return ":".join(str(part[index][row]) for index in self._origin)
                return ":".join(str(part.column(index)[row].as_py())
                                for index in self._origin)
            row -= size
        raise IndexError(row)

    def messages(self, origin_fields: tuple[str, str]) -> list[tuple[int, int]]:
        """[first, stop) row ranges of consecutive rows from one origin message (the
        (partition, offset) named by `origin_fields`), in order."""
        indexes = [self.names.index(name) for name in origin_fields]
        origins: list[tuple[object, ...]] = []
        for part in self.parts:
            if isinstance(part, list):
                origins.extend(zip(*(part[index] for index in indexes), strict=True))
            else:
                origins.extend(zip(*(part.column(index).to_pylist() for index in indexes),
                                   strict=True))
        ranges: list[tuple[int, int]] = []
        first = 0
        for row in range(1, self.rows + 1):
            if row == self.rows or origins[row] != origins[first]:
                ranges.append((first, row))
                first = row
        return ranges

    def slice(self, first: int, stop: int) -> Columns:
        """Rows [first, stop) as Columns of their own."""
        part = Columns(self.names, self.schema)
        at = 0
        for piece in self.parts:
            size = len(piece[0]) if isinstance(piece, list) else piece.num_rows
            low, high = max(first - at, 0), min(stop - at, size)
            if low < high:
                # Neighbouring parts are never both lists (add and extend merge them).
                part.parts.append([values[low:high] for values in piece]
                                  if isinstance(piece, list) else piece.slice(low, high - low))
                part.rows += high - low
            at += size
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
    def __init__(self, names: tuple[str, ...], schema: pa.Schema, max_rows: int,
                 max_seconds: float) -> None:
        self.names = names
        self.schema = schema
        self.max_rows = max_rows
        self.max_seconds = max_seconds
        self._batch = Batch()
        self._rows = 0
        self._opened: float | None = None

    def add(self, tp: TopicPartition, offset: int,
            months: dict[int, list[Record]] | dict[int, pa.RecordBatch]) -> None:
        """Adds the admitted rows of one message (version 1 records or a version 2 batch per
        month); a message with none still moves the offsets, so that it is committed with
        the batch. Raises KeyError, adding nothing, when a record lacks a column."""
        added: list[Columns] = []
        for rows in months.values():
            columns = Columns(self.names, self.schema)
            if isinstance(rows, pa.RecordBatch):
                columns.add_batch(rows)
            else:
                columns.add(rows)  # raises before anything is in the batch
            added.append(columns)
        for month, columns in zip(months, added, strict=True):
            held = self._batch.months.get(month)
            if held is None:
                self._batch.months[month] = columns
            else:
                held.extend(columns)
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
