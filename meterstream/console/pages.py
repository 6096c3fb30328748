"""The console's pages as HTML: a layout and one function per page, from reads.py's data.

Every tenant-controlled value goes through markup.py (escaped as text or attribute);
no page carries a script, and the console's Content-Security-Policy allows none.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from billing.invoices import STATUSES, Invoice
from billing.money import cents, text
from billing.periods import iso
from meterstream.console.charts import line_chart, number
from meterstream.console.markup import Html, join, path, tag
from meterstream.console.reads import (
    OVERVIEW_COLUMNS,
    RANGES_MS,
    DeploymentView,
    Filters,
    Overview,
    series,
)

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:10px 20px;display:flex;gap:18px;align-items:center}
header a{color:#cfe0ff;text-decoration:none}header .who{margin-left:auto;opacity:.8}
main{padding:16px 20px;max-width:1200px}h1{font-size:20px}h2{font-size:16px;margin-top:24px}
table{border-collapse:collapse;background:#fff;margin:6px 0}
th,td{border:1px solid #dde1e8;padding:4px 8px;text-align:left}td.n{text-align:right}
.chart{background:#fff;margin:4px 8px 4px 0}.chart .frame{fill:none;stroke:#dde1e8}
.chart .line{fill:none;stroke:#2f6fde;stroke-width:2}.chart text{font-size:11px;fill:#555}
.chart .end{text-anchor:end}.charts{display:flex;flex-wrap:wrap}
.problem{color:#a33}.ok{color:#1b7f3b}.bad{color:#a33}
form.inline{display:inline}.wide{overflow-x:auto}.muted{color:#667}code{background:#eef}
"""


def layout(title: str, body: Html, role: str | None) -> Html:
    nav: list[Html] = []
    if role is not None:
        nav = [tag("a", "Overview", href="/"), tag("a", "Alerts", href="/alerts"),
               tag("a", "Invoices", href="/invoices"),
               tag("span", f"signed in: {role}", class_="who"),
               tag("form", tag("button", "Log out", type="submit"), method="post",
                   action="/logout", class_="inline")]
    return Html("<!doctype html>" + tag(
        "html",
        tag("head", tag("meta", charset="utf-8"), tag("title", f"{title} · meterstream"),
            tag("style", Html(STYLE))),
        tag("body", tag("header", tag("strong", "meterstream"), *nav), tag("main", body)),
        lang="en"))


def problems(found: Sequence[str]) -> Html:
    return join(tag("p", problem, class_="problem") for problem in found)


def login(message: str | None = None) -> Html:
    return layout("Log in", join([
        tag("h1", "Log in"),
        tag("p", "The admin token (METERSTREAM_ADMIN_TOKEN) or the read token "
                 "(METERSTREAM_READ_TOKEN, read only)."),
        tag("p", message, class_="problem") if message else None,
        tag("form", tag("input", type="password", name="token", id="token",
                        autocomplete="current-password", autofocus=True),
            tag("button", "Log in", type="submit", id="login"), method="post",
            action="/login")]), None)


def message(title: str, text_: str, role: str | None) -> Html:
    return layout(title, join([tag("h1", title), tag("p", text_)]), role)


def _table(headings: Sequence[str], rows: Sequence[Sequence[object]], id_: str | None = None,
           numeric: frozenset[int] = frozenset()) -> Html:
    head = tag("tr", *(tag("th", h) for h in headings))
    body = [tag("tr", *(tag("td", cell, class_="n" if i in numeric else None)
                        for i, cell in enumerate(row))) for row in rows]
    return tag("table", tag("thead", head), tag("tbody", *body), id=id_)


def _pager(base: str, page: int, pages: int, **query: object) -> Html:
    links: list[object] = [f"page {page} of {pages}"]
    if page > 1:
        links.append(tag("a", "previous", href=path(base, **query, page=page - 1)))
    if page < pages:
        links.append(tag("a", "next", href=path(base, **query, page=page + 1)))
    return tag("p", join(links, " · "), class_="pager")


def _money(value: Decimal, currency: str) -> str:
    return f"{cents(value)} {currency}"


def _labels(labels: dict[str, str]) -> Html:
    return join((tag("code", f"{k}={v}") for k, v in sorted(labels.items())), " ")


def _shown(value: Any) -> str:
    """A count with thousands separators; a decimal as billing wrote it (exact, as in
    `meterstream usage`), never in float notation."""
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return number(value)
    return str(value)


