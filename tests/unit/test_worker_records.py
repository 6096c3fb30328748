"""What the worker forwards: record format version 2 with its header, version 1 where a
value does not fit its column, and the same messages and live usage whether a body took
the fast path or the slow one (processors/raw_processor.py)."""

from __future__ import annotations

import asyncio
import copy
import itertools
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from meterstream.core import events, record_format
from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.topics import AGENT_ORIGIN, WEBHOOK_ORIGIN
from meterstream.core.windows import DAY_MS
from meterstream.loadgen.traffic import AGENT, LOGS, TrafficModel, TrafficOptions
from processors import app, metrics, raw_processor
from processors.alert_log import AlertLog
from processors.dedup import Deduplicator
from processors.due_alerts import RunawayDetector
from processors.fast_split import fast_columns, record_columns
from processors.ordered_store import MemoryPartitions
from processors.raw_processor import ARROW_HEADERS, RawProcessor
from processors.split import split_body
from processors.state import UsageState
from tests.support import convex_examples
from tests.support.records import rows_of

NOW = 1_795_000_000_000
EXAMPLES = convex_examples()["events"]


class Alerts(AlertLog):
    def __init__(self) -> None:
        super().__init__(KafkaConnection(""), "alerts", self._store, 100)

    async def _store(self, key: bytes, value: bytes) -> Any:
        raise AssertionError("no alert expected")

    async def _read_ids(self, partitions: set[int]) -> dict[int, set[str]]:
        return {p: set() for p in partitions}


class Registry:
    def get(self, name: str) -> Any:
        return None


class Worker:
    def __init__(self) -> None:
        self.table: dict[str, Any] = {}
        self.sent: list[tuple[str, bytes, bytes, Any]] = []
        state = UsageState(self.table, DAY_MS)
        self.processor = RawProcessor(
            Deduplicator(MemoryPartitions(), 7 * DAY_MS), state, Alerts(),
            RunawayDetector(state, 10, 10**9),
            Registry(), self._send, DAY_MS, lambda: {0}, None)  # type: ignore[arg-type]

    async def _send(self, route: str, key: bytes, value: bytes,
                    headers: list[tuple[str, bytes]] | None = None) -> Any:
        self.sent.append((route, key, value, headers))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def process(self, key: bytes, body: bytes, offset: int, received_at: int = NOW,
                origin: bytes | None = WEBHOOK_ORIGIN) -> None:
        asyncio.run(self.processor.process(key, body, 0, offset, received_at, received_at,
                                           origin))

    def rows(self) -> list[tuple[str, bytes, Any, bool]]:
        """What was sent, read back: (route, key, rows or letter, version 2)."""
        return [(route, key, orjson.loads(value) if route == "dead_letter"
                 else rows_of(route, value, headers), record_format.is_arrow(headers))
                for route, key, value, headers in self.sent]


def body_of(*items: dict[str, Any]) -> tuple[bytes, bytes]:
    out = []
    for item in items:
        item = copy.deepcopy(item)
        item["timestamp"] = NOW
        item["convex"]["deployment_name"] = "happy-otter-123"
        out.append(item)
    return b"happy-otter-123", orjson.dumps(out)


def test_the_records_go_as_arrow_with_the_format_header() -> None:
    key, body = body_of(*EXAMPLES)
    assert fast_columns(body, 0, 1) is not None
    worker = Worker()
    worker.process(key, body, 1)
    split = split_body(body, 0, 1)
    assert {route for route, *_ in worker.sent} == set(split.routed)
    for route, _, value, headers in worker.sent:
        assert headers == ARROW_HEADERS == [("format", b"arrow-1")]
        event_type = events.BY_TOPIC[route]
        batch = record_format.decode(event_type, value)
        expected = record_columns(event_type, split.routed[route])
        assert batch.num_rows == len(split.routed[route])
        got = rows_of(route, value, headers)
        assert [list(row.values()) for row in got] == [
            list(values) for values in zip(*expected.values(), strict=True)]


def test_a_value_beyond_its_column_goes_as_json_and_the_rest_as_arrow() -> None:
    """A UInt32 column's value over 2**32-1 is a valid counter but cannot be stored: the
    fast path gives the body up, the slow path sends that route as version 1 (the sink
    dead-letters the record) and the other routes as version 2."""
    big = copy.deepcopy(EXAMPLES[1])
    big["function"]["mutation_queue_length"] = 1 << 32
    key, body = body_of(big, EXAMPLES[0], EXAMPLES[4])
    before = metrics.JSON_RECORDS._value.get()
    worker = Worker()
    worker.process(key, body, 1)
    sent = {route: (rows, arrow) for route, _, rows, arrow in worker.rows()}
    rows, arrow = sent["function_execution"]
    assert not arrow
    assert [row["mutation_queue_length"] for row in rows] == [1 << 32, 0]
    assert sent["storage_api_bandwidth"][1]
    assert metrics.JSON_RECORDS._value.get() == before + 2
    assert worker.table  # the usage counted, as it always was


