"""`GET /v1/usage`: a customer's own usage and cost, for a read token
(meterstream/core/read_tokens.py), on the receiver's public listener.

    GET /v1/usage[?period=YYYY-MM][&resolution=month|day|hour]
    Authorization: Bearer msr_<id>.<secret>

The scope comes from the token alone: a deployment, a team (its deployments as the
registry says now) or one end user of a deployment. The answer is what
`meterstream usage --deployment D | --team T | --deployment D --user U --format json`
prints for the same range (billing/queries.py computes both), plus `period` and `quota`:
the live quota status from the worker for a deployment or an end user (null for a team,
or when the worker does not answer, with the reason in `problems`). The default period
is the current UTC month up to now; a past month is taken whole.

Refusals have the receiver's JSON shape {"error", "reason", ...}: 401 unauthenticated
(no bearer token), invalid_token (malformed, unknown or tampered: one answer),
token_expired, token_revoked; 400 invalid (a parameter other than period and
resolution, so nothing in the query can name another scope); 503 while the tokens or
the registry load, or when ClickHouse does not answer.

CORS: origins in METERSTREAM_USAGE_CORS_ORIGINS get Access-Control-Allow-Origin on every
answer (refusals too, so that a page can read why) and their preflight (OPTIONS) is
answered; other origins get no CORS header, and their preflight a 403.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from clickhouse_connect.driver.exceptions import ClickHouseError

from billing import metrics, queries
from billing.database import Database
from billing.periods import Period, iso
from billing.pricebook import PriceBook
from billing.quota_source import QuotaSource, QuotaUnavailable
from billing.registry import owners
from meterstream.core.query import ClickHouseUnavailable, Execute, QueryError
from meterstream.core.read_tokens import ReadToken, ReadTokenView, TokenRefused
from meterstream.core.registry import RegistryView

log = logging.getLogger("meterstream.usage_view")

USAGE = "/v1/usage"
PARAMETERS = ("period", "resolution")
RESOLUTIONS = ("month", "day", "hour")
PREFLIGHT_MAX_AGE = "600"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def refusal(status: int, reason: str, message: str, **extra: object) -> web.Response:
    metrics.USAGE_VIEW_REQUESTS.labels(str(status), reason).inc()
    headers = {"WWW-Authenticate": 'Bearer realm="meterstream"'} if status == 401 else {}
    if status == 503:
        headers["Retry-After"] = "5"
    return web.json_response({"error": message, "reason": reason, **extra}, status=status,
                             headers=headers)


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def period_range(text: str | None, now_ms: int) -> tuple[Period, int, int]:
    """The period asked for (default: this UTC month) and its [start, end): up to now for
    the current month, whole for a past one. Raises ValueError for a later month."""
    period = Period.parse(text) if text is not None else Period.containing(now_ms)
    if period.start_ms > now_ms:
        raise ValueError(f"{period.label[:7]} has not begun")
    return period, period.start_ms, min(period.end_ms, now_ms)


class UsageView:
    def __init__(self, tokens: ReadTokenView, registry: RegistryView, book: PriceBook | None,
                 run: Execute, quotas: QuotaSource, cors_origins: tuple[str, ...]) -> None:
        self.tokens = tokens
        self.registry = registry
        self.book = book
        self.run = run
        self.quotas = quotas
        self.cors_origins = cors_origins

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(USAGE, self._cors(self.usage))
        app.router.add_route("OPTIONS", USAGE, self.preflight)

    def _allowed(self, origin: str | None) -> str | None:
        """The Access-Control-Allow-Origin for `origin`, or None."""
        if origin is None or not self.cors_origins:
            return None
        if self.cors_origins == ("*",):
            return "*"
        return origin if origin.lower() in self.cors_origins else None

    def _cors(self, handler: Handler) -> Handler:
        async def with_cors(request: web.Request) -> web.StreamResponse:
            response = await handler(request)
            allowed = self._allowed(request.headers.get("Origin"))
            if allowed is not None:
                response.headers["Access-Control-Allow-Origin"] = allowed
                response.headers["Access-Control-Expose-Headers"] = "Retry-After"
            if self.cors_origins and self.cors_origins != ("*",):
                response.headers["Vary"] = "Origin"
            return response

        return with_cors

    async def preflight(self, request: web.Request) -> web.Response:
        allowed = self._allowed(request.headers.get("Origin"))
        if allowed is None:
            return refusal(403, "origin_not_allowed", "this origin may not call the usage "
                           "API (METERSTREAM_USAGE_CORS_ORIGINS)")
        method = request.headers.get("Access-Control-Request-Method", "GET")
        if method.upper() != "GET":
            return refusal(403, "method_not_allowed", "only GET is allowed")
        metrics.USAGE_VIEW_REQUESTS.labels("204", "preflight").inc()
        return web.Response(status=204, headers={
            "Access-Control-Allow-Origin": allowed,
            "Access-Control-Allow-Methods": "GET",
            "Access-Control-Allow-Headers": "Authorization",
            "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
            **({"Vary": "Origin"} if allowed != "*" else {})})

    async def usage(self, request: web.Request) -> web.Response:
        token = _bearer(request)
        if token is None:
            return refusal(401, "unauthenticated", "send Authorization: Bearer <read token>")
        if not (self.tokens.loaded and self.registry.loaded):
            return refusal(503, "loading", "the read tokens and the registry are loading")
        now = int(time.time() * 1000)
        try:
            record = self.tokens.check(token, now)
        except TokenRefused as exc:
            log.info("usage read refused", extra={"cause": exc.cause})
            message = {"invalid_token": "not a valid read token",
                       "token_expired": "the read token has expired",
                       "token_revoked": "the read token was revoked"}[exc.reason]
            return refusal(401, exc.reason, message)
        problems = {key: f"unknown parameter; known: {', '.join(PARAMETERS)} (the scope "
                         "comes from the token)"
                    for key in request.query if key not in PARAMETERS}
        resolution = request.query.get("resolution", "month")
        if resolution not in RESOLUTIONS:
            problems["resolution"] = f"one of {', '.join(RESOLUTIONS)}"
        try:
            period, start, end = period_range(request.query.get("period"), now)
        except ValueError as exc:
            problems["period"] = f"a month that has begun, YYYY-MM: {exc}"
        if problems:
            return refusal(400, "invalid", "invalid usage request", fields=problems)
        if self.book is None:
            return refusal(503, "usage_unavailable", "the price book could not be loaded")
        started = time.perf_counter()
        try:
            answer = await self._answer(record, period, resolution, start, end)
        except queries.UsageQueryError as exc:
            return refusal(404, "not_found", str(exc))
        except (QueryError, ClickHouseUnavailable, ClickHouseError, OSError) as exc:
            log.warning("usage read failed", extra={"token_id": record.id, "error": str(exc)})
            return refusal(503, "usage_unavailable", "usage could not be read; retry")
        metrics.USAGE_VIEW_SECONDS.observe(time.perf_counter() - started)
        metrics.USAGE_VIEW_REQUESTS.labels("200", "ok").inc()
        return web.json_response(answer)

    async def _answer(self, record: ReadToken, period: Period, resolution: str, start: int,
                      end: int) -> dict[str, Any]:
        registry = owners(self.registry.all())
        who = queries.subject(registry, record.deployment, record.team, record.user)
        book = self.book
        assert book is not None
        # The billing queries block (a server round trip, or the sink's socket): off the
        # event loop, which keeps taking webhooks meanwhile.
        report = await asyncio.to_thread(queries.usage, Database(self.run), book, registry,
                                         who, resolution, start, end)
        answer = {"period": period.label[:7], **report.to_json(), "quota": None,
                  "token": {"id": record.id, "expires_at": iso(record.expires_at)}}
        if record.deployment is not None:
            try:
                answer["quota"] = await self.quotas.status(record.deployment, record.user)
            except QuotaUnavailable as exc:
                answer["problems"] = [*answer["problems"], f"quota status unavailable: {exc}"]
        return answer
