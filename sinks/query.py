"""SQL for users and for billing, on a server or on the embedded engine another process holds.

`serve_queries` runs inside the process that holds the embedded engine;
`run_sql` (what `meterstream sql` calls) and `session` (several statements, for
`meterstream usage` and `meterstream invoices`) reach ClickHouse wherever it is:
a server by its URL, a free embedded engine by opening it, a held one through
the holder's socket.

A statement that returns no rows (INSERT, CREATE, ALTER, ...) runs as a command;
any other is a query whose result comes back in the format asked for.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
FORMATS = frozenset({"TabSeparated", "TabSeparatedWithNames", "JSONEachRow", "CSV",
                     "CSVWithNames"})
_COMMAND = re.compile(
    r"^\s*(INSERT|CREATE|ALTER|DROP|TRUNCATE|OPTIMIZE|RENAME|SYSTEM|KILL|DELETE|UPDATE|"
    r"GRANT|REVOKE|SET|USE|ATTACH|DETACH|EXCHANGE)\b", re.IGNORECASE)

Execute = Callable[[str, str], bytes]
"""Runs one statement: (sql, output format) -> the output (empty for a command)."""


class QueryError(RuntimeError):
    """ClickHouse refused the query; the message is ClickHouse's."""


def is_command(sql: str) -> bool:
    return _COMMAND.match(sql) is not None


def execute(client: Client, sql: str, fmt: str = OUTPUT_FORMAT) -> bytes:
    if fmt not in FORMATS:
        raise QueryError(f"unknown output format {fmt!r}; known: {', '.join(sorted(FORMATS))}")
    try:
        if is_command(sql):
            client.command(sql)
            return b""
        return client.raw_query(sql, fmt=fmt)
    except ClickHouseError as exc:
        raise QueryError(str(exc)) from None


async def serve_queries(client: Client, chdb_path: Path) -> web.AppRunner:
    """Answers POST /v1/sql[?format=...] on `<path>.sock` (default: tab-separated rows)."""
    lock = asyncio.Lock()

    async def sql(request: web.Request) -> web.Response:
        query = await request.text()
        fmt = request.query.get("format", OUTPUT_FORMAT)
        async with lock:
            try:
                result = await asyncio.to_thread(execute, client, query, fmt)
            except QueryError as exc:
                return web.Response(status=400, text=str(exc))
        return web.Response(body=result, content_type="text/plain")

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_post(SQL_PATH, sql)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    path = socket_path(chdb_path)
    path.unlink(missing_ok=True)
    await web.UnixSite(runner, str(path)).start()
    path.chmod(0o600)
    return runner


async def _through_socket(chdb_path: Path, sql: str, fmt: str) -> bytes:
    path = socket_path(chdb_path)
    connector = aiohttp.UnixConnector(path=str(path))
    async with (
        aiohttp.ClientSession(connector=connector,
                              timeout=aiohttp.ClientTimeout(total=None)) as session,
        session.post(f"http://localhost{SQL_PATH}", params={"format": fmt},
                     data=sql.encode()) as response,
    ):
        body = await response.read()
        if response.status == 400:
            raise QueryError(body.decode(errors="replace"))
        response.raise_for_status()
        return body


def _ask_holder(chdb_path: Path, sql: str, fmt: str, busy: EngineBusy) -> bytes:
    """Queries through the holder's socket, giving a holder that is still starting a moment."""
    deadline = time.monotonic() + HOLDER_START_SECONDS
    while True:
        try:
            return asyncio.run(_through_socket(chdb_path, sql, fmt))
        except aiohttp.ClientConnectionError:
            if time.monotonic() > deadline:
                raise EngineBusy(f"{busy}, which answers no queries on "
                                 f"{socket_path(chdb_path)}") from None
            time.sleep(0.1)


def _opened(target: ClickHouseTarget, migrate: bool) -> Client:
    client = connect(target)
    if migrate:
        from sinks import migrate as migrations

        migrations.apply(client)
    return client


@contextmanager
def session(target: ClickHouseTarget, migrate: bool = False) -> Iterator[Execute]:
    """Runs statements on `target` for the duration of the block: on a server, on the
    embedded engine (held, and so locked for others, until the block ends), or through
    the socket of the process that holds it. With `migrate`, the schema is brought up
    to date first where this process opened the engine (the holder did at its start)."""
    if target.chdb_path is None:
        client = _opened(target, migrate)
        try:
            yield lambda sql, fmt: execute(client, sql, fmt)
        finally:
            client.close()
        return
    chdb_path = target.chdb_path
    lock = EngineLock(chdb_path)
    busy: EngineBusy | None = None
    try:
        lock.acquire()
    except EngineBusy as exc:
        busy = exc
    if busy is not None:
        held = busy
        yield lambda sql, fmt: _ask_holder(chdb_path, sql, fmt, held)
        return
    try:
        client = _opened(target, migrate)
        try:
            yield lambda sql, fmt: execute(client, sql, fmt)
        finally:
            client.close()
    finally:
        lock.release()


def run_sql(target: ClickHouseTarget, sql: str, fmt: str = OUTPUT_FORMAT) -> bytes:
    """Runs one statement and returns ClickHouse's output (tab-separated by default)."""
    with session(target) as run:
        return run(sql, fmt)
