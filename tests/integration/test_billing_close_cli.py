"""`meterstream invoices close`, `invoices unbilled` and `usage --invoiced` as commands, on
an embedded engine that no process holds, with the registry read from the real broker.

Amounts by hand from the default price book: the starter plan includes 1 GB of database
I/O, then 0.22 per GB.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from meterstream.core import migrate
from meterstream.core.clickhouse import EngineLock, connect
from meterstream.core.config import ClickHouseTarget
from tests.support import meterstream
from tests.support.billing_data import (
    GIB,
    function_execution,
    insert_function_executions,
    ms,
    publish_registry,
)

APP = "closing-app"


def with_engine(path: Path, work: Callable[[Client], object]) -> None:
    with EngineLock(path):
        client = connect(ClickHouseTarget(url=f"chdb://{path}", chdb_path=path))
        try:
            work(client)
        finally:
            client.close()


def database_io(at: str, read_bytes: int) -> Callable[[Client], None]:
    return lambda client: insert_function_executions(client, [function_execution(
        APP, ms(at), database_io_read_bytes=read_bytes)])


@pytest.fixture
def engine_path(tmp_path: Path) -> Path:
    path = tmp_path / "clickhouse"
    with_engine(path, migrate.apply)
    return path


@pytest.fixture
def env(engine_path: Path, kafka_bootstrap: str) -> dict[str, str]:
    namespace = f"t{uuid.uuid4().hex[:10]}"
    publish_registry(kafka_bootstrap, namespace, {APP: {"team": "acme", "plan": "starter"}})
    return {"METERSTREAM_KAFKA": kafka_bootstrap, "METERSTREAM_NAMESPACE": namespace,
            "METERSTREAM_CLICKHOUSE": f"chdb://{engine_path}"}


def test_a_closed_period_reports_late_usage_on_the_command_line(
        env: dict[str, str], engine_path: Path) -> None:
    # 0.75 GB, within the included 1 GB: an invoice of 0.
    with_engine(engine_path, database_io("2026-10-10T10:00:00", 3 * GIB // 4))
    first = json.loads(meterstream(["invoices", "generate", "--period", "2026-10"], env).stdout)
    assert (first["created"], first["amount_due"]) == (1, "0.00")
    closed = json.loads(meterstream(["invoices", "close", "2026-10"], env).stdout)
    assert (closed["period"], closed["already_closed"]) == ("2026-10-01", False)
    again = json.loads(meterstream(["invoices", "close", "2026-10"], env).stdout)
    assert again == {**closed, "already_closed": True}

    # 0.5 GB lands after it: 1.25 GB in all, (1.25 - 1) x 0.22 = 0.055, not billed.
    with_engine(engine_path, database_io("2026-10-20T10:00:00", GIB // 2))
    run = json.loads(meterstream(["invoices", "generate", "--period", "2026-10"], env).stdout)
    assert (run["created"], run["adjustments"], run["amount_due"]) == (0, 0, "0.00")
    assert (run["closed_at"], run["unbilled"]) == (
        closed["closed_at"], {"subjects": 1, "amount": "0.055"})
    report = json.loads(meterstream(["invoices", "unbilled", "--period", "2026-10"],
                                    env).stdout)
    assert (report["subjects"], report["amount"]) == (1, "0.055")
    (subject,) = report["subjects_unbilled"]
    assert (subject["deployment"], subject["subject"], subject["amount"]) == (
        APP, "deployment", "0.055")
    assert {line["item"]: (line["usage"], line["quantity"], line["amount"])
            for line in subject["lines"]} == {"function_calls": ("1", "0", "0"),
                                              "database_io": ("0.5", "0.25", "0.055")}
    shown = json.loads(meterstream(["invoices", "show", "--period", "2026-10"], env).stdout)
    assert [i["kind"] for i in shown] == ["invoice"]

    table = meterstream(["usage", "--deployment", APP, "--from", "2026-10", "--to", "2026-11",
                         "--invoiced"], env).stdout.splitlines()
    header, row = table[0].split("\t"), table[1].split("\t")
    found = dict(zip(header, row, strict=True))
    assert {k: found[k] for k in ("period", "state", "current", "invoiced", "uninvoiced",
                                  "invoices", "adjustments")} == {
        "period": "2026-10-01", "state": "closed", "current": "0.055", "invoiced": "0",
        "uninvoiced": "0.055", "invoices": "1", "adjustments": "0"}
    assert len(table) == 2


@pytest.mark.parametrize(("period", "message"), [
    ("2026-13", "a billing period is YYYY-MM, got '2026-13'"),
    ("2999-01", "period 2999-01-01 has not ended (it ends at 2999-02-01T00:00:00Z)"),
])
def test_closing_a_bad_or_unfinished_period_is_refused(env: dict[str, str], period: str,
                                                       message: str) -> None:
    refused = meterstream(["invoices", "close", period], env, check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip().startswith(f"meterstream invoices close: {message}")
    shown = meterstream(["sql", "SELECT count() FROM closed_periods"], env)
    assert shown.stdout == "0\n"


def test_usage_invoiced_is_refused_with_top(env: dict[str, str]) -> None:
    refused = meterstream(["usage", "--top", "3", "--invoiced"], env, check=False)
    assert (refused.returncode, refused.stderr.strip().splitlines()[-1]) == (
        1, "meterstream usage: --invoiced goes with --deployment or --team, not --top")
