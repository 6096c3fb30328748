"""Read tokens: bearer tokens that read the usage of one scope (a deployment, a team, or
one end user of a deployment) until they expire or are revoked.

A token is `msr_<id>.<secret>`: `id` (16 hex digits) names its record, `secret` is 32
random bytes (base64url, 43 characters). Only SHA-256 of the whole token is stored. A
plain hash is enough because the secret is 256 random bits: nobody can guess a preimage
or try a dictionary against a leaked digest, which is what a keyed or slow hash would
guard against for passwords; and with no key there is no key to rotate or lose. The
digest covers the id, so a record's digest does not verify a token of another id.

The records live in the compacted topic `<ns>.read-tokens` (one partition, keyed by
id), like the deployment registry: every receiver replica follows it, so a token issued
or revoked through any replica is in force on all of them within a moment, with no
database to share. A revocation rewrites the record with `revoked_at` (kept, so that the
answer can say "revoked" and the list shows it), never a tombstone.

A token is checked in this order, and only a token whose digest matches learns more
than "invalid": malformed, unknown id and wrong secret are one answer; expired and
revoked are told apart only to the holder of the real token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import asdict, dataclass, fields
from typing import Any

import orjson

from meterstream.core.compacted import CompactedView
from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.registry import NAME

log = logging.getLogger("meterstream.read_tokens")

PREFIX = "msr_"
_TOKEN = re.compile(r"^msr_([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$")
_ID = re.compile(r"^[0-9a-f]{16}$")
KINDS = ("deployment", "team", "end_user")
MAX_NAME = 200
# Digest of a token no record has, so that an unknown id costs the same hash and compare.
_DECOY = hashlib.sha256(secrets.token_bytes(32)).hexdigest()


class InvalidScope(ValueError):
    """A scope with bad fields; `fields` maps each bad field to its problem."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in fields.items()))
        self.fields = fields


class TokenRefused(Exception):
    """Why a presented token reads nothing: `invalid` (malformed, unknown or tampered,
    answered alike), `expired` or `revoked`. `cause` says which for logs and metrics."""

    def __init__(self, reason: str, cause: str) -> None:
        super().__init__(cause)
        self.reason = reason
        self.cause = cause


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def valid_id(token_id: str) -> bool:
    return _ID.match(token_id) is not None


@dataclass(frozen=True)
class Scope:
    """What a token reads. deployment: one deployment; team: every deployment whose
    registry record names the team, as the registry says when asked; end_user: one
    `userId` of one deployment (its agent tokens only)."""

    kind: str
    deployment: str | None = None
    team: str | None = None
    user: str | None = None

    @classmethod
    def parse(cls, document: Any) -> Scope:
        """From {"deployment": D} | {"team": T} | {"deployment": D, "user": U}."""
        if not isinstance(document, dict):
            raise InvalidScope({"scope": 'an object: {"deployment": D}, {"team": T} or '
                                         '{"deployment": D, "user": U}'})
        problems: dict[str, str] = {}
        for key in document:
            if key not in ("deployment", "team", "user"):
                problems[key] = "unknown field; known: deployment, team, user"
        deployment, team, user = (document.get(k) for k in ("deployment", "team", "user"))
        if deployment is not None and not (isinstance(deployment, str) and NAME.match(deployment)):
            problems["deployment"] = "a deployment name"
        for key, value in (("team", team), ("user", user)):
            if value is not None and not (isinstance(value, str)
                                          and 0 < len(value) <= MAX_NAME):
                problems[key] = f"a string of 1 to {MAX_NAME} characters"
        if team is not None and (deployment is not None or user is not None):
            problems["team"] = "goes alone (a team scope names no deployment or user)"
        if user is not None and deployment is None:
            problems["user"] = "needs the deployment whose end user it is"
        if team is None and deployment is None and not problems:
            problems["scope"] = "name a deployment, a team, or a deployment and a user"
        if problems:
            raise InvalidScope(problems)
        if team is not None:
            return cls("team", team=team)
        if user is not None:
            return cls("end_user", deployment=deployment, user=user)
        return cls("deployment", deployment=deployment)

    def to_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"kind": self.kind}
        for key in ("deployment", "team", "user"):
            if getattr(self, key) is not None:
                shown[key] = getattr(self, key)
        return shown


@dataclass(frozen=True)
class ReadToken:
    """One stored token: never the token itself, only its digest."""

    id: str
    digest: str
    kind: str
    deployment: str | None
    team: str | None
    user: str | None
    created_at: int
    expires_at: int
    revoked_at: int = 0

    @property
    def scope(self) -> Scope:
        return Scope(self.kind, self.deployment, self.team, self.user)

    def state(self, now_ms: int) -> str:
        if self.revoked_at:
            return "revoked"
        return "expired" if now_ms >= self.expires_at else "active"

    def public(self, now_ms: int) -> dict[str, Any]:
        """What the admin API shows: everything but the digest."""
        return {"id": self.id, "scope": self.scope.to_json(), "created_at": self.created_at,
                "expires_at": self.expires_at, "revoked_at": self.revoked_at or None,
                "state": self.state(now_ms)}

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, value: bytes) -> ReadToken:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in orjson.loads(value).items() if k in known})


def issue(scope: Scope, now_ms: int, expires_at: int) -> tuple[str, ReadToken]:
    """A new token and the record to store; the token is shown once and kept nowhere."""
    token_id = secrets.token_hex(8)
    token = f"{PREFIX}{token_id}.{secrets.token_urlsafe(32)}"
    return token, ReadToken(token_id, digest(token), scope.kind, scope.deployment,
                            scope.team, scope.user, now_ms, expires_at)


class ReadTokenView(CompactedView):
    """The read tokens as this process sees them, following `<ns>.read-tokens`."""

    def __init__(self, kafka: KafkaConnection, topic: str) -> None:
        super().__init__(kafka, topic, client_id="read-token-view")
        self._tokens: dict[str, ReadToken] = {}

    def get(self, token_id: str) -> ReadToken | None:
        return self._tokens.get(token_id)

    def all(self) -> list[ReadToken]:
        return sorted(self._tokens.values(), key=lambda t: (t.created_at, t.id))

    def check(self, token: str, now_ms: int) -> ReadToken:
        """The record of a token that may read now; raises TokenRefused."""
        match = _TOKEN.match(token)
        record = self._tokens.get(match.group(1)) if match else None
        presented = digest(token)
        # Compared in constant time, and against a decoy when there is no record, so that
        # neither an unknown id nor how much of a secret is right shows in the time taken.
        matches = hmac.compare_digest(presented, record.digest if record else _DECOY)
        if record is None or not matches:
            cause = "malformed" if match is None else "unknown" if record is None else "tampered"
            raise TokenRefused("invalid_token", cause)
        if record.revoked_at:
            raise TokenRefused("token_revoked", "revoked")
        if now_ms >= record.expires_at:
            raise TokenRefused("token_expired", "expired")
        return record

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        token_id = key.decode(errors="replace")
        if value is None:
            self._tokens.pop(token_id, None)
            return
        try:
            record = ReadToken.from_json(value)
            if record.id != token_id or record.kind not in KINDS:
                raise TypeError(f"record {record.id!r} of kind {record.kind!r}")
        except (orjson.JSONDecodeError, TypeError, AttributeError) as exc:
            log.error("unreadable read-token record skipped",
                      extra={"id": token_id, "error": str(exc)})
            return
        self._tokens[token_id] = record
