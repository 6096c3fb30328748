from __future__ import annotations

import orjson
import pytest

from meterstream.core.log_stream import (
    BatchError,
    check_batch,
    claimed_deployment,
    inspect_batch,
    parse_events,
    topic_label,
)
from tests.support import convex_examples


def test_json_array_and_jsonl_give_the_same_events() -> None:
    events = convex_examples()["events"]
    array = orjson.dumps(events)
    jsonl = b"\n".join(orjson.dumps(e) for e in events)
    assert parse_events(array) == parse_events(jsonl) == events


def test_inspect_counts_events_per_topic_and_finds_the_deployment() -> None:
    info = inspect_batch(orjson.dumps(convex_examples()["events"]))
    assert info.events == 5
    assert info.deployments == {"happy-otter-123"}
    assert info.topics == {"function_execution": 3, "current_storage_usage": 1,
                           "storage_api_bandwidth": 1}


def test_the_verification_body_of_the_reference() -> None:
    body = convex_examples()["signature_test_vector"]["body"].encode()
    info = inspect_batch(body)
    assert (info.events, info.topics) == (1, {"verification": 1})


def test_several_deployments_are_reported() -> None:
    events = [{"topic": "console", "convex": {"deployment_name": name}} for name in "ab"]
    assert inspect_batch(orjson.dumps(events)).deployments == {"a", "b"}


@pytest.mark.parametrize(("body", "where"), [
    (b'[{"topic": 1,]', "line 1 column 14"),
    (b'{"topic": "console"}\n{"topic": ', "line 2 column 10"),
])
def test_malformed_bodies_say_where(body: bytes, where: str) -> None:
    with pytest.raises(BatchError) as error:
        parse_events(body)
    assert error.value.where == where


@pytest.mark.parametrize("body", [b"", b"  \n", b"\n\n"])
def test_bodies_that_are_no_batch(body: bytes) -> None:
    with pytest.raises(BatchError):
        parse_events(body)


def test_one_object_is_a_one_line_jsonl_batch() -> None:
    assert parse_events(b'{"topic": "verification"}') == [{"topic": "verification"}]


# --- what the receiver checks before and after the signature ------------------------------

def test_the_claimed_deployment_is_the_first_deployment_name_key() -> None:
    body = orjson.dumps(convex_examples()["events"])
    assert claimed_deployment(body) == "happy-otter-123"
    assert claimed_deployment(b'{"convex": {"deployment_name" :\n "a-1.b_c"}}') == "a-1.b_c"
    assert claimed_deployment(b'{"deployment_name": "first"}{"deployment_name": "2nd"}') == \
        "first"


@pytest.mark.parametrize("body", [
    b"", b"[1,1,1]", b'{"convex": {}}', b'{"deployment_name": 5}',
    b'{"deployment_name": "has\\"quote"}', b'{"deployment_name": ""}',
    b'{"deployment_name": "' + b"a" * 129 + b'"}',
    # A string value holding the key name escaped is not the key.
    b'{"message": "\\"deployment_name\\": \\"evil\\""}',
])
def test_no_deployment_is_claimed_without_a_plain_deployment_name_key(body: bytes) -> None:
    assert claimed_deployment(body) is None


def test_check_batch_counts_known_topics_and_folds_the_rest_into_other() -> None:
    events = [{"topic": t, "convex": {"deployment_name": "d"}}
              for t in ("console", "console", "x" * 2000, "made_up", None)]
    info = check_batch(orjson.dumps(events), "d", 10)
    assert (info.events, info.topics) == (5, {"console": 2, "other": 3})
    assert topic_label("function_execution") == "function_execution"
    assert topic_label(["console"]) == "other"


@pytest.mark.parametrize(("events", "reason", "status"), [
    ([{"topic": "console", "convex": {"deployment_name": "d"}},
      {"topic": "console", "convex": {"deployment_name": "e"}}], "several_deployments", 403),
    ([{"topic": "agent_usage", "convex": {"deployment_name": "d"}}], "wrong_door", 400),
    ([{"topic": "console", "convex": {"deployment_name": "d"}}] * 4, "too_many_records", 413),
])
def test_check_batch_refuses_what_is_not_one_deployments_log_events(
        events: list, reason: str, status: int) -> None:
    with pytest.raises(BatchError) as error:
        check_batch(orjson.dumps(events), "d", 3)
    assert (error.value.reason, error.value.status) == (reason, status)


def test_jsonl_events_are_counted_before_they_are_parsed() -> None:
    # Four lines, the last not even JSON: refused for the count, not for the syntax.
    body = b'{"a": 1}\n{"a": 1}\n{"a": 1}\n{not json'
    with pytest.raises(BatchError) as error:
        parse_events(body, 3)
    assert error.value.reason == "too_many_records"


def test_events_naming_no_deployment_pass_for_the_worker_to_dead_letter() -> None:
    events = [{"topic": "console", "convex": {"deployment_name": "d"}}, {"topic": "console"},
              7, {"convex": {"deployment_name": 5}}]
    assert check_batch(orjson.dumps(events), "d", 10).events == 4
