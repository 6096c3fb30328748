"""The DDL meterstream runs on a ClickHouse cluster (METERSTREAM_CLICKHOUSE_CLUSTER),
statement by statement, against a table of what each statement must become.

No cluster runs here (no ClickHouse server can be installed on this machine), so the
cluster DDL is kept right by construction: it is the single-server migrations rewritten
by meterstream/core/migrate.py `for_cluster`, and these tests check that

- every statement of every migration, the ledger's included, is in CLUSTER_DDL, in order
  (a new migration fails here until its rows are added);
- each becomes what its row says: CREATE, ALTER and DROP get `ON CLUSTER` right after the
  object's name, every MergeTree-family engine its Replicated form, INSERT stays as it is;
- nothing else changes: undoing exactly those edits gives the original back, byte for
  byte, and in the real ClickHouse parser's normal form (the embedded engine's
  formatQuery, the same parser as the server's), which also proves that every cluster
  statement parses and that ON CLUSTER and the engine land where ClickHouse reads them;
- statements and engines it has no rule for are refused, not passed through.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from meterstream.core import migrate
from meterstream.core.clickhouse import EngineLock, connect
from meterstream.core.config import ClickHouseTarget, Settings
from meterstream.core.migrate import ClusterError, for_cluster, replicas_of
from meterstream.core.tables import FILE_DOWNLOADS
from sinks.high_water import HighWater

CLUSTER = "metering-prod"  # a '-' makes ClickHouse's normal form quote it as we do
ON = f" ON CLUSTER `{CLUSTER}`"

# One row per statement, in the order they run: (migration, statement, object, engine on
# the cluster ("" when the statement has none), runs ON CLUSTER).
CLUSTER_DDL: list[tuple[str, str, str, str, bool]] = [
    ("ledger", "CREATE TABLE", "schema_migrations", "ReplicatedReplacingMergeTree", True),
    ("0001", "CREATE TABLE", "function_executions", "ReplicatedMergeTree", True),
    ("0002", "CREATE TABLE", "storage_snapshots", "ReplicatedMergeTree", True),
    ("0002", "CREATE TABLE", "file_downloads", "ReplicatedMergeTree", True),
    ("0002", "CREATE TABLE", "log_stream_egress", "ReplicatedMergeTree", True),
    ("0002", "CREATE TABLE", "agent_usage", "ReplicatedMergeTree", True),
    ("0002", "CREATE TABLE", "other_events", "ReplicatedMergeTree", True),
    ("0002", "CREATE TABLE", "alerts", "ReplicatedReplacingMergeTree", True),
    ("0002", "ALTER TABLE", "function_executions", "", True),
    ("0003", "CREATE VIEW", "usage_events", "", True),
    ("0003", "CREATE TABLE", "usage_hourly", "ReplicatedAggregatingMergeTree", True),
    ("0003", "CREATE TABLE", "usage_daily", "ReplicatedAggregatingMergeTree", True),
    ("0003", "CREATE TABLE", "tokens_hourly", "ReplicatedAggregatingMergeTree", True),
    ("0003", "CREATE TABLE", "user_tokens_monthly", "ReplicatedAggregatingMergeTree", True),
    ("0003", "CREATE MATERIALIZED VIEW", "usage_daily_from_hourly", "", True),
    ("0003", "CREATE MATERIALIZED VIEW", "usage_hourly_from_function_executions", "", True),
    ("0003", "CREATE MATERIALIZED VIEW", "usage_hourly_from_file_downloads", "", True),
    ("0003", "CREATE MATERIALIZED VIEW", "usage_hourly_from_log_stream_egress", "", True),
    ("0003", "CREATE MATERIALIZED VIEW", "usage_hourly_from_agent_usage", "", True),
    ("0003", "CREATE MATERIALIZED VIEW", "usage_hourly_from_storage_snapshots", "", True),
    ("0003", "CREATE MATERIALIZED VIEW", "tokens_hourly_from_agent_usage", "", True),
    ("0003", "CREATE MATERIALIZED VIEW", "user_tokens_monthly_from_agent_usage", "", True),
    # The rollups' backfill: runs on the replica reached, its rows replicate.
    ("0003", "INSERT INTO", "usage_hourly", "", False),
    ("0003", "INSERT INTO", "tokens_hourly", "", False),
    ("0003", "INSERT INTO", "user_tokens_monthly", "", False),
    ("0004", "CREATE TABLE", "invoices", "ReplicatedReplacingMergeTree(version)", True),
    ("0005", "ALTER TABLE", "invoices", "", True),
    ("0005", "CREATE TABLE", "closed_periods", "ReplicatedReplacingMergeTree(version)", True),
    ("0005", "CREATE TABLE", "unbilled_usage", "ReplicatedReplacingMergeTree(version)", True),
]

_HEAD = re.compile(r"^(CREATE (?:MATERIALIZED )?(?:TABLE|VIEW)|ALTER TABLE|DROP (?:TABLE|VIEW)"
                   r"|INSERT INTO) (?:IF (?:NOT )?EXISTS )?(\w+)")
_ENGINE = re.compile(r"\bENGINE = (\w+(?:\([^)]*\))?)")


def _statements() -> list[tuple[str, str]]:
    """(migration, statement) for the ledger and every migration, as they run on one server."""
    return [("ledger", migrate.ledger())] + [
        (f"{m.version:04d}", s) for m in migrate.migrations() for s in migrate.statements(m)]


def _pairs() -> Iterator[tuple[tuple[str, str, str, str, bool], str, str]]:
    cluster = [migrate.ledger(CLUSTER)] + [
        s for m in migrate.migrations() for s in migrate.statements(m, CLUSTER)]
    single = [s for _, s in _statements()]
    assert len(cluster) == len(single) == len(CLUSTER_DDL)
    yield from zip(CLUSTER_DDL, single, cluster, strict=True)


def _undo(statement: str) -> str:
    """A cluster statement without the edits for_cluster may make (each at most once)."""
    return (statement.replace(ON, "", 1).replace("ENGINE = Replicated", "ENGINE = ", 1)
            .replace("replicated_deduplication_window", "non_replicated_deduplication_window"))


def test_the_table_lists_every_statement_in_order() -> None:
    found = []
    for where, statement in _statements():
        head = _HEAD.match(" ".join(statement.split()))
        assert head, statement[:80]
        found.append((where, head.group(1), head.group(2)))
    assert found == [row[:3] for row in CLUSTER_DDL], (
        "a migration changed: add its statements to CLUSTER_DDL (what each becomes on a "
        "cluster) after checking for_cluster's rules cover them")


def test_each_statement_becomes_what_its_row_says() -> None:
    for (_, kind, name, engine, on_cluster), single, cluster in _pairs():
        if on_cluster:
            head = _HEAD.match(single)
            assert head, single[:80]
            # ON CLUSTER right after the object's name, once.
            assert cluster.startswith(head.group(0) + ON), cluster[:120]
            assert cluster.count("ON CLUSTER") == 1
        else:
            assert cluster == single
        assert _ENGINE.findall(cluster) == ([engine] if engine else []), (kind, name)


def test_nothing_else_changes() -> None:
    for (_, kind, name, _, _), single, cluster in _pairs():
        assert _undo(cluster) == single, (kind, name)
        # The dedup window keeps its size under its replicated name.
        assert cluster.count("replicated_deduplication_window = 1000") == single.count(
            "non_replicated_deduplication_window = 1000")
        assert "non_replicated_deduplication_window" not in cluster


def test_every_table_is_replicated_and_every_view_writes_into_one() -> None:
    """Materialized views have no storage of their own (they write TO a table), so their
    rows replicate as their targets', each of which is a Replicated table here."""
    replicated = {name for _, kind, name, engine, _ in CLUSTER_DDL
                  if kind == "CREATE TABLE" and engine.startswith("Replicated")}
    tables = {name for _, kind, name, _, _ in CLUSTER_DDL if kind == "CREATE TABLE"}
    assert replicated == tables
    targets = {}
    for (_, kind, name, _, _), _, cluster in _pairs():
        if kind == "CREATE MATERIALIZED VIEW":
            (target,) = re.findall(r"\bTO (\w+) AS\b", " ".join(cluster.split()))
            targets[name] = target
    assert targets
    assert set(targets.values()) <= replicated, targets


