"""The price book: the shipped defaults, and validation that names every bad entry."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from billing import pricebook
from billing.money import due, rounded
from billing.pricebook import PriceBookError, PricingError

MINIMAL = """
default_plan = "pro"
[plans.pro]
function_calls   = { included = "100", price = "0.50", per = 1000 }
action_compute   = { included = "1", price = "0.30" }
database_storage = { included = "1", price = "0.20" }
database_io      = { included = "1", price = "0.20" }
file_storage     = { included = "1", price = "0.03" }
data_egress      = { included = "1", price = "0.12" }
search_storage   = { included = "1", price = "0.50" }
search_queries   = { included = "1", price = "0.10", per = 1000 }
"""


def test_the_default_price_book_holds_the_reference_prices() -> None:
    book = pricebook.load()
    assert book.currency == "USD"
    assert book.default_plan == "professional"
    assert sorted(book.plans) == ["free", "professional", "starter"]
    professional = book.plan("Professional").resources
    assert professional["function_calls"].included == Decimal(25_000_000)
    assert professional["function_calls"].unit_price == Decimal("0.000002")
    assert professional["search_queries"].unit_price == Decimal("0.0001")
    starter = book.plan("starter").resources
    assert starter["data_egress"].price == Decimal("0.132")
    assert starter["search_queries"].unit_price == Decimal("0.00011")
    assert book.plan(None).name == "professional"
    assert book.multiplier("aws-eu-west-1") == Decimal("1.3")
    assert book.multiplier("aws-us-east-1") == Decimal(1)
    assert book.multiplier("") == Decimal(1)
    mini = book.tokens("openai.chat", "gpt-4o-mini")
    assert mini.unit_price("cached_input") == Decimal("0.000000075")
    assert book.tokens("openai", "gpt-4o-mini") == \
        pricebook.TokenPrices("openai", "gpt-4o-mini", mini.prices)


def test_unknown_plans_and_models_say_what_is_missing() -> None:
    book = pricebook.load()
    with pytest.raises(PricingError, match=r"plan 'enterprise' is not in the price book .*"
                                           r"\(plans: free, professional, starter\)"):
        book.plan("enterprise")
    with pytest.raises(PricingError, match="no token prices for provider 'x' model 'y'"):
        book.tokens("x", "y")


def test_every_problem_is_reported_naming_its_entry(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text("""
currency = "usd"
default_plan = "gold"
colour = "blue"
[regions]
"*-eu-*" = "0"
[plans.pro]
function_calls = { included = "100", price = 2.2, per = 1000 }
action_compute = { included = "-1", price = "0.30" }
database_io    = { included = "1", price = "0.20", per = 25 }
disk           = { included = "1", price = "1" }
[[models]]
provider = "openai.chat"
model = "gpt-x"
input = "1"
output = "2"
cached_input = "0.5"
cache_write = "1"
[[models]]
provider = ["openai.chat", ""]
model = "gpt-x"
input = "1"
""")
    with pytest.raises(PriceBookError) as raised:
        pricebook.load(path)
    assert raised.value.problems == [
        "colour: unknown entry; known: currency, default_plan, models, plans, regions",
        "currency: must be a three-letter code like \"USD\", got 'usd'",
        "plans.pro.disk: unknown resource; known: function_calls, action_compute, "
        "database_storage, database_io, file_storage, data_egress, search_storage, "
        "search_queries",
        "plans.pro.function_calls.price: must be a non-negative decimal string or integer, "
        "got 2.2 (write money as a string, e.g. \"2.20\", so it stays exact)",
        "plans.pro.action_compute.included: must be a non-negative decimal like \"2.20\", "
        "got '-1'",
        "plans.pro.database_storage: missing",
        "plans.pro.database_io.per: must be 1, 10, 100, 1000, ... (the units the price is "
        "for), got 25",
        "plans.pro.file_storage: missing",
        "plans.pro.data_egress: missing",
        "plans.pro.search_storage: missing",
        "plans.pro.search_queries: missing",
        "default_plan: must name one of the plans (pro), got 'gold'",
        "regions.'*-eu-*': a multiplier must be above 0",
        "models[0] (openai.chat/gpt-x).reasoning: missing (price per 1,000,000 tokens)",
        "models[1] (openai.chat|/gpt-x).provider: must be a provider name or a list of them",
        "models[1] (openai.chat|/gpt-x).cached_input: missing (price per 1,000,000 tokens)",
        "models[1] (openai.chat|/gpt-x).cache_write: missing (price per 1,000,000 tokens)",
        "models[1] (openai.chat|/gpt-x).output: missing (price per 1,000,000 tokens)",
        "models[1] (openai.chat|/gpt-x).reasoning: missing (price per 1,000,000 tokens)",
    ]
    assert str(raised.value).startswith(f"price book {path}: colour: unknown entry")


def test_unreadable_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(PriceBookError, match="cannot read it"):
        pricebook.load(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[plans\n")
    with pytest.raises(PriceBookError, match="not valid TOML"):
        pricebook.load(broken)


def test_a_model_priced_twice_is_refused(tmp_path: Path) -> None:
    entry = """
[[models]]
provider = ["openai", "openai.chat"]
model = "m"
input = "1"
cached_input = "1"
cache_write = "1"
output = "1"
reasoning = "1"
"""
    path = tmp_path / "prices.toml"
    path.write_text(MINIMAL + entry + entry.replace('["openai", "openai.chat"]', '"openai"'))
    with pytest.raises(PriceBookError) as raised:
        pricebook.load(path)
    assert raised.value.problems == ["models[1] (openai/m): openai/m is priced twice"]


def test_money_is_rounded_half_up_once() -> None:
    assert rounded(Fraction(1, 3)) == Decimal("0.3333333333")
    assert rounded(Fraction(5, 10**11)) == Decimal("0.0000000001")
    assert rounded(Fraction(4, 10**11)) == Decimal("0.0000000000")
    assert due(Decimal("3.925")) == Decimal("3.93")
    assert due(Decimal("0.0003879")) == Decimal("0.00")
