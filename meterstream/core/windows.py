"""Time windows by event time, in UTC: minute, hour, day and billing month.

A window is named by its granularity and its start in ms since the epoch. The
live state keeps each window only for a while after it ends (RETENTION_MS):
fine windows serve alerts and recent charts, ClickHouse keeps the history;
month windows stay for the billing period plus the late-event grace.
"""

from __future__ import annotations

from datetime import UTC, datetime

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000

GRANULARITIES: tuple[str, ...] = ("minute", "hour", "day", "month")

# How long after its end a window is kept in the live state. The runaway baseline
# looks 60 minutes back, so minute windows outlive that.
RETENTION_MS: dict[str, int] = {
    "minute": 2 * HOUR_MS,
    "hour": 2 * DAY_MS,
    "day": 32 * DAY_MS,
    "month": 0,  # plus the late-event grace, added by the caller
}


def window_start(granularity: str, timestamp_ms: int) -> int:
    if granularity == "minute":
        return timestamp_ms - timestamp_ms % MINUTE_MS
    if granularity == "hour":
        return timestamp_ms - timestamp_ms % HOUR_MS
    if granularity == "day":
        return timestamp_ms - timestamp_ms % DAY_MS
    if granularity == "month":
        moment = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
        return int(datetime(moment.year, moment.month, 1, tzinfo=UTC).timestamp() * 1000)
    raise ValueError(f"unknown granularity {granularity!r}")


def window_end(granularity: str, start_ms: int) -> int:
    if granularity == "minute":
        return start_ms + MINUTE_MS
    if granularity == "hour":
        return start_ms + HOUR_MS
    if granularity == "day":
        return start_ms + DAY_MS
    if granularity == "month":
        moment = datetime.fromtimestamp(start_ms / 1000, UTC)
        year, month = divmod(moment.year * 12 + moment.month, 12)  # the next month
        return int(datetime(year, month + 1, 1, tzinfo=UTC).timestamp() * 1000)
    raise ValueError(f"unknown granularity {granularity!r}")


def expires_at(granularity: str, start_ms: int, grace_ms: int) -> int:
    """When the live state may forget the window (ms)."""
    return window_end(granularity, start_ms) + RETENTION_MS[granularity] + grace_ms * (
        granularity == "month")


def label(start_ms: int) -> str:
    """A period's start as the alerts and the quota API show it: YYYY-MM-DD (UTC)."""
    return datetime.fromtimestamp(start_ms / 1000, UTC).strftime("%Y-%m-%d")


def split_interval(granularity: str, start_ms: int, end_ms: int) -> list[tuple[int, int]]:
    """[start, end) cut at the window boundaries: (window start, ms of overlap) pairs."""
    pieces = []
    at = start_ms
    while at < end_ms:
        window = window_start(granularity, at)
        stop = min(window_end(granularity, window), end_ms)
        pieces.append((window, stop - at))
        at = stop
    return pieces
