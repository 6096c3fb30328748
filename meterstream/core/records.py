"""The project's own typed records, normalised from Convex's V2 log-stream events.

Normalising means: counters that are null or absent become 0 (older backends
lack newer fields, and Convex sends null where a counter does not apply), and
anything that cannot be a counter makes the event invalid, so it goes to the
dead-letter topic instead of into the totals.
"""

from __future__ import annotations

from typing import Any, TypedDict, cast

import orjson

# The `usage` object of a function_execution event, in Convex's order. Each is a
# column of the same name in ClickHouse.
USAGE_COUNTERS: tuple[str, ...] = (
    "database_read_bytes",
    "database_write_bytes",
    "database_io_read_bytes",
    "database_io_write_bytes",
    "database_read_documents",
    "database_write_documents",
    "file_storage_read_bytes",
    "file_storage_write_bytes",
    "vector_storage_read_bytes",
    "vector_storage_write_bytes",
    "text_search_query_bytes",
    "text_search_write_query_bytes",
    "vector_search_query_bytes",
    "vector_search_write_query_bytes",
    "network_egress_bytes",
    "memory_used_mb",
    "action_memory_used_mb",
    "audit_log_egress_bytes",
    "function_args_bytes",
    "function_returns_bytes",
)

FUNCTION_TYPES = frozenset({"query", "mutation", "action", "http_action"})

# Every field of a normalised function_execution record, in column order.
FUNCTION_EXECUTION_FIELDS: tuple[str, ...] = (
    "deployment",
    "timestamp",
    "function_path",
    "function_type",
    "function_cached",
    "component_path",
    "request_id",
    "mutation_queue_length",
    "mutation_retry_count",
    "status",
    "error_message",
    "execution_time_ms",
    "user_execution_time_ms",
    "will_retry",
    "run_reason",
    "occ_table_name",
    "scheduler_job_id",
    *USAGE_COUNTERS,
    "deployment_type",
    "deployment_region",
    "project_slug",
    "raw_partition",
    "raw_offset",
    "event_index",
)

Record = dict[str, Any]
"""A record in transit whose type the code at hand does not know (the sink's rows, a
route's list before it is looked at); each normaliser below returns its own TypedDict."""

# The largest DateTime64(3) value ClickHouse stores (2299-12-31 23:59:59.999 UTC).
MAX_TIMESTAMP_MS = 10_413_791_999_999


class Origin(TypedDict):
    """Where a record came from: the raw body's partition and offset, and its place in it."""

    raw_partition: int
    raw_offset: int
    event_index: int


class FunctionExecution(TypedDict):
    """A normalised `function_execution`: FUNCTION_EXECUTION_FIELDS, one column each."""

    deployment: str
    timestamp: int
    function_path: str
    function_type: str
    function_cached: bool
    component_path: str
    request_id: str
    mutation_queue_length: int
    mutation_retry_count: int
    status: str
    error_message: str
    execution_time_ms: int
    user_execution_time_ms: int
    will_retry: bool
    run_reason: str
    occ_table_name: str
    scheduler_job_id: str
    database_read_bytes: int
    database_write_bytes: int
    database_io_read_bytes: int
    database_io_write_bytes: int
    database_read_documents: int
    database_write_documents: int
    file_storage_read_bytes: int
    file_storage_write_bytes: int
    vector_storage_read_bytes: int
    vector_storage_write_bytes: int
    text_search_query_bytes: int
    text_search_write_query_bytes: int
    vector_search_query_bytes: int
    vector_search_write_query_bytes: int
    network_egress_bytes: int
    memory_used_mb: int
    action_memory_used_mb: int
    audit_log_egress_bytes: int
    function_args_bytes: int
    function_returns_bytes: int
    deployment_type: str
    deployment_region: str
    project_slug: str
    raw_partition: int
    raw_offset: int
    event_index: int


class StorageSnapshot(Origin):
    deployment: str
    timestamp: int
    total_document_size_bytes: int
    total_index_size_bytes: int
    total_vector_storage_bytes: int
    total_text_storage_bytes: int
    total_file_storage_bytes: int
    total_backup_storage_bytes: int
    system_table_document_size_bytes: dict[str, int]
    deployment_region: str


class FileDownload(Origin):
    deployment: str
    timestamp: int
    storage_id: str
    egress_bytes: int


class LogStreamEgress(Origin):
    deployment: str
    timestamp: int
    egress_bytes: int


