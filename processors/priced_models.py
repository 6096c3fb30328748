"""The provider/model keys the price book prices, for the worker's live windows.

The worker keeps tokens by model name only for these (meterstream/core/usage.py); every
other name folds into one bucket. The keys are read here from the price book's
`[[models]]` tables with tomllib, not through billing.pricebook: billing builds on
processors (it imports its windows and units), so an import the other way would be
a cycle and an upward import. The price book is validated in full where it is
priced (billing.pricebook.load, at invoice time and by `meterstream billing`); this
reader only needs the names and ignores everything else, so an entry billing would
refuse for a bad price still keeps its name here (harmless: it only keeps a name).
"""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from typing import Any

DEFAULT_NAME = "default_price_book.toml"


class PriceBookUnreadable(ValueError):
    """The price book cannot be read as TOML."""


def default_price_book() -> Path:
    """billing/default_price_book.toml, found without importing billing's modules."""
    spec = importlib.util.find_spec("billing")
    if spec is None or not spec.submodule_search_locations:
        raise PriceBookUnreadable("the billing package (and its default price book) is missing")
    return Path(next(iter(spec.submodule_search_locations))) / DEFAULT_NAME


def priced_model_keys(path: Path | None = None) -> frozenset[str]:
    """Every `provider/model` the price book at `path` (None: the default one) prices."""
    source = path or default_price_book()
    try:
        document = tomllib.loads(Path(source).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PriceBookUnreadable(f"price book {source}: {exc}") from None
    return model_keys(document)


def model_keys(document: dict[str, Any]) -> frozenset[str]:
    keys: set[str] = set()
    entries = document.get("models", [])
    for entry in entries if isinstance(entries, list) else ():
        if not isinstance(entry, dict):
            continue
        providers, model = entry.get("provider"), entry.get("model")
        if isinstance(providers, str):
            providers = [providers]
        if not isinstance(model, str) or not model or not isinstance(providers, list):
            continue
        keys.update(f"{provider}/{model}" for provider in providers
                    if isinstance(provider, str) and provider)
    return frozenset(keys)
