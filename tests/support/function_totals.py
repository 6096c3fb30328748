"""What function executions add up to, counted from the events sent and read back from the
`function_executions` table: the pipeline tests compare the two."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from meterstream.core.records import USAGE_COUNTERS
from tests.support import meterstream

# What each function_execution contributes to the sums checked in ClickHouse.
SUMMED = ("execution_time_ms", *USAGE_COUNTERS)


def contribution(event: dict[str, Any]) -> dict[str, int]:
    usage = event.get("usage") or {}
    row = {"execution_time_ms": event.get("execution_time_ms") or 0}
    row.update({key: usage.get(key) or 0 for key in USAGE_COUNTERS})
    return row


def totals(events: list[dict[str, Any]]) -> dict[str, int]:
    """The sums of SUMMED over the events sent."""
    summed = dict.fromkeys(SUMMED, 0)
    for event in events:
        for key, value in contribution(event).items():
            summed[key] += value
    return summed


def stored_totals(sql: Callable[[str], str]) -> tuple[int, dict[str, int]]:
    """(rows, sums of SUMMED) in `function_executions`, through a pipeline's `sql`."""
    columns = ", ".join(f"sum({name})" for name in SUMMED)
    fields = sql(f"SELECT count(), {columns} FROM function_executions").split("\t")
    values = [int(v) for v in fields]
    return values[0], dict(zip(SUMMED, values[1:], strict=True))


def stored_rows(sql: Callable[[str], str]) -> int:
    """Rows in `function_executions` so far; 0 while the sink has not created it yet."""
    try:
        return stored_totals(sql)[0]
    except AssertionError as error:
        if "UNKNOWN_TABLE" in str(error):
            return 0
        raise


def rows_per_sequence(env: Mapping[str, str]) -> Counter[int] | None:
    """Rows per body in `function_executions`, by the sequence number a numbered load puts
    in `database_io_read_bytes` (minus one); None while the sink's engine does not answer."""
    result = meterstream(["sql", "SELECT database_io_read_bytes - 1, count() FROM "
                          "function_executions GROUP BY database_io_read_bytes"],
                         env, check=False)
    if result.returncode != 0:
        return None
    rows = Counter[int]()
    for line in result.stdout.splitlines():
        sequence, count = line.split("\t")
        rows[int(sequence)] = int(count)
    return rows