class AgentUsage(Origin):
    id: str
    deployment: str
    timestamp: int
    user_id: str
    thread_id: str
    agent_name: str
    model: str
    provider: str
    input_tokens: int
    non_cached_input_tokens: int
    cached_input_tokens: int
    cache_write_input_tokens: int
    output_tokens: int
    text_output_tokens: int
    reasoning_tokens: int
    total_tokens: int
    provider_metadata: dict[str, Any]


class OtherEvent(Origin):
    topic: str
    deployment: str
    event: dict[str, Any]


class InvalidEvent(ValueError):
    """An event that cannot be normalised; the message is the dead-letter reason."""


def counter(container: dict[str, Any], key: str, where: str) -> int:
    """A non-negative integer counter; null or absent is 0."""
    value = container.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidEvent(f"{where}{key} must be a non-negative integer, got {value!r}")
    return value


def text(container: dict[str, Any], key: str) -> str:
    value = container.get(key)
    return value if isinstance(value, str) else ""


def deployment_of(event: dict[str, Any]) -> str:
    convex = event.get("convex")
    name = convex.get("deployment_name") if isinstance(convex, dict) else None
    if not isinstance(name, str) or not name:
        raise InvalidEvent("convex.deployment_name is missing")
    return name


def timestamp_of(event: dict[str, Any]) -> int:
    timestamp = event.get("timestamp")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp <= 0:
        raise InvalidEvent(f"timestamp must be a positive integer (ms), got {timestamp!r}")
    return timestamp


def _origin(record: Record, raw_partition: int, raw_offset: int, event_index: int) -> Record:
    record["raw_partition"] = raw_partition
    record["raw_offset"] = raw_offset
    record["event_index"] = event_index
    return record


def _counters(container: dict[str, Any], keys: tuple[str, ...], where: str,
              record: Record) -> None:
    """Copies counters into `record`: the common case (a non-negative int) inline, the
    rest (null, absent, invalid) through `counter`. This loop is the worker's hottest."""
    get = container.get
    for key in keys:
        value = get(key)
        if value is None:
            record[key] = 0
        elif type(value) is int and value >= 0:
            record[key] = value
        else:
            record[key] = counter(container, key, where)  # raises InvalidEvent


def _text(value: Any) -> str:
    return value if type(value) is str else ""


def function_execution(event: dict[str, Any], raw_partition: int, raw_offset: int,
                       event_index: int) -> FunctionExecution:
    """Normalises one `function_execution` event; raises InvalidEvent."""
    deployment = deployment_of(event)
    timestamp = timestamp_of(event)
    function = event.get("function")
    if type(function) is not dict:
        raise InvalidEvent("function must be an object")
    path = function.get("path")
    if type(path) is not str or not path:
        raise InvalidEvent("function.path must be a non-empty string")
    function_type = function.get("type")
    if function_type not in FUNCTION_TYPES:
        raise InvalidEvent(f"function.type must be one of {sorted(FUNCTION_TYPES)}, "
                           f"got {function_type!r}")
    usage = event.get("usage")
    if usage is None:
        usage = {}
    elif type(usage) is not dict:
        raise InvalidEvent("usage must be an object")
    occ = event.get("occ_info")
    scheduler = event.get("scheduler_info")
    convex = event["convex"]
    record: Record = {
        "deployment": deployment,
        "timestamp": timestamp,
        "function_path": path,
        "function_type": function_type,
        "function_cached": function.get("cached") is True,
        "component_path": _text(function.get("component_path")),
        "request_id": _text(function.get("request_id")),
    }
    _counters(function, ("mutation_queue_length", "mutation_retry_count"), "function.", record)
    record["status"] = _text(event.get("status"))
    record["error_message"] = _text(event.get("error_message"))
    _counters(event, ("execution_time_ms", "user_execution_time_ms"), "", record)
    record["will_retry"] = event.get("will_retry") is True
    record["run_reason"] = _text(event.get("run_reason"))
    record["occ_table_name"] = _text(occ.get("table_name")) if type(occ) is dict else ""
    record["scheduler_job_id"] = (_text(scheduler.get("job_id")) if type(scheduler) is dict
                                  else "")
    _counters(usage, USAGE_COUNTERS, "usage.", record)
    record["deployment_type"] = _text(convex.get("deployment_type"))
    record["deployment_region"] = _text(convex.get("deployment_region"))
    record["project_slug"] = _text(convex.get("project_slug"))
    record["raw_partition"] = raw_partition
    record["raw_offset"] = raw_offset
    record["event_index"] = event_index
    return cast(FunctionExecution, record)


