"""SQL for users and for billing, on a server or on the embedded engine another process holds.

`serve_queries` runs inside the process that holds the embedded engine;
`run_sql` (what `meterstream sql` calls) and `session` (several statements, for
`meterstream usage` and `meterstream invoices`) reach ClickHouse wherever it is:
a server by its URL, a free embedded engine by opening it, a held one through
the holder's socket.

A statement that returns no rows (INSERT, CREATE, ALTER, ...) runs as a command;
any other is a query whose result comes back in the format asked for.

`meterstream sql` is read-only unless given --write: its statement runs with ClickHouse's
`readonly=1` (no writes, no DDL, no setting changes, and no table function that reaches
files, URLs or other servers), and before that `read_only_refusal` refuses what
readonly=1 lets through in the embedded engine: the scalar `file()` (reads any file the
process can), `INTO OUTFILE` (writes one), and, as a second fence, every table function
that reaches outside. The sink's socket applies the same rule unless the request asks
for `write=1` (`session`, for billing, does).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
from aiohttp import web
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from meterstream.core.clickhouse import EngineBusy, EngineLock, connect, socket_path
from meterstream.core.config import ClickHouseTarget

SQL_PATH = "/v1/sql"
# How long a query waits for a sink that holds the engine but does not serve queries yet.
HOLDER_START_SECONDS = 15.0
OUTPUT_FORMAT = "TabSeparated"
FORMATS = frozenset({"TabSeparated", "TabSeparatedWithNames", "JSONEachRow", "CSV",
                     "CSVWithNames"})
_COMMAND = re.compile(
    r"^\s*(INSERT|CREATE|ALTER|DROP|TRUNCATE|OPTIMIZE|RENAME|SYSTEM|KILL|DELETE|UPDATE|"
    r"GRANT|REVOKE|SET|USE|ATTACH|DETACH|EXCHANGE)\b", re.IGNORECASE)

# Functions that read or write files, URLs, object stores, other servers or programs.
_OUTSIDE = re.compile(
    r"\b(?:file|fileCluster|url|urlCluster|s3|s3Cluster|gcs|oss|cosn|hdfs|hdfsCluster|"
    r"azureBlobStorage|azureBlobStorageCluster|remote|remoteSecure|cluster|clusterAllReplicas|"
    r"mysql|postgresql|mongodb|redis|sqlite|odbc|jdbc|executable|hive|input|ytsaurus|"
    r"arrowFlight|arrowflight|iceberg\w*|deltaLake\w*|hudi\w*|paimon\w*)\s*\(",
    re.IGNORECASE)
_OUTFILE = re.compile(r"\b(?:INTO\s+OUTFILE|FROM\s+INFILE)\b", re.IGNORECASE)
_SETTINGS = re.compile(r"\bSETTINGS\b", re.IGNORECASE)
# Literals and comments, which may hold any text; quoted identifiers, which may name a
# function (`file`(...)), are unquoted instead.
_LEXEMES = re.compile(
    r"'(?:[^'\\]|\\.|'')*'|--[^\n]*|#[^\n]*|/\*.*?\*/|\"((?:[^\"\\]|\\.)*)\"|`((?:[^`\\]|\\.)*)`",
    re.DOTALL)

Execute = Callable[[str, str], bytes]
"""Runs one statement: (sql, output format) -> the output (empty for a command)."""


class QueryError(RuntimeError):
    """ClickHouse refused the query; the message is ClickHouse's."""


def is_command(sql: str) -> bool:
    return _COMMAND.match(_code(sql).lstrip(" \t\r\n;(")) is not None


def _code(sql: str) -> str:
    """`sql` without its literals and comments, its quoted identifiers unquoted."""
    def replace(match: re.Match[str]) -> str:
        quoted = match.group(1) if match.group(1) is not None else match.group(2)
        if quoted is not None:
            return quoted
        return "''" if match.group(0).startswith("'") else " "
    return _LEXEMES.sub(replace, sql)


