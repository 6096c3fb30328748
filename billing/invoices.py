"""Monthly invoices: one per deployment with usage in the period (Convex resources above
the plan's included amounts) and one per end user with tokens, even at zero; and
adjustments for the usage that lands after them.

Ids are derived from (period, subject, attempt), so generating a period again
writes nothing new for what is invoiced already; a `failed` invoice is kept and
the subject gets its next attempt. Statuses: pending, paid, failed.

Generating a period again also compares each subject's usage now with what its
invoices that are not failed hold, and issues an adjustment (kind `adjustment`,
id `adj-...-<n>`, billing/adjustments.py) for the difference; with no difference it
writes nothing. A closed period (billing/closing.py) reports the difference instead.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from billing import adjustments, charges, closing, subjects
from billing.charges import LINE_FIELDS, Line
from billing.database import Database, date, quote
from billing.metrics import ADJUSTMENTS, INVOICES, PROBLEMS, UNBILLED
from billing.money import cents, due, text
from billing.periods import Period, iso
from billing.pricebook import PriceBook, PricingError
from billing.registry import Owners, owner_of
from billing.subjects import Subject
from meterstream.core.progress import bar
from meterstream.core.tables import EVENT_SPECS

log = logging.getLogger("meterstream.billing")

STATUSES = ("pending", "paid", "failed")
INSERT_BATCH = 1000
KINDS = ("invoice", "adjustment")
_ROW_FIELDS = ("id", "period", "subject", "deployment", "user_id", "attempt", "kind", "adjusts",
               "team",
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
    kind: str = "invoice"
    """invoice, or adjustment: the usage that landed after the subject's invoices"""
    adjusts: str = ""
    """an adjustment's: the id of the invoice whose pricing it follows ('' if none)"""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.subject, self.deployment, self.user_id)

    @property
    def billed(self) -> bool:
        """Counts as invoiced: anything but failed (a failed invoice is billed again)."""
        return self.status != "failed"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "period": self.period.label, "subject": self.subject,
                "deployment": self.deployment, "user_id": self.user_id,
                "attempt": self.attempt, "kind": self.kind, "adjusts": self.adjusts,
                "team": self.team, "project": self.project,
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
        row.update(charges.line_columns(self.lines))
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Invoice:
        lines = charges.lines_of(row)
        return cls(id=row["id"], period=Period.parse(row["period_label"]), subject=row["subject"],
                   deployment=row["deployment"], user_id=row["user_id"],
                   attempt=int(row["attempt"]), team=row["team"], project=row["project"],
                   plan=row["plan"], region=row["region"], currency=row["currency"],
                   amount=Decimal(str(row["amount"])),
                   amount_due=Decimal(str(row["amount_due"])), status=row["status"],
                   lines=lines, generated_at=int(row["generated_ms"]),
                   status_changed_at=int(row["status_changed_ms"]),
                   version=int(row["version"]), kind=row["kind"], adjusts=row["adjusts"])


_SELECT = (
    "SELECT id, toString(period) AS period_label, subject, deployment, user_id, attempt, kind, "
    "adjusts, team, "
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
                   f"ORDER BY subject, deployment, user_id, kind = 'adjustment', attempt")
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
                           f"inv-YYYYMM-<subject>-<attempt> or adj-YYYYMM-<subject>-<n>)"
                           ) from None
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
    adjustments: list[Invoice] = field(default_factory=list)
    already: int = 0
    """subjects whose invoices hold all their usage: left as they were"""
    problems: list[str] = field(default_factory=list)
    closed_at: int | None = None
    unbilled: list[closing.Unbilled] = field(default_factory=list)
    """a closed period's subjects with late usage: reported, not billed"""

    @property
    def regenerated(self) -> list[Invoice]:
        return [invoice for invoice in self.created if invoice.attempt > 1]

    def summary(self) -> dict[str, Any]:
        issued = self.created + self.adjustments
        found: dict[str, Any] = {
            "period": self.period.label, "created": len(self.created),
            "regenerated": len(self.regenerated), "adjustments": len(self.adjustments),
            "already_invoiced": self.already, "problems": self.problems,
            "amount_due": cents(sum((i.amount_due for i in issued), Decimal(0)))}
        if self.closed_at is not None:
            found["closed_at"] = iso(self.closed_at)
            found["unbilled"] = closing.summary(self.unbilled)
        return found


@dataclass(frozen=True)
class Standing:
    """A subject's invoices in a period and what its usage charges now."""

    billed: tuple[Invoice, ...]
    """the invoices and adjustments that are not failed"""
    pricing: Invoice | None
    """the newest of those invoices (not adjustments): what an adjustment is priced as"""
    current: tuple[Line, ...]
    """the charge on the usage now, priced as `pricing` where it has the item"""
    late: tuple[Line, ...]
    """current less what `billed` holds, per item; empty when they agree"""

    @property
    def invoiced_amount(self) -> Decimal:
        return sum((invoice.amount for invoice in self.billed), Decimal(0))

    @property
    def current_amount(self) -> Decimal:
        return charges.amount(list(self.current))


def standing(measures: list[charges.Measure], documents: list[Invoice]) -> Standing:
    billed = tuple(document for document in documents if document.billed)
    originals = [document for document in billed if document.kind == "invoice"]
    pricing = max(originals, key=lambda invoice: invoice.attempt, default=None)
    priced = adjustments.reprice(measures, pricing.lines if pricing else ())
    current = tuple(charges.line(measure) for measure in priced)
    late = adjustments.difference(priced, [line for d in billed for line in d.lines])
    return Standing(billed, pricing, current, tuple(late))


