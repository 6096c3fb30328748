"""What the receiver needs to know of a Convex webhook body before it stores it.

Convex sends either a JSON array of events (format "json") or one compact
event per line (format "jsonl"), always as Content-Type application/json, so
the format is told from the body itself.

The body is not parsed until its signature is verified: `claimed_deployment`
finds the deployment whose secret to verify with by a bounded byte search,
and `check_batch` then parses the authenticated body and checks that no event
names another deployment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

from meterstream.core import events

KEY = b'"deployment_name"'
# The registry's name syntax (meterstream/core/registry.py NAME): no quote, no backslash, so the
# value needs no unescaping and ends at the first '"'.
_VALUE = re.compile(rb'\s*:\s*"([A-Za-z0-9][A-Za-z0-9._-]{0,127})"')
KNOWN_TOPICS = events.KNOWN_TOPICS
"""Topics counted under their own metric label; every other string is counted as `other`,
so a body cannot add label values."""
AGENT_USAGE = events.AGENT_USAGE.topic


class BatchError(ValueError):
    """The body cannot be a Convex webhook batch; `where` says where it broke."""

    def __init__(self, message: str, where: str | None = None, reason: str = "malformed",
                 status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.where = where
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class BatchInfo:
    events: int
    deployments: frozenset[str]
    topics: dict[str, int]
    """Events per topic label: a known Convex topic, or "other"."""


def topic_label(topic: object) -> str:
    return topic if isinstance(topic, str) and topic in KNOWN_TOPICS else "other"


def claimed_deployment(body: bytes) -> str | None:
    """The value of the body's first `"deployment_name"` key, found without parsing.

    Work is one bounded scan of the bytes. The result is only a claim: it says
    whose secret to verify the signature with. A crafted key such as
    `"x\\"deployment_name"` can make the scan find a name the parse would not,
    which is why `check_batch` checks after parsing that no event names another
    deployment than the claimed one: a body can only ever be billed to the deployment whose
    secret signed it (or that opted in to unsigned bodies).
    """
    at = body.find(KEY)
    if at < 0:
        return None
    match = _VALUE.match(body, at + len(KEY))
    return match.group(1).decode() if match else None


def parse_events(body: bytes, max_events: int | None = None) -> list[object]:
    """The events of a body, JSON array or JSONL; raises BatchError saying where it is
    malformed, or that it carries more than `max_events` events."""
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
        if max_events is not None and len(events) > max_events:
            raise _too_many(len(events), max_events)
        return events
    if max_events is not None:  # counted before any line is parsed
        lines = sum(1 for line in text.split(b"\n") if line.strip())
        if lines > max_events:
            raise _too_many(lines, max_events)
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


def _too_many(count: int, limit: int) -> BatchError:
    return BatchError(f"{count} events in one request; at most {limit}", None,
                      "too_many_records", 413)


def event_fields(event: object) -> tuple[object, object]:
    """An event's `topic` and `convex.deployment_name`, as sent (None where absent)."""
    if not isinstance(event, dict):
        return None, None
    convex = event.get("convex")
    return event.get("topic"), convex.get("deployment_name") if isinstance(convex, dict) else None


def inspect_batch(body: bytes) -> BatchInfo:
    """Counts the events per topic label and collects the deployment names they carry."""
    events = parse_events(body)
    deployments = set()
    topics: dict[str, int] = {}
    for event in events:
        topic, name = event_fields(event)
        if isinstance(name, str) and name:
            deployments.add(name)
        label = topic_label(topic)
        topics[label] = topics.get(label, 0) + 1
    return BatchInfo(events=len(events), deployments=frozenset(deployments), topics=topics)


def check_batch(body: bytes, deployment: str, max_events: int) -> BatchInfo:
    """Parses an authenticated body and checks that each event is one of `deployment`'s.

    Raises BatchError: malformed (400), more than `max_events` (413), an event that
    names another deployment (403 several_deployments), an `agent_usage` event (400
    wrong_door: token usage comes only through /v1/agent/usage, with the deployment's
    ingest token). So whatever the body holds, nothing in it is counted for a deployment
    other than the one whose secret signed it (or that opted in to unsigned bodies)."""
    events = parse_events(body, max_events)
    topics: dict[str, int] = {}
    for index, event in enumerate(events):
        topic, name = event_fields(event)
        if topic == AGENT_USAGE:
            raise BatchError("agent_usage events are taken only from /v1/agent/usage",
                             f"event {index}", "wrong_door")
        # An event that names no deployment (or is no event at all) cannot bill anyone:
        # it is stored with the others and the worker dead-letters it, so that one odd
        # event does not make Convex drop the whole batch. One naming another deployment
        # could bill it with a body it did not sign: the batch is refused.
        if isinstance(name, str) and name and name != deployment:
            raise BatchError("a batch must come from one deployment", f"event {index}",
                             "several_deployments", 403)
        label = topic_label(topic)
        topics[label] = topics.get(label, 0) + 1
    return BatchInfo(events=len(events), deployments=frozenset({deployment}), topics=topics)
