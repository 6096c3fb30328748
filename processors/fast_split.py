"""The worker's fast path: a raw body straight to table columns, for bodies that need no
judgement.

`split_body` (processors/split.py) parses every event into a dict with orjson and
normalises it into a record dict, one event at a time; it is exact for every body and
costs most of the worker's split time. Almost every body the worker reads is plain: a
JSON array of function executions, storage snapshots, file downloads and log-stream
egress events, each valid. For those, `fast_columns` decodes the body with msgspec into
Structs typed exactly as strictly as the normalisers accept (records.py), and turns
them into the tables' columns (events.EventType.columns, in the table's types) without
a dict per event.

Why the result is always what `split_body` gives, or None (the caller then takes the
slow path, which is exact by definition):

- Every Struct forbids unknown fields and types every field it declares, so no part of
  the body is skipped unread: whatever orjson would refuse (a number that overflows a
  double, invalid UTF-8, a lone surrogate) msgspec refuses too, and the body goes the
  slow way. (msgspec skips unknown fields without the checks orjson makes; forbidding
  them closes that gap.)
- Each declared type admits only values the normaliser takes as they are: counters are
  non-negative integers up to 2**63-1 or null (orjson reads integers beyond 2**64-1 as
  floats, which the normaliser refuses; msgspec bounds only within int64, so the rare
  counter in between goes the slow way too), texts are strings or null, flags are booleans or null,
  `function.type` is one of records.FUNCTION_TYPES, names and paths are non-empty.
  Anything else (a float 1.0, a `true` counter, a string where an object belongs) fails
  decoding, and the event would have been a dead letter or normalised by a rule the fast
  path does not repeat: the slow path decides.
- Duplicate keys: msgspec keeps the last value, as orjson does; a duplicate `topic`
  fails decoding (the slow path routes by the last one).
- The body is read as log_stream.parse_events reads it: `bytes.strip`, then a JSON array
  if it starts with `[`, else JSONL split at `\n` with blank lines skipped, each line one
  event. Agent usage and every other topic go the slow way.

tests/unit/test_fast_split.py checks the equivalence on the bench's and the load
generator's bodies, on hostile bodies, and on bodies hypothesis builds.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from meterstream.core import events
from meterstream.core.records import AGENT_TOKENS, STORAGE_TOTALS, USAGE_COUNTERS

I64_MAX = (1 << 63) - 1
"""msgspec bounds only within int64; larger counters (up to 2**64-1) take the slow path."""

Counter = Annotated[int, Meta(ge=0, le=I64_MAX)] | None
"""records.counter: null (absent) is 0; anything but a non-negative integer is refused."""
Text = str | None
"""records.text: anything but a string is "" in the normaliser; here only null is."""
Name = Annotated[str, Meta(min_length=1)]
Time = Annotated[int, Meta(gt=0, le=I64_MAX)]

_STRICT: dict[str, Any] = {"forbid_unknown_fields": True}


class Convex(msgspec.Struct, **_STRICT):
    deployment_name: Name
    deployment_type: Text = None
    deployment_ref: Text = None
    project_name: Text = None
    project_slug: Text = None
    deployment_region: Text = None


class Function(msgspec.Struct, **_STRICT):
    path: Name
    type: Literal["query", "mutation", "action", "http_action"]
    cached: bool | None = None
    request_id: Text = None
    mutation_queue_length: Counter = None
    mutation_retry_count: Counter = None
    component_path: Text = None


class OccInfo(msgspec.Struct, **_STRICT):
    table_name: Text = None
    document_id: Text = None
    write_source: Text = None
    component_path: Text = None
    retry_count: Counter = None


class SchedulerInfo(msgspec.Struct, **_STRICT):
    job_id: Text = None


Usage = msgspec.defstruct("Usage", [(name, Counter, None) for name in USAGE_COUNTERS],
                          **_STRICT)
_NO_USAGE = Usage()


class FunctionExecution(msgspec.Struct, tag_field="topic", tag="function_execution",
                        **_STRICT):
    timestamp: Time
    convex: Convex
    function: Function
    execution_time_ms: Counter = None
    user_execution_time_ms: Counter = None
    status: Text = None
    error_message: Text = None
    occ_info: OccInfo | None = None
    will_retry: bool | None = None
    scheduler_info: SchedulerInfo | None = None
    run_reason: Text = None
    usage: Usage | None = None  # type: ignore[valid-type]


CurrentStorageUsage = msgspec.defstruct(
    "CurrentStorageUsage",
    [("timestamp", Time), ("convex", Convex),
     *[(name, Counter, None) for name in STORAGE_TOTALS],
     ("total_system_table_document_size_bytes", dict[str, Counter] | None, None)],
    tag_field="topic", tag="current_storage_usage", **_STRICT)


class StorageApiBandwidth(msgspec.Struct, tag_field="topic", tag="storage_api_bandwidth",
                          **_STRICT):
    timestamp: Time
    convex: Convex
    storage_id: Text = None
    egress_bytes: Counter = None


class LogStreamEgress(msgspec.Struct, tag_field="topic", tag="log_stream_egress",
                      **_STRICT):
    timestamp: Time
    convex: Convex
    egress_bytes: Counter = None


Event = FunctionExecution | CurrentStorageUsage | StorageApiBandwidth | LogStreamEgress
_DECODER = msgspec.json.Decoder(list[Event])  # type: ignore[valid-type]
_LINE_DECODER = msgspec.json.Decoder(Event)

ROUTE_OF: dict[type, str] = {
    FunctionExecution: events.FUNCTION_EXECUTION.route,
    CurrentStorageUsage: events.CURRENT_STORAGE_USAGE.route,
    StorageApiBandwidth: events.STORAGE_API_BANDWIDTH.route,
    LogStreamEgress: events.LOG_STREAM_EGRESS.route,
}
assert not set(AGENT_TOKENS) & set(USAGE_COUNTERS)  # agent usage never takes this path

Columns = dict[str, list[Any]]
"""A table's columns by name, in insert order (events.EventType.columns), in its types."""


