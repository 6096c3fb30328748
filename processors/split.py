"""Splitting one raw body into normalised records, by event type.

Pure functions, so the worker agent stays a thin loop and this logic is unit-tested.
A malformed event costs only itself: it becomes a dead letter with its reason,
and the valid events beside it are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meterstream.core import events as event_types
from meterstream.core.events import Normaliser
from meterstream.core.log_stream import BatchError, parse_events
from meterstream.core.records import InvalidEvent, Record

# Route (and topic suffix) by the event's `topic` (meterstream/core/events.py); anything
# else goes to OTHER.
ROUTES: dict[str, Normaliser] = {t.route: t.normalise for t in event_types.EVENT_TYPES}
OTHER = event_types.OTHER.route
ALL_ROUTES: tuple[str, ...] = tuple(t.route for t in event_types.ALL)


@dataclass
class SplitBatch:
    routed: dict[str, list[Record]] = field(default_factory=dict)
    """Normalised records per route, in the order of the body."""
    dead_letters: list[Record] = field(default_factory=list)

    def of(self, route: str) -> list[Record]:
        return self.routed.get(route, [])


def dead_letter(reason: str, event: Any, partition: int, offset: int,
                index: int | None) -> Record:
    return {"reason": reason, "raw_partition": partition, "raw_offset": offset,
            "event_index": index, "event": event}


def split_body(body: bytes, partition: int, offset: int) -> SplitBatch:
    out = SplitBatch()
    try:
        events = parse_events(body)
    except BatchError as exc:
        # The receiver refuses such bodies; one can only come from another producer.
        out.dead_letters.append(dead_letter(f"{exc.message} at {exc.where}", None,
                                            partition, offset, None))
        return out
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            out.dead_letters.append(dead_letter("event is not a JSON object", event,
                                                partition, offset, index))
            continue
        topic = event.get("topic")
        route = topic if isinstance(topic, str) and topic in ROUTES else OTHER
        normalise = ROUTES.get(route, event_types.OTHER.normalise)
        try:
            record = normalise(event, partition, offset, index)
        except InvalidEvent as exc:
            out.dead_letters.append(dead_letter(str(exc), event, partition, offset, index))
            continue
        out.routed.setdefault(route, []).append(record)
    return out
