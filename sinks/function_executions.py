"""Writing normalised function_execution records to the `function_executions` table."""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

from processors.records import FUNCTION_EXECUTION_FIELDS
from sinks.batching import Record

TABLE = "function_executions"


def columns(records: list[Record]) -> list[list[object]]:
    """The records as columns, in FUNCTION_EXECUTION_FIELDS order."""
    return [[record[name] for record in records] for name in FUNCTION_EXECUTION_FIELDS]


def insert(client: Client, records: list[Record], token: str) -> None:
    """One columnar insert; retried with the same token it is a no-op."""
    client.insert(TABLE, columns(records), column_names=list(FUNCTION_EXECUTION_FIELDS),
                  column_oriented=True, settings={"insert_deduplication_token": token})
