"""`meterstream loadgen check`: a run's expected totals against ClickHouse.

For each deployment of the run it reads, per table, the row count and the sum of
every counter column (meterstream/core/migrations 0001 and 0002), derives the billing
metrics from those sums by the same definitions as expected.py, and compares
every value. A billing metric is compared only when all the tables it is derived
from are checked (`function_calls` needs function_executions and file_downloads).
The queries go through `meterstream.core.query.run_sql`, so they work while `meterstream up`
holds the embedded engine.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from meterstream.core import catalogue
from meterstream.core.catalogue import LIVE_TOKEN_KINDS, STORAGE_CATEGORIES
from meterstream.loadgen.expected import (
    AGENT_USAGE,
    FUNCTION_EXECUTIONS,
    METRIC_TABLES,
    STORAGE_SNAPSHOTS,
    TABLE_SUMS,
    DeploymentTotals,
    ExpectedTotals,
)

Sql = Callable[[str], bytes]
"""runs one statement, returns ClickHouse's TabSeparated output"""

ACTION_COMPUTE_SQL = ("sum(if(function_type IN ('action', 'http_action'), "
                      "if(action_memory_used_mb != 0, action_memory_used_mb, memory_used_mb) "
                      "* execution_time_ms, 0))")


@dataclass(frozen=True)
class Difference:
    deployment: str
    value: str
    """e.g. "function_executions.rows", "metrics.function_calls", "storage.bytes.file" """
    expected: int | None
    observed: int | None


def _quote(name: str) -> str:
    return "'" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _rows(output: bytes) -> list[list[str]]:
    return [line.split("\t") for line in output.decode().splitlines() if line]


def _in(deployments: Sequence[str]) -> str:
    return ", ".join(_quote(name) for name in deployments)


def observe(sql: Sql, deployments: Sequence[str], tables: Iterable[str]
            ) -> dict[str, DeploymentTotals]:
    """What ClickHouse holds for `deployments`, in the shape of the expected totals."""
    observed = {name: DeploymentTotals() for name in deployments}
    wanted = _in(deployments)
    action_compute: Counter[str] = Counter()
    for table in tables:
        columns = TABLE_SUMS[table]
        if table == AGENT_USAGE:
            continue
        select = ", ".join(["deployment", "count()", *(f"sum({c})" for c in columns)])
        if table == FUNCTION_EXECUTIONS:
            select += f", {ACTION_COMPUTE_SQL}"
        if table == STORAGE_SNAPSHOTS:
            select += ", toUnixTimestamp64Milli(max(timestamp))" + "".join(
                f", argMax({' + '.join(keys)}, timestamp)" for keys in STORAGE_CATEGORIES.values())
        for row in _rows(sql(f"SELECT {select} FROM {table} WHERE deployment IN ({wanted}) "
                             "GROUP BY deployment")):
            name, values = row[0], [int(v) for v in row[1:]]
            sums = observed[name].tables[table]
            sums["rows"] = values[0]
            sums.update(dict(zip(columns, values[1:1 + len(columns)], strict=True)))
            extra = values[1 + len(columns):]
            if table == FUNCTION_EXECUTIONS:
                action_compute[name] = extra[0]
            elif table == STORAGE_SNAPSHOTS:
                observed[name].storage = {"at": extra[0], "bytes": dict(
                    zip(STORAGE_CATEGORIES, extra[1:], strict=True))}
    if AGENT_USAGE in tables:
        columns = TABLE_SUMS[AGENT_USAGE]
        sums_sql = ", ".join(f"sum({c})" for c in columns)
        for row in _rows(sql(f"SELECT deployment, user_id, provider, model, count(), {sums_sql} "
                             f"FROM {AGENT_USAGE} WHERE deployment IN ({wanted}) "
                             "GROUP BY deployment, user_id, provider, model")):
            name, user, provider, model = row[:4]
            values = [int(v) for v in row[4:]]
            tokens = dict(zip(columns, values[1:], strict=True))
            totals = observed[name]
            totals.tables[AGENT_USAGE]["rows"] += values[0]
            totals.tables[AGENT_USAGE].update(tokens)
            model_key = f"{provider or 'unknown'}/{model or 'unknown'}"
            by_model = totals.tokens_by_model.setdefault(model_key, Counter())
            by_user = totals.tokens_by_user.setdefault(user, {}).setdefault(model_key, Counter())
            for kind in LIVE_TOKEN_KINDS:
                by_model[kind] += tokens[kind]
                by_user[kind] += tokens[kind]
    for name, totals in observed.items():
        _derive_metrics(totals, action_compute[name])
    return observed


def _derive_metrics(totals: DeploymentTotals, action_compute_mb_ms: int) -> None:
    """The billing metrics from the tables' sums (meterstream/core/catalogue.py, as
    expected.py derives them from the events)."""
    for metric in catalogue.LIVE:
        if not metric.custom:
            totals.metrics[metric.name] = catalogue.total(metric, totals.tables)
    totals.metrics["action_compute_mb_ms"] = action_compute_mb_ms
    totals.metrics["tokens"] = totals.tables[AGENT_USAGE]["total_tokens"]


def comparable(totals: DeploymentTotals, tables: Iterable[str]) -> dict[str, Any]:
    """The values of `totals` that the checked tables can confirm, by name."""
    checked = set(tables)
    values: dict[str, Any] = {}
    for table in TABLE_SUMS:
        if table in checked:
            for column in ("rows", *TABLE_SUMS[table]):
                values[f"{table}.{column}"] = totals.tables[table][column]
    for metric, sources in METRIC_TABLES.items():
        if checked.issuperset(sources):
            values[f"metrics.{metric}"] = totals.metrics[metric]
    if AGENT_USAGE in checked:
        for model, kinds in totals.tokens_by_model.items():
            for kind in LIVE_TOKEN_KINDS:
                values[f"tokens_by_model.{model}.{kind}"] = kinds[kind]
        for user, models in totals.tokens_by_user.items():
            for model, kinds in models.items():
                for kind in LIVE_TOKEN_KINDS:
                    values[f"tokens_by_user.{user}.{model}.{kind}"] = kinds[kind]
    if STORAGE_SNAPSHOTS in checked:
        storage = totals.storage or {"at": None, "bytes": dict.fromkeys(STORAGE_CATEGORIES)}
        values["storage.at"] = storage["at"]
        for category in STORAGE_CATEGORIES:
            values[f"storage.bytes.{category}"] = storage["bytes"][category]
    return values


def compare(expected: ExpectedTotals, observed: dict[str, DeploymentTotals],
            tables: Iterable[str]) -> tuple[int, list[Difference]]:
    """How many values were compared, and those that differ."""
    tables = tuple(tables)
    compared = 0
    differences = []
    for name, totals in sorted(expected.deployments.items()):
        want = comparable(totals, tables)
        have = comparable(observed.get(name, DeploymentTotals()), tables)
        for key in sorted(want.keys() | have.keys()):
            # A token kind or model one side lacks is 0 there; storage is None.
            default = None if key.startswith("storage.") else 0
            a, b = want.get(key, default), have.get(key, default)
            compared += 1
            if a != b:
                differences.append(Difference(name, key, a, b))
    return compared, differences


def check(expected: ExpectedTotals, sql: Sql, tables: Sequence[str]
          ) -> tuple[int, list[Difference]]:
    observed = observe(sql, sorted(expected.deployments), tables)
    return compare(expected, observed, tables)
