"""The Convex resources a deployment is billed for, and their quantities from usage.

Quantities are exact fractions in the resource's unit (GB = 2^30 bytes, as
Convex's usage limits count). Storage is billed in GB-months: the GB-hours
between consecutive snapshots over the month's hours, so storing 60 GB for the
whole month is 60 GB-months whatever the month's length.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from billing.periods import Period
from meterstream.core.catalogue import METRICS, Metric, billed

Usage = dict[str, int]
"""Integer counters: the rollups' columns (billing/rollups.py COUNTERS) and the storage
byte-milliseconds per category (`<category>_storage_byte_ms`)."""


@dataclass(frozen=True)
class Resource:
    key: str
    description: str
    unit: str
    monthly: bool = False
    """Billed per month (GB-months): the metric's GB-hours over the month's hours."""

    @property
    def metric(self) -> Metric:
        """The billing metric it bills (meterstream/core/catalogue.py `resource`)."""
        return next(metric for metric in METRICS if metric.resource == self.key)

    def quantity(self, usage: Usage, period: Period) -> Fraction:
        found = billed(self.metric, usage)
        return found / period.hours if self.monthly else found


# In the order of an invoice's lines.
RESOURCES: tuple[Resource, ...] = (
    Resource("function_calls", "Function calls (incl. file downloads)", "calls"),
    Resource("action_compute", "Action compute", "GB-hours"),
    Resource("database_storage", "Database storage (documents + indexes)", "GB-months",
             monthly=True),
    Resource("database_io", "Database I/O", "GB"),
    Resource("file_storage", "File storage (files + backups)", "GB-months", monthly=True),
    Resource("data_egress", "Data egress", "GB"),
    Resource("search_storage", "Search storage (text + vector)", "GB-months", monthly=True),
    Resource("search_queries", "Search queries", "query-GB"),
)
RESOURCE_KEYS = tuple(resource.key for resource in RESOURCES)

TokenCounts = dict[str, int]
"""Sums of agent_usage's token columns (meterstream/core/catalogue.py TOKEN_COLUMNS)."""

# Token kinds as they are billed (not the columns they are counted in, TOKEN_COLUMNS):
# each token once, at its own price. Input tokens include cache reads and writes, so
# the non-cached part is billed at the input price; output tokens include reasoning
# tokens, so the rest is billed at the output price.
BILLED_TOKEN_KINDS: tuple[tuple[str, str, Callable[[TokenCounts], int]], ...] = (
    ("input", "input tokens (not cached)", lambda t: t.get("non_cached_input_tokens", 0)),
    ("cached_input", "cached input tokens", lambda t: t.get("cached_input_tokens", 0)),
    ("cache_write", "cache-write input tokens", lambda t: t.get("cache_write_input_tokens", 0)),
    ("output", "output tokens (not reasoning)",
     lambda t: max(t.get("output_tokens", 0) - t.get("reasoning_tokens", 0), 0)),
    ("reasoning", "reasoning tokens", lambda t: t.get("reasoning_tokens", 0)),
)
TOKENS_PER_PRICE = 1_000_000
