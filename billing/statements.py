"""Invoiced against current, per billing period: what the usage of a deployment, a team
or an end user charges now, what its invoices and adjustments hold, and the difference
(usage that landed after them). `meterstream usage --invoiced` prints it; the console
reads `statements`.

"Now" is priced as the next adjustment would be (billing/invoices.py `standing`), so the
difference is exactly what generating the period again would adjust, or, in a closed
period, report as unbilled. It reads the rollups (as `meterstream usage` does), where
invoices read the raw tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from billing import closing, invoices, subjects
from billing.database import Database
from billing.money import cents, text
from billing.periods import Period, iso, periods_between
from billing.pricebook import PriceBook, PricingError
from billing.queries import Subject
from billing.registry import Owners


@dataclass
class Statement:
    period: Period
    closed_at: int | None = None
    current: Decimal = Decimal(0)
    """the charge on the period's usage now"""
    invoiced: Decimal = Decimal(0)
    """what its invoices and adjustments that are not failed hold"""
    invoiced_due: Decimal = Decimal(0)
    invoices: int = 0
    adjustments: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def uninvoiced(self) -> Decimal:
        """Usage on no invoice yet: adjusted by the next generation, or, once the period
        is closed, unbilled."""
        return self.current - self.invoiced

    def to_json(self) -> dict[str, Any]:
        return {"period": self.period.label,
                "state": "open" if self.closed_at is None else "closed",
                "closed_at": None if self.closed_at is None else iso(self.closed_at),
                "current": text(self.current), "invoiced": text(self.invoiced),
                "uninvoiced": text(self.uninvoiced), "invoiced_due": cents(self.invoiced_due),
                "invoices": self.invoices, "adjustments": self.adjustments}


def statements(db: Database, book: PriceBook, registry: Owners, who: Subject,
               start_ms: int, end_ms: int) -> list[Statement]:
    """One statement per billing period that [start, end) overlaps, in order."""
    return [_statement(db, book, registry, who, period)
            for period in periods_between(start_ms, end_ms)]


def _statement(db: Database, book: PriceBook, registry: Owners, who: Subject,
               period: Period) -> Statement:
    found = Statement(period, closing.closed_at(db, period))

    def mine(subject: str, deployment: str, user_id: str) -> bool:
        if who.kind == "end_user":
            return (subject, deployment, user_id) == ("end_user", who.deployments[0], who.user)
        return deployment in who.deployments

    used = {u.subject: u for u in subjects.used(db, period, who.deployments, from_events=False)
            if mine(u.subject.subject, u.subject.deployment, u.subject.user_id)}
    documents: dict[subjects.Subject, list[invoices.Invoice]] = {}
    for invoice in invoices.show(db, period):
        if mine(*invoice.key):
            documents.setdefault(subjects.Subject(*invoice.key), []).append(invoice)
    for subject in sorted(set(used) | set(documents)):
        measures: list[Any] = []
        if subject in used:
            try:
                _, measures = subjects.price(used[subject], period, book, registry)
            except PricingError as exc:
                found.problems.append(f"{period.label} {subject.describe()}: {exc}")
                continue
        state = invoices.standing(measures, documents.get(subject, []))
        found.current += state.current_amount
        found.invoiced += state.invoiced_amount
        found.invoiced_due += sum((i.amount_due for i in state.billed), Decimal(0))
        found.invoices += sum(1 for i in state.billed if i.kind == "invoice")
        found.adjustments += sum(1 for i in state.billed if i.kind == "adjustment")
    return found
