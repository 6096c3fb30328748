"""What the sink writes where: one TableSpec per Kafka topic it consumes.

A spec names the table, its columns (in insert order), how one Kafka message
becomes records (dicts keyed by column name), which field is the event time
(the month partition) and which two fields identify where a record came from
(its *origin*: the raw body's partition and offset for the per-event-type
topics, the message's own partition and offset for `<ns>.alerts`).

`check` is the slow path: it is run only on a message or batch that failed the
fast path, to find the records that cannot be stored and say why.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from meterstream.core.records import (
    AGENT_TOKENS,
    FUNCTION_EXECUTION_FIELDS,
    STORAGE_TOTALS,
    USAGE_COUNTERS,
    Record,
)

ORIGIN = ("raw_partition", "raw_offset", "event_index")
# The largest DateTime64(3) value ClickHouse stores (2299-12-31 23:59:59.999 UTC).
MAX_TIMESTAMP_MS = 10_413_791_999_999
UINT32_MAX = (1 << 32) - 1
UINT64_MAX = (1 << 64) - 1


class BadMessage(ValueError):
    """A message or record that cannot be stored; the text is the dead-letter reason."""


# Python value kinds of the columns, for `check`.
STR, BOOL, U32, U64, TIME, MAP = "str", "bool", "u32", "u64", "time", "map"


def _valid(kind: str, value: Any) -> bool:
    if kind == STR:
        return type(value) is str
    if kind == BOOL:
        return type(value) is bool
    if kind == MAP:
        return type(value) is dict and all(
            type(k) is str and type(v) is int and 0 <= v <= UINT64_MAX for k, v in value.items())
    if type(value) is not int:
        return False
    high = {U32: UINT32_MAX, U64: UINT64_MAX, TIME: MAX_TIMESTAMP_MS}[kind]
    return 0 <= value <= high


Decode = Callable[[bytes, int, int], list[Record]]
"""(message value, partition, offset) -> records, ready to insert; raises on bad input."""


@dataclass(frozen=True)
class TableSpec:
    table: str
    route: str
    """The topic suffix: `<ns>.<route>`."""
    kinds: tuple[tuple[str, str], ...]
    """(column, kind) in insert order."""
    time_field: str
    origin_fields: tuple[str, str]
    """(partition, offset) fields naming the message a record came from: records of one
    origin partition arrive in origin-offset order, which the high-water marks rely on."""
    decode: Decode
    origin_is_message: bool = False
    """True when the origin is the consumed message itself (alerts); False when it is the
    raw body, whose partition must then be the consumed partition (same key, same count)."""

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.kinds)

    def check(self, record: Any) -> None:
        """Raises BadMessage naming the first field that cannot be stored."""
        if type(record) is not dict:
            raise BadMessage(f"{self.table}: a record must be a JSON object, got "
                             f"{type(record).__name__}")
        for name, kind in self.kinds:
            if name not in record:
                raise BadMessage(f"{self.table}: field {name} is missing")
            if not _valid(kind, record[name]):
                raise BadMessage(f"{self.table}: field {name} must be {kind}, "
                                 f"got {record[name]!r:.80}")


def _array(value: bytes) -> list[Record]:
    records = orjson.loads(value)
    if type(records) is not list:
        raise BadMessage("a record message must be a JSON array of records")
    return records


def _records(value: bytes, _partition: int, _offset: int) -> list[Record]:
    return _array(value)


def _agent_usage(value: bytes, _partition: int, _offset: int) -> list[Record]:
    records = _array(value)
    for record in records:
        metadata = record.get("provider_metadata")
        record["provider_metadata"] = orjson.dumps(metadata if metadata is not None
                                                   else {}).decode()
    return records


def event_timestamp(event: Any) -> int:
    """An `other` event's time: its `timestamp` when that is a storable ms time, else 0
    (1970-01-01). Never the time of reading: a record read again after a crash must fall
    in the same month partition, whose high-water mark decides whether it is stored."""
    timestamp = event.get("timestamp") if type(event) is dict else None
    if type(timestamp) is int and 0 <= timestamp <= MAX_TIMESTAMP_MS:
        return timestamp
    return 0


def _other(value: bytes, _partition: int, _offset: int) -> list[Record]:
    records = _array(value)
    for record in records:
        event = record.get("event")
        record["timestamp"] = event_timestamp(event)
        record["event"] = orjson.dumps(event).decode()
    return records


def _alert(value: bytes, partition: int, offset: int) -> list[Record]:
    alert = orjson.loads(value)
    if type(alert) is not dict:
        raise BadMessage("an alert must be a JSON object")
    metric = alert.get("metric")
    return [{"id": alert.get("id"), "kind": alert.get("kind"),
             "deployment": alert.get("deployment"),
             "metric": metric if isinstance(metric, str) else "",
             "at": alert.get("at"), "alert": value.decode(),
             "kafka_partition": partition, "kafka_offset": offset}]


_FUNCTION_KINDS: dict[str, str] = {
    "timestamp": TIME, "function_cached": BOOL, "will_retry": BOOL,
    "mutation_queue_length": U32, "mutation_retry_count": U32,
    "execution_time_ms": U64, "user_execution_time_ms": U64,
    **dict.fromkeys(USAGE_COUNTERS, U64),
    "raw_partition": U32, "raw_offset": U64, "event_index": U32,
}
_ORIGIN_KINDS = (("raw_partition", U32), ("raw_offset", U64), ("event_index", U32))
_RAW = ("raw_partition", "raw_offset")

FUNCTION_EXECUTIONS = TableSpec(
    "function_executions", "function_execution",
    tuple((name, _FUNCTION_KINDS.get(name, STR)) for name in FUNCTION_EXECUTION_FIELDS),
    "timestamp", _RAW, _records)
STORAGE_SNAPSHOTS = TableSpec(
    "storage_snapshots", "current_storage_usage",
    (("deployment", STR), ("timestamp", TIME), *((name, U64) for name in STORAGE_TOTALS),
     ("system_table_document_size_bytes", MAP), ("deployment_region", STR), *_ORIGIN_KINDS),
    "timestamp", _RAW, _records)
FILE_DOWNLOADS = TableSpec(
    "file_downloads", "storage_api_bandwidth",
    (("deployment", STR), ("timestamp", TIME), ("storage_id", STR), ("egress_bytes", U64),
     *_ORIGIN_KINDS),
    "timestamp", _RAW, _records)
LOG_STREAM_EGRESS = TableSpec(
    "log_stream_egress", "log_stream_egress",
    (("deployment", STR), ("timestamp", TIME), ("egress_bytes", U64), *_ORIGIN_KINDS),
    "timestamp", _RAW, _records)
AGENT_USAGE = TableSpec(
    "agent_usage", "agent_usage",
    (("id", STR), ("deployment", STR), ("timestamp", TIME),
     *((name, STR) for name in ("user_id", "thread_id", "agent_name", "model", "provider")),
     *((name, U64) for name in AGENT_TOKENS), ("provider_metadata", STR), *_ORIGIN_KINDS),
    "timestamp", _RAW, _agent_usage)
OTHER_EVENTS = TableSpec(
    "other_events", "other",
    (("topic", STR), ("deployment", STR), ("timestamp", TIME), ("event", STR),
     *_ORIGIN_KINDS),
    "timestamp", _RAW, _other)
ALERTS = TableSpec(
    "alerts", "alerts",
    (("id", STR), ("kind", STR), ("deployment", STR), ("metric", STR), ("at", TIME),
     ("alert", STR), ("kafka_partition", U32), ("kafka_offset", U64)),
    "at", ("kafka_partition", "kafka_offset"), _alert, origin_is_message=True)

SPECS: tuple[TableSpec, ...] = (FUNCTION_EXECUTIONS, STORAGE_SNAPSHOTS, FILE_DOWNLOADS,
                                LOG_STREAM_EGRESS, AGENT_USAGE, OTHER_EVENTS, ALERTS)


_MONTH_START: dict[int, tuple[int, int]] = {}


def month_of(ms: int) -> int:
    """toYYYYMM of a UTC ms time, as ClickHouse partitions by it."""
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return moment.year * 100 + moment.month


def month_bounds(month: int) -> tuple[int, int]:
    """[start, end) of a YYYYMM month in UTC ms."""
    bounds = _MONTH_START.get(month)
    if bounds is None:
        year, number = divmod(month, 100)
        start = datetime.datetime(year, number, 1, tzinfo=datetime.UTC)
        end = datetime.datetime(year + number // 12, number % 12 + 1, 1, tzinfo=datetime.UTC)
        bounds = (int(start.timestamp() * 1000), int(end.timestamp() * 1000))
        _MONTH_START[month] = bounds
    return bounds
