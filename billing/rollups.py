"""Usage from the rollups: totals over any time range, and series at a resolution.

A range is read from the coarsest table that covers each part of it exactly:
whole days from usage_daily, whole hours from usage_hourly, and what is left at
either end (less than an hour) from the usage_events view over the raw tables.
Month to date for one deployment is then at most 31 + 24 rollup rows and the
events of the current part-hour, however many millions of rows the month holds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from billing.database import Database, date, datetime64, datetime_s, in_list, quote
from billing.periods import ceil, floor
from billing.resources import TokenCounts, Usage
from meterstream.core.catalogue import ROLLUP_COLUMNS, TOKEN_COLUMNS

COUNTERS: tuple[str, ...] = ROLLUP_COLUMNS
"""The counters of usage_events, usage_hourly and usage_daily (meterstream/core/catalogue.py;
tests/unit/test_catalogue.py checks them against the migrations)."""

ModelKey = tuple[str, str]
"""(provider, model)"""
TokenUsage = dict[ModelKey, TokenCounts]


def pieces(start_ms: int, end_ms: int) -> list[tuple[str, int, int]]:
    """[start, end) cut into (granularity, from, to) parts: 'day' and 'hour' parts are whole
    windows of that rollup, 'event' parts are read from the raw events."""
    if end_ms <= start_ms:
        return []
    h0, h1 = ceil("hour", start_ms), floor("hour", end_ms)
    if h0 >= h1:
        return [("event", start_ms, end_ms)]
    d0, d1 = ceil("day", h0), floor("day", h1)
    parts = [("event", start_ms, h0)]
    if d0 >= d1:
        parts.append(("hour", h0, h1))
    else:
        parts += [("hour", h0, d0), ("day", d0, d1), ("hour", d1, h1)]
    parts.append(("event", h1, end_ms))
    return [part for part in parts if part[1] < part[2]]


def _where(granularity: str, start_ms: int, end_ms: int,
           deployments: Sequence[str] | None) -> str:
    if granularity == "day":
        condition = f"day >= {date(start_ms)} AND day < {date(end_ms)}"
    elif granularity == "hour":
        condition = f"hour >= {datetime_s(start_ms)} AND hour < {datetime_s(end_ms)}"
    else:
        condition = f"timestamp >= {datetime64(start_ms)} AND timestamp < {datetime64(end_ms)}"
    if deployments is not None:
        condition += f" AND deployment IN {in_list(deployments)}"
    return condition


_TABLE = {"day": "usage_daily", "hour": "usage_hourly", "event": "usage_events",
          "minute": "usage_events", "month": "usage_daily"}
_BUCKET = {
    "minute": "toUnixTimestamp(toStartOfMinute(timestamp)) * 1000",
    "hour": "toUnixTimestamp(hour) * 1000",
    "day": "toUnixTimestamp(toDateTime(day, 'UTC')) * 1000",
    "month": "toUnixTimestamp(toDateTime(toStartOfMonth(day), 'UTC')) * 1000",
}
_SUMS = ", ".join(f"sum({name}) AS {name}" for name in COUNTERS)


def _usage(row: dict) -> Usage:
    return {name: int(row[name]) for name in COUNTERS}


def totals(db: Database, start_ms: int, end_ms: int,
           deployments: Sequence[str] | None = None,
           from_events: bool = False) -> tuple[dict[str, Usage], dict[str, str]]:
    """Counters per deployment over [start, end), and each deployment's region.
    `from_events` reads the raw tables only (see `invoices.generate` for why)."""
    if deployments is not None and not deployments:
        return {}, {}
    found: dict[str, Usage] = {}
    regions: dict[str, str] = {}
    parts = [("event", start_ms, end_ms)] if from_events else pieces(start_ms, end_ms)
    # One query per part: cheaper to plan than their UNION ALL (chdb, 26.9).
    for granularity, a, b in parts:
        for row in db.rows(f"SELECT deployment, max(region) AS region, {_SUMS} "
                           f"FROM {_TABLE[granularity]} "
                           f"WHERE {_where(granularity, a, b, deployments)} GROUP BY deployment"):
            usage = found.setdefault(row["deployment"], dict.fromkeys(COUNTERS, 0))
            for name, value in _usage(row).items():
                usage[name] += value
            regions[row["deployment"]] = max(regions.get(row["deployment"], ""), row["region"])
    return found, regions


def series(db: Database, resolution: str, start_ms: int, end_ms: int,
           deployments: Sequence[str]) -> tuple[dict[str, dict[int, Usage]], dict[str, str]]:
    """Counters per deployment per window of `resolution` in [start, end), both aligned
    to the resolution (windows without usage are absent), and each deployment's region."""
    if not deployments:
        return {}, {}
    table = _TABLE[resolution]
    granularity = {"minute": "event", "month": "day"}.get(resolution, resolution)
    rows = db.rows(f"SELECT deployment, {_BUCKET[resolution]} AS bucket, "
                   f"max(region) AS region, {_SUMS} FROM {table} "
                   f"WHERE {_where(granularity, start_ms, end_ms, deployments)} "
                   f"GROUP BY deployment, bucket")
    found: dict[str, dict[int, Usage]] = defaultdict(dict)
    regions: dict[str, str] = {}
    for row in rows:
        found[row["deployment"]][int(row["bucket"])] = _usage(row)
        regions[row["deployment"]] = max(regions.get(row["deployment"], ""), row["region"])
    return found, regions


