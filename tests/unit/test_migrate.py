"""Migrations on the embedded ClickHouse engine (one chdb path per process, so one module)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from meterstream.core import migrate
from meterstream.core.clickhouse import EngineBusy, EngineLock, connect
from meterstream.core.config import ClickHouseTarget
from meterstream.core.records import FUNCTION_EXECUTION_FIELDS, function_execution
from meterstream.core.tables import FUNCTION_EXECUTIONS, SPECS, month_of
from sinks.batching import Columns
from sinks.high_water import HighWater
from sinks.writer import TableWriter
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
    writer = TableWriter(client, FUNCTION_EXECUTIONS)
    events = [e for e in convex_examples()["events"] if e["topic"] == "function_execution"]
    records = _columns([function_execution(e, 0, 5, i) for i, e in enumerate(events)])
    writer.insert(records, token="t:0:5-5")
    writer.insert(records, token="t:0:5-5")
    assert client.command("SELECT count() FROM function_executions") == 3
    writer.insert(records, token="t:0:6-6")
    assert client.command("SELECT count() FROM function_executions") == 6
    assert client.command("SELECT sum(network_egress_bytes) FROM function_executions") == 2 * 18234


def _columns(records: Sequence[Mapping[str, object]]) -> Columns:
    columns = Columns(FUNCTION_EXECUTIONS.columns, FUNCTION_EXECUTIONS.schema)
    columns.add([dict(record) for record in records])
    return columns


def test_every_table_has_the_columns_the_sink_writes(client: Client) -> None:
    migrate.apply(client)
    for spec in SPECS:
        assert len(TableWriter(client, spec).column_types()) == len(spec.columns)


def _parts(client: Client) -> list[tuple[int, int]]:
    result = client.query("SELECT count(), sum(rows) FROM system.parts WHERE active "
                          "AND database = currentDatabase() "
                          "AND table = 'function_executions'").result_rows
    return [(int(parts), int(rows)) for parts, rows in result]


def test_a_large_insert_is_one_part_and_the_marks_read_it(client: Client) -> None:
    """Atomic inserts are what makes the high-water marks exact: clickhouse-connect sends
    a batch as blocks of 8192 rows, which a server that does not squash them (here by
    session settings) stores as several parts; the writer's settings make one part."""
    migrate.apply(client)
    client.command("TRUNCATE TABLE function_executions")
    client.command("SYSTEM STOP MERGES function_executions")
    event = next(e for e in convex_examples()["events"] if e["topic"] == "function_execution")
    records: list[Mapping[str, object]] = [
        function_execution(event, n % 3, n // 128, n % 128) for n in range(30_000)]
    writer = TableWriter(client, FUNCTION_EXECUTIONS)
    client.command("SET min_insert_block_size_rows = 0")
    client.command("SET min_insert_block_size_bytes = 0")
    try:
        client.insert("function_executions", [[r[n] for r in records] for n in writer.names],
                      column_names=writer.names, column_oriented=True)
        assert _parts(client)[0][0] > 1
        client.command("TRUNCATE TABLE function_executions")
        writer.insert(_columns(records), token="big")
        assert _parts(client) == [(1, 30_000)]
    finally:
        client.command("SET min_insert_block_size_rows = DEFAULT")
        client.command("SET min_insert_block_size_bytes = DEFAULT")
        client.command("SYSTEM START MERGES function_executions")
    marks = HighWater(FUNCTION_EXECUTIONS)
    marks.load(client, [0, 2, 7])
    month = month_of(event["timestamp"])
    assert marks.marks == {(0, month): max(n // 128 for n in range(0, 30_000, 3)),
                           (2, month): max(n // 128 for n in range(2, 30_000, 3))}


def test_the_engine_lock_is_exclusive(tmp_path: Path) -> None:
    path = tmp_path / "clickhouse"
    with EngineLock(path), pytest.raises(EngineBusy, match="held by process"):
        EngineLock(path).acquire()
    with EngineLock(path):
        pass
