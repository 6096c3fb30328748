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
