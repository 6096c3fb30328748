"""Usage and invoices through `meterstream up`: Convex events in at the receiver, usage and
an invoice out of the embedded engine the sink holds (through its socket), on the real
broker. (Only function executions reach ClickHouse through the sink so far.)"""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import orjson
import pytest

from billing.money import rounded, text
from billing.periods import Period
from tests.pipeline import running_pipeline
from tests.support import meterstream, recent_events, wait_for

pytestmark = pytest.mark.kafka

DEPLOYMENT = "happy-otter-123"
SECRET = "3f1c2b7e9a0d4c5e8b6a7f0e1d2c3b4a"
GIB = 1 << 30


def _bodies(count: int) -> tuple[list[bytes], dict[str, int]]:
    """`count` distinct bodies of the reference's three function executions, and their
    billing totals computed here from the events."""
    templates = recent_events("function_execution")
    bodies, totals = [], dict.fromkeys(("calls", "io", "egress", "search", "mb_ms"), 0)
    for n in range(count):
        events = copy.deepcopy(templates)
        for event in events:
            event["timestamp"] += n
            usage = event["usage"]
            usage["database_io_read_bytes"] = 1000 + n
            totals["calls"] += 1
            totals["io"] += usage["database_io_read_bytes"] + usage["database_io_write_bytes"]
            totals["egress"] += usage["network_egress_bytes"] + usage["file_storage_read_bytes"]
            totals["search"] += sum(usage[k] for k in (
                "text_search_query_bytes", "text_search_write_query_bytes",
                "vector_search_query_bytes", "vector_search_write_query_bytes"))
            if event["function"]["type"] == "action":
                totals["mb_ms"] += usage["action_memory_used_mb"] * event["execution_time_ms"]
        bodies.append(orjson.dumps(events))
    return bodies, totals


def test_usage_and_invoices_while_up_holds_the_engine(kafka_bootstrap: str,
                                                      tmp_path: Path) -> None:
    bodies, totals = _bodies(20)
    period = Period.containing(recent_events("function_execution")[0]["timestamp"])
    with running_pipeline(kafka_bootstrap, tmp_path) as pipeline:
        pipeline.register(DEPLOYMENT, webhook_secret=SECRET, team="acme", plan="starter")
        for body in bodies:
            status, answer = pipeline.post(body, SECRET)
            assert status == 200, answer

        def usage() -> dict:
            result = meterstream(["usage", "--deployment", DEPLOYMENT, "--from",
                                  period.label, "--to", period.next().label, "--format",
                                  "json"], pipeline.env, check=False)
            if "UNKNOWN_TABLE" in result.stderr:  # the sink is still applying migrations
                return {"function_calls": 0}
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)["total"]["usage"]

        wait_for(lambda: usage()["function_calls"] >= totals["calls"], timeout=90,
                 what=f"{totals['calls']} function calls in the rollups")
        found = usage()
        assert found["function_calls"] == totals["calls"] == 60
        assert found["database_io_gb"] == text(rounded(Fraction(totals["io"], GIB), 6))
        assert found["data_egress_gb"] == text(rounded(Fraction(totals["egress"], GIB), 6))
        assert found["action_compute_gb_hours"] == text(
            rounded(Fraction(totals["mb_ms"], 1024 * 3_600_000), 6))
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
        assert lines["function_calls"]["usage"] == "60"
        assert Decimal(lines["database_io"]["usage"]) == rounded(Fraction(totals["io"], GIB))
        # All of it within the starter plan's included amounts.
        assert (invoice["amount"], invoice["amount_due"], invoice["status"]) == (
            "0", "0.00", "pending")
        meterstream(["invoices", "mark", invoice["id"], "--status", "paid"], pipeline.env)
        assert pipeline.sql("SELECT status FROM invoices FINAL") == "paid\n"
        assert pipeline.sql("SELECT sum(function_calls) FROM usage_daily") == "60\n"
