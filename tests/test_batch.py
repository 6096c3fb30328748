from __future__ import annotations

import orjson
import pytest

from ingest.batch import BatchError, inspect_batch, parse_events
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
