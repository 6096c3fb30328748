"""`meterstream receiver`: the only door into the pipeline.

    POST /v1/convex/logs    Convex log-stream webhooks (JSON array or JSONL, signed)
    POST /v1/agent/usage    agent token usage records (Bearer: the deployment's ingest token)
    /v1/deployments...      the registry's admin API (ingest/admin.py)
    GET  /healthz /readyz /metrics

A body is answered 200 only after Kafka acknowledged it with acks=all. What
is refused for good gets a 4xx, which makes Convex drop the batch; what may
succeed later (Kafka away or slow, too many produces waiting, registry still
loading) gets 503 or 429 with Retry-After, which Convex retries.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from aiohttp import web

from ingest import agent_usage, metrics, signature
from ingest.admin import AdminApi, bearer, json_error
from ingest.batch import BatchError, inspect_batch
from ingest.producer import Overloaded, Producer, Unavailable
from ingest.provisioning import Provisioner
from ingest.registry import RegistryView, RegistryWriter
from meterstream.config import Settings
from meterstream.service import healthz, metrics_page, start_site, stop_event
from meterstream.topics import Topics

log = logging.getLogger("meterstream.receiver")

CONVEX_LOGS = "/v1/convex/logs"
AGENT_USAGE = "/v1/agent/usage"
SHUTDOWN_SECONDS = 20.0


class Receiver:
    def __init__(self, settings: Settings, producer: Producer, registry: RegistryView,
                 topics: Topics) -> None:
        self.settings = settings
        self.producer = producer
        self.registry = registry
        self.raw_topic = topics.raw.name
        self.writer = RegistryWriter(registry, producer.store, topics.deployments.name)
        self.admin = AdminApi(settings.admin_token, registry, self.writer,
                              Provisioner(settings, registry, self.writer))

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body_bytes)
        app.router.add_post(CONVEX_LOGS, self.convex_logs)
        app.router.add_post(AGENT_USAGE, self.agent_usage)
        self.admin.add_routes(app)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", metrics_page)
        return app

    async def readyz(self, _: web.Request) -> web.Response:
        checks = {"kafka": self.producer.healthy, "registry": self.registry.loaded}
        return web.json_response({"ready": all(checks.values()), **checks},
                                 status=200 if all(checks.values()) else 503)

    async def _body(self, request: web.Request, endpoint: str) -> bytes | web.Response:
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            return json_error(413, endpoint, "too_large",
                              f"body exceeds {self.settings.max_body_bytes} bytes")

    async def _store(self, endpoint: str, key: str, value: bytes) -> web.Response | None:
        """Stores one record in the raw topic; a response when it could not be stored."""
        headers = [("received_at", str(int(time.time() * 1000)).encode())]
        try:
            await self.producer.store(self.raw_topic, key.encode(), value, headers)
        except Overloaded as exc:
            return json_error(429, endpoint, "overloaded", f"busy, retry: {exc}")
        except Unavailable as exc:
            log.warning("kafka did not store a body", extra={"key": key, "error": str(exc)})
            return json_error(503, endpoint, "kafka_unavailable",
                              "the body could not be stored; retry")
        return None

    async def convex_logs(self, request: web.Request) -> web.Response:
        body = await self._body(request, CONVEX_LOGS)
        if isinstance(body, web.Response):
            return body
        try:
            batch = inspect_batch(body)
        except BatchError as exc:
            return json_error(400, CONVEX_LOGS, "malformed", exc.message, where=exc.where)
        if not batch.deployments:
            return json_error(400, CONVEX_LOGS, "no_deployment",
                              "no event names its deployment (convex.deployment_name)")
        if len(batch.deployments) > 1:
            return json_error(403, CONVEX_LOGS, "several_deployments",
                              "a batch must come from one deployment; this one names "
                              f"{len(batch.deployments)}")
        (name,) = batch.deployments
        if not self.registry.loaded:
            return json_error(503, CONVEX_LOGS, "registry_loading", "the registry is loading")
        deployment = self.registry.get(name)
        if deployment is None:
            return json_error(403, CONVEX_LOGS, "unregistered",
                              f"deployment {name!r} is not registered")
        now = int(time.time() * 1000)
        if deployment.removed_at:
            return json_error(403, CONVEX_LOGS, "removed",
                              f"deployment {name!r} was deprovisioned")
        if deployment.webhook_secret is not None or deployment.secret_changing(now):
            header = request.headers.get(signature.HEADER)
            if header is None or not deployment.signature_matches(body, header, now):
                if deployment.secret_changing(now):
                    # Convex may already sign with the secret about to be stored.
                    return json_error(503, CONVEX_LOGS, "secret_changing",
                                      "the deployment's webhook secret is being changed; retry")
                if header is None:
                    return json_error(401, CONVEX_LOGS, "signature_missing",
                                      f"{signature.HEADER} is missing")
                return json_error(401, CONVEX_LOGS, "signature_invalid",
                                  f"{signature.HEADER} does not match the body")
        failure = await self._store(CONVEX_LOGS, name, body)
        if failure is not None:
            return failure
        metrics.REQUESTS.labels(CONVEX_LOGS, "200", "accepted").inc()
        for topic, count in batch.topics.items():
            metrics.EVENTS_ACCEPTED.labels(topic).inc(count)
        metrics.BYTES_ACCEPTED.labels(CONVEX_LOGS).inc(len(body))
        return web.json_response({"accepted": batch.events})

    async def agent_usage(self, request: web.Request) -> web.Response:
        token = bearer(request)
        if token is None:
            return json_error(401, AGENT_USAGE, "unauthenticated",
                              "send Authorization: Bearer <the deployment's ingest token>")
        body = await self._body(request, AGENT_USAGE)
        if isinstance(body, web.Response):
            return body
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return json_error(400, AGENT_USAGE, "malformed", f"malformed JSON: {exc.msg}",
                              where=f"line {exc.lineno} column {exc.colno}")
        try:
            records = agent_usage.normalise_all(parsed, int(time.time() * 1000))
        except agent_usage.InvalidRecords as exc:
            return json_error(400, AGENT_USAGE, "invalid", "invalid usage records",
                              problems=exc.problems)
        if not self.registry.loaded:
            return json_error(503, AGENT_USAGE, "registry_loading", "the registry is loading")
        by_deployment: dict[str, list[dict[str, object]]] = {}
        for record in records:
            by_deployment.setdefault(str(record["deployment"]), []).append(record)
        for name in by_deployment:
            deployment = self.registry.get(name)
            if deployment is None or not deployment.accepts_token(token):
                return json_error(403, AGENT_USAGE, "forbidden",
                                  f"the token is not the ingest token of {name!r}")
        # One message per deployment, keyed like its log-stream bodies.
        for name, group in by_deployment.items():
            failure = await self._store(AGENT_USAGE, name, orjson.dumps(group))
            if failure is not None:
                return failure
        metrics.REQUESTS.labels(AGENT_USAGE, "200", "accepted").inc()
        metrics.EVENTS_ACCEPTED.labels(agent_usage.TOPIC).inc(len(records))
        metrics.BYTES_ACCEPTED.labels(AGENT_USAGE).inc(len(body))
        return web.json_response({"accepted": len(records)})


async def serve(settings: Settings) -> None:
    stop = stop_event()
    topics = Topics.of(settings)
    # With Kafka away the receiver still starts, answers 503 and is not ready until the
    # producer connects.
    producer = Producer(settings, [topics.raw, topics.deployments])
    registry = RegistryView(settings.kafka_bootstrap, topics.deployments.name)
    producer.start()
    registry.start(after=producer.connected)
    runner = await start_site(Receiver(settings, producer, registry, topics).app(),
                              settings.bind_host, settings.receiver_port)
    log.info("receiver listening", extra={
        "url": f"http://{settings.bind_host}:{settings.receiver_port}{CONVEX_LOGS}",
        "topic": topics.raw.name, "admin_api": bool(settings.admin_token)})
    try:
        await stop.wait()
        log.info("receiver stopping: finishing in-flight requests")
        # Stops accepting, then waits for the handlers still running.
        await runner.cleanup()
    finally:
        await registry.stop()
        try:
            # Flushes what is still queued; bounded, so a stop with Kafka gone cannot hang.
            await asyncio.wait_for(producer.stop(), SHUTDOWN_SECONDS)
        except TimeoutError:
            log.error("the Kafka producer did not close in time")
    log.info("receiver stopped")


def main(settings: Settings) -> None:
    asyncio.run(serve(settings))
