"""`meterstream receiver`: the only door into the pipeline (its process:
meterstream/processes/receiver.py).

Public port (METERSTREAM_BIND_HOST:METERSTREAM_RECEIVER_PORT):
    POST /v1/convex/logs    Convex log-stream webhooks (JSON array or JSONL, signed)
    POST /v1/agent/usage    agent token usage records (Bearer: the deployment's ingest token)
    GET  /v1/usage          a read token's own usage and cost (billing/usage_view.py, added
                            by the receiver's process, meterstream/processes/receiver.py)
    GET  /healthz /readyz /metrics   unless METERSTREAM_METRICS_HOST is set: then on
                            METERSTREAM_METRICS_HOST:METERSTREAM_RECEIVER_METRICS_PORT
    GET  /openapi.json      this port's OpenAPI 3.1 document (ingest/openapi.py)
Admin port (METERSTREAM_ADMIN_HOST:METERSTREAM_ADMIN_PORT, loopback by default):
    /v1/deployments...      the registry's admin API (ingest/admin.py), GET /healthz /readyz
    /v1/read-tokens...      read tokens of the scoped usage view (ingest/read_token_admin.py)
    GET  /openapi.json      this port's OpenAPI 3.1 document

A body is answered 200 only after Kafka acknowledged it with acks=all. What
is refused for good gets a 4xx, which makes Convex drop the batch; what may
succeed later (Kafka away or slow, too many produces waiting, registry still
loading) gets 503 or 429 with Retry-After, which Convex retries.

Authentication comes first and no body is parsed before it: the agent door
finds the deployment by the hash of its bearer token before it reads a byte
of the body; the webhook door reads the (size-bounded) body, finds the
deployment it claims by a byte search, verifies the HMAC over the raw bytes,
and only then parses, checking that every event is that deployment's. Every
message stored carries an `origin` header (b"webhook" or b"agent") saying
which door it came through.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

import orjson
from aiohttp import web

from ingest import agent_usage, metrics
from ingest.admin import AdminApi, bearer, json_error
from ingest.openapi import AGENT_USAGE, CONVEX_LOGS, admin_document, public_document
from ingest.producer import Overloaded, Producer, Unavailable
from ingest.provisioning import Provisioner
from ingest.read_token_admin import ReadTokenAdmin
from meterstream.core import signature
from meterstream.core.config import Settings
from meterstream.core.http_errors import json_errors
from meterstream.core.log_stream import BatchError, check_batch, claimed_deployment
from meterstream.core.openapi import add_openapi
from meterstream.core.read_tokens import ReadTokenView
from meterstream.core.registry import Deployment, RegistryView, RegistryWriter
from meterstream.core.service import Readiness, add_probes, healthz
from meterstream.core.topics import (
    AGENT_ORIGIN,
    ORIGIN_HEADER,
    RECEIVED_AT_HEADER,
    WEBHOOK_ORIGIN,
    Topics,
)

log = logging.getLogger("meterstream.receiver")

IDENTITY = ("", "identity")
ADMIN_MAX_BODY = 1 << 20
# HMAC key for bodies claiming a deployment that has no usable secret, so that every
# refused body costs the same HMAC and the answer's timing tells no more than its text.
_DECOY_SECRET = secrets.token_hex(32)
UNAUTHENTICATED = ("the body is not signed with the webhook secret of a registered "
                   "deployment that accepts it")


def webhook_verdict(deployment: Deployment | None, body: bytes, header: str | None,
                    now_ms: int) -> str:
    """Whether a webhook body may be stored for the deployment it claims.

    "ok", "secret_changing" (answered 503: Convex may sign with a secret not stored
    yet), or the cause of a refusal: unknown, removed, unsigned_refused,
    signature_missing, signature_invalid. Every refusal is answered alike (401
    unauthenticated); the cause is only logged. A deployment with a secret (or one
    being set) needs the signature; one without a secret takes unsigned bodies only if
    it opted in with allow_unsigned.
    """
    if deployment is None or deployment.removed_at:
        signature.verify(body, header or "", _DECOY_SECRET)
        return "unknown" if deployment is None else "removed"
    if deployment.webhook_secret is None and not deployment.secret_changing(now_ms):
        if deployment.allow_unsigned:
            return "ok"
        signature.verify(body, header or "", _DECOY_SECRET)
        return "unsigned_refused"
    if header is not None and deployment.signature_matches(body, header, now_ms):
        return "ok"
    if deployment.secret_changing(now_ms):
        return "secret_changing"
    return "signature_missing" if header is None else "signature_invalid"


class Receiver:
    def __init__(self, settings: Settings, producer: Producer, registry: RegistryView,
                 topics: Topics, tokens: ReadTokenView | None = None) -> None:
        self.settings = settings
        self.producer = producer
        self.registry = registry
        self.raw_topic = topics.raw.name
        self.writer = RegistryWriter(registry, producer.store, topics.deployments.name)
        self.admin = AdminApi(settings.admin_token, registry, self.writer,
                              Provisioner(settings, registry, self.writer))
        # The read tokens' admin routes, when this receiver follows their topic.
        self.token_admin = None if tokens is None else ReadTokenAdmin(
            tokens, registry, producer.store, topics.read_tokens.name,
            settings.read_token_ttl, settings.read_token_max_ttl)
        # What one raw message may hold: the producer's largest request is
        # max_body_bytes + 64 KiB (ingest/producer.py), which leaves room for key and headers.
        self.message_budget = settings.max_body_bytes
        # Ready once the producer is connected and the registry caught up: before, every
        # webhook would be a 503.
        self.readiness = Readiness()
        self.readiness.add("kafka", lambda: self.producer.healthy)
        self.readiness.add("registry", lambda: self.registry.loaded)
        if tokens is not None:
            # A replica that has not read the tokens would refuse every read token (503).
            self.readiness.add("read_tokens", lambda: tokens.loaded)

    def app(self, add_usage_view: Callable[[web.Application], None] | None = None
            ) -> web.Application:
        """The public port: the two ingest doors, its OpenAPI document, and the probes
        unless they have a listener of their own (`probe_app`); `add_usage_view` adds the
        scoped usage view's routes (billing/usage_view.py, from the receiver's process)."""
        app = web.Application(client_max_size=self.settings.max_body_bytes,
                              middlewares=[json_errors])
        app.router.add_post(CONVEX_LOGS, self.convex_logs)
        app.router.add_post(AGENT_USAGE, self.agent_usage)
        probes = not self.settings.metrics_host
        if probes:
            add_probes(app, self.readiness)
        if add_usage_view is not None:
            add_usage_view(app)
        return add_openapi(app, public_document(probes, usage=add_usage_view is not None))

    def probe_app(self) -> web.Application:
        """The probes alone, for METERSTREAM_METRICS_HOST:METERSTREAM_RECEIVER_METRICS_PORT."""
        return add_probes(web.Application(middlewares=[json_errors]), self.readiness)

    def admin_app(self) -> web.Application:
        """The admin port: the registry's admin API, and whether this listener is alive and
        the receiver ready (no metrics: they belong with the other probes), and its
        OpenAPI document."""
        app = web.Application(client_max_size=ADMIN_MAX_BODY, middlewares=[json_errors])
        self.admin.add_routes(app)
        if self.token_admin is not None:
            self.token_admin.add_routes(app, self.admin.authorised)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", self.readiness.readyz)
        return add_openapi(app, admin_document(read_tokens=self.token_admin is not None))

    async def _body(self, request: web.Request, endpoint: str) -> bytes | web.Response:
        """The raw body, at most max_body_bytes of it; a response when it is refused.

        A Content-Encoding other than identity is refused (415) before a byte is read:
        aiohttp would inflate it, and a few KB of gzip could then fill the size limit."""
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in IDENTITY:
            return json_error(415, endpoint, "encoding",
                              "Content-Encoding is not supported; send the body uncompressed")
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return json_error(413, endpoint, "too_large", f"body exceeds {limit} bytes")
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            return json_error(413, endpoint, "too_large", f"body exceeds {limit} bytes")

    async def _store(self, endpoint: str, key: str, value: bytes,
                     origin: bytes) -> web.Response | None:
        """Stores one record in the raw topic; a response when it could not be stored."""
        headers = [(RECEIVED_AT_HEADER, str(int(time.time() * 1000)).encode()),
                   (ORIGIN_HEADER, origin)]
        try:
            await self.producer.store(self.raw_topic, key.encode(), value, headers)
        except Overloaded as exc:
            return json_error(429, endpoint, "overloaded", f"busy, retry: {exc}")
        except Unavailable as exc:
            log.warning("kafka did not store a body", extra={"key": key, "error": str(exc)})
            return json_error(503, endpoint, "kafka_unavailable",
                              "the body could not be stored; retry")
        metrics.MESSAGES_STORED.labels(endpoint).inc()
        return None

    async def convex_logs(self, request: web.Request) -> web.Response:
        body = await self._body(request, CONVEX_LOGS)
        if isinstance(body, web.Response):
            return body
        name = claimed_deployment(body)
        if name is None:
            return json_error(400, CONVEX_LOGS, "no_deployment",
                              "no event names its deployment (convex.deployment_name)")
        if not self.registry.loaded:
            return json_error(503, CONVEX_LOGS, "registry_loading", "the registry is loading")
        verdict = webhook_verdict(self.registry.get(name), body,
                                  request.headers.get(signature.HEADER),
                                  int(time.time() * 1000))
        if verdict == "secret_changing":
            return json_error(503, CONVEX_LOGS, "secret_changing",
                              "the deployment's webhook secret is being changed; retry")
        if verdict != "ok":
            # Why, for the operator; names nobody registered are anyone's to send, so
            # they are logged only at debug level.
            log.log(logging.DEBUG if verdict == "unknown" else logging.INFO,
                    "webhook body refused", extra={"deployment": name, "cause": verdict})
            return json_error(401, CONVEX_LOGS, "unauthenticated", UNAUTHENTICATED)
        metrics.BODIES_PARSED.labels(CONVEX_LOGS).inc()
        try:
            batch = check_batch(body, name, self.settings.max_records_per_request)
        except BatchError as exc:
            return json_error(exc.status, CONVEX_LOGS, exc.reason, exc.message, where=exc.where)
        failure = await self._store(CONVEX_LOGS, name, body, WEBHOOK_ORIGIN)
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
        if not self.registry.loaded:
            return json_error(503, AGENT_USAGE, "registry_loading", "the registry is loading")
        # Before a byte of the body is read: an unknown token costs one hash.
        deployment = self.registry.by_token(token)
        if deployment is None or deployment.removed_at:
            return json_error(401, AGENT_USAGE, "unauthenticated",
                              "not the ingest token of a registered deployment")
        name = deployment.name
        body = await self._body(request, AGENT_USAGE)
        if isinstance(body, web.Response):
            return body
        metrics.BODIES_PARSED.labels(AGENT_USAGE).inc()
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return json_error(400, AGENT_USAGE, "malformed", f"malformed JSON: {exc.msg}",
                              where=f"line {exc.lineno} column {exc.colno}")
        limit = self.settings.max_records_per_request
        if isinstance(parsed, list) and len(parsed) > limit:
            return json_error(413, AGENT_USAGE, "too_many_records",
                              f"{len(parsed)} records in one request; at most {limit}")
        try:
            records = agent_usage.normalise_all(parsed, int(time.time() * 1000), name,
                                                self.settings.max_problems)
        except agent_usage.InvalidRecords as exc:
            if exc.total > len(exc.problems):
                metrics.PROBLEMS_TRUNCATED.labels(AGENT_USAGE).inc()
            return json_error(400, AGENT_USAGE, "invalid", "invalid usage records",
                              problems=exc.problems, problem_count=exc.total)
        foreign = next((r["deployment"] for r in records if r["deployment"] != name), None)
        if foreign is not None:
            return json_error(403, AGENT_USAGE, "forbidden",
                              "a record names another deployment than the token's")
        try:
            messages = agent_usage.split_records(records, self.message_budget)
        except agent_usage.RecordTooLarge as exc:
            return json_error(413, AGENT_USAGE, "record_too_large", str(exc))
        # Several messages when the records outgrow one: a failure part-way answers 503
        # and the retry stores the same records again, which the worker drops by their
        # (deployment, id) (processors/raw_processor.py), so none is counted twice.
        for message in messages:
            failure = await self._store(AGENT_USAGE, name, message, AGENT_ORIGIN)
            if failure is not None:
                return failure
        metrics.REQUESTS.labels(AGENT_USAGE, "200", "accepted").inc()
        metrics.EVENTS_ACCEPTED.labels(agent_usage.TOPIC).inc(len(records))
        metrics.BYTES_ACCEPTED.labels(AGENT_USAGE).inc(len(body))
        return web.json_response({"accepted": len(records)})
