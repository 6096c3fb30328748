"""Month-to-date cost of one deployment on 10M function executions: rollups vs raw rows.

Fills a fresh embedded engine with ClickHouse's own `INSERT ... SELECT FROM
numbers(N)` (the materialized views fire as for the sink's inserts): N function
executions over the first 24.5 days of October 2026, half of them from one hot
deployment and the rest spread over 99 others, plus hourly storage snapshots.
Then, at "now" = 2026-10-24T12:30Z, it computes one deployment's month-to-date
Convex cost two ways and checks they agree:

  raw     the month's rows aggregated from the usage_events view (the raw path)
  rollups billing.queries.month_to_date_cost: whole days from usage_daily and the
          hours of today (the current one included) from usage_hourly

    .venv/bin/python -m bench.usage_query --rows 10000000 --runs 5
"""

from __future__ import annotations

import argparse
import functools
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from billing import charges, pricebook, queries, storage
from billing.database import Database, datetime64
from billing.money import text
from billing.periods import Period
from billing.rollups import COUNTERS
from meterstream.core import migrate
from meterstream.core.clickhouse import EngineLock, connect
from meterstream.core.config import ClickHouseTarget

MONTH_START = "2026-10-01 00:00:00"
NOW_MS = 1792845000000  # 2026-10-24T12:30:00Z
SPAN_S = int((NOW_MS - 1790812800000) / 1000)  # month start -> now
DEPLOYMENTS = 100


def fill(db: Database, rows: int) -> None:
    # Half the rows belong to dep-0 (a hot deployment), the rest to dep-1..dep-99.
    db.command(f"""
INSERT INTO function_executions (deployment, timestamp, function_path, function_type,
    status, execution_time_ms, database_io_read_bytes, database_io_write_bytes,
    network_egress_bytes, text_search_query_bytes, memory_used_mb, action_memory_used_mb,
    deployment_region, raw_partition, raw_offset, event_index)
SELECT
    if(number % 2 = 0, 'dep-0', concat('dep-', toString(1 + intDiv(number, 2) % 99))),
    toDateTime64('{MONTH_START}', 3, 'UTC') + toIntervalMillisecond(
        intDiv(number * {SPAN_S * 1000}, {rows})),
    'messages:list',
    ['query', 'mutation', 'action', 'query'][number % 4 + 1],
    'success',
    10 + number % 90,
    1000 + number % 4096,
    number % 3 * 512,
    number % 7 * 1000000,
    number % 11 * 1000,
    64,
    if(number % 4 = 2, 512, 0),
    'aws-eu-west-1',
    number % 8, intDiv(number, 1000), number % 1000
FROM numbers({rows})""")
    hours = SPAN_S // 3600 + 1
    db.command(f"""
INSERT INTO storage_snapshots (deployment, timestamp, total_document_size_bytes,
    total_index_size_bytes, deployment_region)
SELECT concat('dep-', toString(number % {DEPLOYMENTS})),
    toDateTime64('{MONTH_START}', 3, 'UTC') + toIntervalSecond(intDiv(number, {DEPLOYMENTS})
        * 3600 - 1800),
    (40 + number % 30) * 1073741824, 5 * 1073741824, 'aws-eu-west-1'
FROM numbers({hours * DEPLOYMENTS})""")


def raw_cost(db: Database, book: pricebook.PriceBook, deployment: str) -> Decimal:
    """The same cost, from the month's raw rows (usage_events) instead of the rollups."""
    period = Period.containing(NOW_MS)
    sums = ", ".join(f"sum({name}) AS {name}" for name in COUNTERS)
    (row,) = db.rows(f"SELECT max(region) AS region, {sums} FROM usage_events "
                     f"WHERE deployment = '{deployment}' "
                     f"AND timestamp >= {datetime64(period.start_ms)} "
                     f"AND timestamp < {datetime64(NOW_MS)}")
    used = {name: int(row[name]) for name in COUNTERS}
    used.update(storage.totals(db, period.start_ms, NOW_MS, [deployment])[deployment])
    return charges.convex_cost(used, book.plan("professional"),
                               book.multiplier(row["region"]), period)


def timed(work: Callable[[], Decimal], runs: int) -> tuple[float, Decimal]:
    times, result = [], Decimal(0)
    for _ in range(runs):
        started = time.perf_counter()
        result = work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="usage-bench-"))
    path = workdir / "clickhouse"
    try:
        with EngineLock(path):
            client = connect(ClickHouseTarget(url=f"chdb://{path}", chdb_path=path))
            migrate.apply(client)
            db = Database.of_client(client)
            book = pricebook.load()
            started = time.perf_counter()
            fill(db, args.rows)
            filled = time.perf_counter() - started
            # Both paths read merged parts, as they do once background merges caught up.
            for table in ("function_executions", "storage_snapshots", "usage_hourly",
                          "usage_daily"):
                client.command(f"OPTIMIZE TABLE {table} FINAL")
            count = client.command("SELECT count() FROM function_executions")
            print(f"{count:,} function executions inserted in {filled:.1f} s "
                  f"(materialized views included)")
            print("| deployment | rows this month | raw ms | rollups ms | ratio | cost |")
            print("|---|---:|---:|---:|---:|---:|")
            for deployment in ("dep-0", "dep-1"):
                rows = client.command(f"SELECT count() FROM function_executions "
                                      f"WHERE deployment = '{deployment}'")
                raw_ms, raw = timed(functools.partial(raw_cost, db, book, deployment),
                                    args.runs)
                rollup_ms, rolled = timed(functools.partial(
                    queries.month_to_date_cost, db, book, "professional", deployment, NOW_MS),
                    args.runs)
                assert raw == rolled, (deployment, raw, rolled)
                print(f"| {deployment} | {rows:,} | {raw_ms:.1f} | {rollup_ms:.1f} | "
                      f"{raw_ms / rollup_ms:.1f}x | {text(rolled)} |")
            client.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
