"""Monthly invoices: one per deployment with usage in the period (Convex resources above
the plan's included amounts) and one per end user with tokens, even at zero.

Ids are derived from (period, subject, attempt), so generating a period again
writes nothing new for what is invoiced already; a `failed` invoice is kept and
the subject gets its next attempt. Statuses: pending, paid, failed.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from billing import charges, rollups, storage
from billing.charges import Line
from billing.database import Database, date, quote
from billing.metrics import INVOICES, PROBLEMS
from billing.money import cents, due, text
from billing.periods import Period, iso
from billing.pricebook import PriceBook, PricingError
from billing.registry import Owners, owner_of
from meterstream.core.progress import bar

log = logging.getLogger("meterstream.billing")

STATUSES = ("pending", "paid", "failed")
INSERT_BATCH = 1000
LINE_FIELDS = ("item", "description", "unit", "usage", "included", "quantity", "unit_price",
               "amount")
_ROW_FIELDS = ("id", "period", "subject", "deployment", "user_id", "attempt", "team",
               "project", "plan", "region", "currency", "amount", "amount_due", "status",
               "generated_at", "status_changed_at", "version")


class InvoiceError(ValueError):
    """A request about invoices that cannot be done (unknown id, bad status)."""


def invoice_id(period: Period, subject: str, deployment: str, user_id: str,
               attempt: int) -> str:
    digest = hashlib.sha256(f"{subject}\0{deployment}\0{user_id}".encode()).hexdigest()[:16]
    return f"inv-{period.compact}-{digest}-{attempt}"


@dataclass(frozen=True)
class Invoice:
    id: str
    period: Period
    subject: str
    deployment: str
    user_id: str
    attempt: int
    team: str
    project: str
    plan: str
    region: str
    currency: str
    amount: Decimal
    amount_due: Decimal
    status: str
    lines: tuple[Line, ...]
    generated_at: int
    status_changed_at: int
    version: int

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.subject, self.deployment, self.user_id)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "period": self.period.label, "subject": self.subject,
                "deployment": self.deployment, "user_id": self.user_id,
                "attempt": self.attempt, "team": self.team, "project": self.project,
                "plan": self.plan, "region": self.region, "currency": self.currency,
                "amount": text(self.amount), "amount_due": cents(self.amount_due),
                "status": self.status, "generated_at": iso(self.generated_at),
                "status_changed_at": iso(self.status_changed_at),
                "lines": [line.to_json() for line in self.lines]}

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {name: getattr(self, name) for name in _ROW_FIELDS}
        row["period"] = self.period.label
        for name in ("generated_at", "status_changed_at"):
            row[name] = getattr(self, name) / 1000
        for name in LINE_FIELDS:
            row[f"lines.{name}"] = [getattr(line, name) for line in self.lines]
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Invoice:
        lines = tuple(
            Line(*(values[:3]), *(Decimal(str(v)) for v in values[3:]))
            for values in zip(*(row[f"lines.{name}"] for name in LINE_FIELDS), strict=True))
        return cls(id=row["id"], period=Period.parse(row["period_label"]), subject=row["subject"],
                   deployment=row["deployment"], user_id=row["user_id"],
                   attempt=int(row["attempt"]), team=row["team"], project=row["project"],
                   plan=row["plan"], region=row["region"], currency=row["currency"],
                   amount=Decimal(str(row["amount"])),
                   amount_due=Decimal(str(row["amount_due"])), status=row["status"],
                   lines=lines, generated_at=int(row["generated_ms"]),
                   status_changed_at=int(row["status_changed_ms"]),
                   version=int(row["version"]))


_SELECT = (
    "SELECT id, toString(period) AS period_label, subject, deployment, user_id, attempt, team, "
    "project, plan, region, currency, amount, amount_due, status, "
    + ", ".join(f"lines.{name}" for name in LINE_FIELDS)
    + ", toUnixTimestamp64Milli(generated_at) AS generated_ms, "
    "toUnixTimestamp64Milli(status_changed_at) AS status_changed_ms, version "
    "FROM invoices FINAL")


def show(db: Database, period: Period, status: str | None = None,
         deployment: str | None = None) -> list[Invoice]:
    """The period's invoices, by subject, deployment, end user and attempt."""
    where = f"period = {date(period.start_ms)}"
    if status is not None:
        where += f" AND status = {quote(status)}"
    if deployment is not None:
        where += f" AND deployment = {quote(deployment)}"
    rows = db.rows(f"{_SELECT} WHERE {where} "
                   f"ORDER BY subject, deployment, user_id, attempt")
    return [Invoice.from_row(row) for row in rows]


def mark(db: Database, invoice: str, status: str, now_ms: int | None = None) -> Invoice:
    """Sets an invoice's status; raises InvoiceError for an unknown id or status."""
    if status not in STATUSES:
        raise InvoiceError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    parts = invoice.split("-")
    try:
        period = Period.parse(f"{parts[1][:4]}-{parts[1][4:]}")
    except (IndexError, ValueError):
        raise InvoiceError(f"no invoice {invoice!r} (ids look like "
                           f"inv-YYYYMM-<subject>-<attempt>)") from None
    rows = db.rows(f"{_SELECT} WHERE period = {date(period.start_ms)} AND id = {quote(invoice)}")
    if not rows:
        raise InvoiceError(f"no invoice {invoice!r}")
    current = Invoice.from_row(rows[0])
    now = _now_ms(now_ms)
    changed = replace(current, status=status, status_changed_at=now,
                      version=_version(current.version))
    db.insert_json("invoices", [changed.to_row()])
    log.info("invoice status set", extra={"invoice": invoice, "status": status,
                                          "was": current.status})
    return changed


