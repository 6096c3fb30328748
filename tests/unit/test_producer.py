"""The receiver's produce gate, with a stand-in for the aiokafka producer (pure logic)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka.errors import KafkaTimeoutError

from ingest.producer import Overloaded, Producer, Unavailable
from meterstream.core.config import Settings
from meterstream.core.kafka_client import KafkaConnection


class HeldProducer:
    """Holds every send until released, like a broker that is slow to acknowledge."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.offset = 0
        self.fail: Exception | None = None

    async def send_and_wait(self, topic: str, **_: object) -> SimpleNamespace:
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        self.offset += 1
        return SimpleNamespace(offset=self.offset - 1)


def _gate(max_in_flight: int, timeout: str = "5") -> tuple[Producer, HeldProducer]:
    settings = Settings.from_env({"METERSTREAM_MAX_IN_FLIGHT": str(max_in_flight),
                                  "METERSTREAM_PRODUCE_TIMEOUT": timeout})
    gate = Producer(settings, [])
    held = HeldProducer()
    gate._producer = held  # stands in for the aiokafka producer
    gate._healthy = True
    return gate, held


def test_beyond_the_bound_requests_are_refused_not_queued() -> None:
    async def scenario() -> list[int]:
        gate, held = _gate(max_in_flight=2)
        waiting = [asyncio.create_task(gate.store("t", b"k", b"v", [])) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await gate.store("t", b"k", b"v", [])
        held.release.set()
        offsets = list(await asyncio.gather(*waiting))
        offsets.append(await gate.store("t", b"k", b"v", []))  # room again
        return offsets

    assert asyncio.run(scenario()) == [0, 1, 2]


def test_a_kafka_error_or_a_slow_ack_is_unavailable() -> None:
    async def scenario() -> bool:
        gate, held = _gate(max_in_flight=4, timeout="0.1")
        with pytest.raises(Unavailable):
            await gate.store("t", b"k", b"v", [])  # never released: too slow
        assert not gate.healthy
        held.fail = KafkaTimeoutError()
        held.release.set()
        with pytest.raises(Unavailable):
            await gate.store("t", b"k", b"v", [])
        held.fail = None
        await gate.store("t", b"k", b"v", [])
        return gate.healthy

    assert asyncio.run(scenario()) is True


def test_before_connecting_everything_is_unavailable() -> None:
    async def scenario() -> None:
        gate = Producer(Settings.from_env({}), [])
        with pytest.raises(Unavailable):
            await gate.store("t", b"k", b"v", [])

    asyncio.run(scenario())


def test_topics_refused_stop_the_connecting_for_good(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kafka away is retried; existing topics the configuration cannot use are not: the
    gate gives up and says why, so that the receiver stops (meterstream/processes/
    receiver.py) instead of answering 503 forever."""
    from ingest import producer as module
    from meterstream.core.topics import TopicsRefused

    calls: list[str] = []

    async def refuse(kafka: KafkaConnection, specs: object) -> None:
        calls.append(kafka.bootstrap)
        raise TopicsRefused("topic t.raw has 4 partitions but METERSTREAM_PARTITIONS is 8")

    monkeypatch.setattr(module, "ensure_topics", refuse)

    async def scenario() -> Producer:
        gate = Producer(Settings.from_env({}), [])
        gate.start()
        async with asyncio.timeout(10):
            await gate.refused.wait()
        await gate.stop()
        return gate

    gate = asyncio.run(scenario())
    assert calls == ["127.0.0.1:9092"]  # tried once, not retried
    assert isinstance(gate.refusal, TopicsRefused)
    assert "t.raw" in str(gate.refusal)
    assert not gate.connected.is_set()
