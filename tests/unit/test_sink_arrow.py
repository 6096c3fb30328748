"""The sink's Arrow inserts on the embedded engine: one part per insert whatever the mix of
record formats, and the insert's settings reaching the engine (its own chdb path, so its
own module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from clickhouse_connect.driver.client import Client

from meterstream.core import migrate
from meterstream.core.clickhouse import EngineLock, connect
from meterstream.core.config import ClickHouseTarget
from meterstream.core.tables import FILE_DOWNLOADS
from sinks.batching import Columns
from sinks.writer import TableWriter

AT = 1_764_000_000_000


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    path: Path = tmp_path_factory.mktemp("chdb") / "clickhouse"
    with EngineLock(path):
        client = connect(ClickHouseTarget(url=f"chdb://{path}", chdb_path=path))
        migrate.apply(client)
        yield client
        client.close()  # so that another module can open an engine at its own path


def _download(offset: int, index: int) -> dict[str, object]:
    return {"deployment": "d", "timestamp": AT, "storage_id": "s", "egress_bytes": 10,
            "raw_partition": 0, "raw_offset": offset, "event_index": index}


def _columns(messages: int) -> Columns:
    """`messages` messages of 8 rows, every third as version 1 records, the rest as Arrow."""
    columns = Columns(FILE_DOWNLOADS.columns, FILE_DOWNLOADS.schema)
    for offset in range(messages):
        records = [_download(offset, index) for index in range(8)]
        if offset % 3 == 0:
            columns.add(records)
        else:
            columns.add_batch(pa.RecordBatch.from_pylist(records, schema=FILE_DOWNLOADS.schema))
    return columns


def _parts(client: Client) -> int:
    parts = client.command("SELECT count() FROM system.parts WHERE active "
                           "AND database = currentDatabase() AND table = 'file_downloads'")
    assert isinstance(parts, int)
    return parts


def test_an_insert_of_many_messages_is_one_part_and_its_token_dedups(client: Client) -> None:
    client.command("TRUNCATE TABLE file_downloads")
    client.command("SYSTEM STOP MERGES file_downloads")
    client.command("SET min_insert_block_size_rows = 1")
    client.command("SET min_insert_block_size_bytes = 1")
    client.command("SET max_insert_block_size = 8")
    try:
        columns = _columns(300)
        # Without the writer's settings, the same rows as record batches of one message
        # each are several parts: the settings are what make the insert atomic.
        chunked = pa.Table.from_batches(
            [columns.slice(first, first + 8).table().to_batches()[0]
             for first in range(0, columns.rows, 8)])
        client.insert_arrow("file_downloads", chunked)
        assert _parts(client) > 1
        client.command("TRUNCATE TABLE file_downloads")
        writer = TableWriter(client, FILE_DOWNLOADS)
        writer.insert(columns, token="t:0:0-299")
        writer.insert(columns, token="t:0:0-299")  # a retry that did land: a no-op
        assert _parts(client) == 1
        assert client.command("SELECT count(), uniqExact(raw_offset, event_index) "
                              "FROM file_downloads") == ["2400", "2400"]
    finally:
        for name in ("min_insert_block_size_rows", "min_insert_block_size_bytes",
                     "max_insert_block_size"):
            client.command(f"SET {name} = DEFAULT")
        client.command("SYSTEM START MERGES file_downloads")