def overview(data: Overview, filters: Filters, role: str) -> Html:
    query = {"team": filters.team, "plan": filters.plan, "label": filters.label}
    form = tag("form", *(tag("label", f"{name} ", tag("input", name=name, value=value))
                         for name, value in query.items()),
               tag("button", "Filter", type="submit"), method="get", action="/")
    rows = [[tag("a", row.deployment, href=path("deployments", row.deployment)), row.team,
             row.plan, _labels(row.labels),
             *(_shown(row.usage[c]) for c in OVERVIEW_COLUMNS),
             _money(row.cost, data.currency)] for row in data.rows]
    top = [[tag("a", row.deployment, href=path("deployments", row.deployment)), row.team,
            _money(row.cost, data.currency)] for row in data.top]
    teams = [[team or "(no team)", count, _money(cost, data.currency)]
             for team, count, cost in data.teams]
    return layout("Overview", join([
        tag("h1", f"Month to date: {iso(data.start_ms)[:10]} to {iso(data.now_ms)}"),
        tag("p", f"figures as of {iso(data.now_ms)}, recomputed in the background when "
                 "older than a few seconds", class_="muted"),
        problems(data.problems), form,
        tag("p", f"{data.matched} deployments, {_money(data.total_cost, data.currency)}",
            id="summary"),
        tag("h2", "Top by cost"),
        _table(("deployment", "team", "cost"), top, "top", frozenset({2})) if top
        else tag("p", "no deployment has cost anything this month yet", class_="muted"),
        tag("h2", "Per team"), _table(("team", "deployments", "cost"), teams, "teams",
                                      frozenset({1, 2})),
        tag("h2", "Deployments"),
        tag("div", _table(("deployment", "team", "plan", "labels", *OVERVIEW_COLUMNS, "cost"),
                          rows, "deployments", frozenset(range(4, 5 + len(OVERVIEW_COLUMNS)))),
            class_="wide"),
        _pager("", data.page, data.pages, **query)]), role)


def _live(view: DeploymentView) -> Html:
    if view.live is None:
        return tag("p", f"live status unavailable: {view.live_problem}", class_="problem",
                   id="live")
    rows = []
    for quota in view.live.get("quotas", []):
        if not isinstance(quota, dict):
            continue
        limit, used = quota.get("limit") or 0, quota.get("usage") or 0
        share = f"{100 * used / limit:.1f}%" if limit else ""
        rows.append([quota.get("metric"), quota.get("period"), quota.get("user", ""),
                     _shown(used), _shown(limit), share,
                     ", ".join(f"{100 * float(t):g}%" for t in quota.get("thresholds", [])),
                     "hard" if quota.get("hard") else "soft",
                     tag("span", "exceeded", class_="bad") if quota.get("exceeded")
                     else tag("span", "ok", class_="ok")])
    hard = view.live.get("hard_limit_exceeded")
    return join([
        tag("p", "hard limit exceeded" if hard else "within hard limits",
            class_="bad" if hard else "ok", id="live"),
        _table(("metric", "period", "user", "usage", "limit", "used", "thresholds", "kind",
                "state"), rows, "quotas", frozenset({3, 4, 5}))
        if rows else tag("p", "no quotas set", class_="muted")])


def _alert_rows(alerts: Sequence[dict[str, Any]], with_deployment: bool) -> list[list[object]]:
    rows: list[list[object]] = []
    for alert in alerts:
        detail = alert["detail"]
        said = ", ".join(f"{k}={detail[k]}" for k in ("period", "threshold", "usage", "limit",
                                                       "user", "calls", "baseline_per_minute")
                         if k in detail)
        first: list[object] = ([tag("a", alert["deployment"],
                                    href=path("deployments", alert["deployment"]))]
                               if with_deployment else [])
        rows.append([alert["at"], *first, alert["kind"], alert["metric"], said])
    return rows


