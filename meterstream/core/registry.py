"""The deployment registry: which deployments meterstream meters, and their secrets.

Its home is a compacted Kafka topic (`<ns>.deployments`, one partition, keyed
by deployment name; a delete is a tombstone). Every receiver replica, and any
other service, keeps a `RegistryView`: it reads the topic from the start,
counts as loaded once it reached the end it saw at start, and then follows new
records, so a change made through any replica is in force everywhere without
a restart.

Records carry the webhook secret itself (HMAC needs it), sealed at rest with the
process's key (meterstream/core/secret_box.py), and only a SHA-256 of the ingest token.
Neither appears in logs or in what `public()` returns.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import orjson

from meterstream.core import secret_box
from meterstream.core.compacted import CompactedView
from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.signature import verify

log = logging.getLogger("meterstream.registry")

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
OWNER_FIELDS = ("team", "project", "plan")
FIELDS = ("webhook_secret", "ingest_token", *OWNER_FIELDS, "labels", "allow_unsigned",
          "enforce_at_source")
SEALED_FIELDS = ("webhook_secret", "previous_webhook_secret", "deploy_key")
"""Sealed at rest with the process's key (meterstream/core/secret_box.py)."""
MIN_SECRET_LENGTH = 16


class InvalidDeployment(ValueError):
    """A registry update with bad fields; `fields` maps each bad field to its problem."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in fields.items()))
        self.fields = fields


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Deployment:
    name: str
    webhook_secret: str | None = field(default=None, repr=False)
    ingest_token_sha256: str | None = field(default=None, repr=False)
    team: str | None = None
    project: str | None = None
    plan: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    updated_at: int = 0
    log_stream_id: str | None = None
    """The Convex webhook log stream meterstream provisioned or adopted."""
    previous_webhook_secret: str | None = field(default=None, repr=False)
    previous_secret_until: int = 0
    """After a rotation the old secret is still accepted until then (ms), for the batches
    Convex signed before it switched."""
    secret_changing_until: int = 0
    """While a secret is being created or rotated at Convex (ms): a batch whose signature
    does not verify may carry the secret about to be stored, so it gets 503 (retried)."""
    removed_at: int = 0
    """Deprovisioned (ms): batches are refused; the record stays for attribution."""
    quotas: list[dict[str, Any]] = field(default_factory=list)
    """`Quota.to_json()` of each quota (meterstream/core/quotas.py), validated when stored; set
    only through `PUT /v1/deployments/{name}/quotas`, kept by every other update."""
    enforce_at_source: bool = False
    """Opted in to enforcement at the source: while a hard quota is exceeded, the worker sets
    an environment variable on the Convex deployment with the stored deploy key
    (processors/enforcement.py)."""
    allow_unsigned: bool = False
    """Opted in to unsigned webhook bodies; matters only while it has no webhook secret
    (a deployment with a secret always needs the signature)."""
    deploy_key: str | None = field(default=None, repr=False)
    """The Convex deploy key given to `provision`, sealed at rest: the worker's stream
    status check reads the log stream's status with it (docs/stream-health.md). Set only
    by provisioning, cleared by deprovisioning; never shown."""

    def public(self) -> dict[str, Any]:
        """What the admin API shows: everything but the secrets."""
        return {
            "name": self.name,
            "team": self.team,
            "project": self.project,
            "plan": self.plan,
            "labels": self.labels,
            "has_webhook_secret": self.webhook_secret is not None,
            "has_ingest_token": self.ingest_token_sha256 is not None,
            "log_stream_id": self.log_stream_id,
            "previous_secret_until": self.previous_secret_until or None,
            "removed_at": self.removed_at or None,
            "quotas": self.quotas,
            "allow_unsigned": self.allow_unsigned,
            "enforce_at_source": self.enforce_at_source,
            "updated_at": self.updated_at,
        }

    def signature_matches(self, body: bytes, header: str, now_ms: int) -> bool:
        if self.webhook_secret is not None and verify(body, header, self.webhook_secret):
            return True
        return (self.previous_webhook_secret is not None and now_ms < self.previous_secret_until
                and verify(body, header, self.previous_webhook_secret))

    def secret_changing(self, now_ms: int) -> bool:
        return now_ms < self.secret_changing_until

    def accepts_token(self, token: str) -> bool:
        if self.ingest_token_sha256 is None:
            return False
        return hmac.compare_digest(token_digest(token), self.ingest_token_sha256)

    def to_json(self) -> bytes:
        """The stored record: the webhook secrets sealed under the installed key."""
        values = asdict(self)
        secret_box.seal_fields(self.name, values, SEALED_FIELDS)
        return orjson.dumps(values)

    @classmethod
    def from_json(cls, value: bytes, *, locked: bool = False) -> Deployment:
        """The record, its secrets opened with the installed keyring; plain ones (older
        versions) are taken as they are. Raises secret_box.UndecryptableSecret, or with
        `locked` keeps the record with its unopenable secrets locked (nothing verifies)."""
        # Fields a newer version added are ignored, fields an older one lacked take defaults.
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in orjson.loads(value).items() if k in known}
        secret_box.open_fields(str(values.get("name")), values, SEALED_FIELDS, locked=locked)
        return cls(**values)


def check_name(name: str) -> None:
    if not NAME.match(name):
        raise InvalidDeployment({"name": "letters, digits, '.', '_' and '-', at most 128"})


def updated(current: Deployment | None, name: str, changes: Any) -> Deployment:
    """The record after a PUT: given fields replace the current ones, null clears one,
    omitted fields keep their value. Raises InvalidDeployment listing every bad field."""
    check_name(name)
    if not isinstance(changes, dict):
        raise InvalidDeployment({"body": "must be a JSON object"})
    problems: dict[str, str] = {}
    for key in changes:
        if key not in FIELDS:
            problems[key] = f"unknown field; known: {', '.join(FIELDS)}"
    for key in ("webhook_secret", "ingest_token"):
        value = changes.get(key)
        if key in changes and value is not None and (
                not isinstance(value, str) or len(value) < MIN_SECRET_LENGTH
                or not value.isascii() or not value.isprintable()):
            problems[key] = f"must be printable ASCII of at least {MIN_SECRET_LENGTH} characters"
    for key in OWNER_FIELDS:
        value = changes.get(key)
        if value is not None and not (isinstance(value, str) and 0 < len(value) <= 200):
            problems[key] = "must be a string of 1 to 200 characters, or null"
    for flag in ("allow_unsigned", "enforce_at_source"):
        if flag in changes and not isinstance(changes[flag], bool):
            problems[flag] = "must be true or false"
    labels = changes.get("labels")
    if labels is not None and not (
            isinstance(labels, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())):
        problems["labels"] = "must be an object of string values, or null"
    if problems:
        raise InvalidDeployment(problems)

    base = current or Deployment(name=name)
    if base.removed_at and ("webhook_secret" in changes or "ingest_token" in changes):
        base = replace(base, removed_at=0)  # registering a removed deployment again
    values = asdict(base)
    for key in ("webhook_secret", *OWNER_FIELDS):
        if key in changes:
            values[key] = changes[key]
    if "ingest_token" in changes:
        token = changes["ingest_token"]
        values["ingest_token_sha256"] = None if token is None else token_digest(token)
    if "labels" in changes:
        values["labels"] = changes["labels"] or {}
    for flag in ("allow_unsigned", "enforce_at_source"):
        if flag in changes:
            values[flag] = changes[flag]
    values["updated_at"] = int(time.time() * 1000)
    return Deployment(**values)


class RegistryView(CompactedView):
    """The registry as this process sees it, following the topic."""

    end_offsets_seconds = 30.0

    def __init__(self, kafka: KafkaConnection, topic: str) -> None:
        super().__init__(kafka, topic, "registry-view")
        self._deployments: dict[str, Deployment] = {}
        self._by_token: dict[str, str] = {}
        """sha256(ingest token) -> the deployment it belongs to."""
        self._unopened: dict[str, secret_box.UndecryptableSecret] = {}
        """While loading: records whose latest value no configured key opens (an earlier
        value may be superseded by a later one sealed with a key we hold)."""

    def get(self, name: str) -> Deployment | None:
        return self._deployments.get(name)

    def by_token(self, token: str) -> Deployment | None:
        """The deployment whose ingest token this is, in one hash lookup: the token is
        hashed and its digest looked up, so no record is compared with the token itself."""
        digest = token_digest(token)
        deployment = self._deployments.get(self._by_token.get(digest, ""))
        if deployment is None or deployment.ingest_token_sha256 is None:
            return None
        return deployment if hmac.compare_digest(deployment.ingest_token_sha256, digest) else None

    def token_owner(self, token: str) -> str | None:
        """The name of the deployment that has this ingest token, if any."""
        deployment = self.by_token(token)
        return None if deployment is None else deployment.name

    def all(self) -> list[Deployment]:
        return [self._deployments[name] for name in sorted(self._deployments)]

    def _on_loaded(self) -> None:
        self._finish_loading()
        log.info("registry loaded", extra={"deployments": len(self._deployments)})

    def _finish_loading(self) -> None:
        """Loaded: a record whose latest value no key opens stops a receiver here
        (secret_box.undecryptable); elsewhere it stays locked."""
        for error in self._unopened.values():
            secret_box.undecryptable(error, loading=True)
        self._unopened.clear()
        self._loaded.set()

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        name = key.decode()
        self._unopened.pop(name, None)
        if value is None:
            self._index(name, None)
            self._deployments.pop(name, None)
            return
        try:
            try:
                record = Deployment.from_json(value)
            except secret_box.UndecryptableSecret as exc:
                if self.loaded:
                    secret_box.undecryptable(exc, loading=False)
                else:
                    self._unopened[name] = exc  # judged once loaded, if still the latest
                record = Deployment.from_json(value, locked=True)
            # The sealed secrets are bound to the record's name: one stored under another
            # deployment's key would carry that deployment's secret.
            if record.name != name:
                raise TypeError(f"the record is {record.name!r}'s")
        except (orjson.JSONDecodeError, TypeError) as exc:
            log.error("unreadable registry record skipped",
                      extra={"deployment": name, "error": str(exc)})
            return
        self._index(name, record)
        self._deployments[name] = record

    def _index(self, name: str, record: Deployment | None) -> None:
        """Keeps `_by_token` in step: the old record's digest out, the new one's in."""
        old = self._deployments.get(name)
        if old is not None and old.ingest_token_sha256 is not None \
                and self._by_token.get(old.ingest_token_sha256) == name:
            del self._by_token[old.ingest_token_sha256]
        if record is not None and record.ingest_token_sha256 is not None:
            self._by_token[record.ingest_token_sha256] = name


class RegistryWriter:
    """Writes records to the registry topic and waits until this process's view holds them."""

    def __init__(self, view: RegistryView, store: Any, topic: str,
                 apply_timeout: float = 10.0) -> None:
        self.view = view
        self._store = store  # Producer.store: (topic, key, value, headers) -> offset
        self.topic = topic
        self.apply_timeout = apply_timeout

    async def write(self, name: str, record: Deployment | None) -> None:
        """Stores the record (None deletes it); raises the producer's errors or TimeoutError."""
        offset = await self._store(self.topic, name.encode(),
                                   None if record is None else record.to_json(), [])
        async with asyncio.timeout(self.apply_timeout):
            await self.view.wait_applied(offset)

    @staticmethod
    def stamped(record: Deployment, **changes: Any) -> Deployment:
        return replace(record, updated_at=int(time.time() * 1000), **changes)
