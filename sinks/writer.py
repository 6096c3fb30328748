"""One atomic insert: the rows of one table and one month, as one Arrow table.

The rows go with clickhouse-connect's `insert_arrow`: one `INSERT ... FORMAT Arrow`
whose body is an Arrow IPC file of the table's rows, combined into one record batch
(sinks/batching.py `Columns.table`).

ClickHouse stores an insert into a MergeTree partition as one part, which
appears whole or not at all, provided the insert is squashed into one block:
the settings below make sure of it whatever the server's defaults (a batch is
at most METERSTREAM_SINK_BATCH_ROWS rows plus one message), as they squashed
clickhouse-connect's Native blocks: tests/unit/test_sink_arrow.py turns the server's
squashing off and finds the same rows in many parts when sent without them, in one
part with them. `insert_arrow` passes its
`settings` through to the query as any insert does (clickhouse-connect: the HTTP
query parameters; the embedded engine: the statement's SETTINGS clause). The
insert_deduplication_token makes the same insert sent twice (a retry after a
timeout whose insert did land) a no-op.
"""

from __future__ import annotations

from typing import Any

from clickhouse_connect.driver.client import Client

from meterstream.core.tables import TableSpec
from sinks.batching import Columns

ONE_BLOCK = 1 << 40
INSERT_SETTINGS: dict[str, Any] = {
    "max_insert_block_size": ONE_BLOCK,
    "min_insert_block_size_rows": ONE_BLOCK,
    "min_insert_block_size_bytes": ONE_BLOCK,
}


class TableWriter:
    def __init__(self, client: Client, spec: TableSpec) -> None:
        self.client = client
        self.spec = spec
        self.names = list(spec.columns)
        self._types: list[str] | None = None

    def column_types(self) -> list[str]:
        """The table's types of the columns written (LowCardinality as its plain type), read
        once; raises RuntimeError if the table lacks one, so that the sink stops at start
        instead of failing every insert."""
        if self._types is None:
            rows = self.client.query(
                "SELECT name, type FROM system.columns "
                "WHERE database = currentDatabase() AND table = {table:String}",
                parameters={"table": self.spec.table}).result_rows
            types: dict[str, str] = {row[0]: row[1] for row in rows}
            missing = [name for name in self.names if name not in types]
            if missing:
                raise RuntimeError(f"table {self.spec.table} lacks the columns {missing}")
            self._types = [_sent_as(types[name]) for name in self.names]
        return self._types

    def insert(self, columns: Columns, token: str) -> None:
        self.client.insert_arrow(self.spec.table, columns.table(),
                                 settings={**INSERT_SETTINGS, "insert_deduplication_token": token})


def _sent_as(clickhouse_type: str) -> str:
    """LowCardinality(String) columns are sent as String: the server builds the
    dictionaries in C++, where clickhouse-connect builds them in Python (a quarter of the
    sink's time on function executions)."""
    prefix = "LowCardinality("
    if clickhouse_type.startswith(prefix):
        return clickhouse_type[len(prefix):-1]
    return clickhouse_type
