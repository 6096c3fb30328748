"""`meterstream usage`: usage and cost per deployment, team or end user, and the top-N.

Cost is what the usage adds to the invoice of its billing month: a window's
Convex cost is the month's charge after it minus the charge before it (the
included amounts are used up first, in time order), so the windows of a month
add up to the month's invoice exactly. Token cost has nothing included and is
the tokens times their prices.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from billing import charges, rollups, storage
from billing.database import Database
from billing.money import rounded, text
from billing.periods import Period, buckets, ceil, floor, iso, periods_between
from billing.pricebook import Plan, PriceBook, PricingError
from billing.registry import Owners, owner_of
from billing.resources import Usage
from billing.rollups import TokenUsage
from meterstream.core import catalogue

MAX_BUCKETS = 20_000
DISPLAY_PLACES = 6


class UsageQueryError(ValueError):
    """A usage question that cannot be answered as asked."""


@dataclass(frozen=True)
class Subject:
    kind: str
    """deployment, team or end_user"""
    name: str
    deployments: tuple[str, ...]
    user: str | None = None

    def to_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"kind": self.kind, "name": self.name,
                                 "deployments": list(self.deployments)}
        if self.user is not None:
            found["user_id"] = self.user
        return found


def subject(registry: Owners, deployment: str | None, team: str | None,
            user: str | None) -> Subject:
    if team is not None:
        if deployment is not None or user is not None:
            raise UsageQueryError("--team goes alone (without --deployment or --user)")
        members = tuple(sorted(name for name, owner in registry.items() if owner.team == team))
        if not members:
            raise UsageQueryError(f"no deployment of team {team!r} in the registry")
        return Subject("team", team, members)
    if deployment is None:
        raise UsageQueryError("name a --deployment (with --user for one end user) or a --team")
    if user is not None:
        return Subject("end_user", f"{deployment}/{user}", (deployment,), user)
    return Subject("deployment", deployment, (deployment,))


@dataclass
class Bucket:
    start: int
    usage: Usage = field(default_factory=dict)
    tokens: TokenUsage = field(default_factory=dict)
    convex_cost: Decimal = Decimal(0)
    token_cost: Decimal = Decimal(0)

    @property
    def cost(self) -> Decimal:
        return self.convex_cost + self.token_cost

    def to_json(self) -> dict[str, Any]:
        return {"start": iso(self.start), "usage": display(self.usage, self.tokens),
                "convex_cost": text(self.convex_cost), "token_cost": text(self.token_cost),
                "cost": text(self.cost)}


_SHOWN = sorted((metric for metric in catalogue.METRICS if metric.shown is not None),
                key=lambda metric: metric.shown.column if metric.shown else 0)


def display(usage: Usage, tokens: TokenUsage) -> dict[str, Any]:
    """Usage in the units it is billed in (decimals as strings): each metric of the
    catalogue that is shown, in its column."""
    shown: dict[str, Any] = {}
    for metric in _SHOWN:
        assert metric.shown is not None
        key, per = metric.shown.key, metric.shown.per
        if metric.name == "tokens":  # kept per model, apart from the counters
            shown[key] = sum(counts.get("total_tokens", 0) for counts in tokens.values())
        elif per == 1:
            shown[key] = sum(usage.get(name, 0) for name in metric.columns)
        else:
            shown[key] = text(rounded(catalogue.billed(metric, usage), DISPLAY_PLACES))
    return shown


@dataclass
class Report:
    subject: Subject
    resolution: str
    start: int
    end: int
    currency: str
    buckets: list[Bucket]
    problems: list[str] = field(default_factory=list)

    def total(self) -> Bucket:
        total = Bucket(self.start)
        for bucket in self.buckets:
            charges.add_usage(total.usage, bucket.usage)
            charges.add_tokens(total.tokens, bucket.tokens)
            total.convex_cost += bucket.convex_cost
            total.token_cost += bucket.token_cost
        return total

    def to_json(self) -> dict[str, Any]:
        total = self.total().to_json()
        del total["start"]
        return {"subject": self.subject.to_json(), "from": iso(self.start), "to": iso(self.end),
                "resolution": self.resolution, "currency": self.currency,
                "buckets": [bucket.to_json() for bucket in self.buckets], "total": total,
                "problems": self.problems}


def _plan(book: PriceBook, registry: Owners, deployment: str,
          problems: list[str]) -> Plan | None:
    try:
        return book.plan(owner_of(registry, deployment).plan)
    except PricingError as exc:
        problems.append(f"deployment {deployment}: {exc}; its Convex cost is left out")
        return None


def _unpriced(found: set[tuple[str, str]], problems: list[str]) -> None:
    for provider, model in sorted(found):
        note = f"no token prices for {provider}/{model}; its tokens' cost is left out"
        if note not in problems:
            problems.append(note)


def usage(db: Database, book: PriceBook, registry: Owners, who: Subject, resolution: str,
          start_ms: int, end_ms: int) -> Report:
    """Usage and cost of `who` per window of `resolution` over [start, end), widened to
    whole windows."""
    start, end = floor(resolution, start_ms), ceil(resolution, end_ms)
    starts = buckets(resolution, start, end)
    if len(starts) > MAX_BUCKETS:
        raise UsageQueryError(f"{len(starts)} {resolution}s asked for (at most {MAX_BUCKETS}); "
                              f"choose a coarser resolution or a shorter range")
    report = Report(who, resolution, start, end, book.currency,
                    [Bucket(at) for at in starts])
    if not starts:
        return report
    index = {at: bucket for at, bucket in zip(starts, report.buckets, strict=True)}
    deployments = list(who.deployments)
    tokens = rollups.token_series(db, resolution, start, end, deployments, who.user)
    for per_bucket in tokens.values():
        for at, found in per_bucket.items():
            charges.add_tokens(index[at].tokens, found)
    unpriced: set[tuple[str, str]] = set()
    for bucket in report.buckets:
        bucket.token_cost, missing = charges.token_cost(bucket.tokens, book)
        unpriced |= missing
    _unpriced(unpriced, report.problems)
    if who.kind != "end_user":
        _convex(db, book, registry, report, index, deployments)
    return report


def _convex(db: Database, book: PriceBook, registry: Owners, report: Report,
            index: dict[int, Bucket], deployments: Sequence[str]) -> None:
    """Adds each deployment's Convex usage and cost per window (accrued per month)."""
    start, end, resolution = report.start, report.end, report.resolution
    counters, regions = rollups.series(db, resolution, start, end, deployments)
    stored = storage.series(db, resolution, start, end, deployments)
    first = Period.containing(start)
    before: dict[str, Usage] = {}
    if start > first.start_ms:  # the month's usage before the range uses up included amounts
        before, before_regions = rollups.totals(db, first.start_ms, start, deployments)
        for deployment, byte_ms in storage.totals(db, first.start_ms, start,
                                                  deployments).items():
            before.setdefault(deployment, {}).update(byte_ms)
        for deployment, region in before_regions.items():
            regions[deployment] = max(regions.get(deployment, ""), region)
    for deployment in deployments:
        plan = _plan(book, registry, deployment, report.problems)
        multiplier = book.multiplier(regions.get(deployment, ""))
        period, month = first, dict(before.get(deployment, {}))
        charged = charges.convex_cost(month, plan, multiplier, period) if plan else Decimal(0)
        for bucket in report.buckets:
            if bucket.start >= period.end_ms:
                period, month, charged = Period.containing(bucket.start), {}, Decimal(0)
            added = dict(counters.get(deployment, {}).get(bucket.start, {}))
            charges.add_usage(added, stored.get(deployment, {}).get(bucket.start, {}))
            if not added:
                continue
            charges.add_usage(bucket.usage, added)
            charges.add_usage(month, added)
            if plan is not None:
                now = charges.convex_cost(month, plan, multiplier, period)
                bucket.convex_cost += now - charged
                charged = now


