"""`meterstream sql` is read-only unless --write: directly on the embedded engine and through
the socket of the sink that holds it (one chdb path per process, so one module)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from meterstream.core.clickhouse import EngineLock, connect
from meterstream.core.config import ClickHouseTarget
from meterstream.core.query import (
    QueryError,
    execute,
    read_only_refusal,
    run_sql,
    serve_queries,
    session,
)
from tests.support import meterstream

SECRET_FILE_LINE = "meterstream-secret-line"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ClickHouseTarget, Client]]:
    path = tmp_path_factory.mktemp("sqlro") / "clickhouse"
    target = ClickHouseTarget(url=f"chdb://{path}", chdb_path=path)
    with EngineLock(path):
        client = connect(target)
        client.command("CREATE TABLE t (a Int32) ENGINE = MergeTree ORDER BY a")
        client.command("INSERT INTO t VALUES (1)")
        yield target, client
        client.close()  # so that another module can open an engine at its own path


@pytest.fixture(scope="module")
def outside_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("outside") / "private.txt"
    path.write_text(SECRET_FILE_LINE + "\n")
    return path


def refused(client: Client, sql: str) -> str:
    with pytest.raises(QueryError) as caught:
        execute(client, sql, write=False)
    return str(caught.value)


def test_reads_work(engine: tuple[ClickHouseTarget, Client]) -> None:
    _, client = engine
    assert execute(client, "SELECT count() FROM t", write=False) == b"1\n"
    assert execute(client, "SELECT sum(number) FROM numbers(4)", write=False) == b"6\n"


@pytest.mark.parametrize("sql", [
    "DROP TABLE t",
    "INSERT INTO t VALUES (2)",
    "  /* a comment first */ TRUNCATE TABLE t",
    "ALTER TABLE t DELETE WHERE 1",
    "SET readonly = 0",
    "SELECT 1 SETTINGS readonly = 0",
    "SELECT * FROM (SELECT 1 SETTINGS readonly = 0)",
])
def test_writes_are_refused(engine: tuple[ClickHouseTarget, Client], sql: str) -> None:
    _, client = engine
    assert "`meterstream sql --write` runs it" in refused(client, sql)
    assert execute(client, "SELECT count() FROM t", write=False) == b"1\n"


def test_a_read_only_query_leaves_the_engine_writable(
        engine: tuple[ClickHouseTarget, Client]) -> None:
    """The sink that holds the engine keeps inserting after a read-only query through it."""
    _, client = engine
    assert execute(client, "SELECT count() FROM t;  ", write=False) == b"1\n"
    execute(client, "CREATE TABLE after_ro (a Int8) ENGINE = Memory", write=True)
    execute(client, "DROP TABLE after_ro", write=True)


@pytest.mark.parametrize("sql", [
    "SELECT * FROM file('{path}', 'LineAsString')",
    "SELECT * FROM `file`('{path}', 'LineAsString')",
    "SELECT * FROM \"file\" ('{path}', 'LineAsString')",
    # The scalar file() reads a file even with readonly=1 in the embedded engine.
    "SELECT file('{path}')",
    "SELECT * FROM url('http://127.0.0.1:9/x', 'LineAsString')",
    "SELECT * FROM s3('http://127.0.0.1:9/bucket/x.csv', 'CSV')",
    "SELECT * FROM remote('127.0.0.1:9', system.one)",
    "SELECT * FROM mysql('127.0.0.1:9', 'db', 't', 'u', 'p')",
    "SELECT * FROM postgresql('127.0.0.1:9', 'db', 't', 'u', 'p')",
    "SELECT * FROM hdfs('hdfs://127.0.0.1:9/x', 'CSV')",
    "SELECT * FROM executable('cat {path}', 'TSV', 'a String')",
    "SELECT * FROM icebergS3('http://127.0.0.1:9/b/x')",
])
def test_functions_that_reach_outside_are_refused(engine: tuple[ClickHouseTarget, Client],
                                                  outside_file: Path, sql: str) -> None:
    _, client = engine
    message = refused(client, sql.format(path=outside_file))
    assert "reaches files, URLs or other servers" in message
    assert SECRET_FILE_LINE not in message


def test_into_outfile_is_refused(engine: tuple[ClickHouseTarget, Client], tmp_path: Path) -> None:
    _, client = engine
    target = tmp_path / "written.tsv"
    assert "INTO OUTFILE" in refused(client, f"SELECT 1 INTO OUTFILE '{target}'")
    assert not target.exists()


def test_names_inside_literals_and_comments_are_not_refused() -> None:
    assert read_only_refusal("SELECT 'file(x)', 'DROP TABLE t' -- url('x')") is None
    assert read_only_refusal("SELECT 1 /* INTO OUTFILE 'x' */") is None
    assert read_only_refusal("SELECT urlDecode('a%20b'), profile_id FROM t") is None


@pytest.mark.parametrize("sql", [
    # What the text check lets through, ClickHouse's readonly=1 refuses.
    "SELECT * FROM dictionary('d')",
    "SELECT * FROM format(CSV, '1')",
])
def test_clickhouse_itself_runs_the_statement_read_only(
        engine: tuple[ClickHouseTarget, Client], sql: str) -> None:
    _, client = engine
    assert read_only_refusal(sql) is None
    assert "readonly" in refused(client, sql).lower()


def test_write_mode_runs_as_before(engine: tuple[ClickHouseTarget, Client]) -> None:
    _, client = engine
    execute(client, "CREATE TABLE w (a Int32) ENGINE = Memory", write=True)
    execute(client, "INSERT INTO w VALUES (7)", write=True)
    assert execute(client, "SELECT a FROM w", write=False) == b"7\n"
    execute(client, "DROP TABLE w", write=True)


def test_through_the_holders_socket(engine: tuple[ClickHouseTarget, Client],
                                    outside_file: Path) -> None:
    """The engine is held (as by a running sink): `run_sql` goes through its socket, which
    applies the same rule; `session` (billing) asks for writes."""
    target, client = engine
    assert target.chdb_path is not None
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def hold() -> None:
        assert target.chdb_path is not None
        runner = await serve_queries(client, target.chdb_path)
        ready.set()
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    thread = threading.Thread(target=lambda: loop.run_until_complete(hold()), daemon=True)
    thread.start()
    try:
        assert ready.wait(30)
        assert run_sql(target, "SELECT count() FROM t") == b"1\n"
        with pytest.raises(QueryError, match="--write"):
            run_sql(target, "DROP TABLE t")
        with pytest.raises(QueryError, match="reaches files"):
            run_sql(target, f"SELECT * FROM file('{outside_file}', 'LineAsString')")
        assert run_sql(target, "CREATE TABLE s (a Int8) ENGINE = Memory", write=True) == b""
        with session(target) as run:
            run("INSERT INTO s VALUES (3)", "TabSeparated")
        assert run_sql(target, "SELECT a FROM s") == b"3\n"
        run_sql(target, "DROP TABLE s", write=True)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


def test_the_command_is_read_only_unless_write(tmp_path: Path, outside_file: Path) -> None:
    env = {"METERSTREAM_CLICKHOUSE": f"chdb://{tmp_path / 'clickhouse'}",
           "METERSTREAM_DATA_DIR": str(tmp_path / "ms")}
    created = meterstream(["sql", "CREATE TABLE c (a Int8) ENGINE = MergeTree ORDER BY a"],
                          env, check=False)
    assert created.returncode == 1
    assert "meterstream sql --write" in created.stderr
    meterstream(["sql", "--write", "CREATE TABLE c (a Int8) ENGINE = MergeTree ORDER BY a"], env)
    meterstream(["sql", "--write", "INSERT INTO c VALUES (5)"], env)
    assert meterstream(["sql", "SELECT a FROM c"], env).stdout == "5\n"
    leaked = meterstream(["sql", f"SELECT * FROM file('{outside_file}', 'LineAsString')"],
                         env, check=False)
    assert leaked.returncode == 1
    assert SECRET_FILE_LINE not in leaked.stdout + leaked.stderr
    dropped = meterstream(["sql", "DROP TABLE c"], env, check=False)
    assert dropped.returncode == 1
    assert meterstream(["sql", "SELECT count() FROM c"], env).stdout == "1\n"