def fast_columns(body: bytes, partition: int, offset: int) -> dict[str, Columns] | None:
    """Per route, the columns of the body's records, as `split_body` would normalise them
    with no dead letter; None when the body needs the slow path (module docstring)."""
    text = body.strip()
    try:
        if text[:1] == b"[":
            decoded = _DECODER.decode(text)
        elif not text:
            return None  # parse_events: "empty body", a dead letter
        else:  # JSONL, split as parse_events splits it
            decode = _LINE_DECODER.decode
            decoded = [decode(line) for line in text.split(b"\n") if line.strip()]
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    by_route: dict[str, tuple[list[Any], list[int]]] = {}
    for index, event in enumerate(decoded):
        route = ROUTE_OF[type(event)]
        group = by_route.get(route)
        if group is None:
            group = by_route[route] = ([], [])
        group[0].append(event)
        group[1].append(index)
    out: dict[str, Columns] = {}
    for route, (items, indices) in by_route.items():
        columns = _BUILDERS[route](items)
        count = len(items)
        columns["raw_partition"] = [partition] * count
        columns["raw_offset"] = [offset] * count
        columns["event_index"] = indices
        out[route] = columns
    return out


def _texts(values: list[str | None]) -> list[str]:
    return [value or "" for value in values]


def _counts(values: tuple[int | None, ...] | list[int | None]) -> list[int]:
    return [value or 0 for value in values]


_USAGE = attrgetter(*USAGE_COUNTERS)


def _function_executions(items: list[FunctionExecution]) -> Columns:
    functions = [item.function for item in items]
    convex = [item.convex for item in items]
    occ = [item.occ_info for item in items]
    scheduler = [item.scheduler_info for item in items]
    columns: Columns = {
        "deployment": [c.deployment_name for c in convex],
        "timestamp": [item.timestamp for item in items],
        "function_path": [f.path for f in functions],
        "function_type": [f.type for f in functions],
        "function_cached": [f.cached is True for f in functions],
        "component_path": _texts([f.component_path for f in functions]),
        "request_id": _texts([f.request_id for f in functions]),
        "mutation_queue_length": _counts([f.mutation_queue_length for f in functions]),
        "mutation_retry_count": _counts([f.mutation_retry_count for f in functions]),
        "status": _texts([item.status for item in items]),
        "error_message": _texts([item.error_message for item in items]),
        "execution_time_ms": _counts([item.execution_time_ms for item in items]),
        "user_execution_time_ms": _counts([item.user_execution_time_ms for item in items]),
        "will_retry": [item.will_retry is True for item in items],
        "run_reason": _texts([item.run_reason for item in items]),
        "occ_table_name": [(o.table_name or "") if o is not None else "" for o in occ],
        "scheduler_job_id": [(s.job_id or "") if s is not None else "" for s in scheduler],
    }
    usages = [_USAGE(item.usage or _NO_USAGE) for item in items]
    for name, values in zip(USAGE_COUNTERS, zip(*usages, strict=True), strict=True):
        columns[name] = _counts(values)
    if not items:  # zip(*[]) yields nothing; never the case for a route that is present
        for name in USAGE_COUNTERS:
            columns[name] = []
    columns["deployment_type"] = _texts([c.deployment_type for c in convex])
    columns["deployment_region"] = _texts([c.deployment_region for c in convex])
    columns["project_slug"] = _texts([c.project_slug for c in convex])
    return columns


def _storage_usage(items: list[Any]) -> Columns:
    columns: Columns = {"deployment": [item.convex.deployment_name for item in items],
                        "timestamp": [item.timestamp for item in items]}
    for name in STORAGE_TOTALS:
        columns[name] = _counts([getattr(item, name) for item in items])
    columns["system_table_document_size_bytes"] = [
        {table: value or 0
         for table, value in (item.total_system_table_document_size_bytes or {}).items()}
        for item in items]
    columns["deployment_region"] = _texts([item.convex.deployment_region for item in items])
    return columns


def _storage_bandwidth(items: list[StorageApiBandwidth]) -> Columns:
    return {"deployment": [item.convex.deployment_name for item in items],
            "timestamp": [item.timestamp for item in items],
            "storage_id": _texts([item.storage_id for item in items]),
            "egress_bytes": _counts([item.egress_bytes for item in items])}


def _log_stream_egress(items: list[LogStreamEgress]) -> Columns:
    return {"deployment": [item.convex.deployment_name for item in items],
            "timestamp": [item.timestamp for item in items],
            "egress_bytes": _counts([item.egress_bytes for item in items])}


_BUILDERS: dict[str, Any] = {
    events.FUNCTION_EXECUTION.route: _function_executions,
    events.CURRENT_STORAGE_USAGE.route: _storage_usage,
    events.STORAGE_API_BANDWIDTH.route: _storage_bandwidth,
    events.LOG_STREAM_EGRESS.route: _log_stream_egress,
}


def record_columns(event_type: events.EventType, records: list[dict[str, Any]]) -> Columns:
    """The columns of records a normaliser made, in the table's types (event_type.rows,
    on copies: the records themselves stay as they are, for a version 1 fallback)."""
    if event_type.rows is not events.EventType.rows:
        records = event_type.rows([dict(record) for record in records])
    return {name: [record[name] for record in records] for name, _ in event_type.columns}
