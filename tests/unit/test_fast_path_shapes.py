"""Shapes of body the fast path's column building takes apart in C loops
(processors/fast_split.py: astuple and a transpose, a stable sort by route, nulls found
by sum and join): events of several routes interleaved, over minutes in time order and
out of it, nulls in some rows of a column and not others. Each gets the slow path's rows
and usage, and Arrow bytes that read back as those rows."""

from __future__ import annotations

import copy
import gc
import random
from typing import Any

import orjson
import pyarrow as pa
import pytest

from meterstream.core import events, record_format
from meterstream.core.record_format import ARROW_TYPES
from meterstream.core.usage import columns_usage, message_usage
from processors import fast_split
from processors.fast_split import fast_columns, record_columns
from processors.split import split_body
from tests.support import convex_examples

EXAMPLES = convex_examples()["events"]
MINUTE = 60_000
START = 1_780_000_020_000


def body_of(times: list[int], kinds: list[int], change: Any = None) -> bytes:
    """Events of the reference examples EXAMPLES[kind] at the given times; `change(row,
    event)` edits one in place."""
    out = []
    for row, (time, kind) in enumerate(zip(times, kinds, strict=True)):
        event = copy.deepcopy(EXAMPLES[kind])
        event["timestamp"] = time
        if change is not None:
            change(row, event)
        out.append(event)
    return orjson.dumps(out)


def assert_as_the_slow_path(body: bytes) -> dict[str, Any]:
    fast = fast_columns(body, 2, 17)
    assert fast is not None
    slow = split_body(body, 2, 17)
    assert slow.dead_letters == []
    assert list(fast) == list(slow.routed)  # the routes in order of first appearance
    for route, records in slow.routed.items():
        event_type = events.BY_TOPIC[route]
        columns = fast[route]
        assert columns == record_columns(event_type, records)
        value = record_format.encode(event_type, [columns[name] for name, _ in
                                                  event_type.columns])
        expected = pa.RecordBatch.from_arrays(
            [pa.array(columns[name], type=ARROW_TYPES[type_])
             for name, type_ in event_type.columns], schema=record_format.schema(event_type))
        assert record_format.decode(event_type, value).equals(expected)
    assert columns_usage(fast) == message_usage(slow.routed)
    return fast


ROUTES = [0, 1, 2, 3, 4]  # the examples: query, mutation, action, storage, bandwidth


@pytest.mark.parametrize(("times", "why"), [
    ([START + row for row in range(40)], "one minute"),
    ([START + row * 7_000 for row in range(40)], "several minutes in time order"),
    ([START + (row * 37 % 40) * 7_000 for row in range(40)], "several minutes out of order"),
    ([START + MINUTE * (row % 2) for row in range(40)], "two minutes taking turns"),
])
def test_interleaved_routes_over_minutes_count_as_the_slow_path_counts(
        times: list[int], why: str) -> None:
    kinds = [ROUTES[row * 3 % len(ROUTES)] for row in range(len(times))]
    fast = assert_as_the_slow_path(body_of(times, kinds))
    assert len(fast) == len({events.FUNCTION_EXECUTION.route, "current_storage_usage",
                             "storage_api_bandwidth"})
    assert fast[events.FUNCTION_EXECUTION.route]["event_index"] == [
        row for row, kind in enumerate(kinds) if kind in (0, 1, 2)]


def test_nulls_in_some_rows_of_a_column_are_the_slow_paths_defaults() -> None:
    rng = random.Random(5)

    def change(row: int, event: dict[str, Any]) -> None:
        if event["topic"] != "function_execution":
            return
        for name in ("status", "error_message", "run_reason", "execution_time_ms",
                     "will_retry", "usage", "occ_info", "scheduler_info"):
            if rng.random() < 0.3:
                event[name] = None
        if rng.random() < 0.3:
            event["occ_info"] = {"table_name": f"t{row}", "retry_count": None}
        if rng.random() < 0.3:
            event["scheduler_info"] = {"job_id": f"j{row}"}
        if isinstance(event.get("usage"), dict) and rng.random() < 0.5:
            event["usage"]["database_read_bytes"] = None
        event["function"]["cached"] = rng.choice([None, True, False])
        event["function"]["component_path"] = rng.choice([None, "", "agent", "caf\u00e9"])

    times = [START + row * 3_000 for row in range(60)]
    kinds = [row % 3 for row in range(60)]
    fast = assert_as_the_slow_path(body_of(times, kinds, change))
    columns = fast[events.FUNCTION_EXECUTION.route]
    # the body really mixes nulls and values in one column
    assert "" in columns["status"]
    assert "success" in columns["status"]
    assert "" in columns["occ_table_name"]
    assert any(name.startswith("t") for name in columns["occ_table_name"])
    assert 0 in columns["database_read_bytes"]
    assert any(columns["database_read_bytes"])


def test_the_decoded_events_are_not_tracked_by_the_collector() -> None:
    """Safe only because they cannot be in a reference cycle (fast_split._STRICT)."""
    decoded = fast_split._DECODER.decode(orjson.dumps(EXAMPLES[:5]))
    assert decoded
    for event in decoded:
        assert not gc.is_tracked(event)
        assert not gc.is_tracked(event.convex)  # type: ignore[attr-defined]
