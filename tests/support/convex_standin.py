"""A local stand-in of the Convex deployment API for log streams, and of Convex's webhook
sink, built from the documented contract (../shared/reference/convex-log-stream-api.md and
convex-log-streams.md section 1).

Routes: /d/<deployment>/api/v1/{create_log_stream, list_log_streams, get_log_stream/ID,
update_log_stream/ID, delete_log_stream/ID, rotate_webhook_secret/ID} and
/d/<deployment>/api/update_environment_variables (what `npx convex env set/remove` calls:
{"changes": [{"name", "value"?}]}, no value removes), authorised by
`Authorization: Convex <deploy key>`, errors as {"code", "message"}. A created or updated
stream is verified with a signed `verification` event; `deliver` sends a batch the way
Convex's webhook sink does: signed once, the same bytes retried on 5xx/408/421/425/429 up
to 6 attempts, dropped on any other 4xx.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from meterstream.core.signature import HEADER, sign

SUBSCRIBABLE = {"console", "function_execution", "audit_log", "scheduler_stats",
                "scheduled_job_lag", "current_storage_usage", "concurrency_stats",
                "storage_api_bandwidth", "log_stream_egress", "custom_audit"}
RETRIED = {408, 421, 425, 429}


@dataclass
class Stream:
    id: str
    url: str
    format: str
    topics: list[str] | None
    secret: str
    status: str = "pending"
    deleted: bool = False
    reason: str | None = None
    """With status `failed`: why, as Convex says it."""

    def config(self) -> dict[str, Any]:
        status: dict[str, Any] = {"type": "deleting" if self.deleted else self.status}
        if status["type"] == "failed" and self.reason is not None:
            status["reason"] = self.reason
        return {"logStreamType": "webhook", "id": self.id, "status": status,
                "url": self.url, "format": self.format, "hmacSecret": self.secret,
                "topics": self.topics}


@dataclass
class Deployment:
    name: str
    deploy_key: str
    log_streaming: bool = True
    streams: dict[str, Stream] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    env_updates: list[list[dict[str, Any]]] = field(default_factory=list)
    """The `changes` of every update_environment_variables request taken, in order."""

    def live(self) -> Stream | None:
        return next((s for s in self.streams.values() if not s.deleted), None)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


class ConvexStandIn:
    def __init__(self) -> None:
        self.deployments: dict[str, Deployment] = {}
        self.fail_next = 0
        self.deliveries: list[tuple[str, int, int]] = []  # (deployment, status, attempts)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    # --- life --------------------------------------------------------------------------
    def start(self) -> ConvexStandIn:
        self._thread.start()
        self._call(self._start())
        return self

    def stop(self) -> None:
        self._call(self._runner.cleanup())
        self._call(self._session.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def url_template(self) -> str:
        return f"http://127.0.0.1:{self.port}/d/{{deployment}}/api/v1"

    def add(self, name: str, deploy_key: str, log_streaming: bool = True) -> Deployment:
        self.deployments[name] = Deployment(name, deploy_key, log_streaming)
        return self.deployments[name]

    def deliver(self, name: str, events: list[dict[str, Any]]) -> int:
        """Sends one batch as Convex would; returns the final status."""
        return self._call(self._deliver(name, events))

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(120)

    async def _start(self) -> None:
        app = web.Application()
        base = "/d/{deployment}/api/v1"
        app.router.add_post(base + "/create_log_stream", self._guard(self.create))
        app.router.add_get(base + "/list_log_streams", self._guard(self.list_streams))
        app.router.add_get(base + "/get_log_stream/{id}", self._guard(self.get))
        app.router.add_post(base + "/update_log_stream/{id}", self._guard(self.update))
        app.router.add_post(base + "/delete_log_stream/{id}", self._guard(self.delete))
        app.router.add_post(base + "/rotate_webhook_secret/{id}", self._guard(self.rotate))
        app.router.add_post("/d/{deployment}/api/update_environment_variables",
                            self._guard(self.update_env))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._session = aiohttp.ClientSession()
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- the API -----------------------------------------------------------------------
    def _guard(self, handler: Any) -> Any:
        async def guarded(request: web.Request) -> web.Response:
            if self.fail_next > 0:
                self.fail_next -= 1
                return _error(503, "Overloaded", "try again")
            deployment = self.deployments.get(request.match_info["deployment"])
            header = request.headers.get("Authorization", "")
            if header[:7].lower() != "convex ":
                return _error(403, "BadDeployKey", "no deploy key")
            if deployment is None or header[7:] != deployment.deploy_key:
                return _error(401, "BadAdminKey",
                              "The provided admin key was invalid for this instance")
            return await handler(request, deployment)

        return guarded

    async def _json(self, request: web.Request) -> dict[str, Any] | web.Response:
        if request.content_type != "application/json":
            return _error(400, "BadJsonBody", "Expected request with `Content-Type: "
                                              "application/json`")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            return _error(400, "BadJsonBody", str(exc))
        if not isinstance(body, dict) or body.get("logStreamType") != "webhook":
            return _error(400, "BadJsonBody", "unknown variant logStreamType")
        return body

    def _stream(self, request: web.Request, deployment: Deployment) -> Stream | web.Response:
        stream_id = request.match_info["id"]
        if not stream_id.startswith("ls"):
            return _error(400, "InvalidLogStreamId", "invalid id")
        stream = deployment.streams.get(stream_id)
        if stream is None or stream.deleted:
            return _error(404, "LogStreamDoesntExist", "Log stream does not exist")
        return stream

    @staticmethod
    def _check(body: dict[str, Any], creating: bool) -> web.Response | None:
        if creating and ("url" not in body or "format" not in body):
            return _error(400, "BadJsonBody", "missing field")
        url = body.get("url")
        if url is not None and not str(url).startswith(("http://", "https://")):
            return _error(400, "InvalidWebhookUrl", "The URL passed was invalid")
        if body.get("format") not in (None, "json", "jsonl"):
            return _error(400, "BadJsonBody", "unknown variant format")
        topics = body.get("topics")
        if topics == []:
            return _error(400, "EmptyLogTopics",
                          "A log stream must be subscribed to at least one topic.")
        for topic in topics or []:
            if topic not in SUBSCRIBABLE:
                return _error(400, "InvalidLogTopic",
                              f"Log stream topic `{topic}` cannot be subscribed to")
        return None

    async def create(self, request: web.Request, deployment: Deployment) -> web.Response:
        body = await self._json(request)
        if isinstance(body, web.Response):
            return body
        if not deployment.log_streaming:
            return _error(403, "LogStreamingNotEnabled",
                          "Log streaming is not available on your current subscription.")
        problem = self._check(body, creating=True)
        if problem is not None:
            return problem
        if deployment.live() is not None:
            return _error(409, "LogStreamAlreadyExists",
                          "Webhook log stream already exists for this deployment")
        stream = Stream(f"ls{uuid.uuid4().hex[:12]}", body["url"], body["format"],
                        body.get("topics"), uuid.uuid4().hex)
        deployment.streams[stream.id] = stream
        self._verify_later(deployment, stream)
        return web.json_response({"logStreamType": "webhook", "id": stream.id,
                                  "hmacSecret": stream.secret})

    async def list_streams(self, _: web.Request, deployment: Deployment) -> web.Response:
        return web.json_response([s.config() for s in deployment.streams.values()])

    async def get(self, request: web.Request, deployment: Deployment) -> web.Response:
        stream = self._stream(request, deployment)
        return stream if isinstance(stream, web.Response) else web.json_response(stream.config())

    async def update(self, request: web.Request, deployment: Deployment) -> web.Response:
        if not deployment.log_streaming:
            return _error(403, "LogStreamingNotEnabled", "not on this plan")
        stream = self._stream(request, deployment)
        if isinstance(stream, web.Response):
            return stream
        body = await self._json(request)
        if isinstance(body, web.Response):
            return body
        problem = self._check(body, creating=False)
        if problem is not None:
            return problem
        stream.url = body.get("url") or stream.url
        stream.format = body.get("format") or stream.format
        if "topics" in body:
            stream.topics = body["topics"]
        stream.status = "pending"
        self._verify_later(deployment, stream)
        return web.Response(status=200)

    async def delete(self, request: web.Request, deployment: Deployment) -> web.Response:
        stream = self._stream(request, deployment)
        if isinstance(stream, web.Response):
            return stream
        stream.deleted = True
        return web.Response(status=200)

    async def rotate(self, request: web.Request, deployment: Deployment) -> web.Response:
        stream = self._stream(request, deployment)
        if isinstance(stream, web.Response):
            return stream
        stream.secret = uuid.uuid4().hex
        return web.json_response({"logStreamType": "webhook", "hmacSecret": stream.secret})

    async def update_env(self, request: web.Request, deployment: Deployment) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            return _error(400, "BadJsonBody", str(exc))
        changes = body.get("changes") if isinstance(body, dict) else None
        if not isinstance(changes, list) or not all(
                isinstance(c, dict) and isinstance(c.get("name"), str)
                and isinstance(c.get("value", ""), str) for c in changes):
            return _error(400, "BadJsonBody", "expected {changes: [{name, value?}]}")
        deployment.env_updates.append(changes)
        for change in changes:
            if "value" in change:
                deployment.env[change["name"]] = change["value"]
            else:
                deployment.env.pop(change["name"], None)
        return web.json_response({})

    # --- the webhook sink --------------------------------------------------------------
    def _verify_later(self, deployment: Deployment, stream: Stream) -> None:
        task = asyncio.create_task(self._verification(deployment, stream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _verification(self, deployment: Deployment, stream: Stream) -> None:
        event = {"timestamp": 1755820800123, "topic": "verification",
                 "message": "Convex connection test",
                 "convex": {"deployment_name": deployment.name, "deployment_type": "prod",
                            "deployment_ref": None, "project_name": "App",
                            "project_slug": "app", "deployment_region": "aws-us-east-1"}}
        status, _ = await self._post(stream, [event], attempts=3)
        stream.status = "active" if status < 400 else "failed"

    async def _deliver(self, name: str, events: list[dict[str, Any]]) -> int:
        stream = self.deployments[name].live()
        if stream is None:
            self.deliveries.append((name, 0, 0))
            return 0
        status, attempts = await self._post(stream, events, attempts=6)
        self.deliveries.append((name, status, attempts))
        return status

    async def _post(self, stream: Stream, events: list[dict[str, Any]],
                    attempts: int) -> tuple[int, int]:
        if stream.format == "json":
            body = orjson.dumps(events)
        else:
            body = b"\n".join(orjson.dumps(e) for e in events)
        # Signed once, before the retry loop: a retry sends the same bytes and signature.
        headers = {"Content-Type": "application/json", "User-Agent": "Convex/1.0",
                   HEADER: sign(body, stream.secret)}
        status = 0
        for attempt in range(1, attempts + 1):
            try:
                async with self._session.post(stream.url, data=body, headers=headers) as r:
                    status = r.status
            except aiohttp.ClientError:
                status = 0
            if status and status < 400:
                return status, attempt
            if status >= 400 and status < 500 and status not in RETRIED:
                return status, attempt
            await asyncio.sleep(0.05 * 2 ** attempt)
        return status, attempts
