"""Adjustments computed by hand: the charge on the whole usage less what was invoiced, per
line, with the included amount applied once across the original and the adjustment.

Prices are the default price book's (billing/default_price_book.toml); every expected
amount is written as a literal with its arithmetic in a comment.
"""

from __future__ import annotations

from decimal import Decimal

from billing import charges, pricebook
from billing.adjustments import adjustment_id, amount_due, difference, reprice
from billing.charges import Line
from billing.invoices import invoice_id
from billing.periods import Period

GIB = 1 << 30
OCTOBER = Period(2026, 10)
BOOK = pricebook.load()
STARTER = BOOK.plan("starter")


def resources(**usage: int) -> list[charges.Measure]:
    return charges.resource_measures(usage, STARTER, Decimal(1), OCTOBER)


def by_item(lines: list[Line]) -> dict[str, Line]:
    return {line.item: line for line in lines}


def test_late_usage_that_crosses_the_included_amount_pays_only_what_is_above_it() -> None:
    # Starter: database I/O 1 GB included, then 0.22 per GB.
    # The invoice: 0.75 GB, all of it included: quantity 0, amount 0.
    original = charges.resource_lines({"database_io_read_bytes": 3 * GIB // 4}, STARTER,
                                      Decimal(1), OCTOBER)
    assert by_item(original)["database_io"].amount == Decimal("0")
    # 0.5 GB lands after it: 1.25 GB in all, 0.25 GB above the included 1 GB.
    (line,) = difference(resources(database_io_read_bytes=3 * GIB // 4 + GIB // 2), original)
    assert line.item == "database_io"
    assert line.usage == Decimal("0.5")  # 1.25 - 0.75
    assert line.included == Decimal("0.25")  # what was left of the 1 GB: 1 - 0.75
    assert line.quantity == Decimal("0.25")  # 1.25 - 1
    assert line.unit_price == Decimal("0.22")
    assert line.amount == Decimal("0.055")  # 0.25 x 0.22
    # Original and adjustment together: the invoice of the whole usage, to the decimal.
    whole = by_item(charges.resource_lines(
        {"database_io_read_bytes": 3 * GIB // 4 + GIB // 2}, STARTER, Decimal(1), OCTOBER))
    assert by_item(original)["database_io"].amount + line.amount == \
        whole["database_io"].amount == Decimal("0.055")


def test_late_usage_above_an_already_used_included_amount_is_billed_in_full() -> None:
    # Starter: 1,000,000 calls included, then 2.20 per 1,000,000 (0.0000022 each).
    # Invoiced 1,500,000 calls: 500,000 x 0.0000022 = 1.1.
    original = charges.resource_lines({"function_calls": 1_500_000}, STARTER, Decimal(1),
                                      OCTOBER)
    assert by_item(original)["function_calls"].amount == Decimal("1.1")
    # 250,000 more: all above the included amount, 250,000 x 0.0000022 = 0.55.
    (line,) = difference(resources(function_calls=1_750_000), original)
    assert (line.usage, line.included, line.quantity, line.amount) == (
        Decimal("250000"), Decimal("0"), Decimal("250000"), Decimal("0.55"))


def test_an_agent_token_line_is_adjusted_and_a_model_first_used_late_is_priced() -> None:
    # gpt-4o-mini output (not reasoning): 0.60 per 1,000,000 tokens.
    # Invoiced: 1,000 output tokens = 0.0006.
    original = charges.token_lines(
        {("openai", "gpt-4o-mini"): {"output_tokens": 1000}}, BOOK)
    assert by_item(original)["tokens:openai/gpt-4o-mini:output"].amount == Decimal("0.0006")
    # Late: 2,500 more output tokens of gpt-4o-mini, and 100 output tokens of gpt-4o,
    # a model the invoice does not have (10 per 1,000,000).
    now = charges.token_measures({("openai", "gpt-4o-mini"): {"output_tokens": 3500},
                                  ("openai", "gpt-4o"): {"output_tokens": 100}}, BOOK)
    late = by_item(difference(reprice(now, original), original))
    assert sorted(late) == ["tokens:openai/gpt-4o-mini:output", "tokens:openai/gpt-4o:output"]
    mini = late["tokens:openai/gpt-4o-mini:output"]
    # 3,500 x 0.0000006 = 0.0021 on the whole; 0.0021 - 0.0006 = 0.0015 (2,500 tokens).
    assert (mini.usage, mini.quantity, mini.included, mini.amount) == (
        Decimal("2500"), Decimal("2500"), Decimal("0"), Decimal("0.0015"))
    # 100 x 0.00001 = 0.001.
    assert late["tokens:openai/gpt-4o:output"].amount == Decimal("0.001")


def test_nothing_late_is_nothing_to_adjust() -> None:
    used = {"function_calls": 1_500_000, "database_io_read_bytes": 3 * GIB}
    original = charges.resource_lines(used, STARTER, Decimal(1), OCTOBER)
    assert difference(resources(**used), original) == []
    # An original followed by its adjustment holds the whole usage: nothing more either.
    more = {**used, "function_calls": 1_600_000}
    adjustment = difference(resources(**more), original)
    assert difference(resources(**more), original + adjustment) == []


def test_an_adjustment_is_priced_as_its_invoice_not_as_the_price_book_is_now() -> None:
    # Invoiced on starter (0.22 per GB above 1 GB); the deployment is on professional now
    # (0.20 per GB above 50 GB): the adjustment keeps 1 GB included and 0.22.
    original = charges.resource_lines({"database_io_read_bytes": GIB // 2}, STARTER,
                                      Decimal(1), OCTOBER)
    now = charges.resource_measures({"database_io_read_bytes": 2 * GIB},
                                    BOOK.plan("professional"), Decimal(1), OCTOBER)
    (line,) = difference(reprice(now, original), original)
    # 2 GB in all, 1 above the included: 1 x 0.22 = 0.22; 0.5 of the included was left.
    assert (line.usage, line.included, line.quantity, line.unit_price, line.amount) == (
        Decimal("1.5"), Decimal("0.5"), Decimal("1"), Decimal("0.22"), Decimal("0.22"))
    # Unrepriced, the whole 2 GB would be within professional's 50 GB: nothing to pay.
    assert difference(now, original)[0].amount == Decimal("0")


def test_the_cents_due_add_up_to_the_whole_amount_rounded_once() -> None:
    # Invoiced 0.004 (due 0.00); an adjustment of 0.004 alone would be due 0.00 too, but
    # the whole 0.008 is due 0.01: the adjustment makes 0.01 - 0.00 = 0.01 due.
    assert amount_due(Decimal("0.004"), [(Decimal("0.004"), Decimal("0.00"))]) == \
        Decimal("0.01")
    # Invoiced 0.7205 (due 0.72) and 0.0055 late: 0.726 is due 0.73, so 0.01 more.
    assert amount_due(Decimal("0.0055"), [(Decimal("0.7205"), Decimal("0.72"))]) == \
        Decimal("0.01")
    # Invoiced 0.006 (due 0.01), 0.001 late: 0.007 is still due 0.01, so 0.00 more.
    assert amount_due(Decimal("0.001"), [(Decimal("0.006"), Decimal("0.01"))]) == \
        Decimal("0.00")


def test_an_adjustment_id_is_derived_like_the_invoice_id_of_its_subject() -> None:
    first = adjustment_id(OCTOBER, "deployment", "happy-otter-123", "", 1)
    assert first == adjustment_id(OCTOBER, "deployment", "happy-otter-123", "", 1)
    digest = invoice_id(OCTOBER, "deployment", "happy-otter-123", "", 1).split("-")[2]
    assert first == f"adj-202610-{digest}-1"
    assert adjustment_id(OCTOBER, "deployment", "happy-otter-123", "", 2) == \
        f"adj-202610-{digest}-2"
    assert adjustment_id(OCTOBER, "end_user", "happy-otter-123", "u1", 1) != first
