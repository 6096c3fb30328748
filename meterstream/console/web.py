"""The console's HTTP routes: log in and out, the pages, marking an invoice, the CSV.

Reads run in a worker thread (billing's SQL is synchronous); a page whose data cannot be
read says so with 503 rather than a stack trace. Responses carry a Content-Security-
Policy that allows no script and no network access beyond this origin.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from prometheus_client import Counter, Histogram

from billing import export
from billing import invoices as invoice_store
from billing.invoices import InvoiceError
from billing.periods import Period
from billing.pricebook import PriceBook
from meterstream.console import pages, reads
from meterstream.console.access import (
    COOKIE,
    CSRF_FIELD,
    Tokens,
    bearer,
    csrf_matches,
    csrf_token,
)
from meterstream.console.clickhouse_reader import ClickHouseReader, Unavailable
from meterstream.console.markup import Html
from meterstream.console.month_to_date import MonthToDateCache
from meterstream.core.query import QueryError
from meterstream.core.registry import Deployment

log = logging.getLogger("meterstream.console")

REQUESTS = Counter("meterstream_console_requests_total",
                   "Console requests answered, by page and status.", ["page", "status"])
PAGE_SECONDS = Histogram("meterstream_console_page_seconds",
                         "Time to answer a console page, by page.", ["page"])
LOGINS = Counter("meterstream_console_logins_total",
                 "Console logins: accepted (admin, read) or refused.", ["result"])
INVOICE_MARKS = Counter("meterstream_console_invoice_marks_total",
                        "Invoice statuses set through the console, by status.", ["status"])

SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; style-src 'unsafe-inline'; "
                                "img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
                                "base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
WORKER_TIMEOUT_SECONDS = 5.0


@dataclass
class Sources:
    """Where the console's data comes from; built by the process, faked by unit tests."""

    clickhouse: ClickHouseReader
    book: PriceBook
    deployments: Callable[[], list[Deployment]]
    """the registry's records as they are now"""
    live_quota: Callable[[str], Awaitable[dict[str, Any]]]
    """the worker's GET /v1/quota/{deployment} answer"""
    now_ms: Callable[[], int] = lambda: int(time.time() * 1000)
    month_to_date: MonthToDateCache = field(default_factory=MonthToDateCache)