def deployment(view: DeploymentView, role: str, currency: str) -> Html:
    charts = series(view.report)
    storage = {k: v for k, v in charts.items() if "storage" in k}
    usage = {k: v for k, v in charts.items() if k not in storage}
    resolutions = join((tag("a", r, href=path("deployments", view.name, resolution=r),
                            class_="current" if r == view.resolution else None)
                        for r in RANGES_MS), " · ")
    record: Html
    if view.record is None:
        record = tag("p", "not in the registry (usage billed on the default plan)",
                     class_="muted")
    else:
        record = _table(("field", "value"), [
            [key, _labels(value) if key == "labels" else
             "; ".join(f"{q.get('metric')}/{q.get('period')} ≤ {q.get('limit')}"
                       for q in value if isinstance(q, dict)) if key == "quotas" else
             "" if value is None else str(value)]
            for key, value in view.record.items()], "record")
    month = [[key, _shown(value)] for key, value in view.month_usage.items()]
    cost = ("unpriced" if view.month_cost is None else _money(view.month_cost, currency))
    return layout(view.name, join([
        tag("h1", "Deployment ", tag("span", view.name, id="deployment-name")),
        problems(view.problems),
        tag("p", "Month-to-date Convex cost: ", tag("strong", cost, id="month-cost")),
        _table(("metric", "this month"), month, "month-usage", frozenset({1})),
        tag("h2", "Live quota status (worker)"), _live(view),
        tag("h2", f"Usage per {view.resolution}"), tag("p", resolutions),
        tag("div", *(line_chart(key, values, view.resolution) for key, values in usage.items()),
            id="usage-charts", class_="charts"),
        tag("h2", "Storage over time"),
        tag("div", *(line_chart(key, values, view.resolution)
                     for key, values in storage.items()), id="storage-charts",
            class_="charts"),
        tag("h2", "Tokens per model (this month)"),
        _table(("provider", "model", "tokens"), [list(m) for m in view.models], "models",
               frozenset({2})),
        tag("h2", "Tokens per end user (this month)"),
        _table(("user", "tokens"), [list(u) for u in view.users], "users", frozenset({1})),
        tag("h2", "Alerts"),
        _table(("at", "kind", "metric", "detail"), _alert_rows(view.alerts, False), "alerts"),
        tag("h2", "Registry record"), record]), role)


def alerts(found: Sequence[dict[str, Any]], page: int, more: bool, role: str) -> Html:
    links: list[object] = [f"page {page}"]
    if page > 1:
        links.append(tag("a", "newer", href=path("alerts", page=page - 1)))
    if more:
        links.append(tag("a", "older", href=path("alerts", page=page + 1)))
    return layout("Alerts", join([
        tag("h1", "Alerts"),
        _table(("at", "deployment", "kind", "metric", "detail"), _alert_rows(found, True),
               "alerts"),
        tag("p", join(links, " · "))]), role)


def invoices(found: Sequence[Invoice], period: str, status: str, page: int, pages: int,
             role: str, csrf: str) -> Html:
    form = tag("form", tag("label", "period ", tag("input", type="month", name="period",
                                                   value=period[:7])),
               tag("label", " status ", tag("select", tag("option", "any", value=""),
                                            *(tag("option", s, value=s, selected=s == status)
                                              for s in STATUSES), name="status")),
               tag("button", "Show", type="submit"), method="get", action="/invoices")
    rows = []
    for invoice in found:
        lines = _table(("item", "usage", "included", "quantity", "unit price", "amount"),
                       [[line.description or line.item, text(line.usage), text(line.included),
                         text(line.quantity), text(line.unit_price), text(line.amount)]
                        for line in invoice.lines], numeric=frozenset({1, 2, 3, 4, 5}))
        actions: list[object] = []
        if role == "admin":
            actions = [tag("form", tag("input", type="hidden", name="csrf", value=csrf),
                           tag("input", type="hidden", name="status", value=s),
                           tag("input", type="hidden", name="period", value=period[:7]),
                           tag("button", f"mark {s}", type="submit",
                               data_invoice=invoice.id, data_status=s),
                           method="post", action=path("invoices", invoice.id, "status"),
                           class_="inline")
                       for s in ("paid", "failed") if s != invoice.status]
        rows.append(tag("tr", tag("td", invoice.id),
                        tag("td", tag("a", invoice.deployment,
                                      href=path("deployments", invoice.deployment))),
                        tag("td", invoice.user_id), tag("td", invoice.team),
                        tag("td", invoice.subject),
                        tag("td", _money(invoice.amount_due, invoice.currency), class_="n"),
                        tag("td", invoice.status, class_="status"),
                        tag("td", tag("details", tag("summary", f"{len(invoice.lines)} lines"),
                                      lines)),
                        tag("td", *actions), id=f"invoice-{invoice.id}"))
    table = tag("table", tag("thead", tag("tr", *(tag("th", h) for h in (
        "invoice", "deployment", "user", "team", "subject", "amount due", "status",
        "line items", "")))), tag("tbody", *rows), id="invoices")
    return layout("Invoices", join([
        tag("h1", f"Invoices {period[:7]}"), form,
        tag("p", tag("a", "download CSV", id="csv",
                     href=path("invoices.csv", period=period[:7], status=status))),
        table, _pager("invoices", page, pages, period=period[:7], status=status)]), role)
