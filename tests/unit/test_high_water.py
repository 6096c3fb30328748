"""The high-water marks' admission rules and the table specs' slow-path checks (pure logic)."""

from __future__ import annotations

import datetime

import orjson
import pyarrow as pa
import pytest

from meterstream.core import events, record_format
from meterstream.core.records import MAX_TIMESTAMP_MS
from meterstream.core.tables import (
    ALERTS,
    FILE_DOWNLOADS,
    OTHER_EVENTS,
    BadMessage,
    event_timestamp,
    month_bounds,
    month_of,
)
from sinks.high_water import HighWater, PartitionMismatch

NOV = int(datetime.datetime(2026, 11, 30, 23, 59, 59, tzinfo=datetime.UTC).timestamp() * 1000)
DEC = NOV + 2000


def _download(partition: int, offset: int, index: int, at: int) -> dict:
    return {"deployment": "d", "timestamp": at, "storage_id": "s", "egress_bytes": 10,
            "raw_partition": partition, "raw_offset": offset, "event_index": index}


def _admit(marks: HighWater, records: list, partition: int) -> tuple[dict, int]:
    groups, skipped, updates = marks.admit(records, partition)
    marks.advance(updates)
    return groups, skipped


def test_months_are_utc_calendar_months() -> None:
    assert month_of(NOV) == 202611
    assert month_of(DEC) == 202612
    assert month_of(0) == 197001
    start, end = month_bounds(202612)
    assert (month_of(start - 1), month_of(start), month_of(end - 1), month_of(end)) == (
        202611, 202612, 202612, 202701)


def test_a_message_is_admitted_once_per_origin() -> None:
    marks = HighWater(FILE_DOWNLOADS)
    first = [_download(2, 10, 0, NOV), _download(2, 10, 1, NOV)]
    assert _admit(marks, first, 2) == ({202611: first}, 0)
    # The same raw body again (a worker that processed it again), and an older one.
    assert _admit(marks, [dict(r) for r in first], 2) == ({}, 2)
    assert _admit(marks, [_download(2, 9, 0, NOV)], 2) == ({}, 1)
    later = [_download(2, 11, 0, NOV)]
    assert _admit(marks, later, 2) == ({202611: later}, 0)
    assert marks.marks == {(2, 202611): 11}


def test_marks_are_kept_per_month() -> None:
    """A body straddling two months: each month's records are admitted against that
    month's mark, as each month is a separate insert."""
    marks = HighWater(FILE_DOWNLOADS)
    marks.marks = {(0, 202611): 7, (0, 202612): 3}
    body = [_download(0, 5, 0, NOV), _download(0, 5, 1, DEC), _download(0, 5, 2, DEC)]
    groups, skipped = _admit(marks, body, 0)
    assert groups == {202612: body[1:]}
    assert skipped == 1
    assert marks.marks == {(0, 202611): 7, (0, 202612): 5}


def test_several_origins_in_one_message_are_admitted_each() -> None:
    marks = HighWater(FILE_DOWNLOADS)
    marks.marks = {(1, 202611): 4}
    records = [_download(1, 4, 0, NOV), _download(1, 5, 0, NOV), _download(1, 5, 1, NOV),
               _download(1, 6, 0, DEC)]
    groups, skipped = _admit(marks, records, 1)
    assert groups == {202611: records[1:3], 202612: records[3:]}
    assert skipped == 1
    assert marks.marks == {(1, 202611): 5, (1, 202612): 6}


def test_records_on_another_partition_stop_the_sink() -> None:
    with pytest.raises(PartitionMismatch, match="same number of partitions"):
        _admit(HighWater(FILE_DOWNLOADS), [_download(3, 1, 0, NOV)], 4)


def test_alerts_are_their_own_origin() -> None:
    alert = {"id": "quota|d|function_calls|month|2026-11-01|0.8", "kind": "quota",
             "deployment": "d", "metric": "function_calls", "at": NOV}
    value = orjson.dumps(alert)
    (record,) = ALERTS.decode(value, 5, 42)
    assert record == {**alert, "alert": value.decode(), "kafka_partition": 5,
                      "kafka_offset": 42}
    marks = HighWater(ALERTS)
    assert _admit(marks, [record], 5) == ({202611: [record]}, 0)
    assert _admit(marks, ALERTS.decode(value, 5, 42), 5) == ({}, 1)
    (runaway,) = ALERTS.decode(b'{"id": "runaway|d|1", "kind": "runaway", "deployment": "d",'
                               b' "at": 1}', 0, 0)
    assert runaway["metric"] == ""


def test_other_events_take_their_time_from_the_event() -> None:
    records = [{"topic": "console", "deployment": "d", "event": {"timestamp": NOV, "m": "hi"},
                "raw_partition": 0, "raw_offset": 1, "event_index": 0},
               {"topic": "x", "deployment": "", "event": {"no": "time"},
                "raw_partition": 0, "raw_offset": 1, "event_index": 1}]
    decoded = OTHER_EVENTS.decode(orjson.dumps(records), 0, 9)
    assert [r["timestamp"] for r in decoded] == [NOV, 0]
    assert orjson.loads(decoded[0]["event"]) == {"timestamp": NOV, "m": "hi"}
    for bad in (None, "x", {"timestamp": -5}, {"timestamp": 1.5}, {"timestamp": 10**14},
                {"timestamp": True}):
        assert event_timestamp(bad) == 0


