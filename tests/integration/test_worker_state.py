"""The worker's state survives a clean restart on its own disk: a duplicate body sent
after the restart is dropped, and the restart needs nothing from the changelog (the
RocksDB databases hold the changelog offsets up to its end)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import time
from collections import defaultdict
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer
from rocksdict import AccessType, Options, Rdict

from meterstream.core.config import Settings
from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.topics import Topics, ensure_topics
from tests.support import free_port, metric_sample, read_topic, wait_for
from tests.support.load import Load, function_load
from tests.support.pipeline import running_pipeline, worker_page
from tests.support.workers import minute_ago, raw_batches, start_worker, worker_processes

SECRET = "5b2e8c1d9f0a4e7b6c3d2a1f0e9b8c7d"
OFFSET_KEY = b"__faust\0offset__"  # where Faust keeps a database's changelog offset


def _persisted_offsets(tables: Path, table: str) -> dict[int, int]:
    offsets = {}
    for path in tables.glob(f"{table}-*.db"):
        db = Rdict(str(path), options=Options(raw_mode=True),
                   access_type=AccessType.read_only())
        try:
            value = db.get(OFFSET_KEY)
        finally:
            db.close()
        if value is not None:
            offsets[int(path.name.removeprefix(f"{table}-").removesuffix(".db"))] = int(value)
    return offsets


def test_a_clean_restart_keeps_dedup_state_on_disk_without_replaying_the_changelog(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    at_ms = minute_ago()
    deployment = "steady-otter-1"
    load = function_load(deployment, bodies=11, events_per_body=20, at_ms=at_ms)
    first, repeat, last = load.bodies[:10], load.bodies[0], load.bodies[10]
    with running_pipeline(kafka_bootstrap, tmp_path, command="receiver") as receiver, \
            worker_processes() as workers:
        receiver.register(deployment, webhook_secret=SECRET)
        port = free_port()
        workers.append(start_worker(receiver.env, tmp_path / "worker.log", port))
        for body in first:
            assert receiver.post(body, SECRET)[0] == 200
        wait_for(lambda: raw_batches(port) >= len(first), timeout=120,
                 what="the first bodies processed")
        workers[0].send_signal(signal.SIGTERM)
        assert workers[0].wait(60) == 0

        tables = next((tmp_path / "ms" / "worker" / f"port-{port}").rglob("tables"))
        assert (tables / "clean-stop").exists()
        # Every changelog message is already in the databases: recovery reads nothing.
        for table in ("seen", "usage"):
            ends: dict[int, int] = defaultdict(lambda: -1)
            for message in read_topic(kafka_bootstrap,
                                      f"{receiver.namespace}-{table}-changelog"):
                ends[message.partition] = max(ends[message.partition], message.offset)
            assert ends, f"nothing in the {table} changelog"
            assert _persisted_offsets(tables, table) == dict(ends)

        workers.append(start_worker(receiver.env, tmp_path / "worker.log", port))
        assert receiver.post(repeat, SECRET)[0] == 200
        assert receiver.post(last, SECRET)[0] == 200
        wait_for(lambda: raw_batches(port) >= 1, timeout=120, what="the new body processed")
        wait_for(lambda: metric_sample(str(port), "meterstream_worker_duplicates_total",
                                       'kind="body"') == 1,
                 timeout=60, what="the repeat dropped")
        assert raw_batches(port) == 1
        # The restarted worker's live usage holds each distinct body once.
        expected = Load()
        for body in [*first, last]:
            expected.add_body(orjson.loads(body))
        wait_for(lambda: _function_calls(port, deployment, at_ms)
                 == expected.totals["function_calls"], timeout=60,
                 what="usage of every distinct body, once")


def _function_calls(port: int, deployment: str, at_ms: int) -> int | None:
    try:
        report = json.loads(worker_page(port, f"/v1/quota/{deployment}?at={at_ms}"))
    except OSError:
        return None
    return int(report["periods"]["month"]["usage"]["function_calls"])


def test_old_dedup_entries_are_migrated_and_expired_ones_deleted_through_the_changelog(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """An upgrade from the memory store's string keys keeps the dedup window; entries past
    the retention are deleted, with a tombstone on the changelog."""
    at_ms = int(time.time() * 1000)
    deployment = "upgraded-otter-1"
    load = function_load(deployment, bodies=3, events_per_body=5, at_ms=at_ms)
    old_body, other, later = load.bodies
    env = {"METERSTREAM_DEDUP_RETENTION": "16", "METERSTREAM_LATE_GRACE": "16"}
    with running_pipeline(kafka_bootstrap, tmp_path, command="receiver",
                          extra_env=env) as receiver, worker_processes() as workers:
        receiver.register(deployment, webhook_secret=SECRET)
        settings = Settings.from_env({**os.environ, **receiver.env})
        spec = Topics.of(settings).changelog("seen")
        asyncio.run(ensure_topics(KafkaConnection.of(settings), [spec]))
        changelog = spec.name
        # What the worker before the upgrade left: the body, seen at another offset, in
        # every partition (whichever the deployment's is).
        old_key = f"{deployment}|body|{hashlib.sha256(old_body).hexdigest()}"
        asyncio.run(_write_old_entries(kafka_bootstrap, changelog, orjson.dumps(old_key),
                                       orjson.dumps([10 ** 6, at_ms + 3600_000, 0])))
        port = free_port()
        workers.append(start_worker(receiver.env, tmp_path / "worker.log", port))
        assert receiver.post(old_body, SECRET)[0] == 200
        wait_for(lambda: metric_sample(str(port), "meterstream_worker_duplicates_total",
                                       'kind="body"') == 1,
                 timeout=120, what="the body remembered before the upgrade dropped")
        assert raw_batches(port) == 0
        # The entry was migrated (into the bucket of that moment) before the duplicate was
        # counted; past the retention and one bucket more (16 + 4 s) the next message
        # expires it. The retention is wall-clock time: nothing to await.
        time.sleep(16 + 4 + 1)
        assert receiver.post(other, SECRET)[0] == 200
        wait_for(lambda: metric_sample(str(port), "meterstream_worker_dedup_expired_total")
                 >= 1, timeout=60, what="the migrated entry expired")
        assert receiver.post(old_body, SECRET)[0] == 200
        assert receiver.post(later, SECRET)[0] == 200
        wait_for(lambda: raw_batches(port) == 3, timeout=60,
                 what="the body counted again once forgotten")
        assert metric_sample(str(port), "meterstream_worker_duplicates_total",
                             'kind="body"') == 1
        messages = read_topic(kafka_bootstrap, changelog)
        assert any(m.value is None and m.key.startswith(b"\x01") for m in messages)
        assert any(m.value is None and m.key == orjson.dumps(old_key) for m in messages)


async def _write_old_entries(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for partition in await producer.partitions_for(topic):
            await producer.send_and_wait(topic, value=value, key=key, partition=partition)
    finally:
        await producer.stop()
