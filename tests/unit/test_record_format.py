"""The record format between worker and sink (meterstream/core/record_format.py)."""

from __future__ import annotations

import pytest

from meterstream.core import events, record_format
from meterstream.core.record_format import DecodeError, EncodeError


def _columns(event_type: events.EventType, rows: int) -> list[list[object]]:
    values = {events.STRING: "s", events.LOW: "low", events.BOOL: True, events.U32: 7,
              events.U64: (1 << 64) - 1, events.TIME: 1_764_000_000_123,
              events.U64_MAP: {"_tables": 3}}
    return [[values[type_]] * rows for _, type_ in event_type.columns]


@pytest.mark.parametrize("event_type", events.ALL, ids=lambda t: t.topic)
def test_every_event_type_round_trips(event_type: events.EventType) -> None:
    columns = _columns(event_type, 3)
    batch = record_format.decode(event_type, record_format.encode(event_type, columns))
    assert batch.num_rows == 3
    assert batch.schema.names == [name for name, _ in event_type.columns]
    back = [column.to_pylist() for column in batch.columns]
    for (_, type_), sent, got in zip(event_type.columns, columns, back, strict=True):
        if type_ == events.TIME:
            assert [int(moment.timestamp() * 1000) for moment in got] == sent
        elif type_ == events.U64_MAP:
            assert [dict(pairs) for pairs in got] == sent
        else:
            assert got == sent


def test_a_value_beyond_its_column_is_refused_at_encoding() -> None:
    event_type = events.FUNCTION_EXECUTION
    columns = _columns(event_type, 2)
    at = [name for name, _ in event_type.columns].index("mutation_queue_length")  # UInt32
    columns[at][1] = 1 << 32
    with pytest.raises(EncodeError, match="function_executions"):
        record_format.encode(event_type, columns)


def test_a_missing_value_or_column_is_refused_at_encoding() -> None:
    event_type = events.LOG_STREAM_EGRESS
    columns = _columns(event_type, 2)
    columns[0][0] = None
    with pytest.raises(EncodeError, match="missing"):
        record_format.encode(event_type, columns)
    with pytest.raises(EncodeError, match="columns"):
        record_format.encode(event_type, _columns(event_type, 2)[1:])


def test_decoding_refuses_what_is_not_one_batch_of_the_table() -> None:
    egress = record_format.encode(events.LOG_STREAM_EGRESS,
                                  _columns(events.LOG_STREAM_EGRESS, 1))
    with pytest.raises(DecodeError, match="not the table's"):
        record_format.decode(events.STORAGE_API_BANDWIDTH, egress)
    with pytest.raises(DecodeError, match="not an Arrow IPC stream"):
        record_format.decode(events.LOG_STREAM_EGRESS, b'[{"deployment": "a"}]')


def test_the_header_tells_the_versions_apart() -> None:
    assert record_format.is_arrow([("origin", b"webhook"), ("format", b"arrow-1")])
    assert not record_format.is_arrow([])
    assert not record_format.is_arrow(None)
    assert not record_format.is_arrow([("format", b"arrow-9")])
