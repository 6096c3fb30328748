"""The billing metrics, each once: unit, what it is computed from, quota, price-book resource.

Convex bills as its `usage_limits/types.rs` counts (reference section 5). Every
counter is an integer in its own unit, so sums are exact; units are converted (as
Fractions) only where a metric is shown, limited or billed.

A metric's `sources` say which event types (meterstream/core/events.py) feed it and
how: per record, the sum of the named fields, or 1 when no field is named. That is the
whole formula of every metric except the few marked `custom` (action compute: memory x
time for actions only; storage: byte-milliseconds between snapshots; the storage gauge),
whose Python is in meterstream/core/usage.py and processors/state.py (and, computed
independently, in meterstream/loadgen) and whose SQL is in the migrations.

Derived from METRICS, not written again elsewhere:

    meterstream/core/usage.py       the worker's live counters per window (`live`)
    meterstream/core/quotas.py      METRICS that can carry a quota (`quota`)
    processors/quota_status.py      the quota report's usage (quota metrics + details)
    billing/rollups.py COUNTERS     the columns of usage_events, usage_hourly, usage_daily
                                    (`rollup`; tests/unit/test_catalogue.py checks them)
    billing/resources.py            each price-book resource's quantity (`resource`)
    billing/queries.py display      usage in billed units (`shown`)
    meterstream/loadgen             expected metrics, their tables, the totals table

Adding a metric computed as sums of event fields: a Metric here and a migration adding
its column to the rollups and their views.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

from meterstream.core import events
from meterstream.core.records import AGENT_TOKENS

GB = 1 << 30
"""Bytes in a GB as Convex's usage limits count (2^30)."""
MB_MS_PER_GB_HOUR = 1024 * 3_600_000
BYTE_MS_PER_GB_HOUR = GB * 3_600_000

Source = tuple[str, tuple[str, ...]]
"""(event topic, fields summed per record); no fields: 1 per record"""


@dataclass(frozen=True)
class Shown:
    key: str
    per: int
    """units of the metric per shown unit"""
    column: int
    """its place among the display's columns (the CSV output's order, kept as released)"""


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    description: str
    sources: tuple[Source, ...]
    live: bool = True
    """Counted per window by meterstream/core/usage.py, under `name`, in the worker's
    live state (the storage byte-ms are added there by processors/state.py)."""
    rollup: bool = True
    """A column of usage_events, usage_hourly and usage_daily (migrations/0003_rollups.sql)."""
    custom: bool = False
    """Not a plain sum of `sources`: computed by code written for it."""
    quota: str | None = None
    """The name a quota on it is set by, in the quota unit (`per_quota_unit` of `unit`)."""
    per_quota_unit: int = 1
    resource: str | None = None
    """The price-book resource (billing/resources.py) it bills as."""
    shown: Shown | None = None
    """How the usage display (`meterstream usage`) shows it, if it does."""
    heading: str | None = None
    """Its column heading in the load generator's totals table, if it has a column."""
    parts: tuple[str, ...] = ()
    """For a metric that is not a rollup column: the billing usage counters (rollup
    columns, billing/storage.py's byte-ms) whose total it is."""

    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(topic for topic, _ in self.sources)

    @property
    def tables(self) -> tuple[str, ...]:
        """The ClickHouse tables of its event types."""
        return tuple(events.BY_TOPIC[topic].table for topic in self.topics)

    @property
    def columns(self) -> tuple[str, ...]:
        """What it totals in billing: itself if a rollup column, else its parts."""
        return (self.name,) if self.rollup else self.parts


FE, DOWNLOADS, LOG_EGRESS, AGENT, STORAGE = (
    events.FUNCTION_EXECUTION.topic, events.STORAGE_API_BANDWIDTH.topic,
    events.LOG_STREAM_EGRESS.topic, events.AGENT_USAGE.topic,
    events.CURRENT_STORAGE_USAGE.topic)

# Storage categories as Convex prices them: database (documents + indexes), file
# (files + backups), search (text + vector).
STORAGE_CATEGORIES: dict[str, tuple[str, ...]] = {
    "database": ("total_document_size_bytes", "total_index_size_bytes"),
    "file": ("total_file_storage_bytes", "total_backup_storage_bytes"),
    "search": ("total_text_storage_bytes", "total_vector_storage_bytes"),
}
_STORAGE_DESCRIPTIONS = {"database": "Database storage (documents + indexes)",
                         "file": "File storage (files + backups)",
                         "search": "Search storage (text + vector)"}


def _storage(category: str) -> Metric:
    return Metric(f"{category}_storage_byte_ms", "byte-ms",
                  _STORAGE_DESCRIPTIONS[category]
                  + ": each snapshot's bytes x the time until the next snapshot",
                  ((STORAGE, STORAGE_CATEGORIES[category]),), live=False, rollup=False,
                  custom=True, parts=(f"{category}_storage_byte_ms",),
                  resource=f"{category}_storage",
                  shown=Shown(f"{category}_storage_gb_hours", BYTE_MS_PER_GB_HOUR,
                              6 + tuple(STORAGE_CATEGORIES).index(category)))


SEARCH_FIELDS = ("text_search_query_bytes", "text_search_write_query_bytes",
                 "vector_search_query_bytes", "vector_search_write_query_bytes")
FUNCTION_EGRESS_FIELDS = ("network_egress_bytes", "file_storage_read_bytes")

