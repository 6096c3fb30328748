"""What each console page shows, from ClickHouse (through billing's rollups) and the
registry: plain data, which pages.py draws.

Everything here is synchronous and runs in a worker thread of the console's event loop.
Month-to-date figures come from the rollups (usage_daily, usage_hourly, tokens_hourly,
user_tokens_monthly) plus at most the current part-hour of raw rows, so the overview
reads a few rows per deployment however many events the month holds.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from billing import queries, rollups
from billing.database import Database, date, quote
from billing.invoices import Invoice
from billing.periods import Period, iso
from billing.pricebook import PriceBook, PricingError
from billing.registry import Owner, owner_of
from meterstream.console.month_to_date import MonthToDate, owners_of
from meterstream.core.registry import Deployment

PAGE_SIZE = 50
TOP_N = 10
RANGES_MS = {"minute": 2 * 3_600_000, "hour": 48 * 3_600_000, "day": 31 * 86_400_000}
"""How far back each resolution of a deployment's charts reaches."""
OVERVIEW_COLUMNS = ("function_calls", "database_io_gb", "action_compute_gb_hours",
                    "data_egress_gb", "tokens")


# The overview.

@dataclass(frozen=True)
class Filters:
    team: str = ""
    plan: str = ""
    label: str = ""
    """key or key=value"""

    def matches(self, record: Deployment | None, owner: Owner, plan: str) -> bool:
        if self.team and owner.team != self.team:
            return False
        if self.plan and plan != self.plan.lower():
            return False
        if self.label:
            key, _, value = self.label.partition("=")
            labels = record.labels if record is not None else {}
            if key not in labels or ("=" in self.label and labels[key] != value):
                return False
        return True


@dataclass(frozen=True)
class Row:
    deployment: str
    team: str
    plan: str
    labels: dict[str, str]
    usage: dict[str, Any]
    cost: Decimal


@dataclass
class Overview:
    start_ms: int
    now_ms: int
    currency: str
    rows: list[Row]
    """this page's"""
    page: int
    pages: int
    matched: int
    top: list[Row]
    teams: list[tuple[str, int, Decimal]]
    """(team, deployments, month-to-date cost), costliest first"""
    total_cost: Decimal
    problems: list[str] = field(default_factory=list)


