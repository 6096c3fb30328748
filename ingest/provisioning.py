"""Attaching and detaching metering through the Convex Platform API, in one call each.

provision   create the deployment's webhook log stream pointing at this receiver (or,
            asked to, adopt the one it has), then store its id and secret in the registry
rotate      rotate the secret at Convex and in the registry without refusing a batch
deprovision delete the log stream, mark the deployment removed (its history stays)
sync        compare the registry with Convex and report the drift

Ordering is what makes these safe. Before Convex learns or changes a secret the
record is marked `secret_changing_until`, so a batch signed with a secret not
stored yet gets 503, which Convex retries, never a 401 it would drop. After a
rotation the old secret stays valid for METERSTREAM_SECRET_OVERLAP, for the
batches Convex signed before it switched. A failure part-way restores the
record as it was and deletes a stream this call created: no half-registered
deployment is left behind.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ingest.convex_platform import (
    FORMATS,
    METERING_TOPICS,
    ConvexApiError,
    ConvexPlatform,
    LogStreamAlreadyExists,
    LogStreamDoesntExist,
)
from meterstream.core.config import Settings
from meterstream.core.registry import Deployment, RegistryView, RegistryWriter, updated

log = logging.getLogger("meterstream.provisioning")

CHANGE_WINDOW_MS = 60_000
SUBSCRIBABLE = frozenset({"console", "function_execution", "audit_log", "scheduler_stats",
                          "scheduled_job_lag", "current_storage_usage", "concurrency_stats",
                          "storage_api_bandwidth", "log_stream_egress", "custom_audit"})


class ProvisioningError(RuntimeError):
    """A lifecycle step failed; `status` and `reason` say how to answer it."""

    def __init__(self, status: int, reason: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.details = details


@dataclass(frozen=True)
class StreamSettings:
    format: str = "jsonl"
    topics: list[str] | None = field(default_factory=lambda: list(METERING_TOPICS))

    @classmethod
    def parse(cls, body: dict[str, Any]) -> StreamSettings:
        fmt = body.get("format", "jsonl")
        topics = body.get("topics", list(METERING_TOPICS))
        problems = {}
        if fmt not in FORMATS:
            problems["format"] = f"one of {', '.join(FORMATS)}"
        if topics is not None and (not isinstance(topics, list) or not topics
                                   or not set(topics) <= SUBSCRIBABLE):
            problems["topics"] = ("null (all topics) or a non-empty list of: "
                                  + ", ".join(sorted(SUBSCRIBABLE)))
        if problems:
            raise ProvisioningError(400, "invalid", "invalid log stream settings",
                                    fields=problems)
        return cls(fmt, topics)


def _now() -> int:
    return int(time.time() * 1000)


def _digest(secret: str | None) -> str | None:
    return None if secret is None else hashlib.sha256(secret.encode()).hexdigest()


class Provisioner:
    def __init__(self, settings: Settings, view: RegistryView, writer: RegistryWriter) -> None:
        self.settings = settings
        self.view = view
        self.writer = writer
        self.webhook_url = f"{settings.public_url}/v1/convex/logs"

    def convex(self, session: aiohttp.ClientSession, name: str, deploy_key: str
               ) -> ConvexPlatform:
        return ConvexPlatform(session, self.settings.convex_api_url, name, deploy_key)

    async def provision(self, convex: ConvexPlatform, name: str, stream: StreamSettings,
                        adopt: bool, changes: dict[str, Any]) -> Deployment:
        """`changes`: the registry fields to set beside the stream (team, plan, ...)."""
        if "webhook_secret" in changes:
            raise ProvisioningError(400, "invalid", "the webhook secret comes from Convex",
                                    fields={"webhook_secret": "not allowed here"})
        before = self.view.get(name)
        kept = None if before is None or before.removed_at else before
        base = RegistryWriter.stamped(updated(kept, name, changes), removed_at=0)
        await self.writer.write(name, RegistryWriter.stamped(
            base, secret_changing_until=_now() + CHANGE_WINDOW_MS))
        created_id: str | None = None
        try:
            try:
                stream_id, secret = await convex.create_webhook_log_stream(
                    self.webhook_url, stream.format, stream.topics)
                created_id = stream_id
            except LogStreamAlreadyExists:
                existing = await convex.webhook_log_stream()
                if not adopt:
                    raise ProvisioningError(
                        409, "log_stream_exists",
                        f"{name} already has a webhook log stream"
                        + (f" ({existing.id}, to {existing.url})" if existing else "")
                        + "; provision again with adopt to point it here and rotate its secret",
                        log_stream_id=existing.id if existing else None,
                        url=existing.url if existing else None) from None
                if existing is None:
                    raise ProvisioningError(409, "log_stream_exists",
                                            "Convex reports a stream but lists none") from None
                # Rotate and store the new secret before the stream points here: the update
                # makes Convex send a verification request, signed with the new secret.
                stream_id = existing.id
                secret = await convex.rotate_webhook_secret(stream_id)
            record = RegistryWriter.stamped(base, webhook_secret=secret,
                                            log_stream_id=stream_id, secret_changing_until=0,
                                            deploy_key=convex.deploy_key,
                                            previous_webhook_secret=None,
                                            previous_secret_until=0)
            await self.writer.write(name, record)
            if created_id is None:
                await convex.update_log_stream(stream_id, url=self.webhook_url,
                                               format=stream.format, topics=stream.topics)
        except BaseException:
            await self._undo(convex, name, before, created_id)
            raise
        log.info("provisioned", extra={"deployment": name, "log_stream_id": stream_id,
                                       "adopted": created_id is None})
        return record

    async def rotate(self, convex: ConvexPlatform, name: str) -> Deployment:
        current = self._provisioned(name)
        assert current.log_stream_id is not None
        await self.writer.write(name, RegistryWriter.stamped(
            current, secret_changing_until=_now() + CHANGE_WINDOW_MS))
        try:
            secret = await convex.rotate_webhook_secret(current.log_stream_id)
        except BaseException:
            await self.writer.write(name, current)
            raise
        record = RegistryWriter.stamped(
            current, webhook_secret=secret, previous_webhook_secret=current.webhook_secret,
            previous_secret_until=_now() + int(self.settings.secret_overlap * 1000),
            secret_changing_until=0, deploy_key=convex.deploy_key)
        await self.writer.write(name, record)
        log.info("rotated the webhook secret", extra={"deployment": name})
        return record

    async def deprovision(self, convex: ConvexPlatform, name: str) -> Deployment:
        current = self.view.get(name)
        if current is None or current.removed_at:
            raise ProvisioningError(404, "not_found", f"{name} is not registered")
        if current.log_stream_id is not None:
            try:
                await convex.delete_log_stream(current.log_stream_id)
            except LogStreamDoesntExist:
                log.info("the log stream was already gone", extra={"deployment": name})
        record = RegistryWriter.stamped(
            current, removed_at=_now(), webhook_secret=None, previous_webhook_secret=None,
            previous_secret_until=0, secret_changing_until=0, log_stream_id=None,
            # Its agents' token stops working too: no door stays open to a removed deployment.
            ingest_token_sha256=None, allow_unsigned=False, deploy_key=None)
        await self.writer.write(name, record)
        log.info("deprovisioned", extra={"deployment": name})
        return record

    async def sync(self, convex: ConvexPlatform, name: str) -> dict[str, Any]:
        """The differences between the registry's record and Convex's stream."""
        record = self.view.get(name)
        stream = await convex.webhook_log_stream()
        drift: list[str] = []
        if record is None or record.removed_at:
            if stream is not None and stream.url == self.webhook_url:
                drift.append("Convex streams to meterstream, but the deployment is not "
                             "registered (or was removed)")
        elif stream is None:
            if record.log_stream_id is not None:
                drift.append(f"log stream {record.log_stream_id} no longer exists at Convex")
            else:
                drift.append("registered, but the deployment has no webhook log stream")
        else:
            if record.log_stream_id != stream.id:
                drift.append(f"registry has log stream {record.log_stream_id}, "
                             f"Convex has {stream.id}")
            if stream.url != self.webhook_url:
                drift.append(f"the stream sends to {stream.url}, not {self.webhook_url}")
            if stream.status not in ("active", "pending"):
                drift.append(f"the stream is {stream.status}")
            if (stream.hmac_secret is not None
                    and _digest(stream.hmac_secret) != _digest(record.webhook_secret)):
                drift.append("the stream's secret differs from the registered one")
        return {"deployment": name, "in_sync": not drift, "drift": drift,
                "log_stream": None if stream is None else {
                    "id": stream.id, "url": stream.url, "format": stream.format,
                    "topics": stream.topics, "status": stream.status}}

    def _provisioned(self, name: str) -> Deployment:
        current = self.view.get(name)
        if current is None or current.removed_at or current.log_stream_id is None:
            raise ProvisioningError(404, "not_provisioned",
                                    f"{name} has no log stream provisioned by meterstream")
        return current

    async def _undo(self, convex: ConvexPlatform, name: str, before: Deployment | None,
                    created_id: str | None) -> None:
        """Leaves things as they were: the stream this call created goes, the record returns."""
        if created_id is not None:
            try:
                await convex.delete_log_stream(created_id)
            except ConvexApiError as exc:
                log.error("could not delete the log stream created by a failed provision",
                          extra={"deployment": name, "log_stream_id": created_id,
                                 "error": str(exc)})
        try:
            await self.writer.write(name, before)
        except Exception as exc:
            log.error("could not restore the registry record after a failed provision",
                      extra={"deployment": name, "error": repr(exc)})
