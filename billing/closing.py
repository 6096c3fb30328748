"""Closed billing periods, and the late usage a closed period reports instead of billing.

Closing a period (`meterstream invoices close`) stops adjustments for it: generating it
again writes, per subject whose usage differs from its invoices, the lines an adjustment
would have had into `unbilled_usage` (the whole difference each time; the newest row per
subject is the report). Only a period that has ended can be closed, and closing it again
keeps its first closing time.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from billing import charges
from billing.charges import LINE_FIELDS, Line
from billing.database import Database, date
from billing.money import text
from billing.periods import Period, iso

log = logging.getLogger("meterstream.billing")


class ClosingError(ValueError):
    """A period that cannot be closed (it has not ended)."""


@dataclass(frozen=True)
class Closed:
    period: Period
    closed_at: int
    already: bool
    """closed before this request: the first closing time is kept"""

    def to_json(self) -> dict[str, Any]:
        return {"period": self.period.label, "closed_at": iso(self.closed_at),
                "already_closed": self.already}


def closed_at(db: Database, period: Period) -> int | None:
    """When the period was closed (ms), or None while it is open."""
    rows = db.rows(f"SELECT toUnixTimestamp64Milli(closed_at) AS closed_ms "
                   f"FROM closed_periods FINAL WHERE period = {date(period.start_ms)}")
    return int(rows[0]["closed_ms"]) if rows else None


def close(db: Database, period: Period, now_ms: int | None = None) -> Closed:
    """Closes an ended period; raises ClosingError for one that has not ended."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if period.end_ms > now:
        raise ClosingError(f"period {period.label} has not ended (it ends at "
                           f"{iso(period.end_ms)}); only an ended period can be closed")
    earlier = closed_at(db, period)
    if earlier is not None:
        return Closed(period, earlier, already=True)
    db.insert_json("closed_periods", [{"period": period.label, "closed_at": now / 1000,
                                       "version": time.time_ns() // 1000}])
    log.info("billing period closed", extra={"period": period.label})
    return Closed(period, now, already=False)


@dataclass(frozen=True)
class Unbilled:
    """One subject's late usage in a closed period: reported, not billed."""

    period: Period
    subject: str
    deployment: str
    user_id: str
    currency: str
    amount: Decimal
    lines: tuple[Line, ...]
    found_at: int

    def to_json(self) -> dict[str, Any]:
        return {"period": self.period.label, "subject": self.subject,
                "deployment": self.deployment, "user_id": self.user_id,
                "currency": self.currency, "amount": text(self.amount),
                "found_at": iso(self.found_at),
                "lines": [line.to_json() for line in self.lines]}

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"period": self.period.label, "subject": self.subject,
                               "deployment": self.deployment, "user_id": self.user_id,
                               "currency": self.currency, "amount": self.amount,
                               "found_at": self.found_at / 1000,
                               "version": time.time_ns() // 1000}
        row.update(charges.line_columns(self.lines))
        return row


def record(db: Database, found: list[Unbilled]) -> None:
    if found:
        db.insert_json("unbilled_usage", [item.to_row() for item in found])


def unbilled(db: Database, period: Period) -> list[Unbilled]:
    """The period's reports of late usage, by subject, deployment and end user."""
    rows = db.rows(
        "SELECT subject, deployment, user_id, currency, amount, "
        + ", ".join(f"lines.{name}" for name in LINE_FIELDS)
        + ", toUnixTimestamp64Milli(found_at) AS found_ms FROM unbilled_usage FINAL "
        f"WHERE period = {date(period.start_ms)} ORDER BY subject, deployment, user_id")
    return [Unbilled(period, row["subject"], row["deployment"], row["user_id"],
                     row["currency"], Decimal(str(row["amount"])), charges.lines_of(row),
                     int(row["found_ms"])) for row in rows]


def summary(found: list[Unbilled]) -> dict[str, Any]:
    """What a closed period did not bill: how many subjects, how much."""
    return {"subjects": len(found),
            "amount": text(sum((item.amount for item in found), Decimal(0)))}
