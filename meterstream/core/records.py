"""The project's own typed records, normalised from Convex's V2 log-stream events.

Normalising means: counters that are null or absent become 0 (older backends
lack newer fields, and Convex sends null where a counter does not apply), and
anything that cannot be a counter makes the event invalid, so it goes to the
dead-letter topic instead of into the totals.
"""

from __future__ import annotations

from typing import Any

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
                       event_index: int) -> Record:
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
    return record


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
                  event_index: int) -> Record:
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
    return _origin(record, raw_partition, raw_offset, event_index)


def storage_bandwidth(event: dict[str, Any], raw_partition: int, raw_offset: int,
                      event_index: int) -> Record:
    """Normalises one `storage_api_bandwidth` event (one file download)."""
    record: Record = {"deployment": deployment_of(event), "timestamp": timestamp_of(event),
                      "storage_id": text(event, "storage_id"),
                      "egress_bytes": counter(event, "egress_bytes", "")}
    return _origin(record, raw_partition, raw_offset, event_index)


def log_stream_egress(event: dict[str, Any], raw_partition: int, raw_offset: int,
                      event_index: int) -> Record:
    """Normalises one `log_stream_egress` event (bytes sent to log sinks in the last minute)."""
    record: Record = {"deployment": deployment_of(event), "timestamp": timestamp_of(event),
                      "egress_bytes": counter(event, "egress_bytes", "")}
    return _origin(record, raw_partition, raw_offset, event_index)


AGENT_TOKENS: tuple[str, ...] = (
    "input_tokens", "non_cached_input_tokens", "cached_input_tokens",
    "cache_write_input_tokens", "output_tokens", "text_output_tokens", "reasoning_tokens",
    "total_tokens",
)


def agent_usage(event: dict[str, Any], raw_partition: int, raw_offset: int,
                event_index: int) -> Record:
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
    return _origin(record, raw_partition, raw_offset, event_index)


def other(event: dict[str, Any], raw_partition: int, raw_offset: int,
          event_index: int) -> Record:
    """Any other event (console, audit_log, verification, ...), kept whole."""
    convex = event.get("convex")
    deployment = convex.get("deployment_name") if isinstance(convex, dict) else None
    topic = event.get("topic")
    record: Record = {"topic": topic if isinstance(topic, str) else "",
                      "deployment": deployment if isinstance(deployment, str) else "",
                      "event": event}
    return _origin(record, raw_partition, raw_offset, event_index)
