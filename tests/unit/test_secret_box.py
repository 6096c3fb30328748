"""Webhook secrets sealed at rest: the envelope, key ids, binding, legacy records, keys."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client import REGISTRY

from meterstream.core import secret_box
from meterstream.core.config import ConfigError, Settings
from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.registry import Deployment, RegistryView
from meterstream.core.secret_box import Keyring, UndecryptableSecret, key_id
from meterstream.core.signature import sign

OLD = bytes(range(32))
NEW = bytes(range(100, 132))
SECRET = "whsec-0123456789abcdefghij"
PREVIOUS = "whsec-previous-0123456789"
BODY = b'[{"topic":"console"}]'


@pytest.fixture(autouse=True)
def no_installed_keyring() -> Iterator[None]:
    yield
    secret_box.install(None)


def record() -> Deployment:
    return Deployment(name="happy-otter-123", webhook_secret=SECRET,
                      previous_webhook_secret=PREVIOUS, previous_secret_until=2**40,
                      team="team-a")


def test_a_sealed_record_holds_no_secret_and_opens_again() -> None:
    secret_box.install(Keyring(NEW))
    stored = record().to_json()
    assert SECRET.encode() not in stored
    assert PREVIOUS.encode() not in stored
    fields = orjson.loads(stored)
    assert fields["webhook_secret"]["kid"] == key_id(NEW)
    assert fields["team"] == "team-a"
    assert Deployment.from_json(stored) == record()
    # A fresh nonce per seal: the same secret never gives the same bytes twice.
    assert record().to_json() != stored


def test_key_ids_are_public_names_of_the_key() -> None:
    assert key_id(OLD) == key_id(bytes(OLD))
    assert key_id(OLD) != key_id(NEW)
    assert len(key_id(OLD)) == 12
    assert base64.b64encode(OLD).decode() not in repr(Keyring(NEW, (OLD,)))
    assert key_id(OLD) in repr(Keyring(NEW, (OLD,)))


def test_an_old_key_still_opens_and_the_next_write_uses_the_new_one() -> None:
    secret_box.install(Keyring(OLD))
    stored = record().to_json()
    secret_box.install(Keyring(NEW, (OLD,)))
    opened = Deployment.from_json(stored)
    assert opened.signature_matches(BODY, sign(BODY, SECRET), now_ms=0)
    assert orjson.loads(opened.to_json())["webhook_secret"]["kid"] == key_id(NEW)


def test_a_missing_key_is_refused_naming_its_id() -> None:
    secret_box.install(Keyring(OLD))
    stored = record().to_json()
    secret_box.install(Keyring(NEW))
    with pytest.raises(UndecryptableSecret) as caught:
        Deployment.from_json(stored)
    message = str(caught.value)
    assert key_id(OLD) in message
    assert key_id(NEW) in message
    assert "METERSTREAM_SECRET_OLD_KEYS" in message
    assert caught.value.key_id == key_id(OLD)
    secret_box.install(None)
    with pytest.raises(UndecryptableSecret, match="no key is configured"):
        Deployment.from_json(stored)


def test_a_locked_record_verifies_nothing() -> None:
    secret_box.install(Keyring(OLD))
    stored = record().to_json()
    secret_box.install(Keyring(NEW))
    locked = Deployment.from_json(stored, locked=True)
    assert locked.team == "team-a"
    assert locked.public()["has_webhook_secret"]
    assert not locked.signature_matches(BODY, sign(BODY, SECRET), now_ms=0)
    assert not locked.signature_matches(BODY, sign(BODY, PREVIOUS), now_ms=0)
    assert locked.webhook_secret != Deployment.from_json(stored, locked=True).webhook_secret


def test_a_ciphertext_moved_to_another_record_or_field_does_not_open() -> None:
    keyring = Keyring(NEW)
    secret_box.install(keyring)
    fields = orjson.loads(record().to_json())
    moved = {**fields, "name": "other-deployment"}
    with pytest.raises(UndecryptableSecret, match="does not authenticate"):
        Deployment.from_json(orjson.dumps(moved))
    swapped = {**fields, "webhook_secret": fields["previous_webhook_secret"]}
    with pytest.raises(UndecryptableSecret, match="does not authenticate"):
        Deployment.from_json(orjson.dumps(swapped))
    box = bytearray(base64.urlsafe_b64decode(fields["webhook_secret"]["box"]))
    box[-1] ^= 1
    tampered = {**fields, "webhook_secret": {**fields["webhook_secret"],
                                             "box": base64.urlsafe_b64encode(box).decode()}}
    with pytest.raises(UndecryptableSecret, match="does not authenticate"):
        Deployment.from_json(orjson.dumps(tampered))


def test_a_plain_record_of_an_older_version_is_read_and_sealed_when_written() -> None:
    legacy = orjson.dumps({"name": "happy-otter-123", "webhook_secret": SECRET,
                           "ingest_token_sha256": None, "team": "team-a", "updated_at": 1})
    secret_box.install(Keyring(NEW))
    opened = Deployment.from_json(legacy)
    assert opened.webhook_secret == SECRET
    assert SECRET.encode() not in opened.to_json()


def test_without_a_key_records_are_stored_as_before() -> None:
    stored = record().to_json()
    assert orjson.loads(stored)["webhook_secret"] == SECRET
    assert Deployment.from_json(stored) == record()


def test_the_registry_view_refuses_to_load_what_the_receiver_cannot_open() -> None:
    secret_box.install(Keyring(OLD))
    stored = record().to_json()
    secret_box.install(Keyring(NEW), strict=True)
    view = RegistryView(KafkaConnection("127.0.0.1:1"), "registry")
    view._apply(b"happy-otter-123", stored)
    with pytest.raises(SystemExit) as caught:
        view._finish_loading()
    assert key_id(OLD) in str(caught.value.code)
    assert not view.loaded
    # Once loaded, a record sealed with an unknown key is kept locked instead, and counted.
    view._loaded.set()
    before = REGISTRY.get_sample_value("meterstream_registry_undecryptable_secrets_total")
    view._apply(b"happy-otter-123", stored)
    assert REGISTRY.get_sample_value(
        "meterstream_registry_undecryptable_secrets_total") == (before or 0) + 1
    locked = view.get("happy-otter-123")
    assert locked is not None
    assert not locked.signature_matches(BODY, sign(BODY, SECRET), now_ms=0)


def test_only_the_latest_value_of_a_record_must_open() -> None:
    """Until compaction, the topic still holds the values sealed with a key since retired."""
    secret_box.install(Keyring(OLD))
    retired = record().to_json()
    secret_box.install(Keyring(NEW))
    current = record().to_json()
    secret_box.install(Keyring(NEW), strict=True)
    view = RegistryView(KafkaConnection("127.0.0.1:1"), "registry")
    view._apply(b"happy-otter-123", retired)
    view._apply(b"happy-otter-123", current)
    view._apply(b"gone-deployment", retired.replace(b"happy-otter-123", b"gone-deployment"))
    view._apply(b"gone-deployment", None)
    view._finish_loading()
    assert view.loaded
    assert view.get("happy-otter-123") == record()


def test_processes_that_verify_nothing_keep_the_record_locked() -> None:
    secret_box.install(Keyring(OLD))
    stored = record().to_json()
    secret_box.install(None)
    view = RegistryView(KafkaConnection("127.0.0.1:1"), "registry")
    view._apply(b"happy-otter-123", stored)
    kept = view.get("happy-otter-123")
    assert kept is not None
    assert kept.team == "team-a"


def test_a_record_under_another_deployments_key_is_skipped() -> None:
    secret_box.install(Keyring(NEW))
    view = RegistryView(KafkaConnection("127.0.0.1:1"), "registry")
    view._apply(b"someone-else", record().to_json())
    assert view.get("someone-else") is None


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"METERSTREAM_DATA_DIR": str(tmp_path / "ms"), **env})


def test_the_data_directory_key_is_made_once_private(tmp_path: Path) -> None:
    assert secret_box.load(settings(tmp_path)) is None
    made = secret_box.load(settings(tmp_path), create=True)
    assert made is not None
    path = tmp_path / "ms" / "secret-key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert secret_box.load(settings(tmp_path), create=True) == made
    assert secret_box.load(settings(tmp_path)) == made
    assert [p.name for p in path.parent.iterdir()] == ["secret-key"]


def test_the_configured_key_comes_first_and_old_keys_need_a_current_one(tmp_path: Path) -> None:
    env = {"METERSTREAM_SECRET_KEY": base64.b64encode(NEW).decode(),
           "METERSTREAM_SECRET_OLD_KEYS": base64.b64encode(OLD).decode()}
    keyring = secret_box.load(settings(tmp_path, **env), create=True)
    assert keyring == Keyring(NEW, (OLD,))
    assert not (tmp_path / "ms" / "secret-key").exists()
    with pytest.raises(ConfigError, match="no current key"):
        secret_box.load(settings(tmp_path, METERSTREAM_SECRET_OLD_KEYS=env[
            "METERSTREAM_SECRET_OLD_KEYS"]))


def test_a_damaged_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ms" / "secret-key"
    path.parent.mkdir(parents=True)
    path.write_text("not a key")
    with pytest.raises(ConfigError, match="secret-key must hold base64 of 32 bytes"):
        secret_box.load(settings(tmp_path), create=True)
    assert path.read_text() == "not a key"
    os.chmod(path, 0o644)
    path.write_text(base64.b64encode(NEW).decode())
    assert secret_box.load(settings(tmp_path)) == Keyring(NEW)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_secrets_command_without_kafka_or_key_says_so(tmp_path: Path) -> None:
    from tests.support import free_port, meterstream

    env = {"METERSTREAM_DATA_DIR": str(tmp_path / "ms"),
           "METERSTREAM_KAFKA": f"127.0.0.1:{free_port()}",
           "METERSTREAM_SECRET_KEY": base64.b64encode(NEW).decode()}
    down = meterstream(["secrets", "reencrypt"], env, check=False)
    assert down.returncode == 4  # ExitCode.KAFKA_UNREACHABLE
    assert down.stderr == ("meterstream secrets reencrypt: Kafka cannot be reached at "
                           f"{env['METERSTREAM_KAFKA']} (connection refused)\n")
    generated = meterstream(["secrets", "generate-key"], env).stdout.strip()
    assert len(base64.b64decode(generated)) == 32
    assert generated != meterstream(["secrets", "generate-key"], env).stdout.strip()
