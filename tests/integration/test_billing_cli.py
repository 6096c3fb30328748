"""`meterstream invoices` and `meterstream usage` as commands, on an embedded engine that no
process holds, with the deployment registry read from the real broker."""

from __future__ import annotations

import csv
import io
import json
import uuid
from pathlib import Path

import pytest

from meterstream.core import migrate
from meterstream.core.clickhouse import EngineLock, connect
from meterstream.core.config import ClickHouseTarget
from tests.support import meterstream
from tests.support.billing_data import publish_registry
from tests.support.october import ANONYMOUS, EU_APP, REGISTRY, US_APP, USER, october_usage


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> dict[str, str]:
    path = tmp_path_factory.mktemp("cli") / "clickhouse"
    with EngineLock(path):
        client = connect(ClickHouseTarget(url=f"chdb://{path}", chdb_path=path))
        migrate.apply(client)
        october_usage(client)
        client.close()
    namespace = f"t{uuid.uuid4().hex[:10]}"
    publish_registry(kafka_bootstrap, namespace, {
        name: {"team": owner.team, "project": owner.project, "plan": owner.plan or ""}
        for name, owner in REGISTRY.items()})
    return {"METERSTREAM_KAFKA": kafka_bootstrap, "METERSTREAM_NAMESPACE": namespace,
            "METERSTREAM_CLICKHOUSE": f"chdb://{path}"}


def test_invoices_generate_show_and_mark(env: dict[str, str]) -> None:
    run = meterstream(["invoices", "generate", "--period", "2026-10"], env, check=False)
    assert run.returncode == 1  # two subjects could not be invoiced, and it says which
    assert json.loads(run.stdout) | {"problems": []} == {
        "period": "2026-10-01", "created": 5, "regenerated": 0, "adjustments": 0,
        "already_invoiced": 0, "problems": [],
        "amount_due": "4.16"}  # 3.93 + 0.20 + 0.00 + 0.01 + 0.02 (cents)
    assert "deployment mystery-app: plan 'enterprise' is not in the price book" in run.stderr
    assert "end_user us-app user 'bob': no token prices for provider 'mystery'" in run.stderr

    again = meterstream(["invoices", "generate", "--period", "2026-10"], env, check=False)
    assert json.loads(again.stdout)["created"] == 0
    assert json.loads(again.stdout)["already_invoiced"] == 5

    shown = json.loads(meterstream(["invoices", "show", "--period", "2026-10"], env).stdout)
    amounts = {(i["subject"], i["deployment"], i["user_id"]): (i["amount"], i["amount_due"])
               for i in shown}
    assert amounts == {("deployment", "eu-app", ""): (str(EU_APP), "3.93"),
                       ("deployment", "us-app", ""): (str(US_APP), "0.20"),
                       ("deployment", "quiet-app", ""): ("0", "0.00"),
                       ("end_user", "eu-app", ""): (str(ANONYMOUS), "0.01"),
                       ("end_user", "eu-app", "user_2f9KqM"): (str(USER), "0.02")}

    table = meterstream(["invoices", "show", "--period", "2026-10", "--format", "csv",
                         "--deployment", "eu-app"], env).stdout
    rows = list(csv.DictReader(io.StringIO(table)))
    storage = next(r for r in rows if r["subject"] == "deployment"
                   and r["item"] == "database_storage")
    assert (storage["usage"], storage["included"], storage["quantity"], storage["unit_price"],
            storage["amount"], storage["invoice_amount"], storage["region"]) == (
        "60", "50", "10", "0.26", "2.6", "3.926", "aws-eu-west-1")
    assert len(rows) == 8 + 5 + 10  # 8 resources; 5 token kinds per model and end user

    invoice = next(i["id"] for i in shown if i["deployment"] == "us-app")
    marked = meterstream(["invoices", "mark", invoice, "--status", "paid"], env)
    assert json.loads(marked.stdout) == {"id": invoice, "status": "paid"}
    paid = json.loads(meterstream(["invoices", "show", "--period", "2026-10", "--status",
                                   "paid"], env).stdout)
    assert [i["id"] for i in paid] == [invoice]
    unknown = meterstream(["invoices", "mark", "inv-202610-0-1", "--status", "paid"], env,
                          check=False)
    assert (unknown.returncode, unknown.stderr.strip()) == (
        1, "meterstream invoices mark: no invoice 'inv-202610-0-1'")


def test_usage_of_a_deployment_a_team_and_the_top(env: dict[str, str]) -> None:
    answer = json.loads(meterstream(
        ["usage", "--deployment", "eu-app", "--from", "2026-10", "--to", "2026-11",
         "--format", "json"], env).stdout)
    assert answer["total"]["convex_cost"] == str(EU_APP)
    assert answer["total"]["token_cost"] == str(USER + ANONYMOUS)
    assert answer["total"]["usage"]["action_compute_gb_hours"] == "251"
    assert answer["total"]["usage"]["database_storage_gb_hours"] == str(60 * 744)
    assert [b["start"] for b in answer["buckets"]] == ["2026-10-01T00:00:00Z"]

    table = meterstream(["usage", "--team", "acme", "--from", "2026-10-10", "--to",
                         "2026-10-11", "--resolution", "hour"], env).stdout.splitlines()
    assert len(table) == 1 + 24
    header = table[0].split("\t")
    assert header[:3] == ["start", "function_calls", "file_downloads"]
    assert header[-3:] == ["convex_cost", "token_cost", "cost"]
    noon = dict(zip(header, table[1 + 12].split("\t"), strict=True))
    assert (noon["function_calls"], noon["file_downloads"], noon["data_egress_gb"]) == (
        "2", "1", "1")

    top = json.loads(meterstream(["usage", "--top", "1", "--from", "2026-10", "--to",
                                  "2026-11", "--format", "json"], env).stdout)
    assert [(d["deployment"], d["team"], d["convex_cost"]) for d in top["deployments"]] == [
        ("eu-app", "acme", str(EU_APP))]


def test_a_bad_price_book_stops_the_command_naming_the_entry(env: dict[str, str],
                                                             tmp_path: Path) -> None:
    book = tmp_path / "prices.toml"
    book.write_text('default_plan = "pro"\n[plans.pro]\nfunction_calls = { included = 1 }\n')
    result = meterstream(["invoices", "show", "--period", "2026-10"],
                         {**env, "METERSTREAM_PRICE_BOOK": str(book)}, check=False)
    assert result.returncode == 2
    assert "plans.pro.function_calls.price: must be a non-negative decimal" in result.stderr
    assert "plans.pro.action_compute: missing" in result.stderr
