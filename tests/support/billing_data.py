"""Rows for the billing tests, inserted straight into the raw tables of the real engine
(the materialized views fire on insert as they do for the sink's inserts)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from clickhouse_connect.driver.client import Client

from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.records import AGENT_TOKENS, FUNCTION_EXECUTION_FIELDS, USAGE_COUNTERS

GIB = 1 << 30
RAW_TABLES = ("function_executions", "file_downloads", "log_stream_egress", "agent_usage",
              "storage_snapshots")
ROLLUPS = ("usage_hourly", "usage_daily", "tokens_hourly", "user_tokens_monthly")


def ms(text: str) -> int:
    """'2026-10-05T10:00:00' (UTC) in ms."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def reset(client: Client) -> None:
    for table in (*RAW_TABLES, *ROLLUPS, "invoices", "closed_periods", "unbilled_usage"):
        client.command(f"TRUNCATE TABLE {table}")


def function_execution(deployment: str, at: int, function_type: str = "query",
                       region: str = "aws-us-east-1", execution_time_ms: int = 10,
                       **usage: int) -> dict[str, Any]:
    unknown = set(usage) - set(USAGE_COUNTERS)
    assert not unknown, unknown
    record: dict[str, Any] = dict.fromkeys(FUNCTION_EXECUTION_FIELDS, 0)
    record.update({"deployment": deployment, "timestamp": at, "function_path": "f:g",
                   "function_type": function_type, "function_cached": False,
                   "component_path": "", "request_id": "r", "status": "success",
                   "error_message": "", "execution_time_ms": execution_time_ms,
                   "will_retry": False, "run_reason": "", "occ_table_name": "",
                   "scheduler_job_id": "", "deployment_type": "prod",
                   "deployment_region": region, "project_slug": "p"})
    record.update(usage)
    return record


def insert_function_executions(client: Client, records: list[dict[str, Any]]) -> None:
    client.insert("function_executions",
                  [[r[name] for name in FUNCTION_EXECUTION_FIELDS] for r in records],
                  column_names=list(FUNCTION_EXECUTION_FIELDS))


def insert_snapshot(client: Client, deployment: str, at: int, region: str = "aws-us-east-1",
                    offset: int = 0, **totals: int) -> None:
    columns = ["deployment", "timestamp", "deployment_region", "raw_offset", *totals]
    client.insert("storage_snapshots", [[deployment, at, region, offset, *totals.values()]],
                  column_names=columns)


def insert_download(client: Client, deployment: str, at: int, egress_bytes: int) -> None:
    client.insert("file_downloads", [[deployment, at, "s", egress_bytes]],
                  column_names=["deployment", "timestamp", "storage_id", "egress_bytes"])


def insert_log_egress(client: Client, deployment: str, at: int, egress_bytes: int) -> None:
    client.insert("log_stream_egress", [[deployment, at, egress_bytes]],
                  column_names=["deployment", "timestamp", "egress_bytes"])


def insert_tokens(client: Client, deployment: str, user: str, at: int, provider: str,
                  model: str, record_id: str, **tokens: int) -> None:
    unknown = set(tokens) - set(AGENT_TOKENS)
    assert not unknown, unknown
    columns = ["id", "deployment", "timestamp", "user_id", "provider", "model", *AGENT_TOKENS]
    client.insert("agent_usage", [[record_id, deployment, at, user, provider, model,
                                   *(tokens.get(name, 0) for name in AGENT_TOKENS)]],
                  column_names=columns)


def publish_registry(bootstrap: str, namespace: str,
                     records: dict[str, dict[str, Any]]) -> None:
    """Writes deployment records to the registry topic, as the admin API does."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    from meterstream.core.registry import Deployment
    from meterstream.core.topics import TopicSpec, ensure_topics

    async def publish() -> None:
        topic = f"{namespace}.deployments"
        await ensure_topics(KafkaConnection(bootstrap),
                            [TopicSpec(topic, 1, {"cleanup.policy": "compact"})])
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for name, fields in records.items():
                await producer.send_and_wait(topic, Deployment(name=name, **fields).to_json(),
                                             key=name.encode())
        finally:
            await producer.stop()

    asyncio.run(publish())