def test_records_that_cannot_be_stored_are_named() -> None:
    good = _download(0, 1, 0, NOV)
    FILE_DOWNLOADS.check(good)
    for change, reason in (({"egress_bytes": -1}, "egress_bytes must be u64"),
                           ({"egress_bytes": 2**64}, "egress_bytes must be u64"),
                           ({"timestamp": "now"}, "timestamp must be time"),
                           ({"storage_id": None}, "storage_id must be str")):
        with pytest.raises(BadMessage, match=reason):
            FILE_DOWNLOADS.check({**good, **change})
    with pytest.raises(BadMessage, match="raw_offset is missing"):
        FILE_DOWNLOADS.check({k: v for k, v in good.items() if k != "raw_offset"})
    with pytest.raises(BadMessage, match="must be a JSON object"):
        FILE_DOWNLOADS.check(7)


def test_a_record_without_time_or_origin_is_refused_by_the_fast_path() -> None:
    marks = HighWater(FILE_DOWNLOADS)
    with pytest.raises(BadMessage):
        _admit(marks, [{"deployment": "d"}], 0)
    with pytest.raises(BadMessage):
        _admit(marks, [_download(0, 1, 0, NOV), {**_download(0, 1, 1, NOV), "timestamp": "x"}], 0)
    assert marks.marks == {}


# Record format version 2: one Arrow batch per raw body, admitted per message and month.

def _batch(records: list[dict]) -> pa.RecordBatch:
    """The records as the worker writes them in version 2 (decoded as the sink does)."""
    event_type = events.STORAGE_API_BANDWIDTH
    value = record_format.encode(event_type, [[r[name] for r in records]
                                              for name, _ in event_type.columns])
    return record_format.decode(event_type, value)


def _admit_batch(marks: HighWater, records: list[dict], partition: int
                 ) -> tuple[dict[int, list[dict]], int]:
    months, skipped, updates = marks.admit_batch(_batch(records), partition)
    marks.advance(updates)
    return {month: _rows(batch) for month, batch in months.items()}, skipped


def _rows(batch: pa.RecordBatch) -> list[dict]:
    names = [name for name, _ in events.STORAGE_API_BANDWIDTH.columns]
    columns = [column.view(pa.int64()).to_pylist() if pa.types.is_timestamp(column.type)
               else column.to_pylist() for column in batch.columns]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def test_a_version_2_message_is_admitted_once_per_origin_whatever_the_format() -> None:
    marks = HighWater(FILE_DOWNLOADS)
    first = [_download(2, 10, 0, NOV), _download(2, 10, 1, NOV)]
    assert _admit_batch(marks, first, 2) == ({202611: first}, 0)
    assert marks.marks == {(2, 202611): 10}
    # Sent again as Arrow, or as JSON by an older worker: skipped either way.
    assert _admit_batch(marks, first, 2) == ({}, 2)
    assert _admit(marks, [dict(r) for r in first], 2) == ({}, 2)
    # A JSON message admitted first, then the same body as Arrow.
    later = [_download(2, 11, 0, NOV)]
    assert _admit(marks, later, 2) == ({202611: later}, 0)
    assert _admit_batch(marks, later, 2) == ({}, 1)
    assert _admit_batch(marks, [_download(2, 12, 0, NOV)], 2)[1] == 0
    assert marks.marks == {(2, 202611): 12}


def test_a_version_2_message_straddling_months_is_admitted_per_month() -> None:
    """The same answer as the per-record path gives (test_marks_are_kept_per_month)."""
    marks = HighWater(FILE_DOWNLOADS)
    marks.marks = {(0, 202611): 7, (0, 202612): 3}
    body = [_download(0, 5, 0, DEC), _download(0, 5, 1, NOV), _download(0, 5, 2, DEC)]
    twin = HighWater(FILE_DOWNLOADS)
    twin.marks = dict(marks.marks)
    assert _admit_batch(marks, body, 0) == ({202612: [body[0], body[2]]}, 1)
    assert _admit(twin, body, 0) == ({202612: [body[0], body[2]]}, 1)
    assert marks.marks == twin.marks == {(0, 202611): 7, (0, 202612): 5}
    fresh = HighWater(FILE_DOWNLOADS)
    assert _admit_batch(fresh, body, 0) == ({202611: [body[1]], 202612: [body[0], body[2]]}, 0)
    assert fresh.marks == {(0, 202611): 5, (0, 202612): 5}


def test_a_version_2_message_of_several_bodies_or_bad_times_is_refused() -> None:
    marks = HighWater(FILE_DOWNLOADS)
    with pytest.raises(BadMessage, match="raw_offset runs from 4 to 5"):
        marks.admit_batch(_batch([_download(1, 4, 0, NOV), _download(1, 5, 0, NOV)]), 1)
    with pytest.raises(BadMessage, match="raw_partition runs from 1 to 2"):
        marks.admit_batch(_batch([_download(1, 4, 0, NOV), _download(2, 4, 1, NOV)]), 1)
    with pytest.raises(BadMessage, match="timestamp must be a ms time"):
        marks.admit_batch(_batch([_download(1, 4, 0, MAX_TIMESTAMP_MS + 1)]), 1)
    with pytest.raises(PartitionMismatch):
        marks.admit_batch(_batch([_download(3, 4, 0, NOV)]), 1)
    assert marks.marks == {}
    assert marks.admit_batch(_batch([]), 1) == ({}, 0, {})


def test_a_version_2_message_with_a_null_origin_is_refused() -> None:
    batch = _batch([_download(1, 4, 0, NOV)])
    at = batch.schema.get_field_index("raw_offset")
    nulled = batch.set_column(at, batch.schema.field(at),
                              pa.array([None], type=pa.uint64()))
    with pytest.raises(BadMessage, match="raw_offset holds nulls"):
        HighWater(FILE_DOWNLOADS).admit_batch(nulled, 1)
