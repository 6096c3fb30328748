"""Versioned schema migrations, applied at start, idempotently.

Each file `migrations/NNNN_name.sql` is one version; statements are separated
by a line ending in ';'. Applied versions are recorded in `schema_migrations`;
statements are written to be safe to run twice (IF NOT EXISTS), so two sinks
starting at once against one server do no harm.
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


def apply(client: Client) -> list[int]:
    """Applies the migrations not yet recorded; returns the versions applied now."""
    client.command(_LEDGER)
    done = {row[0] for row in client.query("SELECT version FROM schema_migrations").result_rows}
    applied = []
    for migration in migrations():
        if migration.version in done:
            continue
        for statement in migration.statements():
            client.command(statement)
        client.insert("schema_migrations", [[migration.version, migration.name]],
                      column_names=["version", "name"])
        applied.append(migration.version)
        log.info("applied migration", extra={"version": migration.version,
                                             "migration": migration.name})
    return applied
