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

import struct
from array import array
from collections.abc import Callable, Sequence
from functools import cache
from itertools import accumulate, chain
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
    rows = len(columns[0]) if columns else 0
    if any(len(column) != rows for column in columns):
        raise EncodeError(f"{event_type.table}: columns of different lengths")
    try:
        if rows:
            message = _layout(event_type).message(rows, [
                _BUFFERS[type_](column)
                for column, (_, type_) in zip(columns, event_type.columns, strict=True)])
        else:
            message = _pyarrow_message(event_type, columns)
    except EncodeError as exc:
        raise EncodeError(f"{event_type.table}: {exc}") from None
    except TypeError as exc:  # None, or a value of another type
        raise EncodeError(f"{event_type.table}: a value is missing (None) or not of its "
                          f"column's type: {exc}") from None
    except (pa.ArrowException, ValueError, OverflowError, UnicodeError) as exc:
        raise EncodeError(f"{event_type.table}: {exc}") from None
    # The stream's framing is written once per schema (its schema message, then the end
    # marker): only the batch's message is built per call.
    return b"".join((_schema_message(event_type), message, _END))


_END = b"\xff\xff\xff\xff\x00\x00\x00\x00"
"""The IPC stream's end-of-stream marker (continuation token, zero length)."""


@cache
def _schema_message(event_type: EventType) -> bytes:
    return bytes(schema(event_type).serialize().to_pybytes())


Buffer = Any
"""bytes, an array.array, a numpy array or a pa.Buffer: anything with the buffer protocol
(typing.Buffer is Python 3.12's)."""
"""A column's data buffers (after its validity bitmap, which no column here has)."""


# Each column type's buffers from a Python list: fixed-width integers straight into their
# buffer (array.array converts in C and raises OverflowError or TypeError for a value out
# of range or None), strings as one joined buffer and its offsets; both are several times
# faster than pa.array's per-value conversion, which took most of the worker's encoding
# time.

Nodes = list[tuple[int, list[Buffer]]]
"""A column as Arrow lays it out: per node (the column, then its children) its length and
its buffers after the validity bitmap (which no column here has)."""


def _fixed(code: str) -> Callable[[Sequence[object]], Nodes]:
    def convert(column: Sequence[object]) -> Nodes:
        return [(len(column), [array(code, cast(Sequence[int], column))])]
    return convert


def _strings(column: Sequence[object]) -> Nodes:
    return [(len(column), _string_buffers(cast(Sequence[str], column)))]


def _string_buffers(texts: Sequence[str]) -> list[Buffer]:
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
    return [offsets, data]


def _bools(column: Sequence[object]) -> Nodes:
    count = len(column)
    # bools only (1 and 0 compare equal to them and pyarrow takes them alike); None or
    # anything else is refused.
    if column.count(True) + column.count(False) != count:
        raise EncodeError("a value is missing (None) or not a bool")
    bits = np.packbits(np.fromiter(column, dtype=np.bool_, count=count), bitorder="little")
    return [(count, [bits])]


def _maps(column: Sequence[object]) -> Nodes:
    """Map(String, UInt64): a list (offsets) of key/value structs."""
    maps = cast(Sequence[dict[str, int]], column)
    if not all(type(one) is dict for one in maps):
        raise EncodeError("a map is missing (None) or not a dict")
    offsets = array("i", accumulate(map(len, maps), initial=0))
    keys = [key for one in maps for key in one]
    if not all(type(key) is str for key in keys):
        raise EncodeError("a map key is not a string")
    values = array("Q", [value for one in maps for value in one.values()])
    entries = len(keys)
    return [(len(maps), [offsets]), (entries, []), (entries, _string_buffers(keys)),
            (entries, [values])]


_BUFFERS: dict[str, Callable[[Sequence[object]], Nodes]] = {
    events.STRING: _strings,
    events.LOW: _strings,
    events.BOOL: _bools,
    events.U32: _fixed("I"),
    events.U64: _fixed("Q"),
    events.TIME: _fixed("q"),
    events.U64_MAP: _maps,
}
"""Each column type's layout, written by hand (_Layout)."""


