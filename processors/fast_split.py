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

from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta
from msgspec.structs import astuple

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

_STRICT: dict[str, Any] = {"forbid_unknown_fields": True, "gc": False}
"""gc=False: the collector does not track the Structs (a body makes several hundred), which
is safe because they cannot be part of a reference cycle: they hold only strings,
numbers, None, other such Structs and a dict of strings to numbers."""


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
_ROUTES = tuple(ROUTE_OF.values())
_RANK = {kind: rank for rank, kind in enumerate(ROUTE_OF)}
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
    # Grouped by route with C loops only (a stable sort of the positions by route keeps
    # each route's events in body order); the routes in order of first appearance.
    ranks = list(map(_RANK.__getitem__, map(type, decoded)))
    counts = {rank: ranks.count(rank) for rank in dict.fromkeys(ranks)}
    by_route: dict[str, tuple[list[Any], list[int]]] = {}
    if len(counts) == 1:
        by_route[_ROUTES[ranks[0]]] = (decoded, list(range(len(ranks))))
    elif counts:
        order = sorted(range(len(ranks)), key=ranks.__getitem__)
        starts, at = {}, 0
        for rank in sorted(counts):
            starts[rank] = at
            at += counts[rank]
        for rank, count in counts.items():
            indices = order[starts[rank]:starts[rank] + count]
            by_route[_ROUTES[rank]] = (list(map(decoded.__getitem__, indices)), indices)
    out: dict[str, Columns] = {}
    for route, (items, indices) in by_route.items():
        columns = _BUILDERS[route](items)
        count = len(items)
        columns["raw_partition"] = [partition] * count
        columns["raw_offset"] = [offset] * count
        columns["event_index"] = indices
        out[route] = columns
    return out


def _fields(kind: type[msgspec.Struct], items: Sequence[msgspec.Struct]
            ) -> dict[str, tuple[Any, ...]]:
    """Each field of `items` (Structs of type `kind`, at least one) as a tuple over the
    items: astuple and the transpose are C loops, several times faster than an attribute
    read per item and field."""
    return dict(zip(kind.__struct_fields__, zip(*map(astuple, items), strict=True),
                    strict=True))


def _texts(values: tuple[str | None, ...]) -> list[str]:
    try:  # join refuses a null, and costs less than looking for one
        "".join(values)  # type: ignore[arg-type]
    except TypeError:
        return [value or "" for value in values]
    return list(values)  # type: ignore[arg-type]


def _counts(values: tuple[int | None, ...]) -> list[int]:
    try:  # sum refuses a null, and costs less than looking for one
        sum(values)  # type: ignore[arg-type]
    except TypeError:
        return [value or 0 for value in values]
    return list(values)  # type: ignore[arg-type]


def _flags(values: tuple[bool | None, ...]) -> list[bool]:
    """records.flag: null is False."""
    return [value is True for value in values]


def _function_executions(items: Sequence[FunctionExecution]) -> Columns:
    """The columns of one or more function executions (never none: a route is present
    only with its events)."""
    event = _fields(FunctionExecution, items)
    function = _fields(Function, event["function"])
    convex = _fields(Convex, event["convex"])
    count = len(items)
    occ, scheduler, usage = event["occ_info"], event["scheduler_info"], event["usage"]
    columns: Columns = {
        "deployment": list(convex["deployment_name"]),
        "timestamp": list(event["timestamp"]),
        "function_path": list(function["path"]),
        "function_type": list(function["type"]),
        "function_cached": _flags(function["cached"]),
        "component_path": _texts(function["component_path"]),
        "request_id": _texts(function["request_id"]),
        "mutation_queue_length": _counts(function["mutation_queue_length"]),
        "mutation_retry_count": _counts(function["mutation_retry_count"]),
        "status": _texts(event["status"]),
        "error_message": _texts(event["error_message"]),
        "execution_time_ms": _counts(event["execution_time_ms"]),
        "user_execution_time_ms": _counts(event["user_execution_time_ms"]),
        "will_retry": _flags(event["will_retry"]),
        "run_reason": _texts(event["run_reason"]),
        "occ_table_name": ([""] * count if occ.count(None) == count else
                           [(o.table_name or "") if o is not None else "" for o in occ]),
        "scheduler_job_id": ([""] * count if scheduler.count(None) == count else
                             [(s.job_id or "") if s is not None else "" for s in scheduler]),
    }
    if None in usage:
        usage = tuple(_NO_USAGE if one is None else one for one in usage)
    for name, values in _fields(Usage, usage).items():
        columns[name] = _counts(values)
    columns["deployment_type"] = _texts(convex["deployment_type"])
    columns["deployment_region"] = _texts(convex["deployment_region"])
    columns["project_slug"] = _texts(convex["project_slug"])
    return columns


def _storage_usage(items: Sequence[Any]) -> Columns:
    event = _fields(CurrentStorageUsage, items)
    convex = _fields(Convex, event["convex"])
    columns: Columns = {"deployment": list(convex["deployment_name"]),
                        "timestamp": list(event["timestamp"])}
    for name in STORAGE_TOTALS:
        columns[name] = _counts(event[name])
    columns["system_table_document_size_bytes"] = [
        {table: value or 0 for table, value in (tables or {}).items()}
        for tables in event["total_system_table_document_size_bytes"]]
    columns["deployment_region"] = _texts(convex["deployment_region"])
    return columns


def _storage_bandwidth(items: Sequence[StorageApiBandwidth]) -> Columns:
    event = _fields(StorageApiBandwidth, items)
    convex = _fields(Convex, event["convex"])
    return {"deployment": list(convex["deployment_name"]), "timestamp": list(event["timestamp"]),
            "storage_id": _texts(event["storage_id"]),
            "egress_bytes": _counts(event["egress_bytes"])}


def _log_stream_egress(items: Sequence[LogStreamEgress]) -> Columns:
    event = _fields(LogStreamEgress, items)
    convex = _fields(Convex, event["convex"])
    return {"deployment": list(convex["deployment_name"]), "timestamp": list(event["timestamp"]),
            "egress_bytes": _counts(event["egress_bytes"])}


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
