"""What the receiver needs to know of a Convex webhook body before it stores it.

Convex sends either a JSON array of events (format "json") or one compact
event per line (format "jsonl"), always as Content-Type application/json, so
the format is told from the body itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson


class BatchError(ValueError):
    """The body cannot be a Convex webhook batch; `where` says where it broke."""

    def __init__(self, message: str, where: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where


@dataclass(frozen=True)
class BatchInfo:
    events: int
    deployments: frozenset[str]
    topics: dict[str, int]
    """Events per Convex topic ("function_execution", ...); "unknown" where none is given."""


def parse_events(body: bytes) -> list[object]:
    """The events of a body, JSON array or JSONL; raises BatchError saying where it is malformed."""
    text = body.strip()
    if not text:
        raise BatchError("empty body")
    if text[:1] == b"[":
        try:
            events = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise BatchError(f"malformed JSON: {exc.msg}",
                             f"line {exc.lineno} column {exc.colno}") from None
        if not isinstance(events, list):
            raise BatchError("expected a JSON array of events")
        return events
    events = []
    for number, line in enumerate(text.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            events.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            raise BatchError(f"malformed JSON line: {exc.msg}",
                             f"line {number} column {exc.colno}") from None
    return events


def inspect_batch(body: bytes) -> BatchInfo:
    """Counts the events and collects the deployment names they carry."""
    events = parse_events(body)
    deployments = set()
    topics: dict[str, int] = {}
    for event in events:
        topic = "unknown"
        if isinstance(event, dict):
            if isinstance(event.get("topic"), str):
                topic = event["topic"]
            convex = event.get("convex")
            if isinstance(convex, dict):
                name = convex.get("deployment_name")
                if isinstance(name, str) and name:
                    deployments.add(name)
        topics[topic] = topics.get(topic, 0) + 1
    return BatchInfo(events=len(events), deployments=frozenset(deployments), topics=topics)
