"""meterstream/core/lag.py when the broker does not answer (the real broker's cases are in
tests/integration/test_consumer_lag.py)."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Gauge

from meterstream.core.config import KafkaSecurity
from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.lag import LOOK_FAILURES, LagMeter
from tests.support import free_port


def test_a_failed_look_is_counted_and_leaves_the_gauge_as_it_was() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("test_lag", "lag", ["topic", "partition"], registry=registry)
    gauge.labels("t", "0").set(7)
    # Nothing listens on a fresh free port: the clients cannot bootstrap.
    meter = LagMeter(KafkaConnection(f"127.0.0.1:{free_port()}", KafkaSecurity()), "g",
                     gauge, lambda: [("t", 0)])
    before = LOOK_FAILURES._value.get()

    assert asyncio.run(meter.look_or_log()) is False

    assert LOOK_FAILURES._value.get() == before + 1
    assert registry.get_sample_value("test_lag", {"topic": "t", "partition": "0"}) == 7
    assert meter._consumer is None
    assert meter._admin is None


def test_owning_nothing_asks_the_broker_nothing() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("test_lag_none", "lag", ["topic", "partition"], registry=registry)
    meter = LagMeter(KafkaConnection(f"127.0.0.1:{free_port()}", KafkaSecurity()), "g",
                     gauge, lambda: [])

    assert asyncio.run(meter.look_or_log()) is True
    assert meter._consumer is None
    assert meter._admin is None


def test_a_cancel_lost_inside_a_look_still_stops_the_meter() -> None:
    """CPython 3.11's wait_for returns the look's result instead of raising the cancel when
    the look finishes as the cancel arrives; the meter must stop all the same (a sink's
    SIGTERM once waited 50 minutes for it)."""
    registry = CollectorRegistry()
    gauge = Gauge("test_lag_cancel", "lag", ["topic", "partition"], registry=registry)
    meter = LagMeter(KafkaConnection(f"127.0.0.1:{free_port()}", KafkaSecurity()), "g",
                     gauge, lambda: [("t", 0)])
    looking, go = asyncio.Event(), asyncio.Event()
    looks = 0

    async def look() -> dict[tuple[str, int], int]:
        nonlocal looks
        looks += 1
        looking.set()
        await go.wait()
        return {}

    meter.look = look  # type: ignore[method-assign]

    async def scenario() -> None:
        task = asyncio.create_task(meter.run(0.01))
        await looking.wait()
        go.set()  # the look finishes in the same turn of the loop as the cancel comes
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=5)
        assert done == {task}, f"still looking after {looks} looks"
        assert task.cancelled()

    asyncio.run(scenario())
    assert looks == 1
