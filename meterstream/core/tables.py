"""What the sink writes where: one TableSpec per Kafka topic it consumes.

The per-event-type specs are derived from meterstream/core/events.py; only the alerts'
spec, which no Convex event makes, is written here. A spec names the table, its
columns (in insert order), how one Kafka message becomes records (dicts keyed by
column name), which field is the event time (the month partition) and which two
fields identify where a record came from (its *origin*: the raw body's partition
and offset for the per-event-type topics, the message's own partition and offset
for `<ns>.alerts`).

A per-event-type spec also names its event type, whose record-format version 2
messages (Arrow batches of the table's rows, meterstream/core/record_format.py) the sink
reads without `decode`; `schema` is the Arrow schema every table's rows are inserted as
(version 1 records are turned into it at the insert).

`check` is the slow path: it is run only on a message or batch that failed the
fast path, to find the records that cannot be stored and say why.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa

from meterstream.core import events, record_format
from meterstream.core.records import MAX_TIMESTAMP_MS, Record
from meterstream.core.records import event_timestamp as event_timestamp

UINT32_MAX = (1 << 32) - 1
UINT64_MAX = (1 << 64) - 1


class BadMessage(ValueError):
    """A message or record that cannot be stored; the text is the dead-letter reason."""


# Python value kinds of the columns, for `check`.
STR, BOOL, U32, U64, TIME, MAP = "str", "bool", "u32", "u64", "time", "map"
KIND_OF_TYPE: dict[str, str] = {
    events.STRING: STR, events.LOW: STR, events.BOOL: BOOL, events.U32: U32, events.U64: U64,
    events.TIME: TIME, events.U64_MAP: MAP,
}


ARROW_OF_KIND: dict[str, pa.DataType] = {
    STR: pa.string(), BOOL: pa.bool_(), U32: pa.uint32(), U64: pa.uint64(),
    TIME: pa.timestamp("ms", tz="UTC"), MAP: pa.map_(pa.string(), pa.uint64()),
}
"""The Arrow type each kind is inserted as (record_format.ARROW_TYPES for the event types'
tables, where LowCardinality columns are sent as plain strings too)."""


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
    event_type: events.EventType | None = None
    """The event type whose records the topic carries (None for the alerts): its version 2
    messages are read with record_format.decode."""

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema of the rows as inserted (the version 2 schema for event types)."""
        return _schema_of_spec(self.table, self.event_type, self.kinds)

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


_SCHEMAS: dict[str, pa.Schema] = {}


def _schema_of_spec(table: str, event_type: events.EventType | None,
                    kinds: tuple[tuple[str, str], ...]) -> pa.Schema:
    # Cached by table name: hashing the frozen spec or event type (all their columns) would
    # cost more than building the schema's lookup key.
    found = _SCHEMAS.get(table)
    if found is None:
        found = _SCHEMAS[table] = (
            record_format.schema(event_type) if event_type is not None else
            pa.schema([pa.field(name, ARROW_OF_KIND[kind], nullable=False)
                       for name, kind in kinds]))
    return found


def _array(value: bytes) -> list[Record]:
    records = orjson.loads(value)
    if type(records) is not list:
        raise BadMessage("a record message must be a JSON array of records")
    return records


def _decoder(rows: events.Rows) -> Decode:
    def decode(value: bytes, _partition: int, _offset: int) -> list[Record]:
        return rows(_array(value))
    return decode


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


def _spec(event_type: events.EventType) -> TableSpec:
    return TableSpec(event_type.table, event_type.route,
                     tuple((name, KIND_OF_TYPE[type_]) for name, type_ in event_type.columns),
                     event_type.time_column, ("raw_partition", "raw_offset"),
                     _decoder(event_type.rows), event_type=event_type)


EVENT_SPECS: tuple[TableSpec, ...] = tuple(_spec(event_type) for event_type in events.ALL)
"""One per event type (meterstream/core/events.py), in its order."""
_BY_TABLE = {spec.table: spec for spec in EVENT_SPECS}
FUNCTION_EXECUTIONS = _BY_TABLE[events.FUNCTION_EXECUTION.table]
STORAGE_SNAPSHOTS = _BY_TABLE[events.CURRENT_STORAGE_USAGE.table]
FILE_DOWNLOADS = _BY_TABLE[events.STORAGE_API_BANDWIDTH.table]
LOG_STREAM_EGRESS = _BY_TABLE[events.LOG_STREAM_EGRESS.table]
AGENT_USAGE = _BY_TABLE[events.AGENT_USAGE.table]
OTHER_EVENTS = _BY_TABLE[events.OTHER.table]
ALERTS = TableSpec(
    "alerts", "alerts",
    (("id", STR), ("kind", STR), ("deployment", STR), ("metric", STR), ("at", TIME),
     ("alert", STR), ("kafka_partition", U32), ("kafka_offset", U64)),
    "at", ("kafka_partition", "kafka_offset"), _alert, origin_is_message=True)

SPECS: tuple[TableSpec, ...] = (*EVENT_SPECS, ALERTS)


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
