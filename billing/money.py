"""Money: exact decimals, and the one place where a quantity is rounded.

Quantities such as GB-hours are exact fractions (bytes / 2^30, MB-ms / (1024 x
3,600,000)) whose decimal expansion may not end, so a line's amount is its
exact billable quantity times its unit price, rounded half-up to AMOUNT_PLACES
decimal places. An invoice's amount is the exact sum of its lines; what is due
is that rounded half-up to cents.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

AMOUNT_PLACES = 10
CENT_PLACES = 2


def rounded(value: Fraction | Decimal | int, places: int = AMOUNT_PLACES) -> Decimal:
    """`value` rounded half-up (away from zero) to `places` decimal places, exactly."""
    exact = Fraction(value)
    scaled = abs(exact) * 10**places
    whole = scaled.numerator // scaled.denominator
    if scaled - whole >= Fraction(1, 2):
        whole += 1
    sign = -1 if exact < 0 else 1
    return Decimal(sign * whole).scaleb(-places)


def due(amount: Decimal) -> Decimal:
    """What is due for an exact amount: rounded half-up to cents."""
    return rounded(amount, CENT_PLACES)


def text(value: Decimal) -> str:
    """A decimal as plain text, without exponent or trailing zeros ("2.6", "0.000002"),
    as JSON and CSV carry money and quantities."""
    return format(value.normalize(), "f")


def cents(value: Decimal) -> str:
    """An amount due, with its two places ("3.90")."""
    return format(value.quantize(Decimal(1).scaleb(-CENT_PLACES)), "f")
