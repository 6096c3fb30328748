"""Invoices as JSON or CSV (one row per line item), for `meterstream invoices show`.

CSV cells are quoted as needed (the csv module's minimal quoting) and guarded against
formula injection: deployment, team, project and user names are chosen by tenants, and a
spreadsheet runs a cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return
as a formula (`=HYPERLINK(...)` exfiltrates, `=cmd|...` runs). Such a text cell gets a
leading `'`, which spreadsheets show as text. Numbers are written by meterstream
itself and stay as they are, negative ones included.
"""

from __future__ import annotations

import csv
import io
import json

from billing.invoices import Invoice
from billing.money import cents, text

CSV_COLUMNS = ("invoice_id", "period", "subject", "deployment", "user_id", "attempt", "kind",
               "adjusts", "team", "project", "plan", "region", "currency", "status",
               "invoice_amount", "amount_due", "item", "description", "unit", "usage",
               "included", "quantity", "unit_price", "amount")


def as_json(invoices: list[Invoice]) -> str:
    return json.dumps([invoice.to_json() for invoice in invoices], indent=2) + "\n"


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def cell(value: object) -> object:
    """A CSV cell a spreadsheet will not run: text starting like a formula gets a `'`."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


# Written by meterstream from decimals: "-1.5" is a number, not a formula.
_NUMBER_COLUMNS = frozenset({"attempt", "invoice_amount", "amount_due", "usage", "included",
                             "quantity", "unit_price", "amount"})


class _SafeWriter:
    def __init__(self, out: io.StringIO) -> None:
        self._writer = csv.writer(out, lineterminator="\n")

    def writerow(self, row: list[object] | tuple[object, ...]) -> None:
        self._writer.writerow([
            value if column in _NUMBER_COLUMNS else cell(value)
            for column, value in zip(CSV_COLUMNS, row, strict=True)])


def as_csv(invoices: list[Invoice]) -> str:
    out = io.StringIO()
    writer = _SafeWriter(out)
    writer.writerow(CSV_COLUMNS)
    for invoice in invoices:
        head = [invoice.id, invoice.period.label, invoice.subject, invoice.deployment,
                invoice.user_id, invoice.attempt, invoice.kind, invoice.adjusts, invoice.team,
                invoice.project, invoice.plan, invoice.region, invoice.currency,
                invoice.status, text(invoice.amount), cents(invoice.amount_due)]
        for line in invoice.lines:
            writer.writerow([*head, line.item, line.description, line.unit, text(line.usage),
                             text(line.included), text(line.quantity), text(line.unit_price),
                             text(line.amount)])
    return out.getvalue()
