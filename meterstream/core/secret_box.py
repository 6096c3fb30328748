"""Webhook secrets sealed at rest: AES-256-GCM under a key from the environment.

The registry topic stores each deployment's webhook secrets (HMAC needs the secret
itself, so a hash will not do). A sealed secret is stored as the JSON object

    {"sealed": 1, "kid": "<key id>", "box": "<base64url(nonce || ciphertext || tag)>"}

with a random 96-bit nonce per seal and `<deployment>\\0<field>` as associated data, so a
ciphertext copied into another deployment's record, or from the previous secret's field
into the current one, fails authentication instead of verifying someone else's bodies.

The key id is derived from the key (a truncated SHA-256 under a fixed label), so nothing
has to be kept in step with it: METERSTREAM_SECRET_KEY seals, it and each of
METERSTREAM_SECRET_OLD_KEYS open. Rotation: deploy the new key as METERSTREAM_SECRET_KEY
with the old one in METERSTREAM_SECRET_OLD_KEYS, run `meterstream secrets reencrypt`,
then drop the old key. Records written in plain text by older versions are still read,
and sealed the next time they are written (or by `reencrypt`).

Without METERSTREAM_SECRET_KEY the key lives in `<data dir>/secret-key` (0600), made by
the first receiver that needs one: `meterstream up` and deploy/up.sh keep working, and
every process sharing the data directory shares the key.

The process-wide keyring (`install`) is what `Deployment.to_json`/`from_json` use: the
`meterstream` command installs it before any command runs, so no registry writer or
reader has to be handed one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from prometheus_client import Counter

from meterstream.core.config import SECRET_KEY_BYTES, ConfigError, Settings

log = logging.getLogger("meterstream.core.secret_box")

KEY_FILE_NAME = "secret-key"
SEALED_VERSION = 1
NONCE_BYTES = 12
_KEY_ID_LABEL = b"meterstream secret key id\0"

UNDECRYPTABLE = Counter(
    "meterstream_registry_undecryptable_secrets_total",
    "Registry records whose sealed webhook secret no configured key opens; the "
    "deployment's webhooks are refused until the key is configured.")


class UndecryptableSecret(Exception):
    """A sealed secret that no key of the keyring opens."""

    def __init__(self, deployment: str, field: str, key_id: str, reason: str) -> None:
        super().__init__(f"deployment {deployment!r}: its {field} is sealed with key id "
                         f"{key_id!r}, {reason}")
        self.deployment = deployment
        self.field = field
        self.key_id = key_id


def key_id(key: bytes) -> str:
    """A short public name of the key: safe to log, derived so nothing needs keeping."""
    return hashlib.sha256(_KEY_ID_LABEL + key).hexdigest()[:12]


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode()


def is_sealed(value: object) -> TypeGuard[dict[str, Any]]:
    return isinstance(value, dict) and value.get("sealed") == SEALED_VERSION


def _aad(deployment: str, field: str) -> bytes:
    return f"{deployment}\0{field}".encode()


@dataclass(frozen=True)
class Keyring:
    """The current key (seals and opens) and the old ones (open only)."""

    current: bytes
    old: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        for key in (self.current, *self.old):
            if len(key) != SECRET_KEY_BYTES:
                raise ValueError(f"a secret key has {SECRET_KEY_BYTES} bytes, not {len(key)}")

    def __repr__(self) -> str:
        return f"Keyring(current={self.current_id!r}, old={[key_id(k) for k in self.old]!r})"

    @property
    def current_id(self) -> str:
        return key_id(self.current)

    def _key(self, kid: str) -> bytes | None:
        return next((k for k in (self.current, *self.old) if key_id(k) == kid), None)

    def seal(self, deployment: str, field: str, plaintext: str) -> dict[str, Any]:
        nonce = os.urandom(NONCE_BYTES)
        box = AESGCM(self.current).encrypt(nonce, plaintext.encode(), _aad(deployment, field))
        return {"sealed": SEALED_VERSION, "kid": self.current_id,
                "box": base64.urlsafe_b64encode(nonce + box).decode()}

    def open(self, deployment: str, field: str, sealed: dict[str, Any]) -> str:
        """The plaintext; raises UndecryptableSecret naming the key id it needs."""
        kid = str(sealed.get("kid"))
        key = self._key(kid)
        if key is None:
            raise UndecryptableSecret(deployment, field, kid, _unknown_key(self))
        try:
            raw = base64.urlsafe_b64decode(str(sealed.get("box", "")))
            return AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:],
                                       _aad(deployment, field)).decode()
        except (InvalidTag, binascii.Error, ValueError, UnicodeDecodeError):
            raise UndecryptableSecret(
                deployment, field, kid,
                "which is configured, but the ciphertext does not authenticate (damaged, or "
                "moved from another record)") from None


def _unknown_key(keyring: Keyring | None) -> str:
    if keyring is None:
        return ("but no key is configured: set METERSTREAM_SECRET_KEY (or _FILE) to that key, "
                "or METERSTREAM_SECRET_OLD_KEYS during a rotation")
    return (f"which is neither METERSTREAM_SECRET_KEY (key id {keyring.current_id!r}) nor in "
            "METERSTREAM_SECRET_OLD_KEYS; configure that key")


# --- the process's keyring -------------------------------------------------------------

_installed: Keyring | None = None
_strict = False
_warned_plain = False


def install(keyring: Keyring | None, *, strict: bool = False) -> None:
    """Sets the keyring `Deployment.to_json`/`from_json` use. `strict`: this process
    verifies webhooks (the receiver), so a record it cannot open while loading the
    registry stops it (see `undecryptable`)."""
    global _installed, _strict
    _installed, _strict = keyring, strict


def installed() -> Keyring | None:
    return _installed


def seal_fields(deployment: str, values: dict[str, Any], names: tuple[str, ...]) -> None:
    """Seals the string fields `names` of a record's JSON values in place."""
    global _warned_plain
    keyring = _installed
    for name in names:
        value = values.get(name)
        if not isinstance(value, str):
            continue
        if keyring is None:
            if not _warned_plain:
                _warned_plain = True
                log.warning("no secret key installed: webhook secrets are stored unencrypted")
            continue
        values[name] = keyring.seal(deployment, name, value)


