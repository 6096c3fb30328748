"""The load generator's traffic model and expected totals (no broker, no network)."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from ingest.agent_usage import normalise_all
from meterstream.core import records
from meterstream.core.log_stream import inspect_batch
from meterstream.core.usage import WindowDelta, message_usage
from meterstream.loadgen import cli
from meterstream.loadgen.check import comparable, compare
from meterstream.loadgen.expected import (
    METRICS,
    TABLES,
    DeploymentTotals,
    ExpectedTotals,
)
from meterstream.loadgen.traffic import AGENT, LOGS, Delivery, TrafficModel, TrafficOptions
from processors.split import split_body
from tests.support.independent_totals import Independent, events_of, nonzero

GRACE_MS = 86_400_000
START_MS = int(datetime(2026, 6, 15, 12, tzinfo=UTC).timestamp() * 1000)
STEP_MS = 1_500
"""the fake clock's advance per body"""


def _options(**changes: Any) -> TrafficOptions:
    base = {"deployments": 7, "users": 5, "seed": 42, "prefix": "lg-test", "duplicates": 0.2,
            "late": 0.05, "too_late": 0.03, "grace_ms": GRACE_MS,
            "storage_interval_ms": 120_000, "egress_interval_ms": 30_000}
    return TrafficOptions(**{**base, **changes})


def _generate(options: TrafficOptions, log_events: int) -> list[tuple[int, Delivery]]:
    """(clock reading, delivery) until `log_events` log-stream events were made."""
    numbers = itertools.count()
    model = TrafficModel(options, secret=lambda: f"secret-{next(numbers):04d}-0123456789")
    out: list[tuple[int, Delivery]] = []
    made = 0
    for n in itertools.count():
        if made >= log_events:
            return out
        now = START_MS + n * STEP_MS
        for delivery in model.next_batch(now, log_events - made):
            out.append((now, delivery))
            made += delivery.events if delivery.endpoint == LOGS else 0
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def generated() -> list[tuple[int, Delivery]]:
    return _generate(_options(), 40_000)


def _expected(generated: list[tuple[int, Delivery]]) -> ExpectedTotals:
    expected = ExpectedTotals()
    for _, delivery in generated:
        expected.add(delivery.deployment.name, delivery.totals)
    return expected


def test_every_event_normalises_without_dead_letters(
        generated: list[tuple[int, Delivery]]) -> None:
    topics: Counter[str] = Counter()
    for offset, (now, delivery) in enumerate(generated):
        if delivery.endpoint == LOGS:
            # What the receiver checks, then what the worker makes of the body.
            info = inspect_batch(delivery.body)
            assert info.deployments == {delivery.deployment.name}
            assert info.events == delivery.events <= 128
            split = split_body(delivery.body, 0, offset)
            assert split.dead_letters == []
            assert sum(len(r) for r in split.routed.values()) == delivery.events
            assert "other" not in split.routed
            topics.update({route: len(r) for route, r in split.routed.items()})
        else:
            normalised = normalise_all(json.loads(delivery.body), now)
            for index, record in enumerate(normalised):
                assert records.agent_usage(record, 0, offset, index)["deployment"] == \
                    delivery.deployment.name
            topics["agent_usage"] += len(normalised)
    assert set(topics) == {"function_execution", "storage_api_bandwidth", "log_stream_egress",
                           "current_storage_usage", "agent_usage"}


def test_expected_totals_equal_sums_computed_independently_from_the_bodies(
        generated: list[tuple[int, Delivery]]) -> None:
    independent = Independent(GRACE_MS)
    for now, delivery in generated:
        if delivery.endpoint == LOGS:
            independent.log_body(delivery.body, now)
        else:
            independent.agent_body(delivery.body, now)
    expected = _expected(generated).to_json()["deployments"]
    for totals in expected.values():
        del totals["first_event_ms"], totals["last_event_ms"]
    assert nonzero(expected) == nonzero(independent.totals)
    # Every kind of value is there to compare, with late and too-late events among them.
    overall = _expected(generated).overall()
    assert all(overall.metrics[m] > 0 for m in METRICS)
    assert all(overall.tables[t]["rows"] > 0 for t in TABLES)
    assert set(overall.dead_lettered) >= {"function_execution", "storage_api_bandwidth",
                                          "agent_usage"}


