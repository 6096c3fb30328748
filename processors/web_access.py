"""Who may use the worker's web server: the probes are open, everything else needs a token.

The worker's API (`GET /v1/quota/{deployment}`, and whatever route is added later)
answers from every tenant's live usage, so it takes `Authorization: Bearer <token>`
with METERSTREAM_READ_TOKEN or METERSTREAM_ADMIN_TOKEN. The check is an aiohttp
middleware on Faust's web application, so it runs before any view, including before
Faust forwards a request to the worker that owns the deployment (the forwarded request
carries the same header and is checked again there).

Deny by default: only the probes (`/healthz`, `/readyz`, `/metrics`: state, never
data) and `/openapi.json` (the API's description) pass without a token; any other
path, whether a route exists or not, is refused without one. A route Faust adds in a
later version is therefore closed, not open.

    no token configured   403 `api_disabled`: the API is off, not open
    no bearer token       401 `unauthenticated`, with `WWW-Authenticate: Bearer`
    a wrong token         403 `forbidden`

Tokens are compared by their SHA-256, with `hmac.compare_digest`, against both
configured tokens every time: the time taken tells neither which token nor how much of
one matched, nor its length.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from meterstream.core.openapi import OPENAPI_PATH
from meterstream.core.service import PROBES
from processors import metrics

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPEN = (*PROBES, OPENAPI_PATH)
"""What passes without a token: the probes and the API's description, never data."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _refused(status: int, reason: str, message: str) -> web.Response:
    metrics.API_REFUSED.labels(reason).inc()
    headers = {"WWW-Authenticate": 'Bearer realm="meterstream"'} if status == 401 else None
    return web.json_response({"error": message, "reason": reason}, status=status,
                             headers=headers)


class TokenCheck:
    """Whether a bearer token is one of the configured ones (empty ones are not)."""

    def __init__(self, *tokens: str) -> None:
        self._digests = tuple(_digest(token) for token in tokens if token)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def accepts(self, token: str) -> bool:
        presented = _digest(token)
        matched = False
        for digest in self._digests:  # every one, without stopping at a match
            matched |= hmac.compare_digest(presented, digest)
        return matched


def api_guard(read_token: str, admin_token: str) -> Middleware:
    """The middleware closing every path but the probes to requests without a token."""
    check = TokenCheck(read_token, admin_token)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN:
            return await handler(request)
        if not check.enabled:
            # 403, not 404: the operator sees at once that the API is off, and why, and
            # a 404 would read like the quota API's "deployment not registered".
            return _refused(403, "api_disabled", "the worker's API is off; set "
                            "METERSTREAM_READ_TOKEN (or METERSTREAM_ADMIN_TOKEN)")
        token = _bearer(request)
        if token is None:
            return _refused(401, "unauthenticated",
                            "send Authorization: Bearer <read token or admin token>")
        if not check.accepts(token):
            return _refused(403, "forbidden", "not a read or admin token")
        return await handler(request)

    return guard
