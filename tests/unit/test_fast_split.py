"""The worker's fast path (processors/fast_split.py, core/usage.py columns_usage) against
the slow path (processors/split.py split_body, message_usage): for every body the fast
path takes, the same rows and usage and no dead letter; every other body it leaves to
the slow path."""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterstream.core import events
from meterstream.core.usage import COLUMNAR_ROUTES, columns_usage, message_usage
from meterstream.loadgen.traffic import LOGS, TrafficModel, TrafficOptions
from processors.fast_split import fast_columns, record_columns
from processors.split import split_body
from tests.support import convex_examples

EXAMPLES = convex_examples()["events"]


def assert_same(body: bytes, *, taken: bool | None = None) -> None:
    """The fast path's columns and usage equal the slow path's, where it takes the body."""
    fast = fast_columns(body, 3, 41)
    if taken is not None:
        assert (fast is not None) == taken
    if fast is None:
        return
    slow = split_body(body, 3, 41)
    assert slow.dead_letters == []
    assert set(fast) == set(slow.routed) <= COLUMNAR_ROUTES
    for route, records in slow.routed.items():
        assert fast[route] == record_columns(events.BY_TOPIC[route], records)
        assert list(fast[route]) == [name for name, _ in events.BY_TOPIC[route].columns]
    try:
        expected = message_usage(slow.routed)
    except ValueError as exc:  # a time beyond the calendar: the worker's strays, never here
        with pytest.raises(type(exc)):
            columns_usage(fast)
        return
    assert columns_usage(fast) == expected


def test_the_load_generators_bodies_take_the_fast_path_with_the_slow_paths_results() -> None:
    options = TrafficOptions(deployments=5, users=4, seed=3, prefix="fast", duplicates=0.1,
                             late=0.05, too_late=0.03, grace_ms=86_400_000,
                             storage_interval_ms=60_000, egress_interval_ms=20_000)
    model = TrafficModel(options, secret=lambda: "secret-0000-0123456789")
    taken = 0
    for step in itertools.count():
        if step == 150:
            break
        for delivery in model.next_batch(1_780_000_000_000 + step * 1_500, 5_000):
            if delivery.endpoint == LOGS:
                assert_same(delivery.body, taken=True)
                taken += 1
    assert taken > 50


def event(topic_index: int = 0, **changes: Any) -> dict[str, Any]:
    base = copy.deepcopy(EXAMPLES[topic_index])
    base.update(changes)
    return base


@pytest.mark.parametrize(("body", "why"), [
    (b'\n' + orjson.dumps([event()]).replace(b'"usage"', b'"usage"  ') + b'\n ', "spacing"),
    (orjson.dumps([event(), event(1), event(2), event(3), event(4)]), "every type"),
    (orjson.dumps([event(usage=None, occ_info=None, error_message=None)]), "nulls"),
    (orjson.dumps([{k: v for k, v in event().items() if k not in ("usage", "status")}]),
     "absent fields"),
    (orjson.dumps([event(3, total_system_table_document_size_bytes={"_x": None})]),
     "a null in the system tables"),
    (orjson.dumps([event(timestamp=(1 << 63) - 1)]), "the largest int64 time"),
    (b'[]', "no event"),
    (orjson.dumps(event()), "one JSONL line"),
    (orjson.dumps(event()) + b"\r\n\n  \n" + orjson.dumps(event(4)) + b"\n", "JSONL"),
    (orjson.dumps([event(function={**EXAMPLES[0]["function"], "path": "caf\u00e9:list"})]),
     "not ASCII"),
    (orjson.dumps([event()])[:-1].replace(b'"topic":"function_execution"',
                                          b'"timestamp":1,"topic":"function_execution"', 1)
     + b"]", "a duplicate key: the last counts"),
])
def test_plain_bodies_take_the_fast_path(body: bytes, why: str) -> None:
    assert_same(body, taken=True)


