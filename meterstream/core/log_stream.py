"""What the receiver needs to know of a Convex webhook body before it stores it.

Convex sends either a JSON array of events (format "json") or one compact
event per line (format "jsonl"), always as Content-Type application/json, so
the format is told from the body itself.

The body is not parsed until its signature is verified: `claimed_deployment`
finds the deployment whose secret to verify with by a bounded byte search,
and `check_batch` then reads the authenticated body and checks that no event
names another deployment.

`check_batch` decodes only what it needs (each event's `topic` and
`convex.deployment_name`) with msgspec Structs, about 3x faster than building
the whole body with orjson. `parse_events` (orjson, every field) stays the
reference reading, which the worker uses: whenever the typed decode refuses a
body, or the body holds something the two parsers could read differently, the
batch is checked on `parse_events`' reading instead (see `_typed_events`; one
exception, which bills nobody, in `_long_digit_runs`).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import msgspec
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


class _Convex(msgspec.Struct, gc=False):
    deployment_name: str | None = None


class _Event(msgspec.Struct, gc=False):
    """The two fields of an event the receiver reads; msgspec skips every other one.
    A field of another type (or an event that is not an object) fails the decode,
    and the body is then read by `parse_events`."""

    topic: str | None = None
    convex: _Convex | None = None


_ARRAY = msgspec.json.Decoder(list[_Event])
_LINE = msgspec.json.Decoder(_Event)
_LONG_RUN = 309
"""Digits a JSON number needs before orjson finds it too large for a double (1e308 is the
largest): shorter integers, even beyond 64 bits, are read as floats by orjson."""
_STRIDE = _LONG_RUN // 2
"""A run of _LONG_RUN digits starting anywhere covers two consecutive multiples of this."""
_SAMPLE = bytes(48 if 48 <= b <= 57 else 120 for b in range(256))  # digit -> "0", other -> "x"


def _long_digit_runs(text: bytes) -> bool:
    """Whether `text` may hold a run of 309 digits: a number that orjson refuses (too large
    for a double) and msgspec skips unread, when no field the receiver reads holds it.

    Conservative and cheap: such a run always covers two consecutive bytes of a sample
    taken every 154 bytes, so only where two sampled bytes are digits is the stretch
    between them looked at.

    Numbers beyond a double written with an exponent (1e400) are not looked for: finding
    `[0-9][eE]` outside strings costs a scan of the whole body as long as the typed decode
    itself (hex ids in strings hold such pairs in most events), and such a body can only
    be the signing deployment's own: the worker dead-letters it whole, nothing in it is
    counted for anyone (tests/unit/test_body_parity.py pins it)."""
    sample = text[::_STRIDE].translate(_SAMPLE)
    at = sample.find(b"00")
    while at >= 0:
        if text[at * _STRIDE:(at + 1) * _STRIDE + 1].isdigit():
            return True
        at = sample.find(b"00", at + 1)
    return False


def _typed_events(body: bytes, max_events: int) -> list[_Event] | None:
    """The events' topic and deployment name, by msgspec; None when this reading cannot be
    trusted to be `parse_events`' (the caller then uses that).

    Same reading, proven piece by piece: the same strip and the same JSONL line split;
    duplicate keys keep the last value in both; msgspec unescapes keys as orjson does;
    what msgspec refuses (malformed JSON, depth over 1000, a non-object event, a topic or
    name that is not a string or null) is handed to parse_events. What orjson alone
    refuses is kept from this path: invalid UTF-8 anywhere (msgspec does not check the
    strings it skips; Python's strict decoder refuses what orjson does, surrogates
    included) and long numbers overflowing a double (`_long_digit_runs`, which says what
    is left: an exponent beyond a double in a field not read here). The too-many count is
    the caller's, on the same numbers parse_events counts."""
    text = body.strip()
    if not text or (not text.isascii() and not _utf8(text)) or _long_digit_runs(text):
        return None
    try:
        if text[:1] == b"[":
            return _ARRAY.decode(text)
        lines = [line for line in text.split(b"\n") if line.strip()]
        if len(lines) > max_events:
            return None  # parse_events refuses it, with the count
        return [_LINE.decode(line) for line in lines]
    except (msgspec.DecodeError, RecursionError):
        return None


def _utf8(text: bytes) -> bool:
    try:
        text.decode()
    except UnicodeDecodeError:
        return False
    return True


def check_batch(body: bytes, deployment: str, max_events: int) -> BatchInfo:
    """Parses an authenticated body and checks that each event is one of `deployment`'s.

    Raises BatchError: malformed (400), more than `max_events` (413), an event that
    names another deployment (403 several_deployments), an `agent_usage` event (400
    wrong_door: token usage comes only through /v1/agent/usage, with the deployment's
    ingest token). So whatever the body holds, nothing in it is counted for a deployment
    other than the one whose secret signed it (or that opted in to unsigned bodies).

    The body is read as `parse_events` reads it (tests/unit/test_body_parity.py), mostly
    by the faster typed decode; the worker's reading is parse_events'."""
    typed = _typed_events(body, max_events)
    fields: list[tuple[object, object]]
    if typed is None:
        fields = [event_fields(event) for event in parse_events(body, max_events)]
    else:
        if len(typed) > max_events:
            raise _too_many(len(typed), max_events)
        # The common case in two quick passes; a batch to refuse goes through the loop
        # below, which names the first event at fault.
        counts = Counter([event.topic for event in typed])
        names = {convex.deployment_name for event in typed
                 if (convex := event.convex) is not None}
        names.difference_update((deployment, None, ""))
        if AGENT_USAGE not in counts and not names:
            topics: dict[str, int] = {}
            for sent, count in counts.items():
                label = topic_label(sent)
                topics[label] = topics.get(label, 0) + count
            return BatchInfo(events=len(typed), deployments=frozenset({deployment}),
                             topics=topics)
        fields = [(e.topic, e.convex.deployment_name if e.convex is not None else None)
                  for e in typed]
    topics = {}
    for index, (topic, name) in enumerate(fields):
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
    return BatchInfo(events=len(fields), deployments=frozenset({deployment}), topics=topics)
