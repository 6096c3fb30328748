"""Storage usage from the snapshots: byte-milliseconds per category between snapshots.

As in the worker (processors/state.py): each snapshot's bytes count from its
time until the next snapshot's, so a period holds the part of each such
interval that falls inside it, including the interval that starts before the
period and the one that ends after it. Snapshots are about hourly, so this is
computed when asked rather than rolled up. Snapshots further apart than the
worker remembers (STORAGE_RETENTION_MS) do not make an interval.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from billing.database import Database, datetime64, in_list
from meterstream.core.catalogue import STORAGE_CATEGORIES
from meterstream.core.usage import STORAGE_RETENTION_MS
from meterstream.core.windows import split_interval

CATEGORIES = tuple(STORAGE_CATEGORIES)
StorageByteMs = dict[str, int]
"""`<category>_storage_byte_ms` -> byte-milliseconds"""


def _snapshots_sql(start_ms: int, end_ms: int, deployments: Sequence[str] | None) -> str:
    """One row per deployment and snapshot time (a repeated snapshot counts once)."""
    columns = ", ".join(
        f"argMin({' + '.join(fields)}, (raw_partition, raw_offset, event_index)) AS {category}"
        for category, fields in STORAGE_CATEGORIES.items())
    where = (f"timestamp >= {datetime64(start_ms - STORAGE_RETENTION_MS)} "
             f"AND timestamp < {datetime64(end_ms + STORAGE_RETENTION_MS)}")
    if deployments is not None:
        where += f" AND deployment IN {in_list(deployments)}"
    return (f"SELECT deployment, toUnixTimestamp64Milli(timestamp) AS ts, {columns} "
            f"FROM storage_snapshots WHERE {where} GROUP BY deployment, ts")


def _intervals_sql(start_ms: int, end_ms: int, deployments: Sequence[str] | None) -> str:
    """Each snapshot with the time of the next one (its own time when it is the last)."""
    return (f"SELECT *, leadInFrame(ts, 1, ts) OVER (PARTITION BY deployment ORDER BY ts "
            f"ROWS BETWEEN CURRENT ROW AND 1 FOLLOWING) AS next_ts "
            f"FROM ({_snapshots_sql(start_ms, end_ms, deployments)})")


def totals(db: Database, start_ms: int, end_ms: int,
           deployments: Sequence[str] | None = None) -> dict[str, StorageByteMs]:
    """Byte-milliseconds per deployment and category within [start, end)."""
    if deployments is not None and not deployments:
        return {}
    span = (f"toUInt64(greatest(least(next_ts, {end_ms}) - greatest(ts, {start_ms}), 0)) "
            f"* (next_ts - ts <= {STORAGE_RETENTION_MS})")
    sums = ", ".join(f"toString(sum(toUInt128({category}) * span)) AS {category}"
                     for category in CATEGORIES)
    rows = db.rows(f"SELECT deployment, {sums} FROM (SELECT *, {span} AS span "
                   f"FROM ({_intervals_sql(start_ms, end_ms, deployments)})) "
                   f"WHERE span > 0 GROUP BY deployment")
    return {row["deployment"]: {f"{category}_storage_byte_ms": int(row[category])
                                for category in CATEGORIES} for row in rows}


def series(db: Database, resolution: str, start_ms: int, end_ms: int,
           deployments: Sequence[str]) -> dict[str, dict[int, StorageByteMs]]:
    """Byte-milliseconds per deployment, window of `resolution` and category."""
    if not deployments:
        return {}
    rows = db.rows(f"SELECT deployment, ts, next_ts, {', '.join(CATEGORIES)} "
                   f"FROM ({_intervals_sql(start_ms, end_ms, deployments)}) "
                   f"WHERE next_ts > {start_ms} AND ts < {end_ms} "
                   f"AND next_ts - ts <= {STORAGE_RETENTION_MS}")
    found: dict[str, dict[int, StorageByteMs]] = defaultdict(
        lambda: defaultdict(lambda: dict.fromkeys(
            (f"{c}_storage_byte_ms" for c in CATEGORIES), 0)))
    for row in rows:
        begin, finish = max(int(row["ts"]), start_ms), min(int(row["next_ts"]), end_ms)
        for window, span in split_interval(resolution, begin, finish):
            into = found[row["deployment"]][window]
            for category in CATEGORIES:
                into[f"{category}_storage_byte_ms"] += int(row[category]) * span
    return found

