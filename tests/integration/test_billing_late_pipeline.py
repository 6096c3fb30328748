"""Usage that lands after an invoice, through `meterstream up` on the real broker: Convex
events in at the receiver, an invoice, more events, and the adjustment that bills exactly
those, from the embedded engine the sink holds (through its socket).

Every expected number is written by hand below, from the events and the default price
book (billing/default_price_book.toml), not computed with billing's rounding helpers.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import orjson

from billing.periods import Period
from tests.support import convex_examples, meterstream, schema_pending, wait_for
from tests.support.clock import settled
from tests.support.pipeline import running_pipeline

DEPLOYMENT = "late-otter-321"
SECRET = "9b8a7c6d5e4f30211203f4e5d6c7b8a9"
GIB = 1 << 30
BODIES = 40
# The reference's three function executions span 15.754 s; body n adds n ms.
LOAD_SPAN_MS = 16_000 + BODIES


def bodies(at_ms: int, numbers: range) -> list[bytes]:
    """Distinct bodies of the reference's three function executions (a query, a mutation,
    an action) moved to start at `at_ms` + n ms, each event with 64 MiB (1/16 GiB) of
    database I/O read, 32 MiB (1/32 GiB) of network egress and no other billed I/O."""
    templates = [e for e in convex_examples()["events"] if e["topic"] == "function_execution"]
    first = min(e["timestamp"] for e in templates)
    result = []
    for n in numbers:
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


def test_late_usage_after_an_invoice_is_billed_by_an_adjustment(kafka_bootstrap: str,
                                                                tmp_path: Path) -> None:
    now = int(time.time() * 1000)  # read once: every time below derives from it
    at = settled(now, LOAD_SPAN_MS, "day", before_ms=600_000)
    period = Period.containing(at)
    month = period.label[:7]
    with running_pipeline(kafka_bootstrap, tmp_path) as pipeline:
        pipeline.register(DEPLOYMENT, webhook_secret=SECRET, team="acme", plan="starter")

        def cli(*args: str, check: bool = True) -> Any:
            return meterstream(list(args), pipeline.env, check=check)

        def calls() -> int:
            result = cli("usage", "--deployment", DEPLOYMENT, "--from", period.label, "--to",
                         period.next().label, "--format", "json", check=False)
            if schema_pending(result.stderr):  # the sink is still applying migrations
                return 0
            assert result.returncode == 0, result.stderr
            return int(json.loads(result.stdout)["total"]["usage"]["function_calls"])

        def statement() -> dict[str, Any]:
            (found,) = json.loads(cli("usage", "--deployment", DEPLOYMENT, "--from",
                                      period.label, "--to", period.next().label,
                                      "--invoiced", "--format", "json").stdout)["periods"]
            return dict(found)

        for body in bodies(at, range(0, 20)):
            status, answer = pipeline.post(body, SECRET)
            assert status == 200, answer
        wait_for(lambda: calls() >= 60, timeout=90, what="60 function calls in the rollups")
        first = json.loads(cli("invoices", "generate", "--period", month).stdout)
        assert (first["created"], first["adjustments"], first["amount_due"]) == (1, 0, "0.72")

        # Late: 20 more bodies, stored after the invoice.
        for body in bodies(at, range(20, 40)):
            status, answer = pipeline.post(body, SECRET)
            assert status == 200, answer
        wait_for(lambda: calls() >= 120, timeout=90, what="120 function calls in the rollups")
        assert calls() == 120
        # Starter plan, on the whole: database I/O 120/16 = 7.5 GB, (7.5 - 1) x 0.22 = 1.43;
        # egress 120/32 = 3.75 GB, (3.75 - 1) x 0.132 = 0.363; 1.43 + 0.363 = 1.793.
        # Invoiced: 0.605 + 0.1155 = 0.7205. Not invoiced: 1.793 - 0.7205 = 1.0725.
        assert {k: statement()[k] for k in ("state", "current", "invoiced", "uninvoiced",
                                            "invoices", "adjustments")} == {
            "state": "open", "current": "1.793", "invoiced": "0.7205",
            "uninvoiced": "1.0725", "invoices": 1, "adjustments": 0}

        second = json.loads(cli("invoices", "generate", "--period", month).stdout)
        # The whole is due 1.79 (1.793 rounded half-up), 0.72 is due already: 1.07.
        assert (second["created"], second["adjustments"], second["already_invoiced"],
                second["amount_due"]) == (0, 1, 0, "1.07")
        shown = json.loads(cli("invoices", "show", "--period", month).stdout)
        (invoice,) = [i for i in shown if i["kind"] == "invoice"]
        (adjustment,) = [i for i in shown if i["kind"] == "adjustment"]
        assert adjustment["adjusts"] == invoice["id"]
        assert adjustment["id"] == "adj-" + invoice["id"][4:-1] + "1"
        lines = {line["item"]: {k: line[k] for k in ("usage", "included", "quantity",
                                                     "unit_price", "amount")}
                 for line in adjustment["lines"]}
        assert lines == {
            # 60 more calls, within the 1,000,000 included.
            "function_calls": {"usage": "60", "included": "60", "quantity": "0",
                               "unit_price": "0.0000022", "amount": "0"},
            # 20 more actions of 512 MB x 8421 ms: 86,231,040 / 3,686,400,000 GB-hours
            # = 0.02339166..., the total 0.0467833333 less the invoiced 0.0233916667 (both
            # rounded to 10 places); within the 20 included.
            "action_compute": {"usage": "0.0233916666", "included": "0.0233916666",
                               "quantity": "0", "unit_price": "0.33", "amount": "0"},
            # 3.75 GB more, the included 1 GB used by the invoice: 3.75 x 0.22 = 0.825.
            "database_io": {"usage": "3.75", "included": "0", "quantity": "3.75",
                            "unit_price": "0.22", "amount": "0.825"},
            # 1.875 GB more: 1.875 x 0.132 = 0.2475.
            "data_egress": {"usage": "1.875", "included": "0", "quantity": "1.875",
                            "unit_price": "0.132", "amount": "0.2475"}}
        # 0.825 + 0.2475 = 1.0725.
        assert (adjustment["amount"], adjustment["amount_due"], adjustment["status"]) == (
            "1.0725", "1.07", "pending")
        assert {k: statement()[k] for k in ("current", "invoiced", "uninvoiced",
                                            "invoiced_due", "adjustments")} == {
            "current": "1.793", "invoiced": "1.793", "uninvoiced": "0",
            "invoiced_due": "1.79", "adjustments": 1}

        third = json.loads(cli("invoices", "generate", "--period", month).stdout)
        assert (third["created"], third["adjustments"], third["already_invoiced"]) == (0, 0, 1)
        assert pipeline.sql("SELECT count() FROM invoices FINAL") == "2\n"

        # The period is still running: it cannot be closed yet.
        refused = cli("invoices", "close", month, check=False)
        assert refused.returncode == 1
        assert f"period {period.label} has not ended" in refused.stderr
        assert pipeline.sql("SELECT count() FROM closed_periods") == "0\n"
