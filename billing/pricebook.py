"""The price book: what each plan includes and costs, and LLM token prices.

One TOML file (billing/default_price_book.toml is the default; the variable
METERSTREAM_PRICE_BOOK names another), validated when it is loaded: every
problem is reported at once, each naming its entry. Money is read as exact
decimals, so it is written as strings ("2.20") or integers, never as floats.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from billing.resources import BILLED_TOKEN_KINDS, RESOURCE_KEYS, TOKENS_PER_PRICE

DEFAULT_NAME = "default_price_book.toml"
_DECIMAL = re.compile(r"^\d+(\.\d+)?$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
# Unit prices (price / per x region multiplier) are stored with this many places.
UNIT_PRICE_PLACES = 18


class PriceBookError(ValueError):
    """The price book cannot be used; `problems` lists each, naming its entry."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"price book {source}: " + "; ".join(problems))
        self.problems = problems


class PricingError(LookupError):
    """Something to bill has no price (an unknown plan, provider or model)."""


@dataclass(frozen=True)
class ResourcePrice:
    included: Decimal
    """Included per billing month, in the resource's unit."""
    price: Decimal
    per: int
    """`price` is for this many units (1, 1000, 1000000, ...)."""

    @property
    def unit_price(self) -> Decimal:
        return self.price.scaleb(-(len(str(self.per)) - 1))


@dataclass(frozen=True)
class Plan:
    name: str
    resources: dict[str, ResourcePrice]


@dataclass(frozen=True)
class TokenPrices:
    """USD (or the book's currency) per 1,000,000 tokens of each kind."""

    provider: str
    model: str
    prices: dict[str, Decimal]
    """kind (input, cached_input, cache_write, output, reasoning) -> price"""

    def unit_price(self, kind: str) -> Decimal:
        return self.prices[kind] / TOKENS_PER_PRICE


@dataclass(frozen=True)
class PriceBook:
    source: str
    currency: str
    default_plan: str
    plans: dict[str, Plan]
    regions: tuple[tuple[str, Decimal], ...]
    """(region name pattern, price multiplier), first match wins"""
    models: dict[tuple[str, str], TokenPrices]

    def plan(self, name: str | None) -> Plan:
        """The plan of a deployment (its registry `plan`; none: the default plan)."""
        key = (name or self.default_plan).strip().lower()
        plan = self.plans.get(key)
        if plan is None:
            raise PricingError(f"plan {name!r} is not in the price book {self.source} "
                               f"(plans: {', '.join(sorted(self.plans))})")
        return plan

    def multiplier(self, region: str) -> Decimal:
        for pattern, multiplier in self.regions:
            if region and fnmatch.fnmatchcase(region, pattern):
                return multiplier
        return Decimal(1)

    def tokens(self, provider: str, model: str) -> TokenPrices:
        prices = self.models.get((provider, model))
        if prices is None:
            raise PricingError(f"no token prices for provider {provider!r} model {model!r} "
                               f"in the price book {self.source}")
        return prices


def default_path() -> Path:
    return Path(str(resources.files("billing").joinpath(DEFAULT_NAME)))


def load(path: Path | None = None) -> PriceBook:
    """Reads and validates a price book; raises PriceBookError listing every problem."""
    source = path or default_path()
    try:
        document = tomllib.loads(Path(source).read_text())
    except OSError as exc:
        raise PriceBookError(str(source), [f"cannot read it: {exc.strerror or exc}"]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PriceBookError(str(source), [f"not valid TOML: {exc}"]) from None
    return parse(document, str(source))


def parse(document: dict[str, Any], source: str) -> PriceBook:
    problems: list[str] = []
    known = {"currency", "default_plan", "regions", "plans", "models"}
    problems.extend(f"{key}: unknown entry; known: {', '.join(sorted(known))}"
                    for key in document if key not in known)
    currency = document.get("currency", "USD")
    if not isinstance(currency, str) or not _CURRENCY.match(currency):
        problems.append(f"currency: must be a three-letter code like \"USD\", got {currency!r}")
        currency = "USD"
    plans = _plans(document.get("plans"), problems)
    default_plan = document.get("default_plan")
    if not isinstance(default_plan, str) or default_plan.lower() not in plans:
        problems.append(f"default_plan: must name one of the plans ({', '.join(sorted(plans))})"
                        f", got {default_plan!r}")
        default_plan = ""
    regions = _regions(document.get("regions", {}), problems)
    models = _models(document.get("models", []), problems)
    if problems:
        raise PriceBookError(source, problems)
    return PriceBook(source, currency, default_plan.lower(), plans, regions, models)


def _decimal(value: Any, where: str, problems: list[str]) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | str):
        hint = " (write money as a string, e.g. \"2.20\", so it stays exact)" \
            if isinstance(value, float) else ""
        problems.append(f"{where}: must be a non-negative decimal string or integer, "
                        f"got {value!r}{hint}")
        return None
    text = str(value).strip()
    if not _DECIMAL.match(text):
        problems.append(f"{where}: must be a non-negative decimal like \"2.20\", got {value!r}")
        return None
    return Decimal(text)