_TOKEN: web.AppKey[Tokens] = web.AppKey("tokens", Tokens)
_SOURCES: web.AppKey[Sources] = web.AppKey("sources", Sources)
_ROLE: web.RequestKey[str] = web.RequestKey("role", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _page(response: web.StreamResponse) -> web.StreamResponse:
    response.headers.update(SECURITY_HEADERS)
    return response


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _html(body: Html, status: int = 200) -> web.StreamResponse:
    return _page(web.Response(text=body, status=status, content_type="text/html"))


def _token(request: web.Request) -> str | None:
    return bearer(request.headers.get("Authorization")) or request.cookies.get(COOKIE)


def _role(request: web.Request) -> str:
    """The signed-in role; set by `page` before any page handler runs."""
    return request[_ROLE]


def page(name: str, admin: bool = False) -> Callable[[Handler], Handler]:
    """A page behind the tokens: 403 when the console is off, a login page (401) without
    a valid token, 403 for a read token on an admin action; counted and timed."""
    def wrap(handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            started = time.perf_counter()
            response = await _guarded(request, handler, admin)
            REQUESTS.labels(name, str(response.status)).inc()
            PAGE_SECONDS.labels(name).observe(time.perf_counter() - started)
            return response
        return guarded
    return wrap


async def _guarded(request: web.Request, handler: Handler, admin: bool) -> web.StreamResponse:
    tokens = request.app[_TOKEN]
    if not tokens.enabled:
        return _html(pages.message("Console off", "Set METERSTREAM_ADMIN_TOKEN or "
                                   "METERSTREAM_READ_TOKEN to use the console.", None), 403)
    role = tokens.role(_token(request))
    if role is None:
        if request.method == "GET" and "Authorization" not in request.headers:
            return _html(pages.login(), 401)
        return _html(pages.message("Not signed in", "A valid token is needed.", None), 401)
    if admin and role != "admin":
        return _html(pages.message("Forbidden", "The read token cannot change anything; "
                                   "log in with the admin token.", role), 403)
    request[_ROLE] = role
    try:
        return await handler(request)
    except Unavailable as exc:
        return _html(pages.message("ClickHouse unavailable", str(exc), role), 503)
    except QueryError as exc:
        log.error("console query refused", extra={"error": str(exc)})
        return _html(pages.message("Query refused", str(exc), role), 500)


async def login_page(request: web.Request) -> web.StreamResponse:
    return _html(pages.login())


async def login(request: web.Request) -> web.StreamResponse:
    tokens = request.app[_TOKEN]
    form = await request.post()
    token = form.get("token")
    role = tokens.role(token if isinstance(token, str) else None)
    if role is None:
        LOGINS.labels("refused").inc()
        return _html(pages.login("That token opens nothing here."), 401)
    LOGINS.labels(role).inc()
    response = _see_other("/")
    response.set_cookie(COOKIE, str(token), httponly=True, samesite="Strict", path="/",
                        secure=request.secure)
    return _page(response)


async def logout(request: web.Request) -> web.StreamResponse:
    response = _see_other("/login")
    response.del_cookie(COOKIE, path="/")
    return _page(response)


MAX_PAGE = 1_000_000
"""Beyond it an OFFSET would overflow ClickHouse's integer: no page has that many anyway."""


def _int(request: web.Request, name: str, default: int = 1) -> int:
    try:
        return max(1, min(int(request.query.get(name, default)), MAX_PAGE))
    except ValueError:
        return default


@page("overview")
async def overview(request: web.Request) -> web.StreamResponse:
    sources = request.app[_SOURCES]
    filters = reads.Filters(request.query.get("team", ""), request.query.get("plan", ""),
                            request.query.get("label", ""))
    records = sources.deployments()
    found = await asyncio.to_thread(sources.month_to_date.get, sources.clickhouse.database(),
                                    sources.book, records, sources.now_ms())
    data = reads.overview(found, sources.book, records, filters, _int(request, "page"))
    return _html(pages.overview(data, filters, _role(request)))


@page("deployment")
async def deployment(request: web.Request) -> web.StreamResponse:
    sources = request.app[_SOURCES]
    name = request.match_info["name"]
    resolution = request.query.get("resolution", "hour")
    if resolution not in reads.RANGES_MS:
        return _html(pages.message("Bad request", f"resolution is one of "
                                   f"{', '.join(reads.RANGES_MS)}", _role(request)), 400)
    view = await asyncio.to_thread(reads.deployment, sources.clickhouse.database(),
                                   sources.book, sources.deployments(), name, resolution,
                                   sources.now_ms())
    try:
        view.live = await sources.live_quota(name)
    except Exception as exc:  # the page shows the rest; the quota box says why it is empty
        view.live_problem = str(exc) or type(exc).__name__
    return _html(pages.deployment(view, _role(request), sources.book.currency))


@page("alerts")
async def alerts(request: web.Request) -> web.StreamResponse:
    sources = request.app[_SOURCES]
    page_number = _int(request, "page")
    found, more = await asyncio.to_thread(reads.alerts, sources.clickhouse.database(),
                                          page_number)
    return _html(pages.alerts(found, page_number, more, _role(request)))


def _period(request: web.Request, sources: Sources) -> Period:
    given = request.query.get("period", "")
    return Period.parse(given) if given else Period.containing(sources.now_ms())


def _status(request: web.Request) -> str | None:
    status = request.query.get("status", "")
    if status and status not in invoice_store.STATUSES:
        raise ValueError(f"status is one of {', '.join(invoice_store.STATUSES)}")
    return status or None


@page("invoices")
async def invoices(request: web.Request) -> web.StreamResponse:
    sources = request.app[_SOURCES]
    try:
        period, status = _period(request, sources), _status(request)
    except ValueError as exc:
        return _html(pages.message("Bad request", str(exc), _role(request)), 400)
    found = await asyncio.to_thread(invoice_store.show, sources.clickhouse.database(), period,
                                    status)
    shown, page_number, pages_count = reads.invoice_page(found, _int(request, "page"))
    token = _token(request) or ""
    return _html(pages.invoices(shown, period.label, status or "", page_number, pages_count,
                                _role(request), csrf_token(token)))


@page("invoices_csv")
async def invoices_csv(request: web.Request) -> web.StreamResponse:
    sources = request.app[_SOURCES]
    try:
        period, status = _period(request, sources), _status(request)
    except ValueError as exc:
        return _html(pages.message("Bad request", str(exc), _role(request)), 400)
    found = await asyncio.to_thread(invoice_store.show, sources.clickhouse.database(), period,
                                    status)
    response = web.Response(text=export.as_csv(found), content_type="text/csv")
    response.headers["Content-Disposition"] = (
        f'attachment; filename="invoices-{period.compact}.csv"')
    return _page(response)


@page("mark_invoice", admin=True)
async def mark_invoice(request: web.Request) -> web.StreamResponse:
    sources = request.app[_SOURCES]
    form = await request.post()
    given = form.get(CSRF_FIELD)
    if not csrf_matches(_token(request) or "", given if isinstance(given, str) else None):
        return _html(pages.message("Forbidden", "The form's CSRF field is missing or wrong; "
                                   "reload the invoices page and try again.",
                                   _role(request)), 403)
    status, invoice_id = str(form.get("status", "")), request.match_info["id"]
    try:
        changed = await asyncio.to_thread(invoice_store.mark,
                                          sources.clickhouse.database(write=True),
                                          invoice_id, status)
    except InvoiceError as exc:
        return _html(pages.message("Cannot mark", str(exc), _role(request)), 400)
    INVOICE_MARKS.labels(changed.status).inc()
    log.info("invoice marked in the console",
             extra={"invoice": invoice_id, "status": changed.status, "role": _role(request)})
    return _page(_see_other(f"/invoices?period={quote(changed.period.label[:7])}"))


def application(tokens: Tokens, sources: Sources) -> web.Application:
    """The console's routes (the process adds the probes)."""
    app = web.Application(client_max_size=64 * 1024)
    app[_TOKEN] = tokens
    app[_SOURCES] = sources
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/", overview)
    app.router.add_get("/deployments/{name}", deployment)
    app.router.add_get("/alerts", alerts)
    app.router.add_get("/invoices", invoices)
    app.router.add_get("/invoices.csv", invoices_csv)
    app.router.add_post("/invoices/{id}/status", mark_invoice)
    return app


async def worker_quota(session: aiohttp.ClientSession, worker_url: str, token: str,
                       name: str) -> dict[str, Any]:
    """The worker's live quota answer for `name`; raises with the worker's status."""
    url = f"{worker_url}/v1/quota/{quote(name, safe='')}"
    async with session.get(url, headers={"Authorization": f"Bearer {token}"},
                           timeout=aiohttp.ClientTimeout(total=WORKER_TIMEOUT_SECONDS)
                           ) as answer:
        if answer.status != 200:
            raise RuntimeError(f"the worker answered {answer.status}")
        found: dict[str, Any] = await answer.json()
        return found