def test_expected_totals_agree_with_the_worker_s_billing_definitions(
        generated: list[tuple[int, Delivery]]) -> None:
    """The same bodies through the worker's own normalising and billing code (minus the
    events it would dead-letter as older than the grace) give the same metrics."""
    worker: dict[str, WindowDelta] = {}
    for offset, (now, delivery) in enumerate(generated):
        routed: dict[str, list[Any]]
        if delivery.endpoint == LOGS:
            routed = split_body(delivery.body, 0, offset).routed
        else:
            routed = {"agent_usage": [records.agent_usage(r, 0, offset, i) for i, r in
                                      enumerate(normalise_all(json.loads(delivery.body), now))]}
        counted = {route: [r for r in rs if r["timestamp"] >= now - GRACE_MS]
                   for route, rs in routed.items()}
        usage = message_usage(counted)
        total = worker.setdefault(delivery.deployment.name, WindowDelta())
        for (granularity, _), delta in usage.windows.items():
            if granularity == "month":
                total.add(delta)
    expected = _expected(generated)
    for name, totals in expected.deployments.items():
        assert {m: worker[name].metrics.get(m, 0) for m in METRICS} == dict(
            (m, totals.metrics[m]) for m in METRICS), name
        assert {model: {k: v for k, v in kinds.items() if v}
                for model, kinds in worker[name].tokens.items()} == \
            {model: {k: v for k, v in kinds.items() if v}
             for model, kinds in totals.tokens_by_model.items()}


def test_a_seed_fixes_the_bodies() -> None:
    def bodies(seed: int) -> list[bytes]:
        return [d.body for _, d in _generate(_options(seed=seed), 3_000)]

    assert bodies(5) == bodies(5)
    assert bodies(5) != bodies(6)


def test_the_traffic_looks_like_convex_and_its_agents(
        generated: list[tuple[int, Delivery]]) -> None:
    functions = [e for _, d in generated if d.endpoint == LOGS for e in events_of(d.body)
                 if e["topic"] == "function_execution"]
    types = Counter(e["function"]["type"] for e in functions)
    assert set(types) == {"query", "mutation", "action", "http_action"}
    assert types["query"] > types["mutation"] > types["action"] > types["http_action"]
    assert any(e["function"]["cached"] is True for e in functions)
    assert any(e["function"].get("component_path") == "agent" for e in functions)
    # Every OCC-failed attempt is followed, in its body, by the retry of the same request.
    by_request: dict[str, list[dict[str, Any]]] = {}
    for event in functions:
        if event["function"]["type"] == "mutation":
            by_request.setdefault(event["function"]["request_id"], []).append(event)
    conflicted = [attempts for attempts in by_request.values() if len(attempts) > 1]
    assert conflicted
    for attempts in conflicted:
        assert [a["function"]["mutation_retry_count"] for a in attempts] == \
            list(range(len(attempts)))
        assert [a["will_retry"] for a in attempts] == [True] * (len(attempts) - 1) + [False]
        assert attempts[0]["occ_info"]["table_name"]
        assert attempts[-1]["occ_info"] is None
    memories = {e["usage"]["action_memory_used_mb"] for e in functions
                if e["function"]["type"] == "action"}
    assert memories == {64, 512}
    # Both log-stream formats, and agent records over several models in both usage shapes.
    assert {d.deployment.jsonl for _, d in generated} == {True, False}
    agent = [r for _, d in generated if d.endpoint == AGENT for r in json.loads(d.body)]
    assert len({(r["provider"], r["model"]) for r in agent}) == 5
    assert {"promptTokens" in r["usage"] for r in agent} == {True, False}
    # Each deployment's first body opens with a storage snapshot and the egress of the
    # minute before; later snapshots come at the (test's 2 min) storage interval.
    first_bodies: dict[str, bytes] = {}
    for _, delivery in generated:
        if delivery.endpoint == LOGS:
            first_bodies.setdefault(delivery.deployment.name, delivery.body)
    for body in first_bodies.values():
        assert [e["topic"] for e in events_of(body)[:2]] == \
            ["current_storage_usage", "log_stream_egress"]
    snapshots = _expected(generated).overall().tables["storage_snapshots"]["rows"]
    assert snapshots > 2 * len(first_bodies)