def _pyarrow_message(event_type: EventType, columns: Sequence[Sequence[object]]) -> bytes:
    arrays = []
    for column, (_, type_) in zip(columns, event_type.columns, strict=True):
        arrays.append(pa.array(column, type=ARROW_TYPES[type_]))
    batch = pa.RecordBatch.from_arrays(arrays, schema=schema(event_type))
    if any(array.null_count for array in arrays):
        raise EncodeError("a value is missing (None)")
    return bytes(batch.serialize().to_pybytes())


class _Layout:
    """An event type's record batch message written without pyarrow: the message's
    flatbuffer header is pyarrow's own for a one-row batch, with the numbers that depend
    on the rows (row count, body length, each column's length and null count, each
    buffer's offset and length) patched in, and the body is the buffers, each padded to 8
    bytes. tests/unit/test_record_format.py checks it is byte for byte what pyarrow
    writes for the same rows."""

    def __init__(self, event_type: EventType) -> None:
        sample = {events.STRING: "x", events.LOW: "x", events.BOOL: True, events.U32: 1,
                  events.U64: 1, events.TIME: 1, events.U64_MAP: {"x": 1}}
        columns = [[sample[type_]] for _, type_ in event_type.columns]
        message = _pyarrow_message(event_type, columns)
        assert message[:4] == b"\xff\xff\xff\xff"
        (size,) = struct.unpack_from("<i", message, 4)
        self.header = bytearray(message[:8 + size])
        flat = memoryview(self.header)[8:]

        def table(at: int) -> tuple[int, int]:
            return at, at - struct.unpack_from("<i", flat, at)[0]

        def field(table_at: tuple[int, int], index: int) -> int:
            at, vtable = table_at
            offset = struct.unpack_from("<H", flat, vtable + 4 + 2 * index)[0]
            assert offset, "a field the one-row batch leaves out"
            return at + offset

        def vector(table_at: tuple[int, int], index: int) -> tuple[int, int]:
            at = field(table_at, index)
            start = at + struct.unpack_from("<I", flat, at)[0]
            return start + 4, struct.unpack_from("<I", flat, start)[0]

        root = table(struct.unpack_from("<I", flat, 0)[0])
        header_at = field(root, 2)
        batch = table(header_at + struct.unpack_from("<I", flat, header_at)[0])
        self.body_length_at = 8 + field(root, 3)
        self.length_at = 8 + field(batch, 0)
        nodes_at, nodes = vector(batch, 1)
        buffers_at, buffers = vector(batch, 2)
        self.nodes_at, self.nodes = 8 + nodes_at, struct.Struct(f"<{2 * nodes}q")
        self.node_count = nodes
        self.buffers_at, self.buffers = 8 + buffers_at, struct.Struct(f"<{2 * buffers}q")
        self.buffer_count = buffers

    def message(self, rows: int, columns: list[Nodes]) -> bytes:
        header = bytearray(self.header)
        parts: list[Buffer] = [header]
        spans: list[int] = []
        lengths: list[int] = []
        at = 0
        for length, buffers in chain.from_iterable(columns):
            lengths += (length, 0)  # no nulls
            spans += (at, 0)  # the validity bitmap: none
            for buffer in buffers:
                size = memoryview(buffer).nbytes
                spans += (at, size)
                parts.append(buffer)
                at += size
                if size % 8:
                    parts.append(_PADDING[size % 8])
                    at += 8 - size % 8
        if len(spans) != 2 * self.buffer_count or len(lengths) != 2 * self.node_count:
            raise EncodeError("the columns' layout is not the table's")
        struct.pack_into("<q", header, self.body_length_at, at)
        struct.pack_into("<q", header, self.length_at, rows)
        self.nodes.pack_into(header, self.nodes_at, *lengths)
        self.buffers.pack_into(header, self.buffers_at, *spans)
        return b"".join(parts)


_PADDING = {size: bytes(8 - size) for size in range(1, 8)}


@cache
def _layout(event_type: EventType) -> _Layout:
    return _Layout(event_type)


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
