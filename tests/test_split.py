from __future__ import annotations

import copy

import orjson
import pytest

from processors.records import FUNCTION_EXECUTION_FIELDS, InvalidEvent, function_execution
from processors.split import split_body
from tests.support import convex_examples


def _functions() -> list[dict]:
    return [e for e in convex_examples()["events"] if e["topic"] == "function_execution"]


def test_a_record_has_every_field_in_order() -> None:
    record = function_execution(_functions()[0], 3, 17, 0)
    assert tuple(record) == FUNCTION_EXECUTION_FIELDS
    assert record["deployment"] == "happy-otter-123"
    assert (record["raw_partition"], record["raw_offset"], record["event_index"]) == (3, 17, 0)


def test_null_counters_become_zero_and_facts_are_kept() -> None:
    mutation = _functions()[1]
    assert mutation["usage"]["function_returns_bytes"] is None
    record = function_execution(mutation, 0, 0, 1)
    assert record["function_returns_bytes"] == 0
    assert record["action_memory_used_mb"] == 0
    assert record["database_io_write_bytes"] == 1792
    assert record["component_path"] == "agent"
    assert record["occ_table_name"] == "threads"
    assert record["mutation_queue_length"] == 2
    assert record["will_retry"] is True


def test_an_event_from_an_older_backend_without_usage_counts_zero() -> None:
    event = copy.deepcopy(_functions()[2])
    del event["usage"]
    del event["user_execution_time_ms"]
    record = function_execution(event, 0, 0, 0)
    assert record["network_egress_bytes"] == 0
    assert record["user_execution_time_ms"] == 0
    assert record["scheduler_job_id"] == "kg2b7hzq4d1n8c3x5v9m0w6r2t4y8p1s"


@pytest.mark.parametrize(("change", "reason"), [
    (lambda e: e["usage"].update(network_egress_bytes=-1), "usage.network_egress_bytes"),
    (lambda e: e["usage"].update(memory_used_mb=True), "usage.memory_used_mb"),
    (lambda e: e.update(usage=[1, 2]), "usage must be an object"),
    (lambda e: e.update(timestamp="yesterday"), "timestamp"),
    (lambda e: e["function"].update(type="cron"), "function.type"),
    (lambda e: e.pop("function"), "function must be an object"),
    (lambda e: e.pop("convex"), "convex.deployment_name"),
])
def test_events_that_cannot_be_counted_say_why(change, reason: str) -> None:
    event = copy.deepcopy(_functions()[0])
    change(event)
    with pytest.raises(InvalidEvent, match=reason):
        function_execution(event, 0, 0, 0)


def test_a_bad_event_costs_only_itself() -> None:
    events = convex_examples()["events"]
    broken = copy.deepcopy(_functions()[0])
    broken["execution_time_ms"] = 1.5
    body = orjson.dumps([*events, "not an event", broken])
    split = split_body(body, partition=2, offset=40)
    assert [r["function_type"] for r in split.function_executions] == ["query", "mutation",
                                                                       "action"]
    assert [r["event_index"] for r in split.function_executions] == [0, 1, 2]
    assert split.other == 2
    assert [(d["event_index"], d["reason"]) for d in split.dead_letters] == [
        (5, "event is not a JSON object"),
        (6, "execution_time_ms must be a non-negative integer, got 1.5"),
    ]
    assert split.dead_letters[1]["event"] == broken


def test_a_body_that_is_not_json_is_one_dead_letter() -> None:
    split = split_body(b"[{", partition=0, offset=9)
    assert split.function_executions == []
    assert len(split.dead_letters) == 1
    assert split.dead_letters[0]["raw_offset"] == 9