def test_late_events_stay_on_their_side_of_the_grace(
        generated: list[tuple[int, Delivery]]) -> None:
    """Late events are a minute to half a grace old, too-late ones 1.5 to 3 graces: a
    delivery delayed by minutes cannot move one across."""
    ages = [now - e["timestamp"] for now, d in generated if d.endpoint == LOGS
            for e in events_of(d.body)]
    late = [a for a in ages if a > 5_000]
    assert late
    assert all(60_000 <= a <= GRACE_MS // 2 or 1.5 * GRACE_MS <= a <= 3 * GRACE_MS + 5_000
               for a in late)
    total = len(ages)
    too_late = sum(a > GRACE_MS for a in ages)
    assert 0.02 * total < too_late < 0.04 * total


def test_the_duplicate_rate_marks_bodies(generated: list[tuple[int, Delivery]]) -> None:
    marked = sum(d.duplicate for _, d in generated)
    assert 0.15 * len(generated) < marked < 0.25 * len(generated)


def test_a_body_holds_the_events_asked_for() -> None:
    model = TrafficModel(_options(late=0.0, too_late=0.0))
    assert [d.events for d in model.next_batch(START_MS, 1)][:1] == [1]
    assert model.next_batch(START_MS, 500)[0].events == 128
    with pytest.raises(ValueError, match="at least one event"):
        model.next_batch(START_MS, 0)


@pytest.mark.parametrize(("changes", "problem"), [
    ({"batch_size": 129}, "batch size must be 1 to 128"),
    ({"late": 0.7, "too_late": 0.5}, "late + too_late must not exceed 1"),
    ({"duplicates": 1.5}, "duplicates must be a fraction"),
    ({"deployments": 0}, "deployments must be at least 1"),
    ({"grace_ms": 30_000}, "METERSTREAM_LATE_GRACE) must be at least 60 s"),
])
def test_bad_options_are_refused(changes: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        _options(**changes)


def test_the_cli_knows_the_tables_of_the_expected_totals() -> None:
    assert cli.TABLES == TABLES


def test_expected_totals_survive_json(generated: list[tuple[int, Delivery]]) -> None:
    expected = _expected(generated)
    again = ExpectedTotals.from_json(json.loads(json.dumps(expected.to_json())))
    assert again.to_json() == expected.to_json()


def test_a_metric_is_compared_only_with_all_its_tables() -> None:
    totals = DeploymentTotals()
    totals.metrics.update(function_calls=5, database_io_bytes=7, tokens=9)
    only_functions = comparable(totals, ["function_executions"])
    assert "metrics.database_io_bytes" in only_functions
    assert "metrics.function_calls" not in only_functions  # needs file_downloads too
    assert "metrics.tokens" not in only_functions
    assert not any(key.startswith(("storage.", "tokens_by")) for key in only_functions)
    assert "metrics.function_calls" in comparable(totals, ["function_executions",
                                                           "file_downloads"])


def test_compare_reports_each_differing_value(generated: list[tuple[int, Delivery]]) -> None:
    expected = _expected(generated)
    observed = {name: DeploymentTotals.from_json(t.to_json())
                for name, t in expected.deployments.items()}
    compared, differences = compare(expected, observed, TABLES)
    assert compared > 0
    assert differences == []
    name = sorted(observed)[0]
    observed[name].tables["function_executions"]["network_egress_bytes"] += 3
    observed[name].metrics["data_egress_bytes"] += 3
    del observed[sorted(observed)[1]]
    _, differences = compare(expected, observed, ["function_executions"])
    first = [d for d in differences if d.deployment == name]
    assert [(d.value, (d.observed or 0) - (d.expected or 0)) for d in first] == [
        ("function_executions.network_egress_bytes", 3)]
    missing = [d for d in differences if d.deployment == sorted(expected.deployments)[1]]
    assert {d.value for d in missing} >= {"function_executions.rows",
                                          "metrics.database_io_bytes"}
    assert all(d.observed == 0 for d in missing)
