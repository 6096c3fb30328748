"""Every deployment's month-to-date usage, tokens and cost, as the overview ranks them,
computed once and shared by every overview page (pricing 10k deployments exactly takes
seconds; docs/console.md)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from billing import queries, rollups
from billing.database import Database
from billing.periods import Period
from billing.pricebook import PriceBook
from billing.registry import Owner
from billing.resources import Usage
from billing.rollups import TokenUsage
from meterstream.core.registry import Deployment

log = logging.getLogger("meterstream.console")


def owners_of(records: Sequence[Deployment]) -> dict[str, Owner]:
    """Billing's view of the registry: each deployment's team, project and plan."""
    return {d.name: Owner(d.team or "", d.project or "", d.plan) for d in records}


@dataclass(frozen=True)
class MonthToDate:
    """Every deployment's month-to-date usage, tokens and cost: what the overview ranks."""

    computed_ms: int
    key: tuple[int, int]
    costs: dict[str, Decimal]
    used: dict[str, Usage]
    tokens: dict[str, TokenUsage]
    problems: list[str]


def _key(records: Sequence[Deployment], now_ms: int) -> tuple[int, int]:
    """The month, and the plans in force: a change of either makes the costs stale."""
    return (Period.containing(now_ms).start_ms, hash(tuple((r.name, r.plan) for r in records)))


def month_to_date(db: Database, book: PriceBook, records: Sequence[Deployment],
                  now_ms: int) -> MonthToDate:
    start = Period.containing(now_ms).start_ms
    ranked, problems = queries.top(db, book, owners_of(records), len(records) + 1_000_000,
                                   start, now_ms)
    used, _ = rollups.totals(db, start, now_ms)
    return MonthToDate(now_ms, _key(records, now_ms),
                       {row["deployment"]: Decimal(row["cost"]) for row in ranked}, used,
                       rollups.token_totals(db, start, now_ms), problems)


class MonthToDateCache:
    """The last MonthToDate, shared by every overview page, filter and sort. Ranking 10k
    deployments costs each one's exact bill (a millisecond or two each: over ten seconds in
    all), which no click should wait for: after the first computation, a page gets the last
    one at once, and one older than `seconds`, of another month's key or of other plans is
    recomputed in a background thread (one at a time) for the pages after it. The page
    says when its figures were computed."""

    def __init__(self, seconds: float = 15.0) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._last: MonthToDate | None = None
        self._refresh: threading.Thread | None = None

    def get(self, db: Database, book: PriceBook, records: Sequence[Deployment],
            now_ms: int) -> MonthToDate:
        with self._lock:
            last = self._last
            if last is None or last.key[0] != _key(records, now_ms)[0]:
                last = self._last = month_to_date(db, book, records, now_ms)
                return last
            stale = (last.key != _key(records, now_ms)
                     or now_ms - last.computed_ms >= self.seconds * 1000)
            if stale and (self._refresh is None or not self._refresh.is_alive()):
                self._refresh = threading.Thread(
                    target=self._recompute, args=(db, book, list(records), now_ms),
                    name="console-month-to-date", daemon=True)
                self._refresh.start()
            return last

    def _recompute(self, db: Database, book: PriceBook, records: list[Deployment],
                   now_ms: int) -> None:
        try:
            found = month_to_date(db, book, records, now_ms)
        except Exception:  # the next page tries again; this one keeps the last figures
            log.exception("month-to-date refresh failed")
            return
        with self._lock:
            self._last = found

    def wait_refreshed(self, timeout: float | None = None) -> None:
        """Returns once no recomputation is under way (for tests and for a clean stop)."""
        refresh = self._refresh
        if refresh is not None:
            refresh.join(timeout)
