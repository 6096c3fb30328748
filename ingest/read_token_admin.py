"""The admin API of read tokens (meterstream/core/read_tokens.py), on the admin listener
beside /v1/deployments and behind the same admin token:

    POST   /v1/read-tokens        {"scope": {"deployment": D} | {"team": T} |
                                   {"deployment": D, "user": U}, "expires_in": seconds}
                                  201 with the token, shown this once, and its record
    GET    /v1/read-tokens[?deployment=D][&team=T]   the records, never a token
    GET    /v1/read-tokens/{id}
    DELETE /v1/read-tokens/{id}   revokes it (the record stays, marked revoked)

A deployment (or end-user) scope needs a registered deployment, a team scope a
registered deployment of that team, so that a typo is refused rather than issued as a
token that reads nothing. A write is answered once this replica's view holds it, so the
token works here at once, and on the other replicas as soon as they read it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson
from aiohttp import web

from ingest import metrics
from ingest.admin import Handler, json_error
from ingest.producer import Overloaded, Unavailable
from meterstream.core.read_tokens import (
    InvalidScope,
    ReadToken,
    ReadTokenView,
    Scope,
    issue,
    valid_id,
)
from meterstream.core.registry import RegistryView

TOKENS = "/v1/read-tokens"
APPLY_TIMEOUT = 10.0


class ReadTokenAdmin:
    def __init__(self, tokens: ReadTokenView, registry: RegistryView, store: Any, topic: str,
                 default_ttl: float, max_ttl: float) -> None:
        self.tokens = tokens
        self.registry = registry
        self._store = store  # Producer.store: (topic, key, value, headers) -> offset
        self.topic = topic
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl

    def add_routes(self, app: web.Application, authorised: Callable[[Handler], Handler]) -> None:
        app.router.add_post(TOKENS, authorised(self._loaded(self.issue)))
        app.router.add_get(TOKENS, authorised(self._loaded(self.list)))
        app.router.add_get(TOKENS + "/{id}", authorised(self._loaded(self.get)))
        app.router.add_delete(TOKENS + "/{id}", authorised(self._loaded(self.revoke)))

    def _loaded(self, handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            if not self.tokens.loaded:
                return json_error(503, TOKENS, "tokens_loading", "the read tokens are loading")
            return await handler(request)

        return checked

    async def issue(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read() or b"{}")
        except orjson.JSONDecodeError as exc:
            return json_error(400, TOKENS, "malformed", f"malformed JSON: {exc.msg}")
        if not isinstance(body, dict):
            return json_error(400, TOKENS, "malformed", "expected a JSON object")
        problems = {key: "unknown field; known: scope, expires_in"
                    for key in body if key not in ("scope", "expires_in")}
        ttl = body.get("expires_in", self.default_ttl)
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) \
                or not 1 <= ttl <= self.max_ttl:
            problems["expires_in"] = (f"seconds, from 1 to {self.max_ttl:g} "
                                      "(METERSTREAM_READ_TOKEN_MAX_TTL)")
        try:
            scope = Scope.parse(body.get("scope"))
        except InvalidScope as exc:
            problems.update(exc.fields)
        if problems:
            return json_error(400, TOKENS, "invalid", "invalid read token", fields=problems)
        missing = self._unknown(scope)
        if missing is not None:
            return json_error(404, TOKENS, "not_found", missing)
        now = int(time.time() * 1000)
        token, record = issue(scope, now, now + int(ttl * 1000))
        failure = await self._write(record)
        if failure is not None:
            return failure
        metrics.READ_TOKENS.labels("issued", scope.kind).inc()
        return web.json_response({"token": token, **record.public(now)}, status=201)

    def _unknown(self, scope: Scope) -> str | None:
        """Why the scope names nothing that is registered, or None."""
        if scope.team is not None:
            if not any(d.team == scope.team and not d.removed_at for d in self.registry.all()):
                return f"no registered deployment of team {scope.team!r}"
            return None
        deployment = self.registry.get(scope.deployment or "")
        if deployment is None or deployment.removed_at:
            return f"no registered deployment {scope.deployment!r}"
        return None

    async def list(self, request: web.Request) -> web.Response:
        now = int(time.time() * 1000)
        wanted = {key: request.query[key] for key in ("deployment", "team")
                  if key in request.query}
        found = [token.public(now) for token in self.tokens.all()
                 if all(getattr(token, key) == value for key, value in wanted.items())]
        return web.json_response({"tokens": found})

    def _record(self, request: web.Request) -> ReadToken | web.Response:
        token_id = request.match_info["id"]
        record = self.tokens.get(token_id) if valid_id(token_id) else None
        if record is None:
            return json_error(404, TOKENS, "not_found", "no such read token")
        return record

    async def get(self, request: web.Request) -> web.Response:
        record = self._record(request)
        if isinstance(record, web.Response):
            return record
        return web.json_response(record.public(int(time.time() * 1000)))

    async def revoke(self, request: web.Request) -> web.Response:
        """Revokes the token; revoking it again changes nothing and answers the same."""
        record = self._record(request)
        if isinstance(record, web.Response):
            return record
        now = int(time.time() * 1000)
        if not record.revoked_at:
            record = replace(record, revoked_at=now)
            failure = await self._write(record)
            if failure is not None:
                return failure
            metrics.READ_TOKENS.labels("revoked", record.kind).inc()
        return web.json_response(record.public(now))

    async def _write(self, record: ReadToken) -> web.Response | None:
        try:
            offset = await self._store(self.topic, record.id.encode(), record.to_json(), [])
            async with asyncio.timeout(APPLY_TIMEOUT):
                await self.tokens.wait_applied(offset)
        except (Unavailable, Overloaded) as exc:
            return json_error(503, TOKENS, "kafka_unavailable", f"not stored: {exc}")
        except TimeoutError:
            return json_error(503, TOKENS, "not_applied",
                              "stored, but not yet visible here; retry to check")
        return None