# A trailing FORMAT clause (ClickHouse allows a SETTINGS clause after it).
_OWN_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z]\w*)\s*(?:\bSETTINGS\b.*)?[\s;]*$",
                         re.IGNORECASE | re.DOTALL)


def own_format(sql: str) -> str | None:
    """The format a query names in its own FORMAT clause, or None. The caller chooses the
    output format, which ClickHouse takes as a second FORMAT: a syntax error."""
    match = _OWN_FORMAT.search(_code(sql))
    return match.group(1) if match else None


def read_only_refusal(sql: str) -> str | None:
    """Why `sql` may not run read-only, or None. A statement that changes data or schema,
    or reaches files, URLs or other servers, is refused."""
    code = _code(sql)
    if is_command(sql):
        return ("read-only: this statement changes data or settings; "
                "`meterstream sql --write` runs it")
    if _OUTFILE.search(code):
        return "read-only: INTO OUTFILE and FROM INFILE reach files; they are not allowed"
    outside = _OUTSIDE.search(code)
    if outside:
        name = outside.group(0).rstrip("( \t\r\n")
        return (f"read-only: {name}() reaches files, URLs or other servers; "
                "it is not allowed here")
    # The statement's own SETTINGS clause (or a subquery's) could try to lift readonly.
    if _SETTINGS.search(code):
        return "read-only: a SETTINGS clause is not allowed; `meterstream sql --write` runs it"
    return None


def _read_only(sql: str) -> str:
    """`sql` with readonly=1 as its own SETTINGS clause: a per-call setting of the client
    would be SET on the embedded engine's session and outlive the call (it cannot be
    reset once readonly), leaving the sink that holds the engine unable to insert."""
    return sql.rstrip().rstrip(";").rstrip() + "\nSETTINGS readonly = 1"


def execute(client: Client, sql: str, fmt: str = OUTPUT_FORMAT, write: bool = True) -> bytes:
    """Runs one statement; unless `write`, read-only (see the module's note)."""
    if fmt not in FORMATS:
        raise QueryError(f"unknown output format {fmt!r}; known: {', '.join(sorted(FORMATS))}")
    if not write and (refusal := read_only_refusal(sql)) is not None:
        raise QueryError(refusal)
    try:
        if is_command(sql):
            client.command(sql)
            return b""
        if not write:
            return client.raw_query(_read_only(sql), fmt=fmt)
        return client.raw_query(sql, fmt=fmt)
    except ClickHouseError as exc:
        hint = ("" if write or "READONLY" not in str(exc)
                else " (meterstream sql is read-only; --write runs changes)")
        raise QueryError(f"{exc}{hint}") from None


async def serve_queries(client: Client, chdb_path: Path) -> web.AppRunner:
    """Answers POST /v1/sql[?format=...] on `<path>.sock` (default: tab-separated rows)."""
    lock = asyncio.Lock()

    async def sql(request: web.Request) -> web.Response:
        query = await request.text()
        fmt = request.query.get("format", OUTPUT_FORMAT)
        write = request.query.get("write") == "1"
        async with lock:
            try:
                result = await asyncio.to_thread(execute, client, query, fmt, write)
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


async def _through_socket(chdb_path: Path, sql: str, fmt: str, write: bool) -> bytes:
    path = socket_path(chdb_path)
    connector = aiohttp.UnixConnector(path=str(path))
    params = {"format": fmt, **({"write": "1"} if write else {})}
    async with (
        aiohttp.ClientSession(connector=connector,
                              timeout=aiohttp.ClientTimeout(total=None)) as session,
        session.post(f"http://localhost{SQL_PATH}", params=params,
                     data=sql.encode()) as response,
    ):
        body = await response.read()
        if response.status == 400:
            raise QueryError(body.decode(errors="replace"))
        response.raise_for_status()
        return body


