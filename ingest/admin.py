"""The admin API of the deployment registry, served by every receiver replica on its
own listener (METERSTREAM_ADMIN_HOST:METERSTREAM_ADMIN_PORT, loopback by default), never
on the public webhook port.

    PUT    /v1/deployments/{name}   create or update (omitted fields keep their value,
                                    null clears one); answers the record as stored
    GET    /v1/deployments/{name}
    GET    /v1/deployments
    DELETE /v1/deployments/{name}

    PUT    /v1/deployments/{name}/quotas   replace the quotas with {"quotas": [...]}
                                    (meterstream/core/quotas.py); answers them normalised
    GET    /v1/deployments/{name}/quotas

    POST   /v1/deployments/{name}/provision | rotate-secret | deprovision | sync
                                    the log stream's lifecycle at Convex, with
                                    {"deploy_key": ...} (ingest/provisioning.py)

Authorised by `Authorization: Bearer <METERSTREAM_ADMIN_TOKEN>`. Deploy keys
pass through to Convex and are neither stored nor logged. A write is
answered once this replica's view holds it, so a GET right after sees it.
Secrets are never returned.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
from aiohttp import web

from ingest import metrics
from ingest.convex_platform import ConvexApiError, ConvexUnavailable
from ingest.producer import Overloaded, Unavailable
from ingest.provisioning import Provisioner, ProvisioningError, StreamSettings
from meterstream.core.quotas import InvalidQuotas, parse_quotas
from meterstream.core.registry import (
    Deployment,
    InvalidDeployment,
    RegistryView,
    RegistryWriter,
    check_name,
    updated,
)

ADMIN = "/v1/deployments"
LIFECYCLE = ("provision", "rotate-secret", "deprovision", "sync")

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
    def __init__(self, token: str, registry: RegistryView, writer: RegistryWriter,
                 provisioner: Provisioner) -> None:
        self.token = token
        self.registry = registry
        self.writer = writer
        self.provisioner = provisioner
        self._session: aiohttp.ClientSession | None = None

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(ADMIN, self._authorised(self.list))
        app.router.add_get(ADMIN + "/{name}", self._authorised(self.get))
        app.router.add_put(ADMIN + "/{name}", self._authorised(self.put))
        app.router.add_delete(ADMIN + "/{name}", self._authorised(self.delete))
        app.router.add_get(ADMIN + "/{name}/quotas", self._authorised(self.get_quotas))
        app.router.add_put(ADMIN + "/{name}/quotas", self._authorised(self.put_quotas))
        for step in LIFECYCLE:
            app.router.add_post(ADMIN + "/{name}/" + step, self._authorised(self.lifecycle))
        app.on_cleanup.append(self._close_session)

    async def _close_session(self, _: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def lifecycle(self, request: web.Request) -> web.Response:
        """provision, rotate-secret, deprovision and sync, through the Convex Platform API."""
        name = request.match_info["name"]
        step = request.path.rsplit("/", 1)[1]
        try:
            body = orjson.loads(await request.read() or b"{}")
        except orjson.JSONDecodeError as exc:
            return json_error(400, ADMIN, "malformed", f"malformed JSON: {exc.msg}")
        if not isinstance(body, dict):
            return json_error(400, ADMIN, "malformed", "expected a JSON object")
        deploy_key = body.pop("deploy_key", None)
        if not isinstance(deploy_key, str) or not deploy_key.strip():
            return json_error(400, ADMIN, "invalid", "the deployment's deploy key is required",
                              fields={"deploy_key": "required"})
        if self._session is None:
            self._session = aiohttp.ClientSession()
        convex = self.provisioner.convex(self._session, name, deploy_key.strip())
        try:
            check_name(name)
            if step == "provision":
                adopt = body.pop("adopt", False) is True
                stream = StreamSettings.parse(body)
                body.pop("format", None)
                body.pop("topics", None)
                record = await self.provisioner.provision(convex, name, stream, adopt, body)
                return web.json_response(record.public())
            if step == "rotate-secret":
                return web.json_response((await self.provisioner.rotate(convex, name)).public())
            if step == "deprovision":
                record = await self.provisioner.deprovision(convex, name)
                return web.json_response(record.public())
            return web.json_response(await self.provisioner.sync(convex, name))
        except InvalidDeployment as exc:
            return json_error(400, ADMIN, "invalid", "invalid deployment", fields=exc.fields)
        except ProvisioningError as exc:
            return json_error(exc.status, ADMIN, exc.reason, str(exc), **exc.details)
        except ConvexUnavailable as exc:
            return json_error(503, ADMIN, "convex_unavailable", str(exc))
        except ConvexApiError as exc:
            return json_error(502, ADMIN, "convex_error", exc.message, code=exc.code,
                              convex_status=exc.status)
        except (Unavailable, Overloaded, TimeoutError) as exc:
            return json_error(503, ADMIN, "kafka_unavailable", f"not stored: {exc!r}")

    def authorised(self, handler: Handler) -> Handler:
        """`handler` behind the admin token, for the admin routes of other modules
        (ingest/read_token_admin.py)."""
        return self._authorised(handler)

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
        token = changes.get("ingest_token")
        owner = self.registry.token_owner(token) if isinstance(token, str) else None
        if owner is not None and owner != name:
            # A token names one deployment: the agent door finds the deployment by it.
            return json_error(400, ADMIN, "invalid", "invalid deployment", fields={
                "ingest_token": "is another deployment's ingest token"})
        failure = await self._write(name, record)
        return failure or web.json_response(record.public())

    def _active(self, name: str) -> Deployment | None:
        deployment = self.registry.get(name)
        return None if deployment is None or deployment.removed_at else deployment

    async def get_quotas(self, request: web.Request) -> web.Response:
        deployment = self._active(request.match_info["name"])
        if deployment is None:
            return json_error(404, ADMIN, "not_found", "no such deployment")
        return web.json_response({"name": deployment.name, "quotas": deployment.quotas})

    async def put_quotas(self, request: web.Request) -> web.Response:
        """Replaces the deployment's quotas; `{"quotas": []}` clears them."""
        name = request.match_info["name"]
        deployment = self._active(name)
        if deployment is None:
            return json_error(404, ADMIN, "not_found", "no such deployment")
        try:
            document = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            return json_error(400, ADMIN, "malformed", f"malformed JSON: {exc.msg}")
        try:
            quotas = [quota.to_json() for quota in parse_quotas(document)]
        except InvalidQuotas as exc:
            return json_error(400, ADMIN, "invalid", "invalid quotas", fields=exc.fields)
        record = RegistryWriter.stamped(deployment, quotas=quotas)
        failure = await self._write(name, record)
        return failure or web.json_response({"name": name, "quotas": quotas})

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

    async def _write(self, name: str, record: Deployment | None) -> web.Response | None:
        try:
            await self.writer.write(name, record)
        except (Unavailable, Overloaded) as exc:
            return json_error(503, ADMIN, "kafka_unavailable", f"not stored: {exc}")
        except TimeoutError:
            return json_error(503, ADMIN, "not_applied",
                              "stored, but not yet visible in the registry; retry to check")
        return None
