from __future__ import annotations

import pyarrow as pa
import pytest
from aiokafka import TopicPartition

from meterstream.core.tables import BadMessage
from sinks import batching
from sinks.batching import BatchBuffer

A = TopicPartition("t", 0)
B = TopicPartition("t", 3)


NAMES = ("n", "raw_partition", "raw_offset", "event_index")
SCHEMA = pa.schema([pa.field(name, pa.uint64(), nullable=False) for name in NAMES])


def _record(n: int) -> dict:
    return {"n": n, "raw_partition": 0, "raw_offset": n, "event_index": 0}


def _buffer(max_rows: int, max_seconds: float) -> BatchBuffer:
    return BatchBuffer(NAMES, SCHEMA, max_rows, max_seconds)


def test_offsets_months_and_tokens_cover_every_message() -> None:
    buffer = _buffer(max_rows=100, max_seconds=60)
    buffer.add(B, 7, {202611: [_record(1)]})
    buffer.add(A, 10, {202611: [_record(2), _record(3)], 202612: [_record(4)]})
    buffer.add(A, 11, {})  # a message with no records still has to be committed
    buffer.add(B, 9, {202612: [_record(5)]})
    assert len(buffer) == 5
    batch = buffer.take()
    assert {m: columns.table().column(0).to_pylist() for m, columns in batch.months.items()} == {
        202611: [1, 2, 3], 202612: [4, 5]}
    assert batch.months[202612].records() == [_record(4), _record(5)]
    assert batch.rows == 5
    assert batch.commit_offsets() == {A: 12, B: 10}
    assert batch.token(202611) == "t:0:10-11,t:3:7-9|202611|3|0:1:0|0:3:0"
    assert batch.token(202612) == "t:0:10-11,t:3:7-9|202612|2|0:4:0|0:5:0"
    assert buffer.empty
    assert len(buffer) == 0


def test_due_by_size() -> None:
    buffer = _buffer(max_rows=3, max_seconds=60)
    buffer.add(A, 0, {1: [_record(0), _record(1)]})
    assert not buffer.due()
    buffer.add(A, 1, {1: [_record(2)]})
    assert buffer.due()


def test_due_by_age(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(batching.time, "monotonic", lambda: now[0])
    buffer = _buffer(max_rows=1000, max_seconds=2)
    assert not buffer.due()
    assert buffer.seconds_left() == 2
    buffer.add(A, 0, {1: [_record(0)]})
    now[0] += 1.5
    assert not buffer.due()
    assert buffer.seconds_left() == pytest.approx(0.5)
    now[0] += 0.5
    assert buffer.due()


def test_an_empty_buffer_is_never_due() -> None:
    buffer = _buffer(max_rows=1, max_seconds=0.01)
    assert not buffer.due()


def test_a_message_of_duplicates_only_is_still_due_and_committed() -> None:
    buffer = _buffer(max_rows=1, max_seconds=0.0)
    buffer.add(A, 4, {})
    assert buffer.due()
    assert buffer.take().commit_offsets() == {A: 5}


def test_a_message_with_a_record_lacking_a_column_adds_nothing() -> None:
    buffer = _buffer(max_rows=100, max_seconds=60)
    buffer.add(A, 0, {1: [_record(0)]})
    with pytest.raises(KeyError):
        buffer.add(A, 1, {1: [_record(1)], 2: [{"n": 2}]})
    batch = buffer.take()
    assert batch.months[1].records() == [_record(0)]
    assert list(batch.months) == [1]
    assert batch.commit_offsets() == {A: 1}


# Version 1 records and version 2 Arrow batches in one batch (an upgrade in flight).

def _arrow(*numbers: int) -> pa.RecordBatch:
    records = [_record(n) for n in numbers]
    return pa.RecordBatch.from_pylist(records, schema=SCHEMA)


def test_json_records_and_arrow_batches_mix_in_arrival_order() -> None:
    buffer = _buffer(max_rows=100, max_seconds=60)
    buffer.add(A, 0, {1: [_record(1), _record(2)]})
    buffer.add(A, 1, {1: [_record(3)]})  # joins the JSON run before it
    buffer.add(A, 2, {1: _arrow(4, 4, 4)})  # one message: one origin
    buffer.add(B, 5, {1: [_record(5)], 2: _arrow(6)})
    buffer.add(A, 3, {1: _arrow()})  # an Arrow message with no rows admitted
    assert len(buffer) == 8
    batch = buffer.take()
    month = batch.months[1]
    assert [type(part).__name__ for part in month.parts] == ["list", "RecordBatch", "list"]
    table = month.table()
    assert table.column(0).num_chunks == 1  # one record batch per insert
    assert table.column("n").to_pylist() == [1, 2, 3, 4, 4, 4, 5]
    assert month.records() == [_record(n) for n in (1, 2, 3, 4, 4, 4, 5)]
    assert month.messages(("raw_partition", "raw_offset")) == [
        (0, 1), (1, 2), (2, 3), (3, 6), (6, 7)]
    assert month.slice(2, 5).records() == [_record(3), _record(4), _record(4)]
    assert batch.token(1) == "t:0:0-3,t:3:5-5|1|7|0:1:0|0:5:0"
    assert batch.months[2].table().column("n").to_pylist() == [6]
    assert batch.commit_offsets() == {A: 4, B: 6}


def test_a_json_value_arrow_cannot_take_fails_the_insert_and_is_removed_by_the_check() -> None:
    buffer = _buffer(max_rows=100, max_seconds=60)
    buffer.add(A, 0, {1: [_record(1), {**_record(2), "n": "two"}]})
    buffer.add(A, 1, {1: _arrow(3)})
    buffer.add(A, 2, {1: [{**_record(4), "n": None}]})
    month = buffer.take().months[1]
    with pytest.raises((TypeError, ValueError)):
        month.table()

    def check(record: dict) -> None:
        if type(record["n"]) is not int:
            raise BadMessage(f"n must be u64, got {record['n']!r}")

    bad = month.remove_bad(check)
    assert bad == [("n must be u64, got 'two'", {**_record(2), "n": "two"}),
                   ("n must be u64, got None", {**_record(4), "n": None})]
    assert month.rows == 2
    assert month.table().column("n").to_pylist() == [1, 3]


def test_a_missing_json_value_is_refused_at_the_insert() -> None:
    buffer = _buffer(max_rows=100, max_seconds=60)
    buffer.add(A, 0, {1: [{**_record(1), "n": None}]})
    with pytest.raises(ValueError, match="n: a value is missing"):
        buffer.take().months[1].table()


def test_a_null_in_an_arrow_message_is_refused_at_the_insert() -> None:
    """Version 2 messages are decoded without a null check (sinks/sink.py); the insert's
    table is checked instead, so a null is never stored as a column's default."""
    buffer = _buffer(max_rows=100, max_seconds=60)
    batch = _arrow(1, 2)
    buffer.add(A, 0, {1: batch.set_column(0, batch.schema.field(0),
                                          pa.array([1, None], type=pa.uint64()))})
    with pytest.raises(ValueError, match="n: a value is missing"):
        buffer.take().months[1].table()
