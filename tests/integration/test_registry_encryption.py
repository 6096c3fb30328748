"""Webhook secrets in the registry topic on the real broker: sealed bytes, key rotation with
`meterstream secrets reencrypt`, a receiver refused a key it lacks, legacy plain records."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from meterstream.core.secret_box import key_id
from tests.support import REPO, free_port, meterstream, read_topic, recent_events, wait_for
from tests.support.pipeline import Pipeline, running_pipeline

NAME = "sealed-otter-123"
SECRET = "whsec-registry-0123456789abcdef"
KEY_A = bytes(range(32))
KEY_B = bytes(range(64, 96))


def workdir(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    return path


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def body() -> bytes:
    events = recent_events("function_execution")
    for event in events:
        event["convex"]["deployment_name"] = NAME
    return orjson.dumps(events)


def registry_values(bootstrap: str, namespace: str) -> list[bytes]:
    return [m.value for m in read_topic(bootstrap, f"{namespace}.deployments")
            if m.value is not None]


def latest(bootstrap: str, namespace: str) -> dict:
    return orjson.loads(registry_values(bootstrap, namespace)[-1])


def accepted(receiver: Pipeline, secret: str = SECRET) -> bool:
    status, answer = receiver.post(body(), secret)
    assert status in (200, 401), answer
    return status == 200


def test_rotation_keeps_verifying_and_a_removed_key_refuses_the_start(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    namespace = f"t{uuid.uuid4().hex[:10]}"
    base = {"METERSTREAM_NAMESPACE": namespace}
    with running_pipeline(kafka_bootstrap, workdir(tmp_path, "a"), "receiver",
                          {**base, "METERSTREAM_SECRET_KEY": b64(KEY_A)}) as receiver:
        receiver.register(NAME, webhook_secret=SECRET, team="team-a")
        assert accepted(receiver)
        assert not accepted(receiver, "whsec-someone-else-0123456789")
    values = registry_values(kafka_bootstrap, namespace)
    assert values
    assert all(SECRET.encode() not in value for value in values)
    assert latest(kafka_bootstrap, namespace)["webhook_secret"]["kid"] == key_id(KEY_A)

    # Step 1: the new key is current, the old one still opens.
    rotating = {**base, "METERSTREAM_SECRET_KEY": b64(KEY_B),
                "METERSTREAM_SECRET_OLD_KEYS": b64(KEY_A)}
    with running_pipeline(kafka_bootstrap, workdir(tmp_path, "b"), "receiver",
                          rotating) as receiver:
        assert accepted(receiver)
        # Step 2: every record rewritten under the new key.
        env = {**rotating, "METERSTREAM_KAFKA": kafka_bootstrap,
               "METERSTREAM_DATA_DIR": str(tmp_path / "b" / "ms")}
        done = meterstream(["secrets", "reencrypt"], env)
        assert f"re-encrypted 1 record(s) under key {key_id(KEY_B)}; 0 already were" \
            in done.stdout
        assert "re-encrypted 0 record(s)" in meterstream(["secrets", "reencrypt"], env).stdout
        assert accepted(receiver)
    sealed = latest(kafka_bootstrap, namespace)
    assert sealed["webhook_secret"]["kid"] == key_id(KEY_B)
    assert sealed["team"] == "team-a"
    assert all(SECRET.encode() not in value
               for value in registry_values(kafka_bootstrap, namespace))

    # Step 3: the old key removed; signatures still verify.
    with running_pipeline(kafka_bootstrap, workdir(tmp_path, "c"), "receiver",
                          {**base, "METERSTREAM_SECRET_KEY": b64(KEY_B)}) as receiver:
        assert accepted(receiver)
        assert not accepted(receiver, "whsec-someone-else-0123456789")

    # A receiver with only the old key does not start, and says which key it lacks.
    env = {**os.environ, **base, "METERSTREAM_KAFKA": kafka_bootstrap,
           "METERSTREAM_SECRET_KEY": b64(KEY_A),
           "METERSTREAM_DATA_DIR": str(tmp_path / "d" / "ms"),
           "METERSTREAM_RECEIVER_PORT": str(free_port())}
    refused = subprocess.run([sys.executable, "-m", "meterstream", "receiver"], env=env,
                             cwd=REPO, capture_output=True, text=True, timeout=120,
                             check=False)
    assert refused.returncode != 0
    assert f"sealed with key id {key_id(KEY_B)!r}" in refused.stderr
    assert f"neither METERSTREAM_SECRET_KEY (key id {key_id(KEY_A)!r})" in refused.stderr
    # And reencrypt with the wrong key rewrites nothing.
    failed = meterstream(["secrets", "reencrypt"], env, check=False)
    assert failed.returncode == 1
    assert "nothing rewritten" in failed.stderr
    assert latest(kafka_bootstrap, namespace) == sealed


async def _produce(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


def test_a_plain_record_of_an_older_version_verifies_and_is_sealed_by_reencrypt(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    namespace = f"t{uuid.uuid4().hex[:10]}"
    env = {"METERSTREAM_NAMESPACE": namespace, "METERSTREAM_SECRET_KEY": b64(KEY_A)}
    with running_pipeline(kafka_bootstrap, tmp_path, "receiver", env) as receiver:
        legacy = orjson.dumps({"name": NAME, "webhook_secret": SECRET, "team": "team-a",
                               "updated_at": 1, "labels": {}})
        asyncio.run(_produce(kafka_bootstrap, f"{namespace}.deployments", NAME.encode(),
                             legacy))
        wait_for(lambda: receiver.post(body(), SECRET)[0] == 200, 30,
                 "the plain record to be in force")
        done = meterstream(["secrets", "reencrypt"],
                           {**env, "METERSTREAM_KAFKA": kafka_bootstrap,
                            "METERSTREAM_DATA_DIR": str(tmp_path / "ms")})
        assert "re-encrypted 1 record(s)" in done.stdout
        assert accepted(receiver)
    sealed = latest(kafka_bootstrap, namespace)
    assert sealed["webhook_secret"]["kid"] == key_id(KEY_A)
    assert SECRET.encode() not in orjson.dumps(sealed)
    assert sealed["team"] == "team-a"
