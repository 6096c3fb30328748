"""An alert log (processors/alert_log.py) whose topic is a list: for unit tests of what
is published and how often (the broker's part is tested in tests/integration)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from meterstream.core.kafka_client import KafkaConnection
from processors.alert_log import AlertLog


class ListedAlerts(AlertLog):
    def __init__(self) -> None:
        super().__init__(KafkaConnection(""), "alerts", self._store, 100)
        self.stored: list[dict[str, Any]] = []

    async def _store(self, key: bytes, value: bytes) -> Any:
        self.stored.append(orjson.loads(value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def _read_ids(self, partitions: set[int]) -> dict[int, set[str]]:
        """What the list holds, as the topic's partitions would (all on each here)."""
        return {p: {alert["id"] for alert in self.stored} for p in partitions}
