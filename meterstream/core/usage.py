"""Billing metrics derived from normalised records, as Convex bills them.

The mapping (reference section 5, Convex's `usage_limits/types.rs`):

    function_calls          function executions of every type (cached queries and
                            OCC-failed attempts included) + file downloads
    database_io_bytes       usage.database_io_read_bytes + usage.database_io_write_bytes
    action_compute_mb_ms    actions and HTTP actions: memory (action_memory_used_mb, or
                            memory_used_mb when that is absent) x execution_time_ms;
                            GB-hours = mb_ms / (1024 x 3,600,000)
    data_egress_bytes       usage.network_egress_bytes + usage.file_storage_read_bytes
                            + storage_api_bandwidth.egress_bytes + log_stream_egress.egress_bytes
    search_query_bytes      text and vector search query bytes, reads and writes
    file_downloads          storage_api_bandwidth events
    tokens                  agent usage total_tokens, also per provider/model by kind

Tenants choose the provider and model names of their agent usage, so the live
windows keep tokens by name only for the models the price book prices; every other
name is counted under OTHER_MODEL. A window's token map therefore has at most
(priced models + 1) entries whatever the tenants send, and the forwarded records
(and so ClickHouse and the invoices) keep the names as sent.

Every counter is an integer, so sums are exact; units are converted only when
shown or compared (as Fractions). Work is per raw message: events are summed per
minute first and the minutes rolled up into hours, days and months, so a
128-event body costs a few dictionary updates per window, not per event.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from meterstream.core.records import Record
from meterstream.core.windows import DAY_MS, GRANULARITIES, window_start

GB = 1 << 30
MB_MS_PER_GB_HOUR = 1024 * 3_600_000
BYTE_MS_PER_GB_HOUR = GB * 3_600_000

ACTION_TYPES = frozenset({"action", "http_action"})
TOKEN_KINDS: tuple[str, ...] = (
    "input_tokens", "non_cached_input_tokens", "cached_input_tokens",
    "cache_write_input_tokens", "output_tokens", "reasoning_tokens", "total_tokens",
)
# Storage categories as Convex prices them: database (documents + indexes), file
# (files + backups), search (text + vector).
# A deployment that sent no snapshot for this long is forgotten by the live state, and
# billing does not bridge a gap between two snapshots longer than this.
STORAGE_RETENTION_MS = 40 * DAY_MS
STORAGE_CATEGORIES: dict[str, tuple[str, ...]] = {
    "database": ("total_document_size_bytes", "total_index_size_bytes"),
    "file": ("total_file_storage_bytes", "total_backup_storage_bytes"),
    "search": ("total_text_storage_bytes", "total_vector_storage_bytes"),
}

Counters = dict[str, int]


@dataclass
class WindowDelta:
    """What one raw message adds to one window."""

    metrics: Counters = field(default_factory=lambda: defaultdict(int))
    tokens: dict[str, Counters] = field(default_factory=dict)
    """provider/model -> token kind -> count"""

    def add(self, other: WindowDelta) -> None:
        for name, value in other.metrics.items():
            self.metrics[name] += value
        for model, kinds in other.tokens.items():
            mine = self.tokens.setdefault(model, defaultdict(int))
            for kind, value in kinds.items():
                mine[kind] += value


@dataclass
class MessageUsage:
    """The usage one raw message carries for its deployment."""

    windows: dict[tuple[str, int], WindowDelta] = field(default_factory=dict)
    """(granularity, window start) -> delta"""
    users: dict[tuple[str, str, int], WindowDelta] = field(default_factory=dict)
    """(end user, "day" | "month", window start) -> token delta"""
    snapshots: list[Record] = field(default_factory=list)
    """current_storage_usage records, in event-time order"""
    models_folded: int = 0
    """agent usage records whose model is counted under OTHER_MODEL"""


def function_execution_metrics(record: Record, into: Counters) -> None:
    into["function_calls"] += 1
    read, write = record["database_io_read_bytes"], record["database_io_write_bytes"]
    into["database_io_read_bytes"] += read
    into["database_io_write_bytes"] += write
    into["database_io_bytes"] += read + write
    if record["function_type"] in ACTION_TYPES:
        memory = record["action_memory_used_mb"] or record["memory_used_mb"]
        into["action_compute_mb_ms"] += memory * record["execution_time_ms"]
    into["data_egress_bytes"] += record["network_egress_bytes"] + record["file_storage_read_bytes"]
    into["search_query_bytes"] += (
        record["text_search_query_bytes"] + record["text_search_write_query_bytes"]
        + record["vector_search_query_bytes"] + record["vector_search_write_query_bytes"])


def file_download_metrics(record: Record, into: Counters) -> None:
    into["function_calls"] += 1
    into["file_downloads"] += 1
    into["file_download_bytes"] += record["egress_bytes"]
    into["data_egress_bytes"] += record["egress_bytes"]


def log_stream_egress_metrics(record: Record, into: Counters) -> None:
    into["log_stream_egress_bytes"] += record["egress_bytes"]
    into["data_egress_bytes"] += record["egress_bytes"]


METRICS_OF_ROUTE = {
    "function_execution": function_execution_metrics,
    "storage_api_bandwidth": file_download_metrics,
    "log_stream_egress": log_stream_egress_metrics,
}


OTHER_MODEL = "other"
"""Where the live windows count the tokens of models the price book does not price."""


def model_key(record: Record) -> str:
    return f"{record['provider'] or 'unknown'}/{record['model'] or 'unknown'}"


def bounded_model_key(record: Record, priced: frozenset[str] | None) -> str:
    """The record's provider/model if it is priced (or `priced` is None), else OTHER_MODEL."""
    key = model_key(record)
    return key if priced is None or key in priced else OTHER_MODEL


