"""Reaching ClickHouse: the embedded engine (chdb) at a path, or a server by URL.

The embedded engine can be opened by one process only. The process that opens
it for good (the sink) holds an exclusive lock on `<path>.lock` and answers
queries for other processes on the Unix socket `<path>.sock`; a short-lived
command (`meterstream sql`) either takes the lock itself or, when it is held,
goes through that socket.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from meterstream.core.config import ClickHouseTarget

# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107


class EngineBusy(RuntimeError):
    """Another process holds the embedded engine."""


class ClientArguments(dict[str, Any]):
    """The keyword arguments of clickhouse_connect.get_client; shown without the password
    (an argument list that reaches a log or a traceback's locals display is no leak)."""

    def __repr__(self) -> str:
        return repr({name: "***" if name == "password" and value else value
                     for name, value in self.items()})

    __str__ = __repr__


def client_arguments(target: ClickHouseTarget) -> ClientArguments:
    """What `connect` passes to clickhouse_connect.get_client.

    A server's arguments are spelled out rather than left to get_client's `dsn` parsing,
    which takes TLS from the port alone (https://host:9440 would be plain HTTP, the
    password in clear) and query parameters as options (verify=false among them):

    - `interface` and `secure` both from the scheme, consistently: get_client turns TLS on
      for port 443 or 8443 whatever the scheme unless the interface is given;
    - the port from the URL, else ClickHouse's HTTP(S) default, 8443 or 8123;
    - user and password percent-decoded (the URL carries them encoded); no user: the
      server's `default` user, as clickhouse-connect does;
    - the database from the path; none: the user's default database;
    - `verify` always on: the server's certificate is checked against the system's CAs,
      or against METERSTREAM_CLICKHOUSE_CA_FILE (`ca_cert`) for a private CA. There is
      no switch to turn it off: the password would go to whoever answers.
    """
    if target.chdb_path is not None:
        return ClientArguments(dsn=target.url)
    parts = urlsplit(target.url)
    secure = parts.scheme == "https"
    arguments = ClientArguments(
        interface=parts.scheme,
        secure=secure,
        host=parts.hostname,
        port=parts.port or (8443 if secure else 8123),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else "",
        database=unquote(parts.path.strip("/")) or None,
    )
    if secure:
        arguments["verify"] = True
        if target.ca_file is not None:
            arguments["ca_cert"] = str(target.ca_file)
    return arguments


def connect(target: ClickHouseTarget) -> Client:
    """A clickhouse-connect client. For chdb, call only while holding the EngineLock."""
    if target.chdb_path is not None:
        target.chdb_path.mkdir(parents=True, exist_ok=True)
    return clickhouse_connect.get_client(**client_arguments(target))


def socket_path(chdb_path: Path) -> Path:
    path = chdb_path.with_name(chdb_path.name + ".sock")
    if len(str(path)) > _MAX_SOCKET_PATH:
        raise ValueError(
            f"the query socket path {path} is longer than {_MAX_SOCKET_PATH} bytes; "
            "choose a shorter METERSTREAM_DATA_DIR or METERSTREAM_CLICKHOUSE path"
        )
    return path


class EngineLock:
    """Exclusive ownership of an embedded engine's data path, across processes.

    An flock is released by the kernel when its holder dies, so a crashed sink
    never leaves a stale lock behind.
    """

    def __init__(self, chdb_path: Path) -> None:
        self.path = chdb_path.with_name(chdb_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self, wait_seconds: float = 0.0) -> None:
        """Takes the lock or raises EngineBusy naming the holder; with `wait_seconds`, first
        waits that long for a holder to let go (a `meterstream sql` that opened the engine
        while no sink held it)."""
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                return self._acquire()
            except EngineBusy:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    def _acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise EngineBusy(f"the embedded ClickHouse at {self.path.with_suffix('')} "
                             f"is held by process {holder}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> EngineLock:
        self.acquire()
        return self

    def __exit__(self, *_: object) -> None:
        self.release()