@pytest.mark.parametrize(("statement", "expected"), [
    ("DROP TABLE IF EXISTS old_rollup", f"DROP TABLE IF EXISTS old_rollup{ON}"),
    ("DROP VIEW usage_events", f"DROP VIEW usage_events{ON}"),
    ("ALTER TABLE alerts ADD COLUMN IF NOT EXISTS note String",
     f"ALTER TABLE alerts{ON} ADD COLUMN IF NOT EXISTS note String"),
    # A materialized view with an inner table: the inner engine replicates too.
    ("CREATE MATERIALIZED VIEW IF NOT EXISTS mv\nENGINE = SummingMergeTree ORDER BY d AS "
     "SELECT d FROM t",
     f"CREATE MATERIALIZED VIEW IF NOT EXISTS mv{ON}\nENGINE = ReplicatedSummingMergeTree "
     "ORDER BY d AS SELECT d FROM t"),
    ("CREATE TABLE t (v UInt8, engine String) ENGINE = CollapsingMergeTree(v) ORDER BY v",
     f"CREATE TABLE t{ON} (v UInt8, engine String) ENGINE = ReplicatedCollapsingMergeTree(v) "
     "ORDER BY v"),
    ("INSERT INTO t SELECT 1", "INSERT INTO t SELECT 1"),
])
def test_rules_for_statements_no_migration_has_yet(statement: str, expected: str) -> None:
    assert for_cluster(statement, CLUSTER) == expected


