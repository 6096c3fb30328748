"""Billing periods (UTC calendar months) and time ranges cut at resolution boundaries."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from meterstream.core.windows import DAY_MS, HOUR_MS, MINUTE_MS, window_end, window_start

RESOLUTIONS: tuple[str, ...] = ("minute", "hour", "day", "month")
_PERIOD = re.compile(r"^(\d{4})-(\d{2})(?:-01)?$")


@dataclass(frozen=True, order=True)
class Period:
    """One billing period: a UTC calendar month, labelled YYYY-MM-01."""

    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Period:
        """From YYYY-MM (or YYYY-MM-01); raises ValueError naming the expected form."""
        match = _PERIOD.match(text.strip())
        if not match or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 1970:
            raise ValueError(f"a billing period is YYYY-MM, got {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def containing(cls, ms: int) -> Period:
        moment = datetime.fromtimestamp(ms / 1000, UTC)
        return cls(moment.year, moment.month)

    @property
    def start_ms(self) -> int:
        return int(datetime(self.year, self.month, 1, tzinfo=UTC).timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        return window_end("month", self.start_ms)

    @property
    def hours(self) -> int:
        """Hours in the month: GB-hours / hours = GB-months."""
        return (self.end_ms - self.start_ms) // HOUR_MS

    @property
    def label(self) -> str:
        return f"{self.year:04d}-{self.month:02d}-01"

    @property
    def compact(self) -> str:
        return f"{self.year:04d}{self.month:02d}"

    def previous(self) -> Period:
        return Period.containing(self.start_ms - 1)

    def next(self) -> Period:
        return Period.containing(self.end_ms)

    def __str__(self) -> str:
        return self.label


def floor(resolution: str, ms: int) -> int:
    return window_start(resolution, ms)


def ceil(resolution: str, ms: int) -> int:
    start = window_start(resolution, ms)
    return start if start == ms else window_end(resolution, start)


def buckets(resolution: str, start_ms: int, end_ms: int) -> list[int]:
    """The starts of the windows of `resolution` that cover [start, end)."""
    starts = []
    at = floor(resolution, start_ms)
    while at < end_ms:
        starts.append(at)
        at = window_end(resolution, at)
    return starts


def periods_between(start_ms: int, end_ms: int) -> list[Period]:
    """The billing periods that [start, end) overlaps, in order."""
    if end_ms <= start_ms:
        return []
    found = [Period.containing(start_ms)]
    while found[-1].end_ms < end_ms:
        found.append(found[-1].next())
    return found


def iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if ms % 1000:
        text += f".{ms % 1000:03d}"
    return text + "Z"


def parse_time(text: str, now_ms: int) -> int:
    """A UTC moment: 'now', YYYY-MM, YYYY-MM-DD, or an ISO date-time (UTC unless it says)."""
    value = text.strip()
    if value == "now":
        return now_ms
    if re.fullmatch(r"\d{4}-\d{2}", value):
        return Period.parse(value).start_ms
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"a time is 'now', YYYY-MM, YYYY-MM-DD or an ISO date-time, "
                         f"got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


__all__ = ["DAY_MS", "HOUR_MS", "MINUTE_MS", "RESOLUTIONS", "Period", "buckets", "ceil",
           "floor", "iso", "parse_time", "periods_between"]