@pytest.mark.parametrize(("body", "why"), [
    (b"", "empty"),
    (b" \n ", "blank"),
    (orjson.dumps(event()) + b"\n" + orjson.dumps([event()]), "JSONL with an array line"),
    (orjson.dumps(event()) + b"\n\x0b" + orjson.dumps(event()), "JSONL with a stray byte"),
    (b"\xef\xbb\xbf" + orjson.dumps([event()]), "a BOM"),
    (orjson.dumps([event(execution_time_ms=1.0)]), "a float counter"),
    (orjson.dumps([event(execution_time_ms=True)]), "a bool counter"),
    (orjson.dumps([event(execution_time_ms=-1)]), "a negative counter"),
    (orjson.dumps([event(execution_time_ms=1 << 63)]), "a counter beyond int64"),
    (orjson.dumps([event()]).replace(b'"execution_time_ms":294', b'"execution_time_ms":'
                                     + str(1 << 64).encode()), "a counter beyond u64"),
    (orjson.dumps([event()]).replace(b'"status"', b'"unread":1e400,"status"'),
     "an overflowing number in a field nobody reads"),
    (orjson.dumps([event()]).replace(b'"status"', b'"unread":"\xff","status"'),
     "invalid UTF-8 in a field nobody reads"),
    (orjson.dumps([event()]).replace(b'"status"', b'"unread":"\\ud800","status"'),
     "a lone surrogate"),
    (orjson.dumps([event(status=3)]), "a number for a text"),
    (orjson.dumps([event(function={**EXAMPLES[0]["function"], "type": "cron"})]),
     "an unknown function type"),
    (orjson.dumps([event(function={**EXAMPLES[0]["function"], "path": ""})]), "an empty path"),
    (orjson.dumps([event(convex={"deployment_name": ""})]), "an empty deployment"),
    (orjson.dumps([event(timestamp=0)]), "a zero time"),
    (orjson.dumps([event(topic="console")]), "a topic kept whole"),
    (orjson.dumps([event(topic="agent_usage")]), "agent usage"),
    (orjson.dumps([{k: v for k, v in event().items() if k != "topic"}]), "no topic"),
    (orjson.dumps([event()])[:-2] + b',"topic":"console"}]', "a duplicate topic"),
    (orjson.dumps([event(), 5]), "not an object"),
    (orjson.dumps([event(usage=[])]), "usage not an object"),
    (orjson.dumps([event(function={**EXAMPLES[0]["function"], "cached": 1})]),
     "a number for a flag"),
    (b'[' + orjson.dumps(event()) + b',]', "malformed"),
])
def test_everything_else_takes_the_slow_path(body: bytes, why: str) -> None:
    assert fast_columns(body, 0, 0) is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=3),
    max_leaves=6)
FIELDS = st.sampled_from([
    "timestamp", "topic", "status", "error_message", "execution_time_ms", "will_retry",
    "occ_info", "scheduler_info", "usage", "function", "convex", "run_reason", "unknown",
    "egress_bytes", "storage_id", "total_document_size_bytes",
    "total_system_table_document_size_bytes",
])
NESTED = st.sampled_from([("function", "cached"), ("function", "path"), ("function", "type"),
                          ("function", "mutation_queue_length"), ("usage", "memory_used_mb"),
                          ("usage", "database_read_bytes"), ("convex", "deployment_name"),
                          ("convex", "deployment_region"), ("occ_info", "table_name"),
                          ("scheduler_info", "job_id"), ("function", "unknown")])


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    picked = draw(st.lists(st.integers(min_value=0, max_value=len(EXAMPLES) - 1),
                           min_size=1, max_size=6))
    out: list[Any] = []
    for index in picked:
        item = copy.deepcopy(EXAMPLES[index])
        for _ in range(draw(st.integers(min_value=0, max_value=2))):
            if draw(st.booleans()):
                item[draw(FIELDS)] = draw(JSON)
            else:
                outer, inner = draw(NESTED)
                if isinstance(item.get(outer), dict):
                    item[outer][inner] = draw(JSON)
        if draw(st.booleans()) and (dropped := draw(FIELDS)) in item:
            del item[dropped]
        out.append(item)
    # json, not orjson: integers beyond 64 bits too, and escaped or raw non-ASCII text.
    text = json.dumps(out, ensure_ascii=draw(st.booleans()))
    if draw(st.booleans()):
        text = "\n".join(json.dumps(item) for item in out)  # JSONL
    return text.encode(errors="surrogatepass")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies())
def test_any_body_gets_the_slow_paths_results_or_goes_the_slow_way(body: bytes) -> None:
    assert_same(body)


def test_columns_usage_takes_only_the_columnar_routes() -> None:
    with pytest.raises(ValueError, match="agent_usage"):
        columns_usage({"agent_usage": {"timestamp": [1]}})