# In the order quotas list them and the load generator's totals table has them; the
# usage display's columns are in `Shown.column` order, the rollups' in the migration's.
METRICS: tuple[Metric, ...] = (
    Metric("function_calls", "calls",
           "Function calls: executions of every type (cached queries and OCC-failed "
           "attempts included) + file downloads",
           ((FE, ()), (DOWNLOADS, ())), quota="function_calls", resource="function_calls",
           shown=Shown("function_calls", 1, 0), heading="function_calls"),
    Metric("database_io_bytes", "bytes", "Database I/O: bytes read + written",
           ((FE, ("database_io_read_bytes", "database_io_write_bytes")),), rollup=False,
           parts=("database_io_read_bytes", "database_io_write_bytes"),
           quota="database_io_bytes", resource="database_io", shown=Shown("database_io_gb", GB, 3),
           heading="db_io_bytes"),
    Metric("database_io_read_bytes", "bytes", "Database I/O: bytes read",
           ((FE, ("database_io_read_bytes",)),)),
    Metric("database_io_write_bytes", "bytes", "Database I/O: bytes written",
           ((FE, ("database_io_write_bytes",)),)),
    Metric("action_compute_mb_ms", "MB-ms",
           "Action compute: actions and HTTP actions, memory (action_memory_used_mb, or "
           "memory_used_mb when that is 0) x execution_time_ms",
           ((FE, ("function_type", "action_memory_used_mb", "memory_used_mb",
                  "execution_time_ms")),),
           custom=True, quota="action_compute_gb_hours", per_quota_unit=MB_MS_PER_GB_HOUR,
           resource="action_compute", shown=Shown("action_compute_gb_hours", MB_MS_PER_GB_HOUR, 2),
           heading="action_mb_ms"),
    Metric("data_egress_bytes", "bytes",
           "Data egress: functions' network and file reads, file downloads, log streams",
           ((FE, FUNCTION_EGRESS_FIELDS), (DOWNLOADS, ("egress_bytes",)),
            (LOG_EGRESS, ("egress_bytes",))),
           quota="data_egress_bytes", resource="data_egress", shown=Shown("data_egress_gb", GB, 4),
           heading="egress_bytes"),
    Metric("function_egress_bytes", "bytes", "Data egress of functions",
           ((FE, FUNCTION_EGRESS_FIELDS),), live=False),
    Metric("file_download_bytes", "bytes", "Data egress of file downloads",
           ((DOWNLOADS, ("egress_bytes",)),)),
    Metric("log_stream_egress_bytes", "bytes", "Data egress to log streams",
           ((LOG_EGRESS, ("egress_bytes",)),)),
    Metric("search_query_bytes", "bytes",
           "Search queries: text and vector search bytes, queries and index writes",
           ((FE, SEARCH_FIELDS),), quota="search_query_bytes", resource="search_queries",
           shown=Shown("search_query_gb", GB, 5), heading="search_bytes"),
    *(_storage(category) for category in STORAGE_CATEGORIES),
    Metric("storage_bytes", "bytes", "Storage: the latest snapshot's bytes (a gauge)",
           ((STORAGE, tuple(f for fs in STORAGE_CATEGORIES.values() for f in fs)),),
           live=False, rollup=False, custom=True, quota="storage_bytes"),
    Metric("file_downloads", "downloads", "File downloads", ((DOWNLOADS, ()),),
           quota="file_downloads", shown=Shown("file_downloads", 1, 1), heading="downloads"),
    Metric("tokens", "tokens", "LLM tokens of agent usage (total_tokens)",
           ((AGENT, ("total_tokens",)),), custom=True, quota="tokens", shown=Shown("tokens", 1, 9),
           heading="tokens"),
    Metric("agent_steps", "steps", "Agent usage records (LLM steps)", ((AGENT, ()),),
           live=False),
    Metric("storage_snapshots", "snapshots", "Storage snapshots received",
           ((STORAGE, ()),), live=False),
)
BY_NAME: dict[str, Metric] = {metric.name: metric for metric in METRICS}

QUOTA_METRICS: tuple[str, ...] = tuple(m.quota for m in METRICS if m.quota is not None)
BY_QUOTA: dict[str, Metric] = {m.quota: m for m in METRICS if m.quota is not None}
ROLLUP_COLUMNS: tuple[str, ...] = tuple(m.name for m in METRICS if m.rollup)
LIVE: tuple[Metric, ...] = tuple(m for m in METRICS if m.live)
SUMS: tuple[Metric, ...] = tuple(m for m in LIVE if not m.custom)
"""The live metrics that are plain sums of their sources."""

TOKEN_COLUMNS: tuple[str, ...] = AGENT_TOKENS
"""agent_usage's token counts: the columns of tokens_hourly and user_tokens_monthly."""
LIVE_TOKEN_KINDS: tuple[str, ...] = tuple(k for k in TOKEN_COLUMNS if k != "text_output_tokens")
"""The token counts the worker's windows keep per model: all but text_output_tokens,
which no live figure (quota, quota report) uses."""


def total(metric: Metric, sums: Mapping[str, Mapping[str, int]]) -> int:
    """A plain-sum metric from per-table sums: `sums[table]["rows"]` and a sum per
    field, as the load generator computes and reads them."""
    if metric.custom:
        raise ValueError(f"{metric.name} is not a plain sum of its sources")
    found = 0
    for topic, fields in metric.sources:
        table = sums[events.BY_TOPIC[topic].table]
        found += sum(table[name] for name in fields) if fields else table["rows"]
    return found


def billed(metric: Metric, usage: Mapping[str, int]) -> Fraction:
    """The metric in its shown unit, from billing usage (rollup columns and storage)."""
    per = metric.shown.per if metric.shown is not None else 1
    return Fraction(sum(usage.get(name, 0) for name in metric.columns), per)
