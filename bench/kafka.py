"""Kafka connections of the benchmarks' own clients: the broker under test, with the
configured security (METERSTREAM_KAFKA_SECURITY_PROTOCOL and the rest), through the same
shared options as meterstream's clients (meterstream/core/kafka_client.py)."""

from __future__ import annotations

import functools

from meterstream.core.config import KafkaSecurity, Settings
from meterstream.core.kafka_client import KafkaConnection


@functools.cache
def _security() -> KafkaSecurity:
    return Settings.from_env().kafka_security


def kafka(bootstrap: str) -> KafkaConnection:
    """The broker at `bootstrap`, reached as this environment's configuration says."""
    return KafkaConnection(bootstrap, _security())