# The byte totals of a `current_storage_usage` snapshot, each a field of the same name.
STORAGE_TOTALS: tuple[str, ...] = (
    "total_document_size_bytes",
    "total_index_size_bytes",
    "total_vector_storage_bytes",
    "total_text_storage_bytes",
    "total_file_storage_bytes",
    "total_backup_storage_bytes",
)


def storage_usage(event: dict[str, Any], raw_partition: int, raw_offset: int,
                  event_index: int) -> StorageSnapshot:
    """Normalises one `current_storage_usage` snapshot; raises InvalidEvent."""
    record: Record = {"deployment": deployment_of(event), "timestamp": timestamp_of(event)}
    for key in STORAGE_TOTALS:
        record[key] = counter(event, key, "")
    system = event.get("total_system_table_document_size_bytes")
    if system is None:
        system = {}
    elif not isinstance(system, dict):
        raise InvalidEvent("total_system_table_document_size_bytes must be an object")
    record["system_table_document_size_bytes"] = {
        str(table): counter(system, table, "total_system_table_document_size_bytes.")
        for table in system}
    record["deployment_region"] = text(event["convex"], "deployment_region")
    return cast(StorageSnapshot, _origin(record, raw_partition, raw_offset, event_index))


def storage_bandwidth(event: dict[str, Any], raw_partition: int, raw_offset: int,
                      event_index: int) -> FileDownload:
    """Normalises one `storage_api_bandwidth` event (one file download)."""
    record: Record = {"deployment": deployment_of(event), "timestamp": timestamp_of(event),
                      "storage_id": text(event, "storage_id"),
                      "egress_bytes": counter(event, "egress_bytes", "")}
    return cast(FileDownload, _origin(record, raw_partition, raw_offset, event_index))


def log_stream_egress(event: dict[str, Any], raw_partition: int, raw_offset: int,
                      event_index: int) -> LogStreamEgress:
    """Normalises one `log_stream_egress` event (bytes sent to log sinks in the last minute)."""
    record: Record = {"deployment": deployment_of(event), "timestamp": timestamp_of(event),
                      "egress_bytes": counter(event, "egress_bytes", "")}
    return cast(LogStreamEgress, _origin(record, raw_partition, raw_offset, event_index))


AGENT_TOKENS: tuple[str, ...] = (
    "input_tokens", "non_cached_input_tokens", "cached_input_tokens",
    "cache_write_input_tokens", "output_tokens", "text_output_tokens", "reasoning_tokens",
    "total_tokens",
)


def agent_usage(event: dict[str, Any], raw_partition: int, raw_offset: int,
                event_index: int) -> AgentUsage:
    """Checks an agent usage record the receiver normalised (ingest/agent_usage.py)."""
    record_id = event.get("id")
    if not isinstance(record_id, str) or not record_id:
        raise InvalidEvent("id must be a non-empty string")
    deployment = event.get("deployment")
    if not isinstance(deployment, str) or not deployment:
        raise InvalidEvent("deployment must be a non-empty string")
    record: Record = {"id": record_id, "deployment": deployment,
                      "timestamp": timestamp_of(event)}
    for key in ("user_id", "thread_id", "agent_name", "model", "provider"):
        record[key] = text(event, key)
    for key in AGENT_TOKENS:
        record[key] = counter(event, key, "")
    metadata = event.get("provider_metadata")
    record["provider_metadata"] = metadata if isinstance(metadata, dict) else {}
    return cast(AgentUsage, _origin(record, raw_partition, raw_offset, event_index))


def other(event: dict[str, Any], raw_partition: int, raw_offset: int,
          event_index: int) -> OtherEvent:
    """Any other event (console, audit_log, verification, ...), kept whole."""
    convex = event.get("convex")
    deployment = convex.get("deployment_name") if isinstance(convex, dict) else None
    topic = event.get("topic")
    record: Record = {"topic": topic if isinstance(topic, str) else "",
                      "deployment": deployment if isinstance(deployment, str) else "",
                      "event": event}
    return cast(OtherEvent, _origin(record, raw_partition, raw_offset, event_index))


# How the sink turns the records of a message (decoded from JSON) into rows, where a
# column's type is not the record field's own: JSON objects are stored as JSON text.

def agent_usage_rows(records: list[Record]) -> list[Record]:
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


def other_rows(records: list[Record]) -> list[Record]:
    for record in records:
        event = record.get("event")
        record["timestamp"] = event_timestamp(event)
        record["event"] = orjson.dumps(event).decode()
    return records
