"""The end-to-end tests' event times at the first and last seconds of a UTC day and month:
each test's times derive from one `now` through a pure function, called here with `now`
set to those instants (tests/support/clock.py says why they matter)."""

from __future__ import annotations

import orjson
import pytest

from billing.periods import Period
from meterstream.core.windows import DAY_MS, window_start
from tests.integration import test_billing_pipeline, test_quota_alerts, test_sink_failures
from tests.support.billing_data import ms
from tests.support.clock import EDGE_MARGIN_MS, settled

# First and last seconds of days and months, a leap February and a year's end among them.
EDGES = [ms(edge) + delta
         for edge in ("2026-11-01T00:00:00", "2027-01-01T00:00:00", "2028-02-29T00:00:00",
                      "2028-03-01T00:00:00", "2026-11-17T00:00:00")
         for delta in (0, 1, 999, 1_000, 5_000, 9_999, 10_000, 15_000, 59_999, 60_000,
                       65_000, 600_000, 616_020, 700_000, -1, -1_000, -60_000)]
GRACE_MS = DAY_MS  # METERSTREAM_LATE_GRACE's default


@pytest.mark.parametrize("granularity", ["minute", "day", "month"])
@pytest.mark.parametrize("span_ms", [0, 5_000, 16_020])
@pytest.mark.parametrize("before_ms", [10_000, 60_000, 600_000])
def test_a_settled_span_is_in_one_window_in_the_past_and_within_the_grace(
        granularity: str, span_ms: int, before_ms: int) -> None:
    if granularity == "minute" and span_ms + EDGE_MARGIN_MS >= 60_000:
        pytest.skip("does not fit")
    for now in EDGES:
        at = settled(now, span_ms, granularity, before_ms)
        end = at + span_ms
        assert window_start(granularity, at) == window_start(granularity, end), now
        assert window_start(granularity, end + EDGE_MARGIN_MS) == window_start(
            granularity, at), now
        assert end <= now - before_ms, now
        assert at >= now - before_ms - 2 * span_ms - EDGE_MARGIN_MS, now
        assert at >= now - GRACE_MS, now


def test_a_span_too_long_for_its_window_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit in one minute"):
        settled(ms("2026-11-01T00:00:00"), 59_500, "minute")


def test_a_load_that_would_cross_midnight_moves_to_the_day_before() -> None:
    now = ms("2026-11-01T00:00:12")  # the old code's load (now - 10 s) was in October
    at = settled(now, 5_000, "day", before_ms=10_000)
    assert at + 5_000 == ms("2026-10-31T23:59:58.999")
    # Otherwise nothing moves: the load is right where it was.
    later = ms("2026-11-01T00:01:00")
    assert settled(later, 5_000, "day", before_ms=10_000) == later - 15_000


@pytest.mark.parametrize("now", EDGES)
def test_the_quota_test_reads_the_day_its_load_is_in(now: int) -> None:
    at = test_quota_alerts.load_time(now)
    span = test_quota_alerts.LOAD_SPAN_MS
    # The day read back (?at=at) and the alert ids' day hold every event of the load.
    assert window_start("day", at) == window_start("day", at + span)
    assert at + span <= now - 10_000
    assert at >= now - GRACE_MS


@pytest.mark.parametrize("now", EDGES)
def test_the_sink_test_stores_exactly_two_months(now: int) -> None:
    at, old = test_sink_failures.direct_load_times(now)
    span = test_sink_failures.LOAD_SPAN_MS
    months = {Period.containing(t) for t in (at, at + span - 1, old, old + span - 1)}
    assert len(months) == 2
    assert Period.containing(at) == Period.containing(at + span)


@pytest.mark.parametrize("now", EDGES)
def test_the_billing_pipeline_test_invoices_the_month_its_load_is_in(now: int) -> None:
    at = test_billing_pipeline.load_time(now)
    bodies = test_billing_pipeline.bodies(at)
    stamps = [event["timestamp"] for body in bodies
              for event in orjson.loads(body)]
    assert {Period.containing(t) for t in stamps} == {Period.containing(at)}
    assert max(stamps) <= now - 600_000
    assert min(stamps) >= now - GRACE_MS
