"""High-water marks: which records a table holds already, by their origin.

Records of one origin partition reach the sink in origin-offset order: the raw
topic and every per-event-type topic are keyed by deployment and have the same
number of partitions, so the records of raw partition p are on partition p of
each record topic, in the order the worker processed raw partition p; alerts
are their own origin. A record whose origin offset is not above the highest
one stored for its (origin partition, month) was stored before, by an insert
this sink made before a crash, or is a copy the worker made when it processed
raw messages again after a crash of its own.

That is exact because each insert is atomic: the sink inserts one month of one
table at a time (one month partition, one part, squashed into one block), so
after a crash a month either holds all of an insert or none of it. The marks
are per month because a batch spanning two months is two inserts, and a crash
between them leaves one month stored and the other not.

The marks cover what is stored and what is buffered: they are loaded from
ClickHouse when partitions are assigned (after buffers were flushed or dropped
at the revoke) and advanced as records are admitted.

Two ways in, one rule. `admit` takes the records of a version 1 message (JSON, any
origins) and applies the rule record by record (at once when they share one origin
and month). `admit_batch` takes a version 2 message (an Arrow batch of one raw body's
rows, meterstream/core/record_format.py) and applies it per month of the message
without looking at a row in Python. It is the same rule, because:

- it first proves that every row has the same origin (partition, offset): the
  minimum and maximum of both origin columns are equal, computed over every row
  (not trusted from the first row); a batch where they differ is refused
  (BadMessage, dead-lettered whole) instead of admitted on a guess;
- for rows sharing one origin (p, o), the per-record rule compares o with the mark
  of (p, month of the row) as it was before the message (`_admit_each`'s `before`),
  so every row of one month gets the same answer: all of that month's rows are
  admitted, or all skipped; `admit_batch` asks once per month the rows fall in
  (a body can straddle months) and keeps or drops that month's slice whole;
- the marks then advance to o for each admitted month, the maximum the per-record
  path would reach for those rows.

So a raw body's rows are admitted the same whether they came as JSON or as Arrow,
which is what lets both versions share a partition during an upgrade: a body the
old worker sent as JSON and the upgraded worker sends again as Arrow (or the
reverse) has one origin, and the second copy is skipped as any duplicate is.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver.client import Client

from meterstream.core.records import Record
from meterstream.core.tables import MAX_TIMESTAMP_MS, BadMessage, TableSpec, month_bounds, month_of

Key = tuple[int, int]
"""(origin partition, YYYYMM month)"""
Admitted = tuple[dict[int, list[Record]], int, dict[Key, int]]
"""(records per month, records skipped, marks to advance)"""
AdmittedBatch = tuple[dict[int, pa.RecordBatch], int, dict[Key, int]]
"""(rows per month, rows skipped, marks to advance)"""


class PartitionMismatch(RuntimeError):
    """Records of a raw partition arrived on another partition of a record topic: the
    order the marks rely on does not hold, so the sink stops instead of guessing."""


class HighWater:
    def __init__(self, spec: TableSpec, sync_replica: bool = False) -> None:
        self.spec = spec
        self.sync_replica = sync_replica
        """On a cluster (METERSTREAM_CLICKHOUSE_CLUSTER): bring this replica up to date
        before reading the marks (see `load`)."""
        self.marks: dict[Key, int] = {}
        self._times = itemgetter(spec.time_field)
        self._origin = itemgetter(*spec.origin_fields)

    def load(self, client: Client, partitions: list[int]) -> None:
        """Sets the marks of `partitions` to what ClickHouse holds (forgets the others).

        On a cluster, the partitions' previous owner may have inserted through another
        replica, and an insert is acknowledged once its part is on that replica and in
        the table's replication log, before this replica fetched it. Marks read here
        before the fetch would be too low and the rows read again counted twice, so
        `SYSTEM SYNC REPLICA` first waits until this replica has every part the log
        held: a replica that cannot fetch one (its only holder down) makes this raise
        after the server's timeout, and the sink keeps its partitions paused and
        retries rather than guess."""
        self.marks.clear()
        if not partitions:
            return
        if self.sync_replica:
            client.command(f"SYSTEM SYNC REPLICA {self.spec.table}")
        origin_partition, origin_offset = self.spec.origin_fields
        rows = client.query(
            f"SELECT {origin_partition}, toYYYYMM({self.spec.time_field}), "
            f"max({origin_offset}) FROM {self.spec.table} "
            f"WHERE {origin_partition} IN ({', '.join(map(str, sorted(partitions)))}) "
            "GROUP BY 1, 2").result_rows
        self.marks.update({(int(p), int(m)): int(o) for p, m, o in rows})

    def admit(self, records: list[Record], partition: int) -> Admitted:
        """The records not seen yet, grouped by month in arrival order, how many were
        skipped, and the marks to `advance` once they are buffered. `partition` is the
        partition the message came from. Raises BadMessage when a record lacks its time or
        origin."""
        if not records:
            return {}, 0, {}
        try:
            times = list(map(self._times, records))
            origins = set(map(self._origin, records))
            low, high = min(times), max(times)
        except (KeyError, TypeError) as exc:
            raise BadMessage(f"{self.spec.table}: a record lacks a valid "
                             f"{self.spec.time_field} or origin ({exc!r})") from None
        if type(low) is not int or type(high) is not int or low < 0 \
                or high > MAX_TIMESTAMP_MS:
            raise BadMessage(f"{self.spec.table}: {self.spec.time_field} must be a ms time")
        if len(origins) == 1:
            ((origin_partition, origin_offset),) = origins
            self._check_partition(origin_partition, partition)
            month = month_of(low)
            start, end = month_bounds(month)
            if start <= high < end:
                key = (origin_partition, month)
                if origin_offset <= self.marks.get(key, -1):
                    return {}, len(records), {}
                return {month: records}, 0, {key: origin_offset}
        return self._admit_each(records, partition)

    def admit_batch(self, batch: pa.RecordBatch, partition: int) -> AdmittedBatch:
        """`admit` for the rows of one version 2 message (one raw body, schema checked by
        record_format.decode): its rows per month not seen yet, how many were skipped, and
        the marks to `advance`. Raises BadMessage when its rows have several origins or a
        time beyond what ClickHouse stores."""
        rows = batch.num_rows
        if not rows:
            return {}, 0, {}
        origin_partition = _one_value(batch, self.spec.origin_fields[0], self.spec.table)
        origin_offset = _one_value(batch, self.spec.origin_fields[1], self.spec.table)
        self._check_partition(origin_partition, partition)
        times = batch.column(self.spec.time_field)
        low, high = _bounds(times.view(pa.int64()), self.spec.table, self.spec.time_field)
        if low < 0 or high > MAX_TIMESTAMP_MS:
            raise BadMessage(f"{self.spec.table}: {self.spec.time_field} must be a ms time, "
                             f"got {low}..{high}")
        month = month_of(low)
        _, end = month_bounds(month)
        if high < end:
            slices = {month: batch}
        else:
            # A body straddling months: one slice per month, in row order within each.
            months = pc.add(pc.multiply(pc.year(times), 100), pc.month(times))
            slices = {int(m): batch.filter(pc.equal(months, m))
                      for m in sorted(pc.unique(months).to_pylist())}
        admitted: dict[int, pa.RecordBatch] = {}
        skipped = 0
        updates: dict[Key, int] = {}
        for month, part in slices.items():
            key = (origin_partition, month)
            if origin_offset <= self.marks.get(key, -1):
                skipped += part.num_rows
                continue
            admitted[month] = part
            updates[key] = origin_offset
        return admitted, skipped, updates

    def advance(self, updates: dict[Key, int]) -> None:
        for key, offset in updates.items():
            if offset > self.marks.get(key, -1):
                self.marks[key] = offset

    def _admit_each(self, records: list[Record], partition: int) -> Admitted:
        """The general case: records of several origins or months in one message."""
        groups: dict[int, list[Record]] = {}
        skipped = 0
        updates: dict[Key, int] = {}
        # Several records of one origin share its offset: compare with the mark from before
        # this message, so that they are all admitted, not only the first.
        before: dict[Key, int] = {}
        for record in records:
            origin_partition, origin_offset = self._origin(record)
            if type(origin_partition) is not int or type(origin_offset) is not int:
                raise BadMessage(f"{self.spec.table}: the origin must be integers")
            self._check_partition(origin_partition, partition)
            time = self._times(record)
            if type(time) is not int or not 0 <= time <= MAX_TIMESTAMP_MS:
                raise BadMessage(f"{self.spec.table}: {self.spec.time_field} must be a ms time")
            month = month_of(time)
            key = (origin_partition, month)
            if key not in before:
                before[key] = self.marks.get(key, -1)
            if origin_offset <= before[key]:
                skipped += 1
                continue
            if origin_offset > updates.get(key, -1):
                updates[key] = origin_offset
            groups.setdefault(month, []).append(record)
        return groups, skipped, updates

    def _check_partition(self, origin_partition: Any, partition: int) -> None:
        if not self.spec.origin_is_message and origin_partition != partition:
            raise PartitionMismatch(
                f"partition {partition} of the {self.spec.route} topic holds records of raw "
                f"partition {origin_partition}: the raw topic and the record topics must have "
                "the same number of partitions for the sink to count exactly once")


def _bounds(column: pa.Array, table: str, name: str) -> tuple[int, int]:
    """The least and greatest value of an integer column; raises BadMessage if it holds a
    null. Through numpy (a view of the Arrow buffer): a tenth of pyarrow.compute's
    per-call cost on the few hundred rows of a message."""
    try:
        values = column.to_numpy()  # zero-copy: raises on nulls
    except pa.ArrowException as exc:
        raise BadMessage(f"{table}: {name} holds nulls ({exc})") from None
    return int(values.min()), int(values.max())


def _one_value(batch: pa.RecordBatch, name: str, table: str) -> int:
    """The value every row of `batch` holds in column `name` (an integer column); raises
    BadMessage if the rows differ or one is null."""
    low, high = _bounds(batch.column(name), table, name)
    if low != high:
        raise BadMessage(f"{table}: a version 2 message holds the rows of one raw body, but "
                         f"its {name} runs from {low} to {high}")
    return low
