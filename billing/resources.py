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
from meterstream.core.usage import GB, MB_MS_PER_GB_HOUR

BYTE_MS_PER_GB_HOUR = GB * 3_600_000

Usage = dict[str, int]
"""Integer counters: the rollups' columns (billing/rollups.py COUNTERS) and the storage
byte-milliseconds per category (`<category>_storage_byte_ms`)."""


@dataclass(frozen=True)
class Resource:
    key: str
    description: str
    unit: str
    quantity: Callable[[Usage, Period], Fraction]


def _gb(name: str) -> Callable[[Usage, Period], Fraction]:
    return lambda usage, _: Fraction(usage.get(name, 0), GB)


def _gb_months(category: str) -> Callable[[Usage, Period], Fraction]:
    return lambda usage, period: Fraction(usage.get(f"{category}_storage_byte_ms", 0),
                                          BYTE_MS_PER_GB_HOUR * period.hours)


RESOURCES: tuple[Resource, ...] = (
    Resource("function_calls", "Function calls (incl. file downloads)", "calls",
             lambda usage, _: Fraction(usage.get("function_calls", 0))),
    Resource("action_compute", "Action compute", "GB-hours",
             lambda usage, _: Fraction(usage.get("action_compute_mb_ms", 0), MB_MS_PER_GB_HOUR)),
    Resource("database_storage", "Database storage (documents + indexes)", "GB-months",
             _gb_months("database")),
    Resource("database_io", "Database I/O", "GB",
             lambda usage, _: Fraction(usage.get("database_io_read_bytes", 0)
                                       + usage.get("database_io_write_bytes", 0), GB)),
    Resource("file_storage", "File storage (files + backups)", "GB-months",
             _gb_months("file")),
    Resource("data_egress", "Data egress", "GB", _gb("data_egress_bytes")),
    Resource("search_storage", "Search storage (text + vector)", "GB-months",
             _gb_months("search")),
    Resource("search_queries", "Search queries", "query-GB", _gb("search_query_bytes")),
)
RESOURCE_KEYS = tuple(resource.key for resource in RESOURCES)

TokenCounts = dict[str, int]
"""Sums of agent_usage's token columns (input_tokens, non_cached_input_tokens, ...)."""

# Token kinds as they are billed: each token once, at its own price. Input tokens
# include cache reads and writes, so the non-cached part is billed at the input
# price; output tokens include reasoning tokens, so the rest is billed at the
# output price.
TOKEN_KINDS: tuple[tuple[str, str, Callable[[TokenCounts], int]], ...] = (
    ("input", "input tokens (not cached)", lambda t: t.get("non_cached_input_tokens", 0)),
    ("cached_input", "cached input tokens", lambda t: t.get("cached_input_tokens", 0)),
    ("cache_write", "cache-write input tokens", lambda t: t.get("cache_write_input_tokens", 0)),
    ("output", "output tokens (not reasoning)",
     lambda t: max(t.get("output_tokens", 0) - t.get("reasoning_tokens", 0), 0)),
    ("reasoning", "reasoning tokens", lambda t: t.get("reasoning_tokens", 0)),
)
TOKEN_COLUMNS: tuple[str, ...] = (
    "input_tokens", "non_cached_input_tokens", "cached_input_tokens",
    "cache_write_input_tokens", "output_tokens", "text_output_tokens", "reasoning_tokens",
    "total_tokens",
)
TOKENS_PER_PRICE = 1_000_000
