"""Versioned schema migrations, applied at start, idempotently.

Each file `migrations/NNNN_name.sql` is one version; statements are separated
by a line ending in ';'. Applied versions are recorded in `schema_migrations`;
statements are written to be safe to run twice (IF NOT EXISTS), so two sinks
starting at once against one server do no harm.

On a cluster (METERSTREAM_CLICKHOUSE_CLUSTER) the same statements are applied after
`for_cluster` rewrote them, the ledger's included: every CREATE, ALTER and DROP runs
`ON CLUSTER`, every MergeTree-family engine becomes its Replicated form with the servers'
default Keeper path and replica name, and nothing else changes (tests/unit/test_cluster_ddl.py
keeps a table of what each statement becomes). The cluster must be one shard: every replica
then holds every row, so every query reads local tables and no Distributed table is needed;
`check_cluster` refuses any other shape before a statement runs.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

from clickhouse_connect.driver.client import Client

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version UInt32,
    name String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY version
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    def statements(self) -> list[str]:
        text = "\n".join(line for line in self.sql.splitlines()
                         if not line.lstrip().startswith("--"))
        return [s.strip() for s in text.split(";") if s.strip()]


def migrations() -> list[Migration]:
    found = []
    for entry in resources.files("meterstream.core.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a version: {versions}")
    return found


class ClusterError(RuntimeError):
    """A statement or a cluster meterstream cannot make replicated by construction."""


# The statements that change a schema object, with where `ON CLUSTER` goes: right after
# the object's name (CREATE ... name ON CLUSTER c [TO target] ..., ALTER TABLE name ON
# CLUSTER c ..., DROP ... name ON CLUSTER c).
_ON_CLUSTER = re.compile(
    r"^(?:CREATE\s+(?:TABLE|VIEW|MATERIALIZED\s+VIEW)\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"|ALTER\s+TABLE\s+"
    r"|DROP\s+(?:TABLE|VIEW)\s+(?:IF\s+EXISTS\s+)?)"
    r"[A-Za-z_][A-Za-z0-9_]*(?=\s|$)", re.IGNORECASE)
# Statements that write rows run on the replica the client reaches; its Replicated
# tables copy the rows to the others (INSERT has no ON CLUSTER).
_LOCAL = re.compile(r"^INSERT\s+INTO\s", re.IGNORECASE)
# Upper case only, as the migrations write it: a lower-case `engine = ...` is a column
# compared in some query, not a table's engine.
_ENGINE = re.compile(r"\bENGINE\s*=\s*([A-Za-z]+)")
_CREATE_TABLE = re.compile(r"^CREATE\s+TABLE\s", re.IGNORECASE)
_MATERIALIZED_VIEW = re.compile(r"^CREATE\s+MATERIALIZED\s+VIEW\s", re.IGNORECASE)
_TO_TABLE = re.compile(r"\sON CLUSTER `[^`]*`\s+TO\s")
_MERGE_TREE = re.compile(r"(Replacing|Summing|Aggregating|Collapsing|VersionedCollapsing|"
                         r"Graphite)?MergeTree")
# The insert_deduplication_token window of a non-replicated MergeTree; a Replicated one
# keeps its own (in Keeper, for every replica), of the same size.
_DEDUP_WINDOW = re.compile(r"\bnon_replicated_deduplication_window\b")


def for_cluster(statement: str, cluster: str) -> str:
    """`statement` as it runs on `cluster`, or ClusterError when it cannot be.

    - CREATE TABLE / VIEW / MATERIALIZED VIEW, ALTER TABLE, DROP TABLE / VIEW: `ON CLUSTER
      `cluster`` after the object's name, so that every replica runs it;
    - `ENGINE = XMergeTree[(args)]` becomes `ENGINE = ReplicatedXMergeTree[(args)]`. No
      Keeper path or replica name is written: the servers' `default_replica_path`
      (/clickhouse/tables/{uuid}/{shard}) and `default_replica_name` ({replica}) apply.
      Those are the operator's to choose, and {uuid} (which an ON CLUSTER CREATE in an
      Atomic database gives every replica alike) keeps a dropped and re-created table off
      its predecessor's Keeper path, which a /{database}/{table} path would not;
    - `non_replicated_deduplication_window` becomes `replicated_deduplication_window`
      (same value): the retried-insert window of a Replicated table;
    - INSERT: unchanged (it runs on one replica and replicates);
    - anything else (another statement, another engine, which would not replicate) raises,
      so that a new kind of migration statement gets its rule here before it runs.
    """
    if _LOCAL.match(statement):
        return statement
    target = _ON_CLUSTER.match(statement)
    if target is None:
        raise ClusterError(f"no ON CLUSTER rule for the statement {statement[:80]!r}...; "
                           "add one to meterstream/core/migrate.py for_cluster")
    quoted = "`" + cluster.replace("`", "``") + "`"
    rewritten = f"{statement[:target.end()]} ON CLUSTER {quoted}{statement[target.end():]}"

    def replicated(engine: re.Match[str]) -> str:
        name = engine.group(1)
        if not _MERGE_TREE.fullmatch(name):
            raise ClusterError(f"the engine {name} is not one of the (non-replicated) "
                               "MergeTree family that for_cluster makes Replicated, in "
                               f"{statement[:80]!r}...")
        return engine.group(0)[:engine.start(1) - engine.start(0)] + "Replicated" + name

    rewritten, engines = _ENGINE.subn(replicated, rewritten)
    # A table without an ENGINE clause would get the server's default_table_engine, which
    # does not replicate; so would a materialized view's inner table. A view writing TO a
    # table has none of its own.
    needs_engine = bool(_CREATE_TABLE.match(statement)) or bool(
        _MATERIALIZED_VIEW.match(statement) and not _TO_TABLE.search(rewritten))
    if engines != (1 if needs_engine else 0):
        raise ClusterError(f"expected {1 if needs_engine else 0} ENGINE clause, found "
                           f"{engines}, in {statement[:80]!r}...")
    return _DEDUP_WINDOW.sub("replicated_deduplication_window", rewritten)


def ledger(cluster: str = "") -> str:
    """The statement creating the bookkeeping table (replicated too, on a cluster)."""
    return for_cluster(_LEDGER.strip(), cluster) if cluster else _LEDGER.strip()


def statements(migration: Migration, cluster: str = "") -> list[str]:
    """What applying `migration` runs, in order."""
    return [for_cluster(s, cluster) if cluster else s for s in migration.statements()]


def check_cluster(client: Client, cluster: str) -> int:
    """The number of replicas of `cluster`; raises ClusterError unless the server knows it
    as one shard. Several shards would need Distributed tables over the local ones and a
    sharding key the high-water marks agree with, which meterstream does not make."""
    rows = client.query(
        "SELECT shard_num, count() FROM system.clusters WHERE cluster = {cluster:String} "
        "GROUP BY shard_num", parameters={"cluster": cluster}).result_rows
    return replicas_of(cluster, [(int(shard), int(count)) for shard, count in rows])


def replicas_of(cluster: str, shards: list[tuple[int, int]]) -> int:
    """`check_cluster`'s rule over (shard number, replicas) rows of system.clusters."""
    if not shards:
        raise ClusterError(f"the ClickHouse server knows no cluster {cluster!r} "
                           "(system.clusters; METERSTREAM_CLICKHOUSE_CLUSTER)")
    if len(shards) > 1:
        raise ClusterError(
            f"the cluster {cluster!r} has {len(shards)} shards; meterstream supports one "
            "shard with any number of replicas (docs/clickhouse-server.md)")
    return shards[0][1]