def open_fields(deployment: str, values: dict[str, Any], names: tuple[str, ...],
                *, locked: bool = False) -> None:
    """Opens the sealed fields `names` in place; plain strings (older versions) stay.
    Raises UndecryptableSecret, or with `locked` puts an unguessable stand-in there:
    no body verifies against it, so the deployment fails closed."""
    for name in names:
        value = values.get(name)
        if not is_sealed(value):
            continue
        if _installed is None:
            error = UndecryptableSecret(deployment, name, str(value.get("kid")),
                                        _unknown_key(None))
        else:
            try:
                values[name] = _installed.open(deployment, name, value)
                continue
            except UndecryptableSecret as exc:
                error = exc
        if not locked:
            raise error
        # NUL is never in a registered secret (printable ASCII), and the rest is random.
        values[name] = "\0locked:" + os.urandom(32).hex()


def undecryptable(error: UndecryptableSecret, *, loading: bool) -> None:
    """A registry reader met a record it cannot open. A strict process (the receiver)
    refuses to start on one met while loading; later, and everywhere else, the record is
    kept with its secrets locked (its webhooks fail) and the failure logged and counted."""
    UNDECRYPTABLE.inc()
    if _strict and loading:
        raise SystemExit(f"meterstream receiver: cannot read the deployment registry: {error}")
    log.log(logging.ERROR if _strict else logging.DEBUG,
            "registry record with a secret no configured key opens; its webhooks are refused",
            extra={"deployment": error.deployment, "key_id": error.key_id})


# --- where the key comes from ----------------------------------------------------------

def key_file(settings: Settings) -> Path:
    return settings.data_dir / KEY_FILE_NAME


def load(settings: Settings, *, create: bool = False) -> Keyring | None:
    """The keyring of `settings`: METERSTREAM_SECRET_KEY, else the data directory's key,
    made there first when `create` (and none exists). None when there is no key."""
    current = settings.secret_key
    if current is None:
        current = _read_key_file(key_file(settings), create)
    if current is None:
        if settings.secret_old_keys:
            raise ConfigError("METERSTREAM_SECRET_OLD_KEYS is set but there is no current key: "
                              "set METERSTREAM_SECRET_KEY")
        return None
    old = tuple(k for k in dict.fromkeys(settings.secret_old_keys) if k != current)
    return Keyring(current, old)


def _read_key_file(path: Path, create: bool) -> bytes | None:
    if not path.exists():
        if not create:
            return None
        _create_key_file(path)
    text = path.read_text().strip()
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != SECRET_KEY_BYTES:
        raise ConfigError(f"{path} must hold base64 of {SECRET_KEY_BYTES} bytes "
                          "(the generated secret key); restore it or set METERSTREAM_SECRET_KEY")
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return key


def _create_key_file(path: Path) -> None:
    """Writes a new random key to `path` (0600), atomically: when two processes race, the
    first link wins and the other reads its key."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    key = os.urandom(SECRET_KEY_BYTES)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(descriptor, (encode_key(key) + "\n").encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    try:
        os.link(temporary, path)
        log.warning("generated a secret key for the registry's webhook secrets",
                    extra={"path": str(path), "key_id": key_id(key)})
    except FileExistsError:
        pass
    finally:
        temporary.unlink(missing_ok=True)