def add_tokens(record: Record, delta: WindowDelta, model: str) -> None:
    kinds = delta.tokens.setdefault(model, defaultdict(int))
    for kind in TOKEN_KINDS:
        kinds[kind] += record[kind]
    delta.metrics["tokens"] += record["total_tokens"]


def message_usage(routed: dict[str, list[Record]],
                  priced: frozenset[str] | None = None) -> MessageUsage:
    """Sums the records of one raw message per window (all of one deployment).

    `priced`: the provider/model keys kept by name (the others fold into OTHER_MODEL);
    None keeps every name (for tests and tools that count a known, small set)."""
    minutes: dict[int, WindowDelta] = {}

    def minute(timestamp: int) -> WindowDelta:
        start = timestamp - timestamp % 60_000
        delta = minutes.get(start)
        if delta is None:
            delta = minutes[start] = WindowDelta()
        return delta

    for route, derive in METRICS_OF_ROUTE.items():
        for record in routed.get(route, ()):
            derive(record, minute(record["timestamp"]).metrics)
    user_minutes: dict[tuple[str, int], WindowDelta] = {}
    folded = 0
    for record in routed.get("agent_usage", ()):
        model = bounded_model_key(record, priced)
        folded += model == OTHER_MODEL
        add_tokens(record, minute(record["timestamp"]), model)
        start = record["timestamp"] - record["timestamp"] % 60_000
        add_tokens(record, user_minutes.setdefault((record["user_id"], start), WindowDelta()),
                   model)

    usage = MessageUsage(models_folded=folded)
    for start, delta in minutes.items():
        for granularity in GRANULARITIES:
            key = (granularity, start if granularity == "minute"
                   else window_start(granularity, start))
            usage.windows.setdefault(key, WindowDelta()).add(delta)
    for (user, start), delta in user_minutes.items():
        for granularity in ("day", "month"):
            user_key = (user, granularity, window_start(granularity, start))
            usage.users.setdefault(user_key, WindowDelta()).add(delta)
    usage.snapshots = sorted(routed.get("current_storage_usage", ()),
                             key=lambda r: (r["timestamp"], r["event_index"]))
    return usage


def storage_bytes(snapshot: Record) -> Counters:
    """Bytes per storage category of one snapshot."""
    return {category: sum(snapshot[field] for field in fields)
            for category, fields in STORAGE_CATEGORIES.items()}


def gb_hours(byte_ms_or_mb_ms: int, per_gb_hour: int) -> float:
    return byte_ms_or_mb_ms / per_gb_hour


def plain(delta: Any) -> Any:
    """A WindowDelta's counters as plain dicts (for JSON)."""
    if isinstance(delta, dict):
        return {k: plain(v) for k, v in delta.items()}
    return delta