def test_an_encode_error_in_any_route_is_version_1_for_that_route_only() -> None:
    agent_step = {"topic": "agent_usage", "id": "s1", "deployment": "d", "timestamp": NOW,
                  "total_tokens": 5, "provider_metadata": {"big": 1 << 63}}
    forward = raw_processor.forward_of("agent_usage", [records_of_step(agent_step)])
    assert forward.headers == ARROW_HEADERS
    assert rows_of("agent_usage", forward.value, forward.headers)[0]["provider_metadata"] == \
        '{"big":9223372036854775808}'
    bad = records_of_step(agent_step)
    bad["model"] = 5  # not a string (the normaliser never makes one; the mechanism)
    forward = raw_processor.forward_of("agent_usage", [bad])
    assert forward.headers is None
    # The version 1 record is the record as made: its metadata an object, not JSON text.
    assert orjson.loads(forward.value)[0]["provider_metadata"] == {"big": 1 << 63}


def records_of_step(step: dict[str, Any]) -> dict[str, Any]:
    record = split_body(orjson.dumps([step]), 0, 0).routed["agent_usage"][0]
    return dict(record)


def loadgen_deliveries() -> list[tuple[int, Any]]:
    options = TrafficOptions(deployments=4, users=3, seed=11, prefix="rec", duplicates=0.1,
                             late=0.05, too_late=0.05, grace_ms=DAY_MS,
                             storage_interval_ms=60_000, egress_interval_ms=20_000)
    model = TrafficModel(options, secret=lambda: "secret-0000-0123456789")
    out = []
    for step in range(120):
        now = NOW + step * 1_500
        out += [(now, delivery) for delivery in model.next_batch(now, 10_000)]
    return out


def test_fast_and_slow_paths_forward_and_count_the_same(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    deliveries = loadgen_deliveries()
    assert {d.endpoint for _, d in deliveries} == {LOGS, AGENT}
    # Odd bodies too: a stray, a late event, an invalid one, a wrong door.
    key, plain = body_of(EXAMPLES[0], EXAMPLES[3])
    stray = orjson.loads(plain)
    stray[1]["convex"]["deployment_name"] = "another"
    extra = [(key, plain, NOW - 2 * DAY_MS, WEBHOOK_ORIGIN),
             (key, orjson.dumps(stray), NOW, WEBHOOK_ORIGIN),
             (key, plain, NOW, AGENT_ORIGIN),
             (key, plain.replace(b'"status":"success"', b'"status":7'), NOW, None)]

    def run(worker: Worker) -> None:
        offsets = itertools.count()
        for now, delivery in deliveries:
            origin: bytes | None = AGENT_ORIGIN if delivery.endpoint == AGENT else WEBHOOK_ORIGIN
            worker.process(delivery.deployment.name.encode(), delivery.body, next(offsets),
                           now, origin)
        for key, body, received_at, origin in extra:
            worker.process(key, body, next(offsets), received_at, origin)

    taken = []

    def spy(body: bytes, partition: int, offset: int) -> Any:
        columns = fast_columns(body, partition, offset)
        taken.append(columns is not None)
        return columns

    monkeypatch.setattr(raw_processor, "fast_columns", spy)
    fast = Worker()
    run(fast)
    assert sum(taken) > 100  # the log-stream bodies, all but the odd ones
    monkeypatch.setattr(raw_processor, "fast_columns", lambda *_: None)
    slow = Worker()
    run(slow)
    assert fast.rows() == slow.rows()
    assert fast.table == slow.table
    assert sum(arrow for *_, arrow in fast.rows()) > 100


def test_the_producer_sends_the_headers() -> None:
    calls = []

    class Producer:
        async def send(self, topic: str, key: bytes, value: bytes, **kwargs: Any) -> str:
            calls.append((topic, key, value, kwargs["headers"]))
            return "delivery"

    fake = SimpleNamespace(producer=Producer())
    topic: Any = SimpleNamespace(get_topic_name=lambda: "ns.function_execution")
    send: Any = app.producer_send(fake, {"function_execution": topic})  # type: ignore[arg-type]
    assert asyncio.run(send("function_execution", b"k", b"v", ARROW_HEADERS)) == "delivery"
    assert asyncio.run(send("function_execution", b"k", b"w")) == "delivery"
    assert calls == [("ns.function_execution", b"k", b"v", [("format", b"arrow-1")]),
                     ("ns.function_execution", b"k", b"w", None)]
