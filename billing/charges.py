"""What usage costs: invoice lines for Convex resources and for tokens.

A Convex resource is billed for what exceeds the plan's included amount in the
billing month, at the plan's unit price times the region's multiplier. Tokens
are billed per (provider, model) and kind, each token once at its own price,
with nothing included. Every amount is rounded once (billing/money.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

from billing.money import rounded, text
from billing.periods import Period
from billing.pricebook import Plan, PriceBook
from billing.resources import BILLED_TOKEN_KINDS, RESOURCES, TokenCounts, Usage
from billing.rollups import TokenUsage

LINE_FIELDS = ("item", "description", "unit", "usage", "included", "quantity", "unit_price",
               "amount")
"""A line's fields, as the `lines` Nested columns of invoices and unbilled_usage hold them."""


@dataclass(frozen=True)
class Line:
    item: str
    """resource key (function_calls, ...) or tokens:<provider>/<model>:<kind>"""
    description: str
    unit: str
    usage: Decimal
    included: Decimal
    quantity: Decimal
    """billable: usage above the included amount"""
    unit_price: Decimal
    amount: Decimal

    def to_json(self) -> dict[str, str]:
        return {"item": self.item, "description": self.description, "unit": self.unit,
                **{name: text(getattr(self, name)) for name in
                   ("usage", "included", "quantity", "unit_price", "amount")}}


def line_columns(lines: tuple[Line, ...] | list[Line]) -> dict[str, list[Any]]:
    """Lines as the `lines.<field>` columns of a row."""
    return {f"lines.{name}": [getattr(line, name) for line in lines] for name in LINE_FIELDS}


def lines_of(row: dict[str, Any]) -> tuple[Line, ...]:
    """The lines of a row read back from its `lines.<field>` columns."""
    return tuple(
        Line(*(values[:3]), *(Decimal(str(v)) for v in values[3:]))
        for values in zip(*(row[f"lines.{name}"] for name in LINE_FIELDS), strict=True))


@dataclass(frozen=True)
class Measure:
    """One line's exact usage and its price, before anything is rounded: what a line is
    computed from (`line`), and what an adjustment reprices as its original was."""

    item: str
    description: str
    unit: str
    used: Fraction
    included: Decimal
    unit_price: Decimal


def line(measure: Measure) -> Line:
    """The line for a measure: usage above the included amount times the unit price."""
    billable = max(measure.used - Fraction(measure.included), Fraction(0))
    return Line(measure.item, measure.description, measure.unit, rounded(measure.used),
                measure.included, rounded(billable), measure.unit_price,
                rounded(billable * Fraction(measure.unit_price)))


def resource_measures(usage: Usage, plan: Plan, multiplier: Decimal,
                      period: Period) -> list[Measure]:
    """One measure per Convex resource (also when nothing of it is used)."""
    measures = []
    for resource in RESOURCES:
        price = plan.resources[resource.key]
        measures.append(Measure(resource.key, resource.description, resource.unit,
                                resource.quantity(usage, period), price.included,
                                price.unit_price * multiplier))
    return measures


def token_measures(tokens: TokenUsage, book: PriceBook) -> list[Measure]:
    """Five measures per (provider, model): one per token kind. Raises PricingError for a
    model the price book does not price."""
    measures = []
    for provider, model in sorted(tokens):
        prices = book.tokens(provider, model)
        counts = tokens[(provider, model)]
        for kind, description, count in BILLED_TOKEN_KINDS:
            measures.append(Measure(f"tokens:{provider}/{model}:{kind}",
                                    f"{provider} {model} {description}", "tokens",
                                    Fraction(count(counts)), Decimal(0),
                                    prices.unit_price(kind)))
    return measures


def resource_lines(usage: Usage, plan: Plan, multiplier: Decimal, period: Period) -> list[Line]:
    """One line per Convex resource (also when nothing of it is billable)."""
    return [line(m) for m in resource_measures(usage, plan, multiplier, period)]


def token_lines(tokens: TokenUsage, book: PriceBook) -> list[Line]:
    """Five lines per (provider, model): one per token kind. Raises PricingError for a
    model the price book does not price."""
    return [line(m) for m in token_measures(tokens, book)]


def amount(lines: list[Line]) -> Decimal:
    return sum((line.amount for line in lines), Decimal(0))


def convex_cost(usage: Usage, plan: Plan, multiplier: Decimal, period: Period) -> Decimal:
    """`amount(resource_lines(...))`, exactly, without building the lines: only a resource
    used beyond its included amount adds anything (the others' amounts are a rounded 0).
    The usage and the top-N by cost (billing/queries.py, the console's overview) cost a
    deployment at a time, and at 10k deployments the lines' roundings dominated."""
    total = rounded(0)
    if not usage:
        return total
    for resource in RESOURCES:
        price = plan.resources[resource.key]
        billable = resource.quantity(usage, period) - Fraction(price.included)
        if billable > 0:
            total += rounded(billable * Fraction(price.unit_price * multiplier))
    return total


def token_cost(tokens: TokenUsage, book: PriceBook) -> tuple[Decimal, set[tuple[str, str]]]:
    """The cost of the tokens that have prices, and the (provider, model)s that do not."""
    total, unpriced = Decimal(0), set()
    for key, counts in tokens.items():
        if key not in book.models:
            unpriced.add(key)
            continue
        total += amount(token_lines({key: counts}, book))
    return total, unpriced


def add_tokens(into: TokenUsage, other: TokenUsage) -> None:
    for key, counts in other.items():
        mine: TokenCounts = into.setdefault(key, {})
        for name, value in counts.items():
            mine[name] = mine.get(name, 0) + value


def add_usage(into: Usage, other: Usage) -> None:
    for name, value in other.items():
        into[name] = into.get(name, 0) + value
