"""Splitting one raw webhook body into records by event type.

Pure functions, so the worker agent stays a thin loop and this logic is unit-tested.
A malformed event costs only itself: it becomes a dead letter with its reason,
and the valid events beside it are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ingest.batch import BatchError, parse_events
from processors.records import InvalidEvent, Record, function_execution


@dataclass
class SplitBatch:
    function_executions: list[Record] = field(default_factory=list)
    dead_letters: list[Record] = field(default_factory=list)
    other: int = 0
    """Events of topics this stage does not route yet (verification, console, ...)."""


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
        if event.get("topic") != "function_execution":
            out.other += 1
            continue
        try:
            out.function_executions.append(function_execution(event, partition, offset, index))
        except InvalidEvent as exc:
            out.dead_letters.append(dead_letter(str(exc), event, partition, offset, index))
    return out
