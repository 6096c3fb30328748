"""The admin API of the deployment registry, served by every receiver replica.

    PUT    /v1/deployments/{name}   create or update (omitted fields keep their value,
                                    null clears one); answers the record as stored
    GET    /v1/deployments/{name}
    GET    /v1/deployments
    DELETE /v1/deployments/{name}

Authorised by `Authorization: Bearer <METERSTREAM_ADMIN_TOKEN>`. A write is
answered once this replica's view holds it, so a GET right after sees it.
Secrets are never returned.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from ingest import metrics
from ingest.producer import Overloaded, Producer, Unavailable
from ingest.registry import InvalidDeployment, RegistryView, check_name, updated

ADMIN = "/v1/deployments"
APPLY_TIMEOUT_SECONDS = 10.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, endpoint: str, reason: str, message: str,
               **extra: object) -> web.Response:
    metrics.REQUESTS.labels(endpoint, str(status), reason).inc()
    return web.json_response({"error": message, "reason": reason, **extra}, status=status,
                             headers={"Retry-After": "5"} if status in (429, 503) else None)


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class AdminApi:
    def __init__(self, token: str, registry: RegistryView, producer: Producer,
                 topic: str) -> None:
        self.token = token
        self.registry = registry
        self.producer = producer
        self.topic = topic

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(ADMIN, self._authorised(self.list))
        app.router.add_get(ADMIN + "/{name}", self._authorised(self.get))
        app.router.add_put(ADMIN + "/{name}", self._authorised(self.put))
        app.router.add_delete(ADMIN + "/{name}", self._authorised(self.delete))

    def _authorised(self, handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            if not self.token:
                return json_error(403, ADMIN, "admin_disabled",
                                  "the admin API is disabled; set METERSTREAM_ADMIN_TOKEN")
            token = bearer(request)
            if token is None:
                return json_error(401, ADMIN, "unauthenticated",
                                  "send Authorization: Bearer <admin token>")
            if not (token.isascii() and hmac.compare_digest(token, self.token)):
                return json_error(403, ADMIN, "forbidden", "wrong admin token")
            if not self.registry.loaded:
                return json_error(503, ADMIN, "registry_loading", "the registry is loading")
            return await handler(request)

        return checked

    async def list(self, _: web.Request) -> web.Response:
        return web.json_response({"deployments": [d.public() for d in self.registry.all()]})

    async def get(self, request: web.Request) -> web.Response:
        deployment = self.registry.get(request.match_info["name"])
        if deployment is None:
            return json_error(404, ADMIN, "not_found", "no such deployment")
        return web.json_response(deployment.public())

    async def put(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            changes = orjson.loads(await request.read() or b"{}")
        except orjson.JSONDecodeError as exc:
            return json_error(400, ADMIN, "malformed", f"malformed JSON: {exc.msg}")
        try:
            record = updated(self.registry.get(name), name, changes)
        except InvalidDeployment as exc:
            return json_error(400, ADMIN, "invalid", "invalid deployment", fields=exc.fields)
        failure = await self._write(name, record.to_json())
        return failure or web.json_response(record.public())

    async def delete(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            check_name(name)
        except InvalidDeployment as exc:
            return json_error(400, ADMIN, "invalid", "invalid deployment", fields=exc.fields)
        if self.registry.get(name) is None:
            return json_error(404, ADMIN, "not_found", "no such deployment")
        failure = await self._write(name, None)
        return failure or web.json_response({"deleted": name})

    async def _write(self, name: str, value: bytes | None) -> web.Response | None:
        try:
            offset = await self.producer.store(self.topic, name.encode(), value, [])
        except (Unavailable, Overloaded) as exc:
            return json_error(503, ADMIN, "kafka_unavailable", f"not stored: {exc}")
        try:
            async with asyncio.timeout(APPLY_TIMEOUT_SECONDS):
                await self.registry.wait_applied(offset)
        except TimeoutError:
            return json_error(503, ADMIN, "not_applied",
                              "stored, but not yet visible in the registry; retry to check")
        return None
