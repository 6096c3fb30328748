"""The hand-written migrations against the event registrations and the metric catalogue.

The migrations are applied to an embedded ClickHouse engine (one chdb path per process,
so one module, as in test_migrate.py) and the tables' columns read back: a column added to
a registration or the catalogue but not to a migration (or the other way) fails here,
not in production at the first insert or query.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from clickhouse_connect.driver.client import Client

from meterstream.core import catalogue, events, migrate
from meterstream.core.clickhouse import EngineLock, connect
from meterstream.core.config import ClickHouseTarget
from meterstream.core.records import FUNCTION_EXECUTION_FIELDS, FunctionExecution
from meterstream.core.tables import SPECS
from processors.split import ALL_ROUTES, ROUTES


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    path = tmp_path_factory.mktemp("chdb") / "clickhouse"
    with EngineLock(path):
        client = connect(ClickHouseTarget(url=f"chdb://{path}", chdb_path=path))
        migrate.apply(client)
        yield client
        client.close()  # so that another module can open an engine at its own path


def _columns(client: Client, table: str) -> list[tuple[str, str]]:
    """(name, type) of the columns an insert names: those without a default."""
    rows = client.query("SELECT name, type, default_kind FROM system.columns "
                        "WHERE database = currentDatabase() AND table = {table:String} "
                        "ORDER BY position", parameters={"table": table}).result_rows
    assert rows, f"no table {table}"
    return [(name, type_) for name, type_, default in rows if not default]


@pytest.mark.parametrize("event_type", events.ALL, ids=lambda t: t.topic)
def test_each_sink_table_has_the_registered_columns_in_order(client: Client,
                                                             event_type: events.EventType
                                                             ) -> None:
    assert _columns(client, event_type.table) == list(event_type.columns)


@pytest.mark.parametrize("table", ["usage_hourly", "usage_daily", "usage_events"])
def test_the_usage_rollups_have_a_column_per_rollup_metric(client: Client, table: str) -> None:
    keys = {"deployment", "region", {"usage_hourly": "hour", "usage_daily": "day",
                                     "usage_events": "timestamp"}[table]}
    counters = [name for name, _ in _columns(client, table) if name not in keys]
    assert sorted(counters) == sorted(catalogue.ROLLUP_COLUMNS)
    assert len(counters) == len(catalogue.ROLLUP_COLUMNS)


@pytest.mark.parametrize("table", ["tokens_hourly", "user_tokens_monthly"])
def test_the_token_rollups_have_a_column_per_token_count(client: Client, table: str) -> None:
    names = [name for name, type_ in _columns(client, table) if "sum, UInt64" in type_]
    assert names == [*catalogue.TOKEN_COLUMNS, "steps"]


def test_every_metric_source_is_a_counter_of_its_event_type() -> None:
    for metric in catalogue.METRICS:
        for topic, fields in metric.sources:
            columns = dict(events.BY_TOPIC[topic].columns)
            for name in fields:
                assert name in columns, (metric.name, topic, name)
                if not metric.custom:  # summed: an integer column
                    assert columns[name] in (events.U32, events.U64), (metric.name, name)


def test_quotas_rollups_and_resources_name_catalogue_metrics() -> None:
    from billing.resources import RESOURCES

    assert {resource.key for resource in RESOURCES} == {
        m.resource for m in catalogue.METRICS if m.resource is not None}
    assert set(catalogue.BY_QUOTA) == set(catalogue.QUOTA_METRICS)
    assert len({m.name for m in catalogue.METRICS}) == len(catalogue.METRICS)


def test_routes_and_specs_follow_the_registrations() -> None:
    assert list(ROUTES) == [t.topic for t in events.EVENT_TYPES]
    assert ALL_ROUTES[-1] == events.OTHER.route
    assert [(spec.table, spec.route) for spec in SPECS[:-1]] == [
        (t.table, t.route) for t in events.ALL]
    assert tuple(FunctionExecution.__annotations__) == FUNCTION_EXECUTION_FIELDS
    assert tuple(
        name for name, _ in events.FUNCTION_EXECUTION.columns) == FUNCTION_EXECUTION_FIELDS
