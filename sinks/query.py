"""SQL for users, on a server or on the embedded engine another process holds.

`serve_queries` runs inside the process that holds the embedded engine;
`run_sql` is what `meterstream sql` calls.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from meterstream.config import ClickHouseTarget
from sinks.clickhouse import EngineBusy, EngineLock, connect, socket_path

SQL_PATH = "/v1/sql"
# How long a query waits for a sink that holds the engine but does not serve queries yet.
HOLDER_START_SECONDS = 15.0
OUTPUT_FORMAT = "TabSeparated"


class QueryError(RuntimeError):
    """ClickHouse refused the query; the message is ClickHouse's."""


def execute(client: Client, sql: str) -> bytes:
    try:
        return client.raw_query(sql, fmt=OUTPUT_FORMAT)
    except ClickHouseError as exc:
        raise QueryError(str(exc)) from None


async def serve_queries(client: Client, chdb_path: Path) -> web.AppRunner:
    """Answers POST /v1/sql on `<path>.sock` with the result as tab-separated rows."""
    lock = asyncio.Lock()

    async def sql(request: web.Request) -> web.Response:
        query = await request.text()
        async with lock:
            try:
                result = await asyncio.to_thread(execute, client, query)
            except QueryError as exc:
                return web.Response(status=400, text=str(exc))
        return web.Response(body=result, content_type="text/tab-separated-values")

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post(SQL_PATH, sql)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    path = socket_path(chdb_path)
    path.unlink(missing_ok=True)
    await web.UnixSite(runner, str(path)).start()
    path.chmod(0o600)
    return runner


async def _through_socket(chdb_path: Path, sql: str) -> bytes:
    path = socket_path(chdb_path)
    connector = aiohttp.UnixConnector(path=str(path))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(f"http://localhost{SQL_PATH}", data=sql.encode()) as response,
    ):
        body = await response.read()
        if response.status == 400:
            raise QueryError(body.decode(errors="replace"))
        response.raise_for_status()
        return body


def _ask_holder(chdb_path: Path, sql: str, busy: EngineBusy) -> bytes:
    """Queries through the holder's socket, giving a holder that is still starting a moment."""
    deadline = time.monotonic() + HOLDER_START_SECONDS
    while True:
        try:
            return asyncio.run(_through_socket(chdb_path, sql))
        except aiohttp.ClientConnectionError:
            if time.monotonic() > deadline:
                raise EngineBusy(f"{busy}, which answers no queries on "
                                 f"{socket_path(chdb_path)}") from None
            time.sleep(0.1)


def run_sql(target: ClickHouseTarget, sql: str) -> bytes:
    """Runs one statement and returns ClickHouse's tab-separated output."""
    if target.chdb_path is None:
        return execute(connect(target), sql)
    lock = EngineLock(target.chdb_path)
    try:
        lock.acquire()
    except EngineBusy as busy:
        return _ask_holder(target.chdb_path, sql, busy)
    try:
        return execute(connect(target), sql)
    finally:
        lock.release()
