"""record_format.encode writes version 2 messages by hand: byte for byte what pyarrow's own
IPC writer makes of the same rows, and refusing what does not fit as pyarrow would."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterstream.core import events, record_format
from meterstream.core.record_format import ARROW_TYPES, EncodeError

TEXT = st.text(max_size=8)
VALUES: dict[str, st.SearchStrategy[Any]] = {
    events.STRING: TEXT,
    events.LOW: st.sampled_from(["", "query", "prod", "aws-us-east-1"]) | TEXT,
    events.BOOL: st.booleans(),
    events.U32: st.integers(min_value=0, max_value=(1 << 32) - 1),
    events.U64: st.integers(min_value=0, max_value=(1 << 64) - 1),
    events.TIME: st.integers(min_value=0, max_value=10_413_791_999_999),
    events.U64_MAP: st.dictionaries(TEXT, st.integers(min_value=0, max_value=(1 << 64) - 1),
                                    max_size=3),
}


def pyarrows_own(event_type: events.EventType, columns: list[list[Any]]) -> bytes:
    arrays = [pa.array(column, type=ARROW_TYPES[type_])
              for column, (_, type_) in zip(columns, event_type.columns, strict=True)]
    schema = record_format.schema(event_type)
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, schema) as writer:
        writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
    return bytes(sink.getvalue().to_pybytes())


@st.composite
def tables(draw: st.DrawFn) -> tuple[events.EventType, list[list[Any]]]:
    event_type = draw(st.sampled_from(events.ALL))
    rows = draw(st.integers(min_value=0, max_value=5))
    if draw(st.booleans()):  # a column of one value, as a body's deployment
        return event_type, [[draw(VALUES[type_])] * rows for _, type_ in event_type.columns]
    return event_type, [[draw(VALUES[type_]) for _ in range(rows)]
                        for _, type_ in event_type.columns]


@settings(max_examples=300, deadline=None)
@given(tables())
def test_encode_writes_what_pyarrow_writes(table: tuple[events.EventType, list[list[Any]]]
                                           ) -> None:
    event_type, columns = table
    value = record_format.encode(event_type, columns)
    assert value == pyarrows_own(event_type, columns)
    assert record_format.decode(event_type, value).num_rows == len(columns[0])


def sample(event_type: events.EventType) -> list[list[Any]]:
    values = {events.STRING: "s", events.LOW: "l", events.BOOL: True, events.U32: 1,
              events.U64: 1, events.TIME: 1, events.U64_MAP: {"t": 1}}
    return [[values[type_], values[type_]] for _, type_ in event_type.columns]


@pytest.mark.parametrize("type_", sorted(VALUES))
@pytest.mark.parametrize("bad", [None, -1, 1 << 64, 1.5, "x", b"x", ["x"]])
def test_a_value_that_does_not_fit_its_column_is_refused(type_: str, bad: Any) -> None:
    event_type = next(t for t in events.ALL if any(c == type_ for _, c in t.columns))
    columns = sample(event_type)
    at = next(i for i, (_, c) in enumerate(event_type.columns) if c == type_)
    columns[at][1] = bad
    try:
        theirs = pyarrows_own(event_type, columns)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        theirs = None
    if theirs is None or bad is None:
        with pytest.raises(EncodeError, match=f"^{event_type.table}: "):
            record_format.encode(event_type, columns)
        return
    try:
        ours = record_format.encode(event_type, columns)
    except EncodeError:
        return  # stricter than pyarrow (a float for an integer): version 1 then
    # Taken (a bool's truthiness, an int for a bool): then exactly as pyarrow writes it, and
    # never a value pyarrow refuses or a None (pyarrow would write a null).
    assert bad is not None
    assert ours == theirs


def test_maps_with_keys_or_values_that_do_not_fit_are_refused() -> None:
    event_type = events.CURRENT_STORAGE_USAGE
    at = [name for name, _ in event_type.columns].index("system_table_document_size_bytes")
    for bad in ({"t": None}, {"t": -1}, {"t": 1 << 64}, {1: 1}, None):
        columns = sample(event_type)
        columns[at][0] = bad
        with pytest.raises(EncodeError, match="storage_snapshots"):
            record_format.encode(event_type, columns)


def test_columns_of_different_lengths_are_refused() -> None:
    columns = sample(events.LOG_STREAM_EGRESS)
    columns[2].append(5)
    with pytest.raises(EncodeError, match="different lengths"):
        record_format.encode(events.LOG_STREAM_EGRESS, columns)
