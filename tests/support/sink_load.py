"""A load of every record type for the sink tests, with what each ClickHouse table must
hold afterwards, computed here from the events themselves (not by the worker's code)."""

from __future__ import annotations

import asyncio
import copy
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tests.support import REPO, recent_events
from tests.support import metric_sample as sink_metric  # noqa: F401 (its users import it from here)

# What is summed per table beside the row count.
SUMMED: dict[str, str] = {
    "function_executions": "database_io_read_bytes + execution_time_ms + network_egress_bytes",
    "storage_snapshots": "total_document_size_bytes",
    "file_downloads": "egress_bytes",
    "log_stream_egress": "egress_bytes",
    "agent_usage": "total_tokens",
    "other_events": "length(topic)",
}


@dataclass
class MixedLoad:
    bodies: list[bytes] = field(default_factory=list)
    """Convex webhook bodies (JSON arrays)."""
    agent: list[list[dict[str, Any]]] = field(default_factory=list)
    """Agent usage requests (each a JSON array of records, the API's shape)."""
    expected: dict[str, tuple[int, int]] = field(default_factory=dict)
    """table -> (rows, sum of SUMMED[table])"""

    def count(self, table: str, rows: int, total: int) -> None:
        have_rows, have_total = self.expected.get(table, (0, 0))
        self.expected[table] = (have_rows + rows, have_total + total)

    @property
    def function_calls(self) -> int:
        return self.expected["function_executions"][0] + self.expected["file_downloads"][0]


def mixed_load(deployment: str, bodies: int, events_per_body: int, at_ms: int,
               agent_requests: int = 0, old_at_ms: int | None = None) -> MixedLoad:
    """Bodies of every event type: function executions, storage snapshots, file downloads,
    log-stream egress, console and verification events (`other`); each body distinct.
    With `old_at_ms`, every third event is at that time instead (another month)."""
    templates = recent_events()
    convex = templates[0]["convex"]
    templates += [
        {"timestamp": 0, "topic": "log_stream_egress", "egress_bytes": 0, "convex": convex},
        {"timestamp": 0, "topic": "console", "message": "hello", "log_level": "INFO",
         "function": {"path": "messages:list", "type": "query"}, "convex": convex},
        {"timestamp": 0, "topic": "verification", "message": "Convex connection test",
         "convex": convex},
    ]
    load = MixedLoad()
    for table in SUMMED:
        load.expected[table] = (0, 0)
    n = 0
    for _ in range(bodies):
        events = []
        for _ in range(events_per_body):
            event = copy.deepcopy(templates[n % len(templates)])
            event["convex"]["deployment_name"] = deployment
            event["timestamp"] = (old_at_ms if old_at_ms is not None and n % 3 == 0
                                  else at_ms) + n % 5000
            topic = event["topic"]
            if topic == "function_execution":
                usage = event["usage"]
                usage["database_io_read_bytes"] = 100 + n % 997
                usage["network_egress_bytes"] = n % 13
                event["execution_time_ms"] = 1 + n % 50
                load.count("function_executions", 1, usage["database_io_read_bytes"]
                           + event["execution_time_ms"] + usage["network_egress_bytes"])
            elif topic == "current_storage_usage":
                event["total_document_size_bytes"] = 1_000_000 + n
                load.count("storage_snapshots", 1, event["total_document_size_bytes"])
            elif topic == "storage_api_bandwidth":
                event["egress_bytes"] = 1000 + n % 31
                load.count("file_downloads", 1, event["egress_bytes"])
            elif topic == "log_stream_egress":
                event["egress_bytes"] = 5000 + n % 17
                load.count("log_stream_egress", 1, event["egress_bytes"])
            else:
                load.count("other_events", 1, len(topic))
            events.append(event)
            n += 1
        load.bodies.append(orjson.dumps(events))
    for request in range(agent_requests):
        records = [_agent_record(deployment, f"step-{request}-{k}", at_ms + k, request + k)
                   for k in range(3)]
        load.agent.append(records)
        load.count("agent_usage", len(records),
                   sum(r["usage"]["totalTokens"] for r in records))
    return load


def _agent_record(deployment: str, step: str, at_ms: int, n: int) -> dict[str, Any]:
    inputs, outputs = 1000 + n % 7, 200 + n % 11
    return {"id": step, "timestamp": at_ms, "deployment": deployment,
            "userId": f"user-{n % 4}", "threadId": "thread-1", "agentName": "Support Agent",
            "model": "gpt-4o-mini", "provider": "openai.chat",
            "usage": {"inputTokens": inputs, "outputTokens": outputs,
                      "totalTokens": inputs + outputs},
            "providerMetadata": {"openai": {"n": n}}}


def stored(sql: Callable[[str], str]) -> dict[str, tuple[int, int]]:
    """table -> (rows, sum of SUMMED[table]) as ClickHouse holds them."""
    union = " UNION ALL ".join(
        f"SELECT '{table}', count(), toUInt64(sum({expression})) FROM {table}"
        for table, expression in SUMMED.items())
    result = {}
    for line in sql(union).splitlines():
        table, rows, total = line.split("\t")
        result[table] = (int(rows), int(total))
    return result


def stored_or_none(sql: Callable[[str], str]) -> dict[str, tuple[int, int]] | None:
    try:
        return stored(sql)
    except AssertionError:  # the tables do not exist yet, or the engine is changing hands
        return None


def probe(port: str, path: str) -> tuple[int, str] | None:
    """(status, body) of GET `path` on the service on `port`; None while it does not answer."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()
    except OSError:
        return None


def sink_ready(port: str) -> bool:
    """Whether the sink on `port` answers /readyz with 200: schema applied, topics there,
    partitions assigned with their high-water marks (meterstream/processes/sink.py)."""
    answer = probe(port, "/readyz")
    return answer is not None and answer[0] == 200


def start_sink(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    import os

    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "meterstream", "sink"], cwd=REPO,
                                env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT)


async def _produce_split(bootstrap: str, namespace: str, bodies: list[tuple[bytes, bytes]],
                         partitions: int, alerts: list[dict[str, Any]], first: int) -> None:
    """What the worker would forward from `bodies` ((key, raw body), the first being the
    first-th raw message: partition first % partitions, offset first // partitions, and so
    on), produced straight to the record topics, and the alerts to <ns>.alerts."""
    from aiokafka import AIOKafkaProducer

    from processors.split import split_body

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=True)
    await producer.start()
    try:
        for index, (key, body) in enumerate(bodies, start=first):
            partition = index % partitions
            split = split_body(body, partition, index // partitions)
            for route, records in split.routed.items():
                await producer.send_and_wait(f"{namespace}.{route}", orjson.dumps(records),
                                             key=key, partition=partition)
        for index, alert in enumerate(alerts):
            await producer.send_and_wait(f"{namespace}.alerts", orjson.dumps(alert),
                                         key=alert["deployment"].encode(),
                                         partition=index % partitions)
    finally:
        await producer.stop()


def produce_split(bootstrap: str, namespace: str, bodies: list[tuple[bytes, bytes]],
                  partitions: int, alerts: list[dict[str, Any]] | None = None,
                  first: int = 0) -> None:
    asyncio.run(_produce_split(bootstrap, namespace, bodies, partitions, alerts or [], first))


def agent_raw_body(records: list[dict[str, Any]], now_ms: int) -> bytes:
    """An agent usage request as the receiver stores it on the raw topic."""
    from ingest.agent_usage import normalise_all

    return orjson.dumps(normalise_all(records, now_ms))


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