@pytest.mark.parametrize(("statement", "refusal"), [
    ("RENAME TABLE a TO b", "no ON CLUSTER rule"),
    ("TRUNCATE TABLE a", "no ON CLUSTER rule"),
    ("CREATE DATABASE IF NOT EXISTS d", "no ON CLUSTER rule"),
    ("CREATE TABLE t (v UInt8) ENGINE = Memory", "engine Memory"),
    ("CREATE TABLE t (v UInt8) ENGINE = ReplicatedMergeTree ORDER BY v",
     "engine ReplicatedMergeTree"),
    # The server's default_table_engine would not replicate.
    ("CREATE TABLE t (v UInt8) ORDER BY v", "expected 1 ENGINE clause, found 0"),
    ("CREATE MATERIALIZED VIEW mv AS SELECT 1", "expected 1 ENGINE clause, found 0"),
    ("CREATE MATERIALIZED VIEW mv TO t ENGINE = MergeTree AS SELECT 1",
     "expected 0 ENGINE clause, found 1"),
])
def test_what_has_no_rule_is_refused(statement: str, refusal: str) -> None:
    with pytest.raises(ClusterError, match=re.escape(refusal)):
        for_cluster(statement, CLUSTER)


def test_one_shard_of_any_replicas_is_supported_and_nothing_else() -> None:
    assert replicas_of("prod", [(1, 3)]) == 3
    assert replicas_of("prod", [(1, 1)]) == 1
    with pytest.raises(ClusterError, match="knows no cluster 'prod'"):
        replicas_of("prod", [])
    with pytest.raises(ClusterError, match="has 2 shards; meterstream supports one shard"):
        replicas_of("prod", [(1, 2), (2, 2)])


