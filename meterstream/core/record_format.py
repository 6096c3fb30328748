"""How the worker's records travel to the sink: one Kafka message per raw body and event type.

Two versions are on the record topics, told apart by the message's `format` header:

- version 1 (no header): a JSON array of record objects with every field named, as the
  event type's normaliser made them (meterstream/core/records.py). Workers before this
  module wrote only these; the sink turns them into rows with the event type's `rows`.
- version 2 (`format: arrow-1`): an Arrow IPC stream holding one record batch whose
  columns are the event type's table columns (meterstream/core/events.py), in insert
  order, with the Arrow types below: the rows as the sink inserts them. The sink hands
  the batches to ClickHouse (`insert_arrow`) without looking at a row in Python.

A sink reads both, so an upgrade with version 1 records still in flight loses none of
them; a worker writes version 2. Where a value does not fit its Arrow type (a counter
beyond its column's range), `encode` raises EncodeError and the worker sends that
message's records as version 1 instead: the sink's per-record checks then dead-letter
the record that cannot be stored and keep the rest, as they always did.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import pyarrow as pa
import pyarrow.ipc as ipc

from meterstream.core import events
from meterstream.core.events import EventType

FORMAT_HEADER = "format"
ARROW = b"arrow-1"
"""The `format` header's value for version 2."""

ARROW_TYPES: dict[str, pa.DataType] = {
    events.STRING: pa.string(),
    # Sent as plain strings: the server builds the LowCardinality dictionaries.
    events.LOW: pa.string(),
    events.BOOL: pa.bool_(),
    events.U32: pa.uint32(),
    events.U64: pa.uint64(),
    events.TIME: pa.timestamp("ms", tz="UTC"),
    events.U64_MAP: pa.map_(pa.string(), pa.uint64()),
}
"""Arrow type of each ClickHouse column type an event type's table uses."""


class EncodeError(ValueError):
    """Records that cannot be written as Arrow columns of their table's types."""


class DecodeError(ValueError):
    """A version 2 message that is not one Arrow batch of its table's schema."""


@cache
def schema(event_type: EventType) -> pa.Schema:
    """The Arrow schema of `event_type`'s table rows (not nullable: every row has every
    column)."""
    return pa.schema([pa.field(name, ARROW_TYPES[type_], nullable=False)
                      for name, type_ in event_type.columns])


_SCHEMAS: dict[str, pa.Schema] = {}


def _schema_of_table(event_type: EventType) -> pa.Schema:
    """`schema` looked up by table name: hashing the frozen EventType (its 44 columns) for
    `schema`'s cache costs more than the rest of a message's decoding."""
    found = _SCHEMAS.get(event_type.table)
    if found is None:
        found = _SCHEMAS[event_type.table] = schema(event_type)
    return found


def is_arrow(headers: Sequence[tuple[str, bytes]] | None) -> bool:
    """Whether a record message's headers say version 2."""
    return headers is not None and (FORMAT_HEADER, ARROW) in headers


def encode(event_type: EventType, columns: Sequence[Sequence[object]]) -> bytes:
    """One Arrow IPC stream of `columns` (in `event_type.columns` order, rows already in
    the table's types); raises EncodeError if a value does not fit its column."""
    fields = schema(event_type)
    if len(columns) != len(fields):
        raise EncodeError(f"{event_type.table}: {len(columns)} columns, the table has "
                          f"{len(fields)}")
    try:
        arrays = [pa.array(column, type=field.type) for column, field in zip(columns, fields,
                                                                             strict=True)]
        batch = pa.RecordBatch.from_arrays(arrays, schema=fields)
        if any(array.null_count for array in arrays):
            raise EncodeError(f"{event_type.table}: a value is missing (None)")
    except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"{event_type.table}: {exc}") from None
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, fields) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def decode(event_type: EventType, value: bytes, nulls: bool = True) -> pa.RecordBatch:
    """The rows of a version 2 message; raises DecodeError unless it is exactly one batch of
    `event_type`'s table schema. With `nulls=False` the columns are not checked for nulls
    here: a caller that gathers many messages checks the gathered columns once instead (a
    message's 44 column objects cost more than the rest of its decoding)."""
    try:
        reader = ipc.open_stream(value)
        batches = list(reader)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DecodeError(f"{event_type.table}: not an Arrow IPC stream: {exc}") from None
    if len(batches) != 1:
        raise DecodeError(f"{event_type.table}: {len(batches)} record batches in one message; "
                          "expected 1")
    batch = batches[0]
    if not batch.schema.equals(_schema_of_table(event_type)):
        raise DecodeError(f"{event_type.table}: the message's columns are not the table's: "
                          f"{batch.schema.names}")
    if nulls and batch.num_rows and any(column.null_count for column in batch.columns):
        raise DecodeError(f"{event_type.table}: a column holds nulls")
    return batch