SYNCED_TABLES: tuple[str, ...] = (*(spec.table for spec in EVENT_SPECS), "invoices",
                                   "closed_periods")
"""What an invoice run reads: on a cluster, brought up to date on this replica first."""


def sync_replicas(db: Database) -> None:
    """On a ClickHouse cluster (METERSTREAM_CLICKHOUSE_CLUSTER), waits until this replica
    holds every part of the tables an invoice run reads that the replication log knew of.

    An insert is acknowledged once its part is on the replica it went to: a sink writing
    through another replica may have rows this one has not fetched yet, and an invoice
    read here would bill less than was stored (the next run would adjust it, but the
    invoice itself would be short). Raises after the server's timeout when a part cannot
    be fetched (its only holder down): the run fails and is tried again."""
    for table in SYNCED_TABLES:
        db.command(f"SYSTEM SYNC REPLICA {table}")


def generate(db: Database, period: Period, book: PriceBook, registry: Owners,
             now_ms: int | None = None, progress: bool | None = None,
             replicated: bool = False) -> Run:
    """Invoices every subject of the period that has no invoice yet (or only failed
    ones), and adjusts every other whose usage grew since; in a closed period, reports
    the difference instead (closing.Unbilled). `replicated`: ClickHouse is a cluster,
    whose replica is synced first (`sync_replicas`)."""
    if replicated:
        sync_replicas(db)
    now = _now_ms(now_ms)
    run = Run(period)
    # Usage before invoices: a run that misses an invoice written meanwhile by another
    # read its usage no later than that one did, so if its row replaces the other's
    # (same id) it can only hold less usage, never more; the next run adjusts the rest.
    found = subjects.used(db, period)
    documents: dict[tuple[str, str, str], list[Invoice]] = defaultdict(list)
    for invoice in show(db, period):
        documents[invoice.key].append(invoice)
    run.closed_at = closing.closed_at(db, period)

    pending: list[Invoice] = []
    with bar(len(found), f"invoices {period.compact}", unit="subject",
             force=progress) as shown:
        for used in found:
            shown.update(1)
            subject = used.subject
            earlier = documents[(subject.subject, subject.deployment, subject.user_id)]
            try:
                plan, measures = subjects.price(used, period, book, registry)
            except PricingError as exc:
                run.problems.append(f"{subject.describe()}: {exc}")
                PROBLEMS.inc()
                continue
            state = standing(measures, earlier)
            if run.closed_at is None and not state.billed:
                attempt = max((i.attempt for i in earlier if i.kind == "invoice"),
                              default=0) + 1
                pending.append(_document(subject, "invoice", attempt, "", period, book,
                                         registry, plan, used.region, list(state.current),
                                         due(state.current_amount), now))
            elif not state.late:
                run.already += 1
            elif run.closed_at is not None:
                run.unbilled.append(closing.Unbilled(
                    period, subject.subject, subject.deployment, subject.user_id,
                    book.currency, charges.amount(list(state.late)), state.late, now))
            else:
                number = sum(1 for i in earlier if i.kind == "adjustment") + 1
                amount = charges.amount(list(state.late))
                owed = adjustments.amount_due(
                    amount, [(i.amount, i.amount_due) for i in state.billed])
                pricing = state.pricing
                pending.append(_document(
                    subject, "adjustment", number, pricing.id if pricing else "", period,
                    book, registry, pricing.plan if pricing else plan,
                    pricing.region if pricing else used.region, list(state.late), owed, now))
    for start in range(0, len(pending), INSERT_BATCH):
        db.insert_json("invoices", [i.to_row() for i in pending[start:start + INSERT_BATCH]])
    closing.record(db, run.unbilled)
    run.created = [invoice for invoice in pending if invoice.kind == "invoice"]
    run.adjustments = [invoice for invoice in pending if invoice.kind == "adjustment"]
    for invoice in run.created:
        INVOICES.labels(invoice.subject).inc()
    for invoice in run.adjustments:
        ADJUSTMENTS.labels(invoice.subject).inc()
    UNBILLED.inc(len(run.unbilled))
    log.info("invoices generated", extra={
        "period": period.label, "invoices_created": len(run.created),
        "adjustments_created": len(run.adjustments), "already_invoiced": run.already,
        "unbilled_subjects": len(run.unbilled), "problems": run.problems})
    return run


def _document(subject: Subject, kind: str, number: int, adjusts: str, period: Period,
              book: PriceBook, registry: Owners, plan: str, region: str, lines: list[Line],
              amount_due: Decimal, now: int) -> Invoice:
    owner = owner_of(registry, subject.deployment)
    make_id = invoice_id if kind == "invoice" else adjustments.adjustment_id
    total = charges.amount(lines)
    return Invoice(
        id=make_id(period, subject.subject, subject.deployment, subject.user_id, number),
        period=period, subject=subject.subject, deployment=subject.deployment,
        user_id=subject.user_id, attempt=number, team=owner.team, project=owner.project,
        plan=plan, region=region, currency=book.currency, amount=total,
        amount_due=amount_due, status="pending", lines=tuple(lines), generated_at=now,
        status_changed_at=now, version=_version(0), kind=kind, adjusts=adjusts)


def _now_ms(now_ms: int | None) -> int:
    return int(time.time() * 1000) if now_ms is None else now_ms


def _version(current: int) -> int:
    """Higher than the current version, and growing with time (microseconds)."""
    return max(time.time_ns() // 1000, current + 1)