def _table(value: Any, where: str, problems: list[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        problems.append(f"{where}: must be a table")
        return {}
    return value


def _plans(value: Any, problems: list[str]) -> dict[str, Plan]:
    plans: dict[str, Plan] = {}
    table = _table(value, "plans", problems)
    if isinstance(value, dict) and not value:
        problems.append("plans: at least one plan is needed")
    for name, entries in table.items():
        where = f"plans.{name}"
        if name != name.lower():
            problems.append(f"{where}: plan names are lower case")
        entries = _table(entries, where, problems)
        for key in entries:
            if key not in RESOURCE_KEYS:
                problems.append(f"{where}.{key}: unknown resource; known: "
                                f"{', '.join(RESOURCE_KEYS)}")
        prices: dict[str, ResourcePrice] = {}
        for key in RESOURCE_KEYS:
            if key not in entries:
                problems.append(f"{where}.{key}: missing")
                continue
            price = _resource_price(entries[key], f"{where}.{key}", problems)
            if price is not None:
                prices[key] = price
        plans[name.lower()] = Plan(name.lower(), prices)
    return plans


def _resource_price(value: Any, where: str, problems: list[str]) -> ResourcePrice | None:
    entry = _table(value, where, problems)
    if not entry:
        return None
    for key in entry:
        if key not in ("included", "price", "per"):
            problems.append(f"{where}.{key}: unknown field; known: included, price, per")
    included = _decimal(entry.get("included"), f"{where}.included", problems)
    price = _decimal(entry.get("price"), f"{where}.price", problems)
    per = entry.get("per", 1)
    if isinstance(per, bool) or not isinstance(per, int) or per < 1 or str(per).strip("0") != "1":
        problems.append(f"{where}.per: must be 1, 10, 100, 1000, ... (the units the price is "
                        f"for), got {per!r}")
        return None
    if included is None or price is None:
        return None
    unit = price.scaleb(-(len(str(per)) - 1))
    exponent = unit.normalize().as_tuple().exponent
    if isinstance(exponent, int) and -exponent > UNIT_PRICE_PLACES:
        problems.append(f"{where}: price / per has more than {UNIT_PRICE_PLACES} decimal places")
        return None
    return ResourcePrice(included, price, per)


def _regions(value: Any, problems: list[str]) -> tuple[tuple[str, Decimal], ...]:
    regions = []
    for pattern, multiplier in _table(value, "regions", problems).items():
        number = _decimal(multiplier, f"regions.{pattern!r}", problems)
        if number is not None and number == 0:
            problems.append(f"regions.{pattern!r}: a multiplier must be above 0")
        elif number is not None:
            regions.append((pattern, number))
    return tuple(regions)


def _models(value: Any, problems: list[str]) -> dict[tuple[str, str], TokenPrices]:
    if not isinstance(value, list):
        problems.append("models: must be an array of tables ([[models]])")
        return {}
    models: dict[tuple[str, str], TokenPrices] = {}
    kinds = [kind for kind, _, _ in BILLED_TOKEN_KINDS]
    for index, entry in enumerate(value):
        if not isinstance(entry, dict):
            problems.append(f"models[{index}]: must be a table")
            continue
        providers = entry.get("provider")
        if isinstance(providers, str):
            providers = [providers]
        model = entry.get("model")
        name = f"models[{index}] ({'|'.join(map(str, providers or []))}/{model})"
        if (not isinstance(providers, list) or not providers
                or not all(isinstance(p, str) and p for p in providers)):
            problems.append(f"{name}.provider: must be a provider name or a list of them")
            providers = []
        if not isinstance(model, str) or not model:
            problems.append(f"{name}.model: must be a model name")
            model = ""
        for key in entry:
            if key not in ("provider", "model", *kinds):
                problems.append(f"{name}.{key}: unknown field; known: provider, model, "
                                f"{', '.join(kinds)}")
        prices: dict[str, Decimal] = {}
        for kind in kinds:
            if kind not in entry:
                problems.append(f"{name}.{kind}: missing (price per 1,000,000 tokens)")
                continue
            price = _decimal(entry[kind], f"{name}.{kind}", problems)
            if price is not None:
                prices[kind] = price
        for provider in providers:
            if (provider, model) in models:
                problems.append(f"{name}: {provider}/{model} is priced twice")
            elif len(prices) == len(kinds) and model:
                models[(provider, model)] = TokenPrices(provider, model, prices)
    return models