def _ask_holder(chdb_path: Path, sql: str, fmt: str, busy: EngineBusy,
                write: bool = True) -> bytes:
    """Queries through the holder's socket, giving a holder that is still starting a moment."""
    deadline = time.monotonic() + HOLDER_START_SECONDS
    while True:
        try:
            return asyncio.run(_through_socket(chdb_path, sql, fmt, write))
        except aiohttp.ClientConnectionError:
            if time.monotonic() > deadline:
                raise EngineBusy(f"{busy}, which answers no queries on "
                                 f"{socket_path(chdb_path)}") from None
            time.sleep(0.1)


def _opened(target: ClickHouseTarget, migrate: bool) -> Client:
    client = connect(target)
    if migrate:
        from meterstream.core import migrate as migrations

        migrations.apply(client)
    return client


@contextmanager
def session(target: ClickHouseTarget, migrate: bool = False,
            write: bool = True) -> Iterator[Execute]:
    """Runs statements on `target` for the duration of the block: on a server, on the
    embedded engine (held, and so locked for others, until the block ends), or through
    the socket of the process that holds it. With `migrate`, the schema is brought up
    to date first where this process opened the engine (the holder did at its start).
    Unless `write`, every statement runs read-only."""
    if target.chdb_path is None:
        client = _opened(target, migrate)
        try:
            yield lambda sql, fmt: execute(client, sql, fmt, write)
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
        yield lambda sql, fmt: _ask_holder(chdb_path, sql, fmt, held, write)
        return
    try:
        client = _opened(target, migrate)
        try:
            yield lambda sql, fmt: execute(client, sql, fmt, write)
        finally:
            client.close()
    finally:
        lock.release()


def run_sql(target: ClickHouseTarget, sql: str, fmt: str = OUTPUT_FORMAT,
            write: bool = False) -> bytes:
    """Runs one statement and returns ClickHouse's output (tab-separated by default);
    read-only unless `write` (`meterstream sql --write`)."""
    with session(target, write=write) as run:
        return run(sql, fmt)


class ClickHouseUnavailable(RuntimeError):
    """No process answers for the embedded engine (the sink that holds it is not running)."""


def reader(target: ClickHouseTarget) -> Execute:
    """Read-only statements for a long-running service that must never hold the embedded
    engine (the receiver's usage view): a server by its URL, through one client used by
    one thread at a time; or the embedded engine through the socket of the process that
    holds it (the sink), never by opening it, since a receiver holding the engine would
    keep the sink from starting. Raises ClickHouseUnavailable when nobody answers on the
    socket, QueryError when ClickHouse refuses a statement."""
    if target.chdb_path is None:
        guard = threading.Lock()
        clients: list[Client] = []

        def on_server(sql: str, fmt: str) -> bytes:
            with guard:
                if not clients:
                    clients.append(connect(target))
                return execute(clients[0], sql, fmt, write=False)

        return on_server
    chdb_path = target.chdb_path

    def through_holder(sql: str, fmt: str) -> bytes:
        if (refusal := read_only_refusal(sql)) is not None:
            raise QueryError(refusal)
        try:
            return asyncio.run(_through_socket(chdb_path, sql, fmt, write=False))
        except aiohttp.ClientConnectionError:
            raise ClickHouseUnavailable(
                f"nothing answers for the embedded ClickHouse on {socket_path(chdb_path)}: "
                "the sink holds the engine and serves its queries; is it running?") from None

    return through_holder


def ask_holder(chdb_path: Path, sql: str, fmt: str = OUTPUT_FORMAT, write: bool = False) -> bytes:
    """Runs one statement through the socket of the process that holds the embedded
    engine, never opening the engine here (a long-lived reader such as the console must
    not take the engine from the sink). Raises aiohttp.ClientConnectionError when no
    holder answers, QueryError when ClickHouse refuses the statement."""
    return asyncio.run(_through_socket(chdb_path, sql, fmt, write))
