"""One registration per Convex event type: everything the pipeline knows of it, once.

An EventType names the Convex log-stream `topic` (also the worker's route, so its
records travel on `<ns>.<topic>`), the normaliser that turns one event into a typed
record (meterstream/core/records.py), the ClickHouse table the sink writes it to with
its columns and their ClickHouse types in insert order, and whether a log stream that
`meterstream deployments provision` creates subscribes to it by default.

Derived from EVENT_TYPES, not written again elsewhere:

    processors/split.py ROUTES, ALL_ROUTES      which normaliser an event goes through
    meterstream/core/tables.py SPECS            what the sink writes where (+ alerts)
    ingest/convex_platform.py METERING_TOPICS   the default log-stream topics
    meterstream/core/log_stream.py KNOWN_TOPICS the receiver's topic labels
    meterstream/core/catalogue.py               which billing metrics each type feeds
                                                (each metric names its event types)

The tables themselves are created by the hand-written migrations
(meterstream/core/migrations); tests/unit/test_catalogue.py applies them and checks
every table's columns and types against these registrations.

Adding a topic: its TypedDict and normaliser in records.py, an EventType here, and
a migration creating its table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meterstream.core import records
from meterstream.core.records import Record

Normaliser = Callable[[dict[str, Any], int, int, int], Any]
"""(event, raw partition, raw offset, event index) -> the type's TypedDict record; raises
records.InvalidEvent."""
Rows = Callable[[list[Record]], list[Record]]
"""The records of one message (decoded from JSON) -> rows in the table's column types."""

Column = tuple[str, str]
"""(name, ClickHouse type), as DESCRIBE TABLE shows it"""

STRING, LOW = "String", "LowCardinality(String)"
BOOL, U32, U64 = "Bool", "UInt32", "UInt64"
TIME = "DateTime64(3, 'UTC')"
U64_MAP = "Map(String, UInt64)"

ORIGIN: tuple[Column, ...] = (("raw_partition", U32), ("raw_offset", U64),
                              ("event_index", U32))
"""Where a record came from; with the table's time column, what the sink's high-water
marks are kept by."""


def _rows(records: list[Record]) -> list[Record]:
    return records


@dataclass(frozen=True)
class EventType:
    topic: str
    """Convex's `topic` field, and the route: records travel on `<ns>.<topic>`."""
    table: str
    normalise: Normaliser
    columns: tuple[Column, ...]
    """The table's columns in insert order (its defaulted columns, inserted_at, left out)."""
    subscribed: bool
    """Whether a log stream created by `deployments provision` asks Convex for it."""
    rows: Rows = _rows
    time_column: str = "timestamp"

    @property
    def route(self) -> str:
        return self.topic


def _u64(names: tuple[str, ...]) -> tuple[Column, ...]:
    return tuple((name, U64) for name in names)


FUNCTION_EXECUTION = EventType(
    "function_execution", "function_executions", records.function_execution,
    (("deployment", LOW), ("timestamp", TIME), ("function_path", LOW), ("function_type", LOW),
     ("function_cached", BOOL), ("component_path", LOW), ("request_id", STRING),
     ("mutation_queue_length", U32), ("mutation_retry_count", U32), ("status", LOW),
     ("error_message", STRING), ("execution_time_ms", U64), ("user_execution_time_ms", U64),
     ("will_retry", BOOL), ("run_reason", LOW), ("occ_table_name", LOW),
     ("scheduler_job_id", STRING), *_u64(records.USAGE_COUNTERS), ("deployment_type", LOW),
     ("deployment_region", LOW), ("project_slug", LOW), *ORIGIN),
    subscribed=True)
CURRENT_STORAGE_USAGE = EventType(
    "current_storage_usage", "storage_snapshots", records.storage_usage,
    (("deployment", LOW), ("timestamp", TIME), *_u64(records.STORAGE_TOTALS),
     ("system_table_document_size_bytes", U64_MAP), ("deployment_region", LOW), *ORIGIN),
    subscribed=True)
STORAGE_API_BANDWIDTH = EventType(
    "storage_api_bandwidth", "file_downloads", records.storage_bandwidth,
    (("deployment", LOW), ("timestamp", TIME), ("storage_id", STRING), ("egress_bytes", U64),
     *ORIGIN),
    subscribed=True)
LOG_STREAM_EGRESS = EventType(
    "log_stream_egress", "log_stream_egress", records.log_stream_egress,
    (("deployment", LOW), ("timestamp", TIME), ("egress_bytes", U64), *ORIGIN),
    subscribed=True)
AGENT_USAGE = EventType(
    # Not a Convex log-stream topic: the receiver's /v1/agent/usage makes these events.
    "agent_usage", "agent_usage", records.agent_usage,
    (("id", STRING), ("deployment", LOW), ("timestamp", TIME), ("user_id", STRING),
     ("thread_id", STRING), ("agent_name", LOW), ("model", LOW), ("provider", LOW),
     *_u64(records.AGENT_TOKENS), ("provider_metadata", STRING), *ORIGIN),
    subscribed=False, rows=records.agent_usage_rows)

EVENT_TYPES: tuple[EventType, ...] = (FUNCTION_EXECUTION, CURRENT_STORAGE_USAGE,
                                      STORAGE_API_BANDWIDTH, LOG_STREAM_EGRESS, AGENT_USAGE)
"""The event types with their own normaliser and table."""

OTHER = EventType(
    # Every event whose topic is none of the above, kept whole; not a Convex topic.
    "other", "other_events", records.other,
    (("topic", LOW), ("deployment", LOW), ("timestamp", TIME), ("event", STRING), *ORIGIN),
    subscribed=False, rows=records.other_rows)

KEPT_WHOLE: tuple[str, ...] = (
    "console", "verification", "audit_log", "scheduler_stats", "scheduled_job_lag",
    "concurrency_stats", "custom_audit",
)
"""Convex topics without a table of their own: stored in OTHER's table as they came
(Convex topics: docs/reference, convex-log-streams section 3)."""

BY_TOPIC: dict[str, EventType] = {event_type.topic: event_type for event_type in EVENT_TYPES}
ALL: tuple[EventType, ...] = (*EVENT_TYPES, OTHER)
SUBSCRIBED: tuple[str, ...] = tuple(t.topic for t in EVENT_TYPES if t.subscribed)
KNOWN_TOPICS: frozenset[str] = frozenset((*BY_TOPIC, *KEPT_WHOLE))
