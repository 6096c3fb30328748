"""aiohttp's own refusals in meterstream's error shape.

aiohttp answers a path no route serves (404), a method a route does not take (405) and
a body over the application's limit (413) in plain text, before or outside any handler
of ours. The middleware `json_errors` answers them as every other refusal is answered,
`{"error": ..., "reason": ...}` (the `Error` schema of meterstream/core/openapi.py),
keeping their status and headers (Allow on a 405). An exception no handler expected
becomes a 500 in that shape too, logged with its traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

log = logging.getLogger("meterstream.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REASONS = {404: "not_found", 405: "method_not_allowed", 413: "too_large",
           400: "bad_request", 408: "timeout", 415: "unsupported_media_type",
           500: "internal"}
"""The reason of each status aiohttp refuses with; any other is `http_<status>`."""

_MESSAGES = {404: "no such path", 405: "method not allowed on this path",
             413: "the body exceeds this listener's limit"}


def error_body(status: int, message: str) -> web.Response:
    return web.json_response({"error": message,
                              "reason": REASONS.get(status, f"http_{status}")},
                             status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # a redirect is not a refusal
        answer = error_body(exc.status, _MESSAGES.get(exc.status, exc.reason))
        for name in ("Allow", "Retry-After", "WWW-Authenticate"):
            if name in exc.headers:
                answer.headers[name] = exc.headers[name]
        return answer
    except ConnectionError:
        raise  # the client went away: nobody to answer
    except Exception:
        log.exception("a request failed", extra={"method": request.method,
                                                 "path": request.path})
        answer = error_body(500, "internal error; the service logged it")
        answer.headers["Connection"] = "close"
        return answer
