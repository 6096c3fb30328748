"""The console's way to ClickHouse: on a server through a client of its own, on the
embedded engine only through the socket of the sink that holds it.

It never opens the embedded engine: the console would then hold its lock, and a sink
starting after it could not (docs/console.md, "Where it runs").
"""

from __future__ import annotations

import threading

import aiohttp
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import OperationalError

from billing.database import Database
from meterstream.core.clickhouse import connect
from meterstream.core.config import ClickHouseTarget
from meterstream.core.query import QueryError, ask_holder, execute


class Unavailable(RuntimeError):
    """ClickHouse cannot be reached (yet): a page answers 503 saying so."""


class ClickHouseReader:
    """The console's statements: on a server through a client of its own, on the embedded
    engine only through the socket of the sink that holds it (never opening the engine:
    the console would hold it and the sink could not start)."""

    def __init__(self, target: ClickHouseTarget) -> None:
        self._target = target
        self._client: Client | None = None
        self._lock = threading.Lock()  # a clickhouse-connect client serves one call at a time

    def run(self, sql: str, fmt: str, write: bool = False) -> bytes:
        path = self._target.chdb_path
        try:
            if path is not None:
                return ask_holder(path, sql, fmt, write)
            with self._lock:
                if self._client is None:
                    self._client = connect(self._target)
                return execute(self._client, sql, fmt, write)
        except (aiohttp.ClientError, OSError, OperationalError) as exc:
            # No sink serves the socket yet, or the server refuses connections.
            raise Unavailable(f"ClickHouse ({self._target.display}) is not reachable: "
                              f"{type(exc).__name__}") from None

    def database(self, write: bool = False) -> Database:
        """Billing's view of ClickHouse; read-only unless `write` (marking an invoice)."""
        return Database(lambda sql, fmt: self.run(sql, fmt, write))

    def ready(self) -> bool:
        try:
            self.run("SELECT 1", "TabSeparated")
        except (Unavailable, QueryError):
            return False
        return True

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
