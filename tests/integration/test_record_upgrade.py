"""Upgrading the worker to record format 2 with version 1 records still in flight: the
sink reads both, mixed on the same partitions, and ClickHouse ends up exact.

The record topics are filled as the workers of an upgrade would fill them
(meterstream/core/record_format.py): first an old worker's JSON messages (no header),
read by no sink yet; then the upgraded worker's Arrow messages for the same and other
deployments, some falling back to JSON (as the worker does for a value that does not
fit its column), on the same partitions; and the messages an old worker forwarded
before it crashed, sent again by the upgraded worker in the other format (and the
reverse), which must be skipped by their origin whatever their format.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from meterstream.core import events, record_format
from meterstream.core.config import Settings
from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.topics import Topics, ensure_topics
from tests.integration.test_sink_failures import direct_load_times
from tests.support import free_port, meterstream, wait_for
from tests.support.sink_load import (
    MixedLoad,
    agent_raw_body,
    mixed_load,
    sink_metric,
    start_sink,
    stored,
    stored_or_none,
)
from tests.support.workers import worker_processes

PARTITIONS = 4
V1, V2 = 1, 2


def _load(now_ms: int) -> tuple[MixedLoad, list[tuple[bytes, bytes]]]:
    """Three deployments' bodies (a third of each body's events in the month before: its
    rows straddle two months) and agent usage, as raw (key, body) messages, interleaved so
    that every partition holds several deployments."""
    at_ms, old_at_ms = direct_load_times(now_ms)
    expected = MixedLoad()
    per_deployment: list[list[tuple[bytes, bytes]]] = []
    for deployment in ("upgrade-otter-1", "upgrade-otter-2", "upgrade-otter-3"):
        load = mixed_load(deployment, bodies=24, events_per_body=40, at_ms=at_ms,
                          agent_requests=4, old_at_ms=old_at_ms)
        key = deployment.encode()
        per_deployment.append([(key, body) for body in load.bodies]
                              + [(key, agent_raw_body(r, now_ms)) for r in load.agent])
        for table, (rows, total) in load.expected.items():
            expected.count(table, rows, total)
    bodies = [body for group in zip(*per_deployment, strict=True) for body in group]
    return expected, bodies


def _messages(body: bytes, index: int, version: int
              ) -> list[tuple[str, bytes, list[tuple[str, bytes]], int]]:
    """(route, value, headers, rows) of what a worker of `version` forwards for the
    index-th raw message."""
    from processors.split import split_body

    split = split_body(body, index % PARTITIONS, index // PARTITIONS)
    out: list[tuple[str, bytes, list[tuple[str, bytes]], int]] = []
    for route, records in split.routed.items():
        if version == V1:
            out.append((route, orjson.dumps(records), [], len(records)))
            continue
        event_type = events.BY_TOPIC.get(route, events.OTHER)
        rows = event_type.rows(records)
        value = record_format.encode(event_type, [[row[name] for row in rows]
                                                  for name, _ in event_type.columns])
        out.append((route, value, [(record_format.FORMAT_HEADER, record_format.ARROW)],
                    len(rows)))
    return out


async def _produce(bootstrap: str, namespace: str, bodies: list[tuple[bytes, bytes]],
                   sends: list[tuple[int, int]]) -> int:
    """Sends (raw message index, format version) in order; returns the rows sent."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=True)
    await producer.start()
    rows = 0
    try:
        for index, version in sends:
            key, body = bodies[index]
            for route, value, headers, count in _messages(body, index, version):
                await producer.send_and_wait(f"{namespace}.{route}", value, key=key,
                                             partition=index % PARTITIONS, headers=headers)
                rows += count
    finally:
        await producer.stop()
    return rows


def _table_rows(sql: Any, table: str) -> tuple[int, int]:
    """(rows, distinct origins (raw partition, raw offset, event index)) of a table."""
    rows, origins = sql(f"SELECT count(), uniqExact(raw_partition, raw_offset, event_index) "
                        f"FROM {table}").split("\t")
    return int(rows), int(origins)


def test_an_upgrade_with_version_1_records_in_flight_stores_every_record_once(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    now_ms = int(time.time() * 1000)
    expected, bodies = _load(now_ms)
    namespace = f"t{int(time.time() * 1000) % 10**9}"
    env = {"METERSTREAM_KAFKA": kafka_bootstrap, "METERSTREAM_NAMESPACE": namespace,
           "METERSTREAM_PARTITIONS": str(PARTITIONS),
           "METERSTREAM_DATA_DIR": str(tmp_path / "ms"),
           "METERSTREAM_SINK_PORT": str(free_port()),
           "METERSTREAM_SINK_BATCH_SECONDS": "0.2", "METERSTREAM_SINK_BATCH_ROWS": "700"}
    topics = Topics.of(Settings.from_env(env))
    from processors.split import ALL_ROUTES

    asyncio.run(ensure_topics(KafkaConnection(kafka_bootstrap), [
        topics.raw, topics.alerts, topics.dead_letters,
        *(topics.records(route) for route in ALL_ROUTES)]))

    def sql(query: str) -> str:
        return meterstream(["sql", query], env).stdout.strip()

    old = len(bodies) // 3
    # The old worker: JSON records of the first third, in flight before any sink runs.
    sent = asyncio.run(_produce(kafka_bootstrap, namespace, bodies,
                                [(index, V1) for index in range(old)]))
    # The old worker crashed after forwarding them, uncommitted: the upgraded worker
    # processes the last 12 raw messages again and forwards them as Arrow.
    again_v2 = [(index, V2) for index in range(old - 12, old)]
    # Then everything after, as Arrow, every fifth message falling back to JSON.
    upgraded = [(index, V1 if index % 5 == 0 else V2) for index in range(old, len(bodies))]
    # And an upgraded worker that crashed too: 8 of its messages again, in the format it
    # did not use the first time.
    again_other = [(index, V2 if version == V1 else V1)
                   for index, version in upgraded[len(upgraded) // 2 - 8:len(upgraded) // 2]]
    half = len(upgraded) // 2
    with worker_processes() as processes:
        processes.append(start_sink(env, tmp_path / "sink.log"))
        port = env["METERSTREAM_SINK_PORT"]
        duplicates = asyncio.run(_produce(kafka_bootstrap, namespace, bodies, again_v2))
        sent += asyncio.run(_produce(kafka_bootstrap, namespace, bodies, upgraded[:half]))
        duplicates += asyncio.run(_produce(kafka_bootstrap, namespace, bodies, again_other))
        sent += asyncio.run(_produce(kafka_bootstrap, namespace, bodies, upgraded[half:]))
        assert sent == sum(rows for rows, _ in expected.expected.values())

        wait_for(lambda: stored_or_none(sql) == expected.expected, timeout=180,
                 what=f"ClickHouse to hold {expected.expected}")
        wait_for(lambda: sink_metric(port, "meterstream_sink_duplicates_skipped_total")
                 == duplicates, timeout=60, what=f"the {duplicates} rows sent again skipped")
        assert sink_metric(port, "meterstream_sink_dead_letters_total") == 0
        assert stored(sql) == expected.expected
        for table in ("function_executions", "storage_snapshots", "file_downloads",
                      "log_stream_egress", "agent_usage", "other_events"):
            rows, origins = _table_rows(sql, table)
            assert rows == origins == expected.expected[table][0], table
        # Both months of the straddling bodies are stored, from both formats.
        assert sql("SELECT count(DISTINCT toYYYYMM(timestamp)) FROM function_executions") \
            == "2"
