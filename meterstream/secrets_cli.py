"""`meterstream secrets ...`: the key that seals webhook secrets in the registry topic.

`reencrypt` rewrites every record whose secrets are plain (written by an older version)
or sealed with an old key under METERSTREAM_SECRET_KEY; only the sealed fields change,
every other field is written back byte for byte, so a record of a newer version keeps
the fields this one does not know. It writes nothing when any record's secret opens
with no configured key (it lists them): that record would stay unreadable.

Kafka has no compare-and-set, so a record the admin API changes between the read and
the rewrite would be overwritten with its former value. `reencrypt` narrows that to the
time of its own produce: it reads to the end, and produces only if the end has not moved
since (otherwise it reads again).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from meterstream.core import secret_box
from meterstream.core.config import SECRET_KEY_BYTES, ConfigError, Settings
from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.topics import Topics, existing_topics

SEALED_FIELDS = ("webhook_secret", "previous_webhook_secret", "deploy_key")  # registry.py's
READ_TIMEOUT = 60.0
ATTEMPTS = 5


def add_parser(commands: Any) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = commands.add_parser(
        "secrets", help="the key sealing webhook secrets in the registry (status, rotation)",
        epilog="examples:\n  meterstream secrets status\n"
               "  meterstream secrets generate-key > new.key\n"
               "  METERSTREAM_SECRET_KEY_FILE=new.key METERSTREAM_SECRET_OLD_KEYS=$OLD_KEY "
               "meterstream secrets reencrypt", formatter_class=raw)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("status", help="the current key's id and the key id of every record",
                       epilog="example:\n  meterstream secrets status", formatter_class=raw)
    actions.add_parser("reencrypt",
                       help="rewrite every record under METERSTREAM_SECRET_KEY (after a rotation)",
                       epilog="example:\n  METERSTREAM_SECRET_KEY_FILE=new.key "
                              "METERSTREAM_SECRET_OLD_KEYS=$OLD_KEY meterstream secrets reencrypt",
                       formatter_class=raw)
    actions.add_parser("generate-key", help="print a new random key (base64 of 32 bytes)",
                       epilog="example:\n  meterstream secrets generate-key > new.key",
                       formatter_class=raw)


def run(args: argparse.Namespace, settings: Settings, keyring: secret_box.Keyring | None) -> int:
    if args.action == "generate-key":
        print(base64.b64encode(os.urandom(SECRET_KEY_BYTES)).decode())
        return 0
    if keyring is None:
        print("meterstream secrets: no key: set METERSTREAM_SECRET_KEY", file=sys.stderr)
        return 2
    topic = Topics.of(settings).deployments.name
    try:
        if args.action == "status":
            report = asyncio.run(_status(KafkaConnection.of(settings), topic, keyring))
            print(f"current key id: {keyring.current_id}")
            print(f"old key ids: {', '.join(secret_box.key_id(k) for k in keyring.old) or '-'}")
            for kid, count in sorted(report.items()):
                print(f"records sealed with {kid}: {count}")
            return 0
        result = asyncio.run(reencrypt(KafkaConnection.of(settings), topic, keyring))
    except (ConfigError, TimeoutError, KafkaError, OSError) as exc:
        print(f"meterstream secrets: {exc or type(exc).__name__} "
              f"(Kafka at {settings.kafka_bootstrap})", file=sys.stderr)
        return 1
    if result.unreadable:
        for problem in result.unreadable:
            print(f"meterstream secrets: {problem}", file=sys.stderr)
        print("meterstream secrets: nothing rewritten", file=sys.stderr)
        return 1
    print(f"re-encrypted {len(result.rewritten)} record(s) under key {keyring.current_id}; "
          f"{result.current} already were")
    return 0


@dataclass
class Reencrypted:
    rewritten: list[str] = field(default_factory=list)
    current: int = 0
    unreadable: list[str] = field(default_factory=list)


async def read_records(kafka: KafkaConnection, topic: str) -> tuple[dict[str, bytes], int]:
    """The latest value of every deployment in the registry topic, and the end offset read
    up to (tombstones remove a deployment). No topic: no records, and none is created
    (reading a missing topic would have the broker create it with its own defaults)."""
    if topic not in await existing_topics(kafka, [topic]):
        return {}, 0
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(**kafka.client_options(), group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                client_id="secrets-cli")
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        records: dict[str, bytes] = {}
        async with asyncio.timeout(READ_TIMEOUT):
            while await consumer.position(tp) < end:
                for message in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                    if message.key is None:
                        continue
                    name = message.key.decode()
                    if message.value is None:
                        records.pop(name, None)
                    else:
                        records[name] = message.value
        return records, end
    finally:
        await consumer.stop()


async def _end(kafka: KafkaConnection, topic: str) -> int:
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(**kafka.client_options(), group_id=None,
                                enable_auto_commit=False, client_id="secrets-cli")
    await consumer.start()
    try:
        return (await consumer.end_offsets([tp]))[tp]
    finally:
        await consumer.stop()


def _key_ids(value: bytes) -> list[str]:
    record = orjson.loads(value)
    ids = []
    for name in SEALED_FIELDS:
        sealed = record.get(name)
        if isinstance(sealed, str):
            ids.append("plain")
        elif secret_box.is_sealed(sealed):
            ids.append(str(sealed.get("kid")))
    return ids


async def _status(kafka: KafkaConnection, topic: str, keyring: secret_box.Keyring) -> Counter[str]:
    records, _ = await read_records(kafka, topic)
    counts: Counter[str] = Counter()
    for value in records.values():
        for kid in set(_key_ids(value)):
            counts[kid] += 1
    return counts


def resealed(name: str, value: bytes, keyring: secret_box.Keyring) -> bytes | None:
    """The record with its secrets sealed under the current key; None when they already
    are. Raises secret_box.UndecryptableSecret."""
    record = orjson.loads(value)
    if not any(kid != keyring.current_id for kid in _key_ids(value)):
        return None
    for field_name in SEALED_FIELDS:
        secret = record.get(field_name)
        if secret_box.is_sealed(secret):
            secret = keyring.open(name, field_name, secret)
        if isinstance(secret, str):
            record[field_name] = keyring.seal(name, field_name, secret)
    return orjson.dumps(record)


async def reencrypt(kafka: KafkaConnection, topic: str, keyring: secret_box.Keyring) -> Reencrypted:
    """Rewrites the records not sealed under the current key (see the module's note)."""
    for _ in range(ATTEMPTS):
        records, end = await read_records(kafka, topic)
        result = Reencrypted()
        rewrites: dict[str, bytes] = {}
        for name, value in records.items():
            try:
                new = resealed(name, value, keyring)
            except secret_box.UndecryptableSecret as exc:
                result.unreadable.append(str(exc))
                continue
            if new is None:
                result.current += 1
            else:
                rewrites[name] = new
        if result.unreadable or not rewrites:
            return result
        if await _end(kafka, topic) != end:
            continue  # the admin API wrote meanwhile: read again
        producer = AIOKafkaProducer(**kafka.client_options(), acks="all",
                                    enable_idempotence=True, client_id="secrets-cli")
        await producer.start()
        try:
            for name, new in rewrites.items():
                await producer.send_and_wait(topic, new, key=name.encode())
                result.rewritten.append(name)
        finally:
            await producer.stop()
        return result
    raise TimeoutError(f"the registry kept changing during {ATTEMPTS} attempts; run it again")