def top(db: Database, book: PriceBook, registry: Owners, count: int, start_ms: int,
        end_ms: int) -> tuple[list[dict[str, Any]], list[str]]:
    """The `count` deployments that cost most over [start, end), most first."""
    problems: list[str] = []
    convex: dict[str, Decimal] = defaultdict(Decimal)
    for period in periods_between(start_ms, end_ms):
        begin, finish = max(start_ms, period.start_ms), min(end_ms, period.end_ms)
        upto, regions = _month_totals(db, period.start_ms, finish)
        before, _ = _month_totals(db, period.start_ms, begin)
        for deployment, used in upto.items():
            plan = _plan(book, registry, deployment, problems)
            if plan is None:
                continue
            multiplier = book.multiplier(regions.get(deployment, ""))
            convex[deployment] += (
                charges.convex_cost(used, plan, multiplier, period)
                - charges.convex_cost(before.get(deployment, {}), plan, multiplier, period))
    tokens: dict[str, Decimal] = defaultdict(Decimal)
    unpriced: set[tuple[str, str]] = set()
    for deployment, used_tokens in rollups.token_totals(db, start_ms, end_ms).items():
        tokens[deployment], missing = charges.token_cost(used_tokens, book)
        unpriced |= missing
    _unpriced(unpriced, problems)
    ranked = sorted(set(convex) | set(tokens),
                    key=lambda d: (-(convex[d] + tokens[d]), d))[:count]
    return [{"deployment": d, "team": owner_of(registry, d).team,
             "plan": (owner_of(registry, d).plan or book.default_plan).lower(),
             "convex_cost": text(convex[d]), "token_cost": text(tokens[d]),
             "cost": text(convex[d] + tokens[d])} for d in ranked], problems


def _month_totals(db: Database, start_ms: int, end_ms: int
                  ) -> tuple[dict[str, Usage], dict[str, str]]:
    if end_ms <= start_ms:
        return {}, {}
    used, regions = rollups.totals(db, start_ms, end_ms)
    for deployment, byte_ms in storage.totals(db, start_ms, end_ms).items():
        used.setdefault(deployment, {}).update(byte_ms)
    return used, regions


def month_to_date_cost(db: Database, book: PriceBook, plan_name: str | None, deployment: str,
                       now_ms: int) -> Decimal:
    """The Convex cost of one deployment's usage so far this month: whole days and hours
    from the rollups, the current hour included (nothing is stamped after now), so no
    raw row is read."""
    period = Period.containing(now_ms)
    end = min(ceil("hour", now_ms), period.end_ms)
    used, regions = rollups.totals(db, period.start_ms, end, [deployment])
    found = used.get(deployment, {})
    found.update(storage.totals(db, period.start_ms, now_ms, [deployment]).get(deployment, {}))
    return charges.convex_cost(found, book.plan(plan_name),
                               book.multiplier(regions.get(deployment, "")), period)
