from __future__ import annotations

import copy

import orjson
import pytest

from meterstream.core.records import FUNCTION_EXECUTION_FIELDS, InvalidEvent, function_execution
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
    functions = split.of("function_execution")
    assert [r["function_type"] for r in functions] == ["query", "mutation", "action"]
    assert [r["event_index"] for r in functions] == [0, 1, 2]
    assert [r["event_index"] for r in split.of("current_storage_usage")] == [3]
    assert [r["event_index"] for r in split.of("storage_api_bandwidth")] == [4]
    assert [(d["event_index"], d["reason"]) for d in split.dead_letters] == [
        (5, "event is not a JSON object"),
        (6, "execution_time_ms must be a non-negative integer, got 1.5"),
    ]
    assert split.dead_letters[1]["event"] == broken


def test_a_body_that_is_not_json_is_one_dead_letter() -> None:
    split = split_body(b"[{", partition=0, offset=9)
    assert split.routed == {}
    assert len(split.dead_letters) == 1
    assert split.dead_letters[0]["raw_offset"] == 9


def test_every_event_type_has_its_route() -> None:
    convex = {"deployment_name": "happy-otter-123", "deployment_region": "aws-eu-west-1"}
    events = [
        *convex_examples()["events"],
        {"timestamp": 1755820860000, "topic": "log_stream_egress", "egress_bytes": 52311,
         "convex": convex},
        {"timestamp": 1755820860001, "topic": "console", "log_level": "LOG",
         "message": "hello", "convex": convex},
        {"topic": "agent_usage", "id": "step-1", "timestamp": 1755820860002,
         "deployment": "happy-otter-123", "user_id": "u1", "model": "gpt-4o-mini",
         "provider": "openai.chat", "input_tokens": 10, "cached_input_tokens": 4,
         "non_cached_input_tokens": 6, "output_tokens": 3, "total_tokens": 13},
    ]
    split = split_body(orjson.dumps(events), partition=1, offset=7)
    assert {route: len(records) for route, records in split.routed.items()} == {
        "function_execution": 3, "current_storage_usage": 1, "storage_api_bandwidth": 1,
        "log_stream_egress": 1, "other": 1, "agent_usage": 1}
    (storage,) = split.of("current_storage_usage")
    assert storage["total_backup_storage_bytes"] == 209715200
    assert storage["system_table_document_size_bytes"] == {"_scheduled_functions": 2097152,
                                                          "_storage": 1048576}
    assert split.of("storage_api_bandwidth")[0]["egress_bytes"] == 1048576
    assert split.of("log_stream_egress")[0]["egress_bytes"] == 52311
    assert split.of("other")[0]["event"]["message"] == "hello"
    usage = split.of("agent_usage")[0]
    assert (usage["id"], usage["cached_input_tokens"], usage["reasoning_tokens"]) == (
        "step-1", 4, 0)
    assert split.dead_letters == []


@pytest.mark.parametrize(("event", "reason"), [
    ({"topic": "current_storage_usage", "timestamp": 1, "total_file_storage_bytes": -5},
     "total_file_storage_bytes"),
    ({"topic": "current_storage_usage", "timestamp": 1,
      "total_system_table_document_size_bytes": [1]}, "total_system_table"),
    ({"topic": "storage_api_bandwidth", "timestamp": 1, "egress_bytes": "1MB"}, "egress_bytes"),
    ({"topic": "log_stream_egress", "timestamp": None, "egress_bytes": 3}, "timestamp"),
    ({"topic": "agent_usage", "timestamp": 1, "deployment": "d"}, "id must be"),
])
def test_bad_events_of_every_type_become_dead_letters(event: dict, reason: str) -> None:
    event.setdefault("convex", {"deployment_name": "happy-otter-123"})
    split = split_body(orjson.dumps([event]), partition=0, offset=0)
    assert split.routed == {}
    (letter,) = split.dead_letters
    assert reason in letter["reason"]