def unreplicated_tables(client: Client) -> list[str]:
    """The MergeTree-family tables of the current database that do not replicate."""
    rows = client.query(
        "SELECT name FROM system.tables WHERE database = currentDatabase() "
        "AND engine LIKE '%MergeTree' AND engine NOT LIKE 'Replicated%' ORDER BY name"
    ).result_rows
    return [str(row[0]) for row in rows]


def _check_replicated(client: Client, cluster: str) -> None:
    # `IF NOT EXISTS` would keep a table made before the cluster was set (one server's
    # schema) as it is: non-replicated on this replica, so its rows would be on it alone.
    tables = unreplicated_tables(client)
    if tables:
        raise ClusterError(
            f"METERSTREAM_CLICKHOUSE_CLUSTER is {cluster!r} but these tables of the database "
            f"do not replicate: {', '.join(tables)}; meterstream does not convert a "
            "single-server schema (docs/clickhouse-server.md)")


def apply(client: Client, cluster: str = "") -> list[int]:
    """Applies the migrations not yet recorded; returns the versions applied now. With
    `cluster`, checks that it is one shard and that no table of the database is a
    non-replicated one, before and after, and applies them `for_cluster`."""
    if cluster:
        replicas = check_cluster(client, cluster)
        _check_replicated(client, cluster)
        log.info("migrating a cluster", extra={"cluster": cluster, "replicas": replicas})
        # Every start would otherwise run the ledger's CREATE ON CLUSTER, which waits for
        # every replica: a sink could not start while one is down, even with nothing to do.
        if not client.command("EXISTS TABLE schema_migrations"):
            client.command(ledger(cluster))
    else:
        client.command(ledger())
    done = {row[0] for row in client.query("SELECT version FROM schema_migrations").result_rows}
    applied = []
    for migration in migrations():
        if migration.version in done:
            continue
        for statement in statements(migration, cluster):
            client.command(statement)
        client.insert("schema_migrations", [[migration.version, migration.name]],
                      column_names=["version", "name"])
        applied.append(migration.version)
        log.info("applied migration", extra={"version": migration.version,
                                             "migration": migration.name})
    if cluster:
        _check_replicated(client, cluster)
    return applied