@dataclass
class Run:
    """What one generation of a period did."""

    period: Period
    created: list[Invoice] = field(default_factory=list)
    already: int = 0
    """subjects that had an invoice that is not failed: left as they were"""
    problems: list[str] = field(default_factory=list)

    @property
    def regenerated(self) -> list[Invoice]:
        return [invoice for invoice in self.created if invoice.attempt > 1]

    def summary(self) -> dict[str, Any]:
        return {"period": self.period.label, "created": len(self.created),
                "regenerated": len(self.regenerated), "already_invoiced": self.already,
                "problems": self.problems,
                "amount_due": cents(sum((i.amount_due for i in self.created), Decimal(0)))}


@dataclass(frozen=True)
class _Subject:
    subject: str
    deployment: str
    user_id: str


def generate(db: Database, period: Period, book: PriceBook, registry: Owners,
             now_ms: int | None = None, progress: bool | None = None) -> Run:
    """Invoices every subject of the period that has none yet (or only failed ones)."""
    now = _now_ms(now_ms)
    run = Run(period)
    attempts: dict[tuple[str, str, str], list[Invoice]] = defaultdict(list)
    for invoice in show(db, period):
        attempts[invoice.key].append(invoice)

    # From the raw tables, not the rollups: a materialized view's insert is not atomic with
    # its base table's, so a sink killed between the two leaves a row stored (and skipped
    # when read again) that a rollup never got. A closed month is read once per run.
    usage, regions = rollups.totals(db, period.start_ms, period.end_ms, from_events=True)
    stored = storage.totals(db, period.start_ms, period.end_ms)
    for deployment, byte_ms in stored.items():
        usage.setdefault(deployment, {}).update(byte_ms)
    tokens = rollups.user_tokens(db, period.start_ms, period.end_ms)
    subjects = ([_Subject("deployment", d, "") for d in sorted(usage)]
                + [_Subject("end_user", d, u) for d, u in sorted(tokens)])

    pending: list[Invoice] = []
    with bar(len(subjects), f"invoices {period.compact}", unit="subject",
             force=progress) as shown:
        for subject in subjects:
            shown.update(1)
            earlier = attempts[(subject.subject, subject.deployment, subject.user_id)]
            if any(invoice.status != "failed" for invoice in earlier):
                run.already += 1
                continue
            attempt = max((invoice.attempt for invoice in earlier), default=0) + 1
            try:
                pending.append(_invoice(subject, attempt, period, book, registry,
                                        usage.get(subject.deployment, {}),
                                        regions.get(subject.deployment, ""),
                                        tokens.get((subject.deployment, subject.user_id), {}),
                                        now))
            except PricingError as exc:
                who = subject.deployment + (f" user {subject.user_id!r}"
                                            if subject.subject == "end_user" else "")
                run.problems.append(f"{subject.subject} {who}: {exc}")
                PROBLEMS.inc()
    for start in range(0, len(pending), INSERT_BATCH):
        db.insert_json("invoices", [i.to_row() for i in pending[start:start + INSERT_BATCH]])
    run.created = pending
    for invoice in pending:
        INVOICES.labels(invoice.subject).inc()
    log.info("invoices generated", extra={
        "period": period.label, "invoices_created": len(run.created),
        "already_invoiced": run.already, "problems": run.problems})
    return run


def _invoice(subject: _Subject, attempt: int, period: Period, book: PriceBook,
             registry: Owners, usage: dict[str, int], region: str,
             tokens: rollups.TokenUsage, now: int) -> Invoice:
    owner = owner_of(registry, subject.deployment)
    if subject.subject == "deployment":
        plan = book.plan(owner.plan)
        plan_name = plan.name
        lines = charges.resource_lines(usage, plan, book.multiplier(region), period)
    else:
        # Tokens are priced per model, whatever the plan; the plan is shown for reference.
        plan_name = (owner.plan or book.default_plan).lower()
        lines = charges.token_lines(tokens, book)
    total = charges.amount(lines)
    return Invoice(
        id=invoice_id(period, subject.subject, subject.deployment, subject.user_id, attempt),
        period=period, subject=subject.subject, deployment=subject.deployment,
        user_id=subject.user_id, attempt=attempt, team=owner.team, project=owner.project,
        plan=plan_name, region=region, currency=book.currency, amount=total,
        amount_due=due(total), status="pending", lines=tuple(lines), generated_at=now,
        status_changed_at=now, version=_version(0))


def _now_ms(now_ms: int | None) -> int:
    return int(time.time() * 1000) if now_ms is None else now_ms


def _version(current: int) -> int:
    """Higher than the current version, and growing with time (microseconds)."""
    return max(time.time_ns() // 1000, current + 1)
