"""The subjects a billing period invoices and what their usage measures now: one per
deployment with Convex usage in the period, one per (deployment, end user) with tokens.

`used` reads a period's usage; `price` turns one subject's usage into measures (exact
quantities with their included amounts and unit prices) from the price book. Invoices,
adjustments and the invoiced-against-current view all start from these two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from billing import charges, rollups, storage
from billing.charges import Measure
from billing.database import Database
from billing.periods import Period
from billing.pricebook import PriceBook
from billing.registry import Owners, owner_of
from billing.resources import Usage
from billing.rollups import TokenUsage


@dataclass(frozen=True, order=True)
class Subject:
    subject: str
    """deployment (Convex resources) or end_user (tokens)"""
    deployment: str
    user_id: str

    def describe(self) -> str:
        return f"{self.subject} {self.deployment}" + (
            f" user {self.user_id!r}" if self.subject == "end_user" else "")


@dataclass(frozen=True)
class Used:
    subject: Subject
    region: str = ""
    usage: Usage = field(default_factory=dict)
    tokens: TokenUsage = field(default_factory=dict)


def used(db: Database, period: Period, deployments: Sequence[str] | None = None,
         from_events: bool = True) -> list[Used]:
    """Every subject with usage in the period (of `deployments` when given), in order.

    `from_events` reads the raw tables, not the rollups: a materialized view's insert is
    not atomic with its base table's, so a sink killed between the two leaves a row stored
    (and skipped when read again) that a rollup never got. Invoices read a closed month
    once per run this way; a view of usage may read the rollups."""
    usage, regions = rollups.totals(db, period.start_ms, period.end_ms, deployments,
                                    from_events=from_events)
    stored = storage.totals(db, period.start_ms, period.end_ms, deployments)
    for deployment, byte_ms in stored.items():
        usage.setdefault(deployment, {}).update(byte_ms)
    tokens = rollups.user_tokens(db, period.start_ms,
                                 period.end_ms if from_events else None)
    wanted = None if deployments is None else set(deployments)
    found = [Used(Subject("deployment", d, ""), regions.get(d, ""), usage=usage[d])
             for d in sorted(usage)]
    found += [Used(Subject("end_user", d, u), regions.get(d, ""), tokens=tokens[(d, u)])
              for d, u in sorted(tokens) if wanted is None or d in wanted]
    return found


def price(used: Used, period: Period, book: PriceBook,
          registry: Owners) -> tuple[str, list[Measure]]:
    """The plan's name and the subject's measures. Raises PricingError for a plan or a
    model the price book does not have."""
    owner = owner_of(registry, used.subject.deployment)
    if used.subject.subject == "deployment":
        plan = book.plan(owner.plan)
        return plan.name, charges.resource_measures(used.usage, plan,
                                                    book.multiplier(used.region), period)
    # Tokens are priced per model, whatever the plan; the plan is shown for reference.
    return (owner.plan or book.default_plan).lower(), charges.token_measures(used.tokens, book)
