"""Migrations on the embedded ClickHouse engine (one chdb path per process, so one module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from meterstream.config import ClickHouseTarget
from processors.records import FUNCTION_EXECUTION_FIELDS, function_execution
from sinks import function_executions, migrate
from sinks.clickhouse import EngineBusy, EngineLock, connect
from tests.support import convex_examples


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    path = tmp_path_factory.mktemp("chdb") / "clickhouse"
    with EngineLock(path):
        client = connect(ClickHouseTarget(url=f"chdb://{path}", chdb_path=path))
        yield client
        client.close()  # so that another module can open an engine at its own path


def test_migrations_apply_once(client: Client) -> None:
    versions = [m.version for m in migrate.migrations()]
    assert versions == sorted(set(versions))
    migrate.apply(client)
    assert migrate.apply(client) == []
    applied = client.query("SELECT version FROM schema_migrations ORDER BY version").result_rows
    assert [row[0] for row in applied] == versions


def test_function_executions_has_a_column_for_every_field(client: Client) -> None:
    migrate.apply(client)
    rows = client.query("SELECT name FROM system.columns WHERE database = currentDatabase() "
                        "AND table = 'function_executions' ORDER BY position").result_rows
    assert tuple(row[0] for row in rows) == (*FUNCTION_EXECUTION_FIELDS, "inserted_at")


def test_a_retried_insert_is_a_no_op(client: Client) -> None:
    migrate.apply(client)
    client.command("TRUNCATE TABLE function_executions")
    events = [e for e in convex_examples()["events"] if e["topic"] == "function_execution"]
    records = [function_execution(e, 0, 5, i) for i, e in enumerate(events)]
    function_executions.insert(client, records, token="t:0:5-5")
    function_executions.insert(client, records, token="t:0:5-5")
    assert client.command("SELECT count() FROM function_executions") == 3
    function_executions.insert(client, records, token="t:0:6-6")
    assert client.command("SELECT count() FROM function_executions") == 6
    assert client.command("SELECT sum(network_egress_bytes) FROM function_executions") == 2 * 18234


def test_the_engine_lock_is_exclusive(tmp_path: Path) -> None:
    path = tmp_path / "clickhouse"
    with EngineLock(path), pytest.raises(EngineBusy, match="held by process"):
        EngineLock(path).acquire()
    with EngineLock(path):
        pass
