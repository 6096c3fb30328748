"""Event times for the end-to-end tests, taken from one `now` captured once.

A test that stamps its events "now" and then reads the window (day, month) containing
another "now" fails when the two instants straddle a boundary: at the first seconds of a
UTC day or month its events are in the window before the one it reads, or split between
two. `settled` picks a moment for the whole load that lies inside one window, recent
enough for the worker's late-event grace, whatever the wall clock says.
"""

from __future__ import annotations

from meterstream.core.windows import window_end, window_start

EDGE_MARGIN_MS = 1_000
"""How far before a window's end a load that would cross it is moved."""


def settled(now_ms: int, span_ms: int, granularity: str = "day",
            before_ms: int = 60_000) -> int:
    """A start `at` for events stamped within [at, at + span_ms] such that

    - the whole span is in one window of `granularity` (minute, hour, day, month), ending
      at least EDGE_MARGIN_MS before that window's end;
    - at + span_ms <= now_ms - before_ms: every event is in the past when it is sent;
    - at >= now_ms - before_ms - 2 * span_ms - EDGE_MARGIN_MS: only moved back as far as
      the boundary requires, so within a grace of a day for any span of minutes.
    """
    if span_ms + EDGE_MARGIN_MS >= window_end(granularity, 0) - window_start(granularity, 0):
        raise ValueError(f"a span of {span_ms} ms does not fit in one {granularity}")
    at = now_ms - before_ms - span_ms
    end = at + span_ms
    boundary = window_end(granularity, window_start(granularity, at))
    if end >= boundary - EDGE_MARGIN_MS:
        at = min(at, boundary - EDGE_MARGIN_MS - span_ms - 1)
    return at
