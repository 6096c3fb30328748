"""One event type end to end on the real broker and the embedded ClickHouse engine."""

from __future__ import annotations

import copy
import os
import signal
import time
from pathlib import Path

import orjson

from tests.support import metric_sample, read_topic, recent_events, wait_for
from tests.support.agent_steps import AI_SDK
from tests.support.function_totals import stored_rows, stored_totals, totals
from tests.support.pipeline import Pipeline, running_pipeline
from tests.support.records import rows_of


def _shifted(events: list[dict], ms: int) -> list[dict]:
    shifted = copy.deepcopy(events)
    for event in shifted:
        event["timestamp"] += ms
    return shifted


def _worker_metric(pipeline: Pipeline, name: str, labels: str) -> float:
    return metric_sample(pipeline.env["METERSTREAM_WORKER_PORT"], name, labels)


def test_function_executions_land_exactly_once_each(kafka_bootstrap: str, tmp_path: Path) -> None:
    events = recent_events()
    functions = [e for e in events if e["topic"] == "function_execution"]
    assert {e["function"]["type"] for e in functions} == {"query", "mutation", "action"}

    # Three distinct JSON-array bodies and one JSONL body (as Convex: no trailing newline);
    # some are sent twice, byte for byte, as Convex retries.
    first, second, third = (orjson.dumps(_shifted(events, ms)) for ms in (0, 60_000, 120_000))
    jsonl = b"\n".join(orjson.dumps(e) for e in _shifted(events, 180_000))
    bad_counter = copy.deepcopy(functions[0])
    bad_counter["usage"]["database_read_bytes"] = "lots"
    mixed = orjson.dumps([functions[2], 42, bad_counter])
    sent = (first, first, second, third, third, jsonl, jsonl, mixed)

    secret = "3f1c2b7e9a0d4c5e8b6a7f0e1d2c3b4a"
    with running_pipeline(kafka_bootstrap, tmp_path) as pipeline:
        pipeline.register("happy-otter-123", webhook_secret=secret, team="acme")
        accepted = []
        for body in sent:
            status, answer = pipeline.post(body, secret)
            assert status == 200, answer
            accepted.append(orjson.loads(answer)["accepted"])
        assert accepted == [5, 5, 5, 5, 5, 5, 5, 3]

        # Signed, so it is parsed (a body is parsed only after its signature verified).
        status, answer = pipeline.post(b'[{"convex": {"deployment_name": "happy-otter-123"}, '
                                       b'"topic": "function_execution",', secret)
        assert status == 400
        assert orjson.loads(answer)["where"] == "line 1 column 83"

        landed = functions * 4 + [functions[2]]
        expected_rows, expected_totals = len(landed), totals(landed)
        wait_for(lambda: stored_rows(pipeline.sql) >= expected_rows, timeout=90,
                 what=f"{expected_rows} rows in function_executions")
        wait_for(lambda: _worker_metric(pipeline, "meterstream_worker_duplicates_total",
                                        'kind="body"') == 3, timeout=30,
                 what="the worker to count 3 repeated bodies")
        rows, sums = stored_totals(pipeline.sql)
        assert rows == expected_rows
        assert sums == expected_totals

        by_type = pipeline.sql("SELECT function_type, count() FROM function_executions "
                               "GROUP BY function_type ORDER BY function_type")
        assert by_type == "action\t5\nmutation\t4\nquery\t4\n"
        assert pipeline.sql("SELECT DISTINCT deployment FROM function_executions") == \
            "happy-otter-123\n"

        # The other event types went to their own topics, one message per distinct body.
        def routed(route: str) -> list[dict]:
            return [record for message in read_topic(kafka_bootstrap,
                                                     f"{pipeline.namespace}.{route}")
                    for record in rows_of(route, message.value, message.headers)]

        assert [r["total_document_size_bytes"] for r in routed("current_storage_usage")] == \
            [104857600] * 4
        assert sum(r["egress_bytes"] for r in routed("storage_api_bandwidth")) == 4 * 1048576

        deadletter_topic = f"{pipeline.namespace}.deadletter"
        letters = wait_for(
            lambda: [orjson.loads(m.value) for m in read_topic(kafka_bootstrap, deadletter_topic)],
            timeout=30, what="dead letters")
        assert sorted(letter["reason"] for letter in letters) == [
            "event is not a JSON object",
            "usage.database_read_bytes must be a non-negative integer, got 'lots'",
        ]

        assert pipeline.stop() == 0, pipeline.log_tail()

    # Stopped: `meterstream sql` now opens the embedded engine itself and sees the same rows.
    assert stored_totals(pipeline.sql) == (expected_rows, expected_totals)

    # Started again, the worker still knows the bodies it has seen (its table is restored
    # from the changelog): one more Convex retry of the first body is dropped.
    (tmp_path / "again").mkdir()
    with running_pipeline(kafka_bootstrap, tmp_path / "again",
                          extra_env=pipeline.env) as again:
        assert again.post(first, secret)[0] == 200
        wait_for(lambda: _worker_metric(again, "meterstream_worker_duplicates_total",
                                        'kind="body"') == 1, timeout=60,
                 what="the restarted worker to drop the repeated body")
        assert again.stop() == 0
    assert stored_totals(pipeline.sql) == (expected_rows, expected_totals)


