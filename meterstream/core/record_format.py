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

from array import array
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, cast

import numpy as np
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
    rows = len(columns[0]) if columns else 0
    try:
        arrays = []
        for column, (_, type_) in zip(columns, event_type.columns, strict=True):
            if len(column) != rows:
                raise EncodeError(f"{event_type.table}: columns of different lengths")
            arrays.append(_ARRAY[type_](column))
        batch = pa.RecordBatch.from_arrays(arrays, schema=fields)
        # Only pa.array (bools, maps) makes nulls: the buffers built here have none.
        if any(arrays[at].null_count for at in _nullable(event_type)):
            raise EncodeError(f"{event_type.table}: a value is missing (None)")
    except EncodeError:
        raise
    except TypeError as exc:  # None, or a value of another type
        raise EncodeError(f"{event_type.table}: a value is missing (None) or not of its "
                          f"column's type: {exc}") from None
    except (pa.ArrowException, ValueError, OverflowError, UnicodeError) as exc:
        raise EncodeError(f"{event_type.table}: {exc}") from None
    # The stream's framing written once per schema (its schema message, then the end
    # marker): only the batch's message is built per call. decode() reads it as the
    # stream ipc.new_stream writes (tests/unit/test_record_format.py).
    return b"".join((_schema_message(event_type), batch.serialize().to_pybytes(), _END))


_END = b"\xff\xff\xff\xff\x00\x00\x00\x00"
"""The IPC stream's end-of-stream marker (continuation token, zero length)."""


@cache
def _nullable(event_type: EventType) -> tuple[int, ...]:
    """The columns converted by pa.array, where a None becomes a null."""
    return tuple(at for at, (_, type_) in enumerate(event_type.columns)
                 if _ARRAY[type_] not in (_strings, *_FIXED))


@cache
def _schema_message(event_type: EventType) -> bytes:
    return bytes(schema(event_type).serialize().to_pybytes())


# Each column type's conversion from a Python list: fixed-width integers straight into
# their buffer (array.array converts in C and raises OverflowError or TypeError for a
# value out of range or None), strings as one joined buffer and its offsets; both are
# several times faster than pa.array's per-value conversion, which took most of the
# worker's encoding time.

def _fixed(code: str, type_: pa.DataType) -> Callable[[Sequence[object]], pa.Array]:
    def convert(column: Sequence[object]) -> pa.Array:
        values = array(code, cast(Sequence[int], column))
        return pa.Array.from_buffers(type_, len(values), [None, pa.py_buffer(values)])
    return convert


def _strings(column: Sequence[object]) -> pa.Array:
    texts = cast(Sequence[str], column)
    count = len(texts)
    joined = "".join(texts)  # TypeError for a value that is not a string (None)
    data = joined.encode()
    offsets: array[int] | np.ndarray[Any, Any]
    if count and len(data) == len(joined) and texts.count(texts[0]) == count:
        # One ASCII value throughout (a body's deployment, region, status).
        step = len(texts[0])
        offsets = array("i", range(0, (count + 1) * step, step) if step else [0] * (count + 1))
    else:
        lengths = (np.fromiter(map(len, texts), dtype=np.int32, count=count)
                   if len(data) == len(joined)  # ASCII: a string's byte length is its length
                   else np.fromiter((len(text.encode()) for text in texts), dtype=np.int32,
                                    count=count))
        offsets = np.empty(count + 1, dtype=np.int32)
        offsets[0] = 0
        lengths.cumsum(out=offsets[1:])
    return pa.Array.from_buffers(_STRING, count,
                                 [None, pa.py_buffer(offsets), pa.py_buffer(data)])


_STRING = pa.string()


def _typed(type_: pa.DataType) -> Callable[[Sequence[object]], pa.Array]:
    def convert(column: Sequence[object]) -> pa.Array:
        return pa.array(column, type=type_)
    return convert


_FIXED = (_fixed("I", pa.uint32()), _fixed("Q", pa.uint64()),
          _fixed("q", ARROW_TYPES[events.TIME]))
_ARRAY: dict[str, Callable[[Sequence[object]], pa.Array]] = {
    events.STRING: _strings,
    events.LOW: _strings,
    events.BOOL: _typed(pa.bool_()),
    events.U32: _FIXED[0],
    events.U64: _FIXED[1],
    events.TIME: _FIXED[2],
    events.U64_MAP: _typed(ARROW_TYPES[events.U64_MAP]),
}
assert set(_ARRAY) == set(ARROW_TYPES)


def decode(event_type: EventType, value: bytes) -> pa.RecordBatch:
    """The rows of a version 2 message; raises DecodeError unless it is exactly one batch of
    `event_type`'s table schema."""
    try:
        reader = ipc.open_stream(value)
        batches = list(reader)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DecodeError(f"{event_type.table}: not an Arrow IPC stream: {exc}") from None
    if len(batches) != 1:
        raise DecodeError(f"{event_type.table}: {len(batches)} record batches in one message; "
                          "expected 1")
    batch = batches[0]
    if not batch.schema.equals(schema(event_type)):
        raise DecodeError(f"{event_type.table}: the message's columns are not the table's: "
                          f"{batch.schema.names}")
    if batch.num_rows and any(column.null_count for column in batch.columns):
        raise DecodeError(f"{event_type.table}: a column holds nulls")
    return batch