def overview(found: MonthToDate, book: PriceBook, records: Sequence[Deployment],
             filters: Filters, page: int) -> Overview:
    """Every deployment (registered, or with usage this month) matching `filters`, costliest
    first, one page of them; the top N and the totals per team over all that match."""
    start, now_ms = found.key[0], found.computed_ms
    by_name = {record.name: record for record in records}
    owners = owners_of(records)
    costs, used, tokens = found.costs, found.used, found.tokens
    rows = []
    for name in sorted(set(by_name) | set(costs) | set(used)):
        owner = owner_of(owners, name)
        plan = (owner.plan or book.default_plan).lower()
        record = by_name.get(name)
        if not filters.matches(record, owner, plan):
            continue
        rows.append(Row(name, owner.team, plan, dict(record.labels) if record else {}, {},
                        costs.get(name, Decimal(0))))
    rows.sort(key=lambda row: (-row.cost, row.deployment))
    pages = max(1, -(-len(rows) // PAGE_SIZE))
    page = min(max(page, 1), pages)
    # Usage in billed units (exact fractions) for the rows shown only: at 10k deployments
    # converting every row would cost more than the queries.
    for row in rows[(page - 1) * PAGE_SIZE:page * PAGE_SIZE]:
        shown = queries.display(used.get(row.deployment, {}), tokens.get(row.deployment, {}))
        row.usage.update({key: shown.get(key, 0) for key in OVERVIEW_COLUMNS})
    teams: dict[str, list[Decimal]] = defaultdict(list)
    for row in rows:
        teams[row.team].append(row.cost)
    team_totals = sorted(((team, len(c), sum(c, Decimal(0))) for team, c in teams.items()),
                         key=lambda item: (-item[2], item[0]))
    return Overview(start, now_ms, book.currency,
                    rows[(page - 1) * PAGE_SIZE:page * PAGE_SIZE], page, pages, len(rows),
                    [row for row in rows[:TOP_N] if row.cost > 0], team_totals,
                    sum((row.cost for row in rows), Decimal(0)), list(found.problems))


# One deployment.

@dataclass
class DeploymentView:
    name: str
    record: dict[str, Any] | None
    """Deployment.public(): no secret, only whether one is set"""
    resolution: str
    report: queries.Report
    month_cost: Decimal | None
    month_usage: dict[str, Any]
    models: list[tuple[str, str, int]]
    """(provider, model, total tokens) this month"""
    users: list[tuple[str, int]]
    """(end user, total tokens) this month, most first"""
    alerts: list[dict[str, Any]]
    live: dict[str, Any] | None = None
    live_problem: str | None = None
    problems: list[str] = field(default_factory=list)


def deployment(db: Database, book: PriceBook, records: Sequence[Deployment], name: str,
               resolution: str, now_ms: int) -> DeploymentView:
    if resolution not in RANGES_MS:
        raise ValueError(f"resolution must be one of {', '.join(RANGES_MS)}")
    owners = owners_of(records)
    record = next((r for r in records if r.name == name), None)
    who = queries.Subject("deployment", name, (name,))
    report = queries.usage(db, book, owners, who, resolution, now_ms - RANGES_MS[resolution],
                           now_ms)
    period = Period.containing(now_ms)
    problems = list(report.problems)
    month_cost: Decimal | None
    try:
        month_cost = queries.month_to_date_cost(db, book, owner_of(owners, name).plan, name,
                                                now_ms)
    except PricingError as exc:
        month_cost = None
        problems.append(str(exc))
    used, _ = rollups.totals(db, period.start_ms, now_ms, [name])
    tokens = rollups.token_totals(db, period.start_ms, now_ms, [name]).get(name, {})
    models = sorted(((provider, model, int(counts.get("total_tokens", 0)))
                     for (provider, model), counts in tokens.items()),
                    key=lambda item: (-item[2], item[0], item[1]))
    users = [(row["user_id"], int(row["total_tokens"])) for row in db.rows(
        f"SELECT user_id, sum(total_tokens) AS total_tokens FROM user_tokens_monthly "
        f"WHERE month = {date(period.start_ms)} AND deployment = {quote(name)} "
        f"GROUP BY user_id ORDER BY total_tokens DESC, user_id LIMIT {PAGE_SIZE}")]
    return DeploymentView(name, record.public() if record else None, resolution, report,
                          month_cost, queries.display(used.get(name, {}), tokens), models,
                          users, alerts(db, 1, name)[0], problems=problems)


def series(report: queries.Report) -> dict[str, list[tuple[int, float]]]:
    """Each shown metric's values per window of the report, zeros included."""
    found: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for bucket in report.buckets:
        for key, value in queries.display(bucket.usage, bucket.tokens).items():
            found[key].append((bucket.start, float(value)))
    return dict(found)




# Alerts and invoices.

def alerts(db: Database, page: int, deployment_name: str | None = None
           ) -> tuple[list[dict[str, Any]], bool]:
    """One page of alerts, newest first, and whether there is a next page."""
    where = f"WHERE deployment = {quote(deployment_name)}" if deployment_name else ""
    offset = (max(page, 1) - 1) * PAGE_SIZE
    rows = db.rows(f"SELECT id, kind, deployment, metric, toUnixTimestamp64Milli(at) AS at_ms, "
                   f"alert FROM alerts FINAL {where} ORDER BY at DESC, id "
                   f"LIMIT {PAGE_SIZE + 1} OFFSET {offset}")
    found = []
    for row in rows[:PAGE_SIZE]:
        try:
            detail = json.loads(row["alert"])
        except ValueError:
            detail = {}
        found.append({**row, "at": iso(int(row["at_ms"])),
                      "detail": detail if isinstance(detail, dict) else {}})
    return found, len(rows) > PAGE_SIZE


def invoice_page(found: list[Invoice], page: int) -> tuple[list[Invoice], int, int]:
    """(this page's invoices, the page, the pages)"""
    pages = max(1, -(-len(found) // PAGE_SIZE))
    page = min(max(page, 1), pages)
    return found[(page - 1) * PAGE_SIZE:page * PAGE_SIZE], page, pages
