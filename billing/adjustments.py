"""What an adjustment charges: the usage that landed after a subject's invoices, as the
difference between the charge on the period's whole usage and what they hold.

Per line item: the charge on the total usage (the plan's included amount applied once,
to the total) minus the sum of that item's lines on the subject's invoices that are not
failed. So the original and its adjustments add up, line by line and exactly, to the
invoice the whole usage would have had, and an adjustment's `included` is the part of
the included amount its usage used up (its usage less its billable quantity).

An adjustment is priced as the invoice it follows: an item on that invoice keeps the
invoice's included amount and unit price (a price book or plan changed since does not
reprice what was invoiced); an item it does not have (a model first used late) is priced
from the price book.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import replace
from decimal import Decimal
from fractions import Fraction

from billing import charges
from billing.charges import Line, Measure
from billing.money import due
from billing.periods import Period

# Unit prices are stored with 18 places (invoices.lines.unit_price, Decimal(38, 18)).
_STORED_PRICE = Decimal(1).scaleb(-18)


def adjustment_id(period: Period, subject: str, deployment: str, user_id: str,
                  number: int) -> str:
    """`adj-<YYYYMM>-<16 hex>-<number>`, the digest as in the subject's invoice ids: two
    runs that find the same adjustments missing write the same id, and the invoices
    table keeps one row per id."""
    digest = hashlib.sha256(f"{subject}\0{deployment}\0{user_id}".encode()).hexdigest()[:16]
    return f"adj-{period.compact}-{digest}-{number}"


def reprice(measures: Iterable[Measure], like: Sequence[Line]) -> list[Measure]:
    """The measures, each item found in `like` with that line's included amount and unit
    price."""
    pricing = {line.item: line for line in like}
    found = []
    for measure in measures:
        line = pricing.get(measure.item)
        if line is None or (line.included, line.unit_price) == (
                measure.included, measure.unit_price.quantize(_STORED_PRICE)):
            # Unchanged: keep the exact price, which a region multiplier may have given
            # more places than the invoice stored.
            found.append(measure)
        else:
            found.append(replace(measure, included=line.included, unit_price=line.unit_price))
    return found


def difference(measures: Sequence[Measure], invoiced: Sequence[Line]) -> list[Line]:
    """The lines that bring `invoiced` to the charge on `measures`, in the measures'
    order (items invoiced but no longer measured last); empty when nothing differs."""
    before: dict[str, list[Line]] = {}
    for line in invoiced:
        before.setdefault(line.item, []).append(line)
    totals = [charges.line(measure) for measure in measures]
    measured = {line.item for line in totals}
    for item, lines in before.items():
        if item not in measured:  # nothing of it is used now: the charge on 0
            last = lines[-1]
            totals.append(charges.line(Measure(item, last.description, last.unit,
                                               Fraction(0), last.included, last.unit_price)))
    found = []
    for total in totals:
        earlier = before.get(total.item, [])
        usage = total.usage - sum((line.usage for line in earlier), Decimal(0))
        quantity = total.quantity - sum((line.quantity for line in earlier), Decimal(0))
        amount = total.amount - sum((line.amount for line in earlier), Decimal(0))
        if usage or quantity or amount:
            found.append(Line(total.item, total.description, total.unit, usage,
                              usage - quantity, quantity, total.unit_price, amount))
    return found


def amount_due(amount: Decimal, invoiced: Sequence[tuple[Decimal, Decimal]]) -> Decimal:
    """What an adjustment of `amount` makes due, given the (amount, amount due) of the
    subject's invoices that are not failed: the cents that bring the dues to the total
    amount's, so the subject's dues add up to its exact total rounded once."""
    exact = sum((a for a, _ in invoiced), Decimal(0)) + amount
    return due(exact) - sum((d for _, d in invoiced), Decimal(0))