def test_agent_usage_records_count_once_per_id(kafka_bootstrap: str, tmp_path: Path) -> None:
    token = "ingest-token-0123456789abcdef"
    with running_pipeline(kafka_bootstrap, tmp_path) as pipeline:
        pipeline.register("happy-otter-123", ingest_token=token)
        headers = {"Authorization": f"Bearer {token}"}
        now = int(time.time() * 1000)
        one = {**AI_SDK, "id": "step-1", "timestamp": now}
        two = {**AI_SDK, "id": "step-2", "timestamp": now}
        for body in ([one], [one], [two, two], [one, two]):
            status, answer = pipeline.request("POST", "/v1/agent/usage", orjson.dumps(body),
                                              headers)
            assert status == 200, answer
        # The second request repeats the first byte for byte: a repeated body. The others
        # repeat ids: one within its own request, two from earlier requests.
        wait_for(lambda: _worker_metric(pipeline, "meterstream_worker_duplicates_total",
                                        'kind="agent_usage_id"') == 3, timeout=60,
                 what="3 repeated usage record ids dropped")
        assert _worker_metric(pipeline, "meterstream_worker_duplicates_total",
                              'kind="body"') == 1
        def stored() -> list[str]:
            return sorted(record["id"] for message in read_topic(
                kafka_bootstrap, f"{pipeline.namespace}.agent_usage")
                for record in rows_of("agent_usage", message.value, message.headers))

        # Forwards are published when the raw offsets are committed.
        wait_for(lambda: len(stored()) >= 2, timeout=30, what="the usage records forwarded")
        assert stored() == ["step-1", "step-2"]


def test_up_stops_every_service_when_one_dies(kafka_bootstrap: str, tmp_path: Path) -> None:
    with running_pipeline(kafka_bootstrap, tmp_path) as pipeline:
        started = wait_for(lambda: _pids(pipeline), timeout=30, what="the 'pipeline started' line")
        os.kill(started["worker"], signal.SIGKILL)
        assert pipeline.process.wait(120) == 1
        for role in ("receiver", "sink"):
            assert not _alive(started[role]), f"{role} still running"


def _pids(pipeline: Pipeline) -> dict[str, int] | None:
    for line in pipeline.log.read_text(errors="replace").splitlines():
        if '"pipeline started"' in line:
            entry = orjson.loads(line)
            return {role: entry[role] for role in ("receiver", "worker", "sink")}
    return None


def _alive(pid: int) -> bool:
    """Running, not exited (a zombie waiting for its reaper counts as exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return "zombie" not in state


def test_no_service_outlives_a_killed_up(kafka_bootstrap: str, tmp_path: Path) -> None:
    with running_pipeline(kafka_bootstrap, tmp_path) as pipeline:
        children = wait_for(lambda: _pids(pipeline), timeout=30, what="the 'pipeline started' line")
        pipeline.process.kill()
        pipeline.process.wait()
        wait_for(lambda: not any(_alive(pid) for pid in children.values()), timeout=60,
                 what=f"the services {children} to exit after `up` was killed")
