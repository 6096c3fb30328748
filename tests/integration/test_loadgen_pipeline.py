"""`meterstream loadgen` against `meterstream up` on the real broker and the embedded
ClickHouse: its expected totals are what the pipeline arrives at, exactly, with
repeated bodies and late events in the load."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meterstream.core.usage import OTHER_MODEL
from meterstream.loadgen.expected import METRICS, TABLE_SUMS
from processors.priced_models import priced_model_keys
from tests.support import meterstream, metric_sample, wait_for
from tests.support.pipeline import Pipeline, running_pipeline, worker_page


def _worker(pipeline: Pipeline, path: str) -> bytes:
    return worker_page(pipeline.env["METERSTREAM_WORKER_PORT"], path)


def _worker_metric(pipeline: Pipeline, name: str) -> float:
    return metric_sample(pipeline.env["METERSTREAM_WORKER_PORT"], name)


def _months(totals: dict[str, Any]) -> list[int]:
    """A time in each calendar month the deployment's counted events fall in (late events
    reach back half a day, so at most two)."""
    first, last = totals["first_event_ms"], totals["last_event_ms"]
    def month(ms: int) -> tuple[int, int]:
        moment = datetime.fromtimestamp(ms / 1000, UTC)
        return moment.year, moment.month

    return [first, last] if month(first) != month(last) else [last]


def _folded(tokens_by_model: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The expected tokens per model as the worker's live windows keep them: models the
    price book prices by name, the load generator's unpriced ones summed under "other"
    (ClickHouse keeps every name; loadgen check compares those)."""
    priced = priced_model_keys()
    folded: dict[str, dict[str, int]] = {}
    for model, kinds in tokens_by_model.items():
        into = folded.setdefault(model if model in priced else OTHER_MODEL, {})
        for kind, value in kinds.items():
            into[kind] = into.get(kind, 0) + value
    return folded


def _live_usage(pipeline: Pipeline, name: str, totals: dict[str, Any],
                user: str | None = None) -> dict[str, Any]:
    """The worker's live billing metrics and tokens for the deployment (and one of its end
    users), summed over the months of its events."""
    metrics = dict.fromkeys(METRICS, 0)
    by_model: dict[str, dict[str, int]] = {}
    by_user: dict[str, dict[str, int]] = {}
    for at in _months(totals):
        query = f"?at={at}" + (f"&user={user}" if user else "")
        report = json.loads(_worker(pipeline, f"/v1/quota/{name}{query}"))
        usage = report["periods"]["month"]["usage"]
        for metric in METRICS:
            metrics[metric] += usage[metric]
        for into, models in ((by_model, usage["tokens_by_model"]),
                             (by_user, report["user"]["periods"]["month"]["tokens_by_model"]
                              if user else {})):
            for model, kinds in models.items():
                for kind, value in kinds.items():
                    into.setdefault(model, {}).setdefault(kind, 0)
                    into[model][kind] += value
    return {"metrics": metrics, "tokens_by_model": by_model, "tokens_by_user": by_user,
            "storage": report["storage"]}


def test_loadgen_totals_are_what_the_pipeline_counts(kafka_bootstrap: str,
                                                     tmp_path: Path) -> None:
    expected_file = tmp_path / "expected.json"
    with running_pipeline(kafka_bootstrap, tmp_path) as pipeline:
        run = meterstream(["loadgen", "--deployments", "3", "--users", "4", "--events", "4000",
                           "--duplicates", "0.2", "--late", "0.05", "--too-late", "0.03",
                           "--seed", "11", "--connections", "4",
                           "--expected-out", str(expected_file)], pipeline.env, timeout=300)
        assert "expected: exact" in run.stdout
        document = json.loads(expected_file.read_text())
        stats = document["stats"]
        assert stats["events"] == 4000
        assert stats["rejected"] == stats["undetermined"] == 0
        assert document["exact"]
        assert stats["repeats_acked"] == stats["repeats"] > 0
        assert stats["late"] > 0
        assert stats["dead_lettered"] > 0

        check = meterstream(["loadgen", "check", "--expected", str(expected_file),
                             "--tables", "function_executions", "--wait", "120"],
                            pipeline.env, timeout=200)
        assert check.stdout.splitlines()[-1] == "OK: every value matches", check.stdout

        # The same, asked directly: every counter of every row, per deployment.
        columns = TABLE_SUMS["function_executions"]
        sums = ", ".join(f"sum({c})" for c in columns)
        for name, totals in document["deployments"].items():
            row = pipeline.sql(f"SELECT count(), {sums} FROM function_executions "
                               f"WHERE deployment = '{name}'").split("\t")
            assert [int(v) for v in row] == [totals["tables"]["function_executions"][c]
                                             for c in ("rows", *columns)]

        # The worker dropped each repeated body and dead-lettered each too-late event.
        wait_for(lambda: _worker_metric(
            pipeline, 'meterstream_worker_duplicates_total{kind="body"}') == stats["repeats"],
                 timeout=30, what="the worker to drop every repeated body")
        assert _worker_metric(pipeline, "meterstream_worker_late_events_total") == \
            stats["dead_lettered"]

        # Its live billing metrics, tokens per model and per end user, and storage are
        # the expected ones, for the tables the sink does not write yet too.
        for name, totals in document["deployments"].items():
            user = sorted(totals["tokens_by_user"])[0]
            live = _live_usage(pipeline, name, totals, user)
            assert live["metrics"] == totals["metrics"], name
            assert live["tokens_by_model"] == _folded(totals["tokens_by_model"]), name
            assert live["tokens_by_user"] == _folded(totals["tokens_by_user"][user]), name
            assert live["storage"] == totals["storage"], name

        # A total that is off by one is a mismatch, named.
        name = sorted(document["deployments"])[0]
        document["deployments"][name]["tables"]["function_executions"]["rows"] += 1
        expected_file.write_text(json.dumps(document))
        failed = meterstream(["loadgen", "check", "--expected", str(expected_file),
                              "--tables", "function_executions", "--wait", "0"],
                             pipeline.env, check=False)
        assert failed.returncode == 1
        assert failed.stdout.splitlines()[1:] == [
            "MISMATCH: 1 values differ", "deployment\tvalue\texpected\tobserved\tdifference",
            f"{name}\tfunction_executions.rows\t"
            f"{document['deployments'][name]['tables']['function_executions']['rows']}\t"
            f"{document['deployments'][name]['tables']['function_executions']['rows'] - 1}\t-1"]
