"""Distinct Convex webhook bodies for tests, with their billing totals computed here,
independently of the worker's code, from the events themselves."""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from tests.support import recent_events

ACTION_TYPES = ("action", "http_action")


@dataclass
class Load:
    bodies: list[bytes] = field(default_factory=list)
    totals: Counter[str] = field(default_factory=Counter)

    def add_body(self, events: list[dict[str, Any]]) -> None:
        self.bodies.append(orjson.dumps(events))
        for event in events:
            usage = event.get("usage") or {}
            if event["topic"] == "function_execution":
                self.totals["function_calls"] += 1
                self.totals["database_io_bytes"] += (usage["database_io_read_bytes"]
                                                     + usage["database_io_write_bytes"])
                self.totals["data_egress_bytes"] += (usage["network_egress_bytes"]
                                                     + usage["file_storage_read_bytes"])
                if event["function"]["type"] in ACTION_TYPES:
                    memory = usage["action_memory_used_mb"] or usage["memory_used_mb"]
                    self.totals["action_compute_mb_ms"] += memory * event["execution_time_ms"]
            elif event["topic"] == "storage_api_bandwidth":
                self.totals["function_calls"] += 1
                self.totals["file_downloads"] += 1
                self.totals["data_egress_bytes"] += event["egress_bytes"]


def function_load(deployment: str, bodies: int, events_per_body: int, at_ms: int) -> Load:
    """`bodies` bodies of the reference's function executions and file downloads, all at
    `at_ms` or up to a few seconds later, each body distinct (counters vary)."""
    templates = [e for e in recent_events()
                 if e["topic"] in ("function_execution", "storage_api_bandwidth")]
    load = Load()
    n = 0
    for _ in range(bodies):
        events = []
        for _ in range(events_per_body):
            event = copy.deepcopy(templates[n % len(templates)])
            event["convex"]["deployment_name"] = deployment
            event["timestamp"] = at_ms + n % 5000
            if event["topic"] == "function_execution":
                event["usage"]["database_io_read_bytes"] = 100 + n % 997
                event["usage"]["network_egress_bytes"] = n % 13
                event["execution_time_ms"] = 1 + n % 50
            else:
                event["egress_bytes"] = 1000 + n % 31
            events.append(event)
            n += 1
        load.add_body(events)
    return load
