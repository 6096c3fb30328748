"""Invoices as JSON or CSV (one row per line item), for `meterstream invoices show`."""

from __future__ import annotations

import csv
import io
import json

from billing.invoices import Invoice
from billing.money import cents, text

CSV_COLUMNS = ("invoice_id", "period", "subject", "deployment", "user_id", "attempt", "team",
               "project", "plan", "region", "currency", "status", "invoice_amount",
               "amount_due", "item", "description", "unit", "usage", "included", "quantity",
               "unit_price", "amount")


def as_json(invoices: list[Invoice]) -> str:
    return json.dumps([invoice.to_json() for invoice in invoices], indent=2) + "\n"


def as_csv(invoices: list[Invoice]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for invoice in invoices:
        head = [invoice.id, invoice.period.label, invoice.subject, invoice.deployment,
                invoice.user_id, invoice.attempt, invoice.team, invoice.project, invoice.plan,
                invoice.region, invoice.currency, invoice.status, text(invoice.amount),
                cents(invoice.amount_due)]
        for line in invoice.lines:
            writer.writerow([*head, line.item, line.description, line.unit, text(line.usage),
                             text(line.included), text(line.quantity), text(line.unit_price),
                             text(line.amount)])
    return out.getvalue()
