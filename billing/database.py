"""Billing's access to ClickHouse: rows as dicts, statements, and SQL literals.

It works over any `meterstream.core.query.Execute` (a server, the embedded engine opened
here, or the socket of the sink that holds it), so `meterstream usage` and
`meterstream invoices` run the same SQL wherever ClickHouse is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from clickhouse_connect.driver.client import Client

from meterstream.core.query import Execute, execute

Row = dict[str, Any]


class Database:
    def __init__(self, run: Execute) -> None:
        self._run = run

    @classmethod
    def of_client(cls, client: Client) -> Database:
        return cls(lambda sql, fmt: execute(client, sql, fmt))

    def rows(self, sql: str) -> list[Row]:
        """The result as dicts; numbers stay exact (big integers, decimals)."""
        output = self._run(sql, "JSONEachRow")
        return [json.loads(line, parse_float=Decimal) for line in output.splitlines() if line]

    def command(self, sql: str) -> None:
        self._run(sql, "TabSeparated")

    def insert_json(self, table: str, rows: Iterable[Row]) -> None:
        """Inserts rows given as JSON-ready dicts (decimals as strings)."""
        lines = "\n".join(json.dumps(row, default=_json_default) for row in rows)
        if lines:
            self.command(f"INSERT INTO {table} FORMAT JSONEachRow\n{lines}")


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


def quote(text: str) -> str:
    """A ClickHouse string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def in_list(values: Iterable[str]) -> str:
    return "(" + ", ".join(quote(v) for v in values) + ")"


def datetime64(ms: int) -> str:
    """A DateTime64(3, 'UTC') literal for a moment in ms."""
    return f"fromUnixTimestamp64Milli({int(ms)}, 'UTC')"


def datetime_s(ms: int) -> str:
    """A DateTime('UTC') literal (whole seconds)."""
    return f"toDateTime({int(ms) // 1000}, 'UTC')"


def date(ms: int) -> str:
    return "toDate('" + datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d") + "')"