# Tokens.

_TOKEN_SUMS = ", ".join(f"sum({name}) AS {name}" for name in TOKEN_COLUMNS)


def _tokens(row: dict) -> TokenCounts:
    return {name: int(row[name]) for name in TOKEN_COLUMNS}


def _token_where(granularity: str, start_ms: int, end_ms: int,
                 deployments: Sequence[str] | None, user: str | None) -> str:
    where = _where(granularity, start_ms, end_ms, deployments)
    if user is not None:
        where += f" AND user_id = {quote(user)}"
    return where


def token_totals(db: Database, start_ms: int, end_ms: int,
                 deployments: Sequence[str] | None = None,
                 user: str | None = None) -> dict[str, TokenUsage]:
    """Tokens per deployment and (provider, model) over [start, end); of one end user
    when `user` is given (then from agent_usage, whose rows are sorted by user)."""
    if deployments is not None and not deployments:
        return {}
    parts = []
    for granularity, a, b in pieces(start_ms, end_ms):
        if user is None and granularity != "event":
            parts.append(f"SELECT deployment, provider, model, {_TOKEN_SUMS} FROM tokens_hourly "
                         f"WHERE {_where('hour', a, b, deployments)} "
                         f"GROUP BY deployment, provider, model")
        else:
            parts.append(f"SELECT deployment, provider, model, {_TOKEN_SUMS} FROM agent_usage "
                         f"WHERE {_token_where('event', a, b, deployments, user)} "
                         f"GROUP BY deployment, provider, model")
    if not parts:
        return {}
    rows = db.rows(f"SELECT deployment, provider, model, {_TOKEN_SUMS} FROM ("
                   + " UNION ALL ".join(parts) + ") GROUP BY deployment, provider, model")
    found: dict[str, TokenUsage] = defaultdict(dict)
    for row in rows:
        found[row["deployment"]][(row["provider"], row["model"])] = _tokens(row)
    return found


def token_series(db: Database, resolution: str, start_ms: int, end_ms: int,
                 deployments: Sequence[str], user: str | None = None
                 ) -> dict[str, dict[int, TokenUsage]]:
    """Tokens per deployment, window and (provider, model); of one end user if given."""
    if not deployments:
        return {}
    if user is None and resolution != "minute":
        bucket = {"hour": "toUnixTimestamp(hour) * 1000",
                  "day": "toUnixTimestamp(toStartOfDay(hour)) * 1000",
                  "month": "toUnixTimestamp(toDateTime(toStartOfMonth(hour), 'UTC')) * 1000"
                  }[resolution]
        source = f"tokens_hourly WHERE {_where('hour', start_ms, end_ms, deployments)}"
    else:
        bucket = {"minute": "toUnixTimestamp(toStartOfMinute(timestamp)) * 1000",
                  "hour": "toUnixTimestamp(toStartOfHour(timestamp)) * 1000",
                  "day": "toUnixTimestamp(toStartOfDay(timestamp)) * 1000",
                  "month": "toUnixTimestamp(toDateTime(toStartOfMonth(timestamp), 'UTC')) * 1000"
                  }[resolution]
        source = (f"agent_usage WHERE "
                  f"{_token_where('event', start_ms, end_ms, deployments, user)}")
    rows = db.rows(f"SELECT deployment, {bucket} AS bucket, provider, model, {_TOKEN_SUMS} "
                   f"FROM {source} GROUP BY deployment, bucket, provider, model")
    found: dict[str, dict[int, TokenUsage]] = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        found[row["deployment"]][int(row["bucket"])][(row["provider"], row["model"])] = \
            _tokens(row)
    return found


def user_tokens(db: Database, month_start_ms: int, month_end_ms: int | None = None
                ) -> dict[tuple[str, str], TokenUsage]:
    """Tokens per (deployment, end user) and (provider, model) in one billing month; with
    `month_end_ms`, from the raw agent_usage rows instead of the monthly rollup."""
    source = (f"FROM user_tokens_monthly WHERE month = {date(month_start_ms)}"
              if month_end_ms is None else
              f"FROM agent_usage WHERE {_where('event', month_start_ms, month_end_ms, None)}")
    rows = db.rows(f"SELECT deployment, user_id, provider, model, {_TOKEN_SUMS} "
                   f"{source} GROUP BY deployment, user_id, provider, model")
    found: dict[tuple[str, str], TokenUsage] = defaultdict(dict)
    for row in rows:
        found[(row["deployment"], row["user_id"])][(row["provider"], row["model"])] = \
            _tokens(row)
    return found
