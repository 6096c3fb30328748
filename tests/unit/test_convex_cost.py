"""`charges.convex_cost` (the fast sum used to rank and chart costs) is exactly the amount
of the invoice lines `charges.resource_lines` writes, for any usage, plan and region."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from billing import charges, pricebook
from billing.periods import Period
from billing.rollups import COUNTERS

BOOK = pricebook.load()
STORAGE = ("database_storage_byte_ms", "file_storage_byte_ms", "search_storage_byte_ms")
counts = st.one_of(st.just(0), st.integers(0, 10**6), st.integers(0, 10**16))


@settings(max_examples=300, deadline=None)
@given(usage=st.fixed_dictionaries({}, optional={name: counts for name in
                                                 (*COUNTERS, *STORAGE)}),
       plan=st.sampled_from(sorted(BOOK.plans)),
       multiplier=st.sampled_from([Decimal(1), Decimal("1.3"), Decimal("0.75")]),
       month=st.integers(1, 12))
def test_convex_cost_is_the_lines_amount(usage: dict[str, int], plan: str,
                                         multiplier: Decimal, month: int) -> None:
    period = Period(2026, month)
    chosen = BOOK.plan(plan)
    lines = charges.resource_lines(usage, chosen, multiplier, period)
    expected = charges.amount(lines)
    found = charges.convex_cost(usage, chosen, multiplier, period)
    assert found == expected
    assert str(found) == str(expected)  # the same exponent too, not only the same value
