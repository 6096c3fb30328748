"""Usage and invoices through `meterstream up`: Convex events in at the receiver, usage and
an invoice out of the embedded engine the sink holds (through its socket), on the real
broker. (Only function executions reach ClickHouse through the sink so far.)

Every expected number is written by hand below, from the events and the default price
book (billing/default_price_book.toml), not computed with billing's rounding helpers.
"""

from __future__ import annotations

import copy
import json
import time
from decimal import Decimal
from pathlib import Path

import orjson

from billing.periods import Period
from tests.support import convex_examples, meterstream, schema_pending, wait_for
from tests.support.clock import settled
from tests.support.pipeline import running_pipeline

DEPLOYMENT = "happy-otter-123"
SECRET = "3f1c2b7e9a0d4c5e8b6a7f0e1d2c3b4a"
GIB = 1 << 30
BODIES = 20
# The reference's three function executions span 15.754 s; body n adds n ms.
LOAD_SPAN_MS = 16_000 + BODIES


def load_time(now_ms: int) -> int:
    """Where the load is: inside one UTC day (so one billing month) whatever the time of
    `now_ms`, ten minutes back, well within the worker's late-event grace (a day)."""
    return settled(now_ms, LOAD_SPAN_MS, "day", before_ms=600_000)


def bodies(at_ms: int) -> list[bytes]:
    """BODIES distinct bodies of the reference's three function executions (a query, a
    mutation, an action), moved to start at `at_ms`, each event with 64 MiB of database
    I/O read, 32 MiB of network egress and no other billed I/O or search."""
    templates = [e for e in convex_examples()["events"] if e["topic"] == "function_execution"]
    first = min(e["timestamp"] for e in templates)
    result = []
    for n in range(BODIES):
        events = copy.deepcopy(templates)
        for event in events:
            event["timestamp"] = at_ms + (event["timestamp"] - first) + n
            event["convex"]["deployment_name"] = DEPLOYMENT
            usage = event["usage"]
            for counter in ("database_io_write_bytes", "file_storage_read_bytes",
                            "text_search_query_bytes", "text_search_write_query_bytes",
                            "vector_search_query_bytes", "vector_search_write_query_bytes"):
                usage[counter] = 0
            usage["database_io_read_bytes"] = GIB // 16
            usage["network_egress_bytes"] = GIB // 32
        result.append(orjson.dumps(events))
    return result


def test_usage_and_a_non_zero_invoice_through_the_pipeline(kafka_bootstrap: str,
                                                           tmp_path: Path) -> None:
    now = int(time.time() * 1000)  # read once: every time below derives from it
    at = load_time(now)
    period = Period.containing(at)
    with running_pipeline(kafka_bootstrap, tmp_path) as pipeline:
        pipeline.register(DEPLOYMENT, webhook_secret=SECRET, team="acme", plan="starter")
        for body in bodies(at):
            status, answer = pipeline.post(body, SECRET)
            assert status == 200, answer

        def usage() -> dict:
            result = meterstream(["usage", "--deployment", DEPLOYMENT, "--from",
                                  period.label, "--to", period.next().label, "--format",
                                  "json"], pipeline.env, check=False)
            if schema_pending(result.stderr):  # the sink is still applying migrations
                return {"function_calls": 0}
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)["total"]["usage"]

        wait_for(lambda: usage()["function_calls"] >= 60, timeout=90,
                 what="60 function calls in the rollups")
        found = usage()
        # 20 bodies x 3 executions = 60 calls; 60 x 1/16 GiB = 3.75 GB of database I/O;
        # 60 x 1/32 GiB = 1.875 GB of egress; the action (20 of them): 512 MB x 8421 ms =
        # 4,311,552 MB-ms each, 86,231,040 / (1024 x 3,600,000) = 0.0233916... GB-hours.
        assert found["function_calls"] == 60
        assert found["database_io_gb"] == "3.75"
        assert found["data_egress_gb"] == "1.875"
        assert found["action_compute_gb_hours"] == "0.023392"
        team = json.loads(meterstream(["usage", "--team", "acme", "--from", period.label,
                                       "--format", "json"], pipeline.env).stdout)
        assert team["subject"]["deployments"] == [DEPLOYMENT]

        generated = meterstream(["invoices", "generate", "--period", period.label[:7]],
                                pipeline.env)
        assert json.loads(generated.stdout)["created"] == 1
        again = meterstream(["invoices", "generate", "--period", period.label[:7]],
                            pipeline.env)
        assert json.loads(again.stdout)["created"] == 0
        (invoice,) = json.loads(meterstream(["invoices", "show", "--period",
                                             period.label[:7]], pipeline.env).stdout)
        lines = {line["item"]: line for line in invoice["lines"]}
        assert (invoice["deployment"], invoice["team"], invoice["plan"]) == (
            DEPLOYMENT, "acme", "starter")
        # Starter plan: database I/O 1 GB included, then 0.22 per GB:
        # (3.75 - 1) x 0.22 = 2.75 x 0.22 = 0.605.
        assert {k: lines["database_io"][k] for k in ("usage", "included", "quantity",
                                                      "unit_price", "amount")} == {
            "usage": "3.75", "included": "1", "quantity": "2.75", "unit_price": "0.22",
            "amount": "0.605"}
        # Data egress 1 GB included, then 0.132 per GB: (1.875 - 1) x 0.132 = 0.1155.
        assert (lines["data_egress"]["quantity"], lines["data_egress"]["amount"]) == (
            "0.875", "0.1155")
        # Everything else is within the plan: 60 calls of 1,000,000; 0.023 of 20 GB-hours.
        assert {item: line["amount"] for item, line in lines.items()
                if item not in ("database_io", "data_egress")} == {
            "function_calls": "0", "action_compute": "0", "database_storage": "0",
            "file_storage": "0", "search_storage": "0", "search_queries": "0"}
        # 0.605 + 0.1155 = 0.7205, due rounded half-up to cents: 0.72.
        assert (invoice["amount"], invoice["amount_due"], invoice["status"]) == (
            "0.7205", "0.72", "pending")
        assert Decimal(invoice["amount"]) == Decimal("0.7205")
        meterstream(["invoices", "mark", invoice["id"], "--status", "paid"], pipeline.env)
        assert pipeline.sql("SELECT status FROM invoices FINAL") == "paid\n"
        assert pipeline.sql("SELECT sum(function_calls) FROM usage_daily") == "60\n"
