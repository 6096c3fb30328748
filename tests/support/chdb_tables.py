"""Fills the event tables of an embedded ClickHouse with normalised records, in a process
of its own (chdb opens one data path per process):

    python -m tests.support.chdb_tables <chdb path> <records.json>

records.json maps each table of meterstream/core/migrations (0001, 0002) to a list of normalised
records (meterstream/core/records.py), whose fields are the table's columns. Tests use it
to check queries on tables the sink does not write yet.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import orjson

from meterstream.core import migrate
from meterstream.core.clickhouse import EngineLock, connect
from meterstream.core.config import ClickHouseTarget


def _row(table: str, record: dict[str, Any], columns: list[str]) -> list[Any]:
    if table == "agent_usage":
        record = {**record, "provider_metadata": orjson.dumps(record["provider_metadata"]).decode()}
    return [record[column] for column in columns]


def main(path: Path, records_file: Path) -> None:
    tables: dict[str, list[dict[str, Any]]] = json.loads(records_file.read_text())
    with EngineLock(path):
        client = connect(ClickHouseTarget(url=f"chdb://{path}", chdb_path=path))
        migrate.apply(client)
        for table, records in tables.items():
            if not records:
                continue
            known = {row[0] for row in client.query(
                "SELECT name FROM system.columns WHERE database = currentDatabase() "
                f"AND table = '{table}'").result_rows}
            columns = [c for c in records[0] if c in known]
            client.insert(table, [_row(table, r, columns) for r in records],
                          column_names=columns)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