class _Recording:
    """A client that records the SQL sent to it and answers no rows."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def command(self, sql: str) -> None:
        self.sent.append(sql)

    def query(self, sql: str, **_: Any) -> Any:
        self.sent.append(sql)
        return type("Result", (), {"result_rows": []})()


def test_on_a_cluster_the_marks_are_read_after_the_replica_caught_up() -> None:
    client: Any = _Recording()
    HighWater(FILE_DOWNLOADS, sync_replica=True).load(client, [3, 1])
    assert client.sent[0] == "SYSTEM SYNC REPLICA file_downloads"
    assert client.sent[1].startswith("SELECT raw_partition")
    assert len(client.sent) == 2
    single: Any = _Recording()
    HighWater(FILE_DOWNLOADS).load(single, [3, 1])
    assert [sql.split()[0] for sql in single.sent] == ["SELECT"]


def test_the_sink_syncs_replicas_exactly_when_a_cluster_is_set() -> None:
    import asyncio

    from sinks.sink import Sink

    for cluster, sync in (("", False), ("prod", True)):
        env = {"METERSTREAM_CLICKHOUSE": "https://ch-1:8443/usage"}
        if cluster:
            env["METERSTREAM_CLICKHOUSE_CLUSTER"] = cluster
        sink = Sink(Settings.from_env(env), _Recording(), None, None,  # type: ignore[arg-type]
                    asyncio.Event())
        assert {table.high_water.sync_replica for table in sink.tables.values()} == {sync}


class _Cluster:
    """A client of one replica of a one-shard cluster of three: answers what `apply` asks
    and records every statement it sends."""

    def __init__(self, ledger_exists: bool, applied: list[int]) -> None:
        self.ledger_exists = ledger_exists
        self.applied = applied
        self.sent: list[str] = []

    def command(self, sql: str) -> int | None:
        self.sent.append(sql)
        return int(self.ledger_exists) if sql.startswith("EXISTS TABLE") else None

    def query(self, sql: str, **_: Any) -> Any:
        self.sent.append(sql)
        rows: list[tuple[int, ...]] = []
        if "system.clusters" in sql:
            rows = [(1, 3)]
        elif "FROM schema_migrations" in sql:
            rows = [(version,) for version in self.applied]
        return type("Result", (), {"result_rows": rows})()

    def insert(self, table: str, rows: list[list[Any]], **_: Any) -> None:
        self.sent.append(f"insert {table} {rows[0][0]}")


def test_a_cluster_is_migrated_with_the_cluster_statements_in_order() -> None:
    client: Any = _Cluster(ledger_exists=False, applied=[])
    versions = [m.version for m in migrate.migrations()]
    assert migrate.apply(client, CLUSTER) == versions
    ddl = [sql for sql in client.sent if not sql.startswith(("SELECT", "EXISTS", "insert"))]
    assert ddl == [cluster for _, _, cluster in _pairs()]
    assert [sql for sql in client.sent if sql.startswith("insert")] == [
        f"insert schema_migrations {version}" for version in versions]
    # Checked before and after: the shape, then no table left unreplicated.
    assert "system.clusters" in client.sent[0]
    assert "system.tables" in client.sent[1]
    assert "system.tables" in client.sent[-1]


def test_a_migrated_cluster_starts_without_a_statement_on_cluster() -> None:
    """Nothing to do: no ON CLUSTER statement, which would wait for every replica, so a
    sink starts while one replica is down."""
    client: Any = _Cluster(ledger_exists=True, applied=[m.version for m in migrate.migrations()])
    assert migrate.apply(client, CLUSTER) == []
    assert not [sql for sql in client.sent if "ON CLUSTER" in sql or sql.startswith("insert")]


# --- The real parser (the embedded engine; one chdb path per process, so one module) ---

@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    path: Path = tmp_path_factory.mktemp("chdb") / "clickhouse"
    with EngineLock(path):
        client = connect(ClickHouseTarget(url=f"chdb://{path}", chdb_path=path))
        yield client
        client.close()  # so that another module can open an engine at its own path


def _formatted(client: Client, statement: str) -> str:
    text = client.query("SELECT formatQuery({q:String})", parameters={"q": statement}
                        ).result_rows[0][0]
    assert isinstance(text, str)
    return text


def test_clickhouse_parses_every_cluster_statement_as_only_those_edits(client: Client) -> None:
    for (_, kind, name, engine, on_cluster), single, cluster in _pairs():
        parsed = _formatted(client, cluster)
        assert _formatted(client, _undo(parsed)) == _formatted(client, single), (kind, name)
        assert (ON in parsed) == on_cluster, (kind, name)
        if engine:
            assert f"ENGINE = {engine}" in parsed, (kind, name)


def test_a_cluster_the_server_does_not_know_stops_migrations_before_any_statement(
        client: Client) -> None:
    """The embedded engine knows no cluster: the check's query is real, and refuses."""
    with pytest.raises(ClusterError, match=f"knows no cluster '{CLUSTER}'"):
        migrate.apply(client, CLUSTER)
    assert client.command("SELECT count() FROM system.tables "
                          "WHERE database = currentDatabase()") == 0
    # What a cluster's start asks before creating the ledger, answered by the real engine.
    assert client.command("EXISTS TABLE schema_migrations") == 0


def test_clickhouse_parses_the_replica_sync(client: Client) -> None:
    recorded: Any = _Recording()
    HighWater(FILE_DOWNLOADS, sync_replica=True).load(recorded, [0])
    assert _formatted(client, recorded.sent[0]) == "SYSTEM SYNC REPLICA file_downloads"


def test_a_single_server_schema_is_named_and_not_taken_for_a_cluster(client: Client) -> None:
    """What `apply` on a cluster checks before and after migrating: here the one server's
    schema, whose every table the query names (a real query on the real system.tables)."""
    migrate.apply(client)
    assert client.command("EXISTS TABLE schema_migrations") == 1
    tables = {name for _, kind, name, _, _ in CLUSTER_DDL if kind == "CREATE TABLE"}
    assert set(migrate.unreplicated_tables(client)) == tables
    with pytest.raises(ClusterError, match="do not replicate: agent_usage, alerts"):
        migrate._check_replicated(client, CLUSTER)
