"""Billing metrics, windows, the live state's exactly-once application, quota and runaway
alerts: pure logic, with a dict standing in for the Faust table."""

from __future__ import annotations

from datetime import UTC, datetime
from fractions import Fraction

import orjson
import pytest

from meterstream.core.quotas import Quota
from meterstream.core.usage import message_usage
from meterstream.core.windows import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    expires_at,
    label,
    split_interval,
    window_end,
    window_start,
)
from processors.due_alerts import RunawayDetector, due_quota_alerts
from processors.quota_status import quota_report
from processors.split import split_body
from processors.state import UsageState
from tests.support import recent_events

GRACE = DAY_MS


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def routed(events: list[dict], offset: int = 0) -> dict:
    return split_body(orjson.dumps(events), 0, offset).routed


def at(events: list[dict], when: int) -> list[dict]:
    for n, event in enumerate(events):
        event["timestamp"] = when + n
    return events


def test_the_reference_examples_make_these_billing_metrics() -> None:
    # Hand-computed from tests/support/data/convex_examples.json (reference section 6).
    usage = message_usage(routed(at(recent_events(), ms("2026-11-24T10:00:05"))))
    minute = usage.windows[("minute", ms("2026-11-24T10:00:00"))]
    assert dict(minute.metrics) == {
        "function_calls": 3 + 1,  # three function executions and one file download
        "database_io_read_bytes": 1180 + 2304,
        "database_io_write_bytes": 1792,
        "database_io_bytes": 1180 + 2304 + 1792,
        "action_compute_mb_ms": 512 * 8421,  # the action only
        "data_egress_bytes": 18234 + 1048576,  # network egress + the download
        "search_query_bytes": 412 + 6144,
        "file_downloads": 1,
        "file_download_bytes": 1048576,
    }
    for window in (("hour", ms("2026-11-24T10:00:00")), ("day", ms("2026-11-24T00:00:00")),
                   ("month", ms("2026-11-01T00:00:00"))):
        assert dict(usage.windows[window].metrics) == dict(minute.metrics)
    assert len(usage.windows) == 4
    assert [s["total_document_size_bytes"] for s in usage.snapshots] == [104857600]


def test_agent_tokens_count_per_model_per_deployment_and_per_user() -> None:
    step = {"id": "s1", "deployment": "d", "timestamp": ms("2026-11-24T10:00:00"),
            "user_id": "u1", "thread_id": "t", "agent_name": "a", "model": "gpt-4o",
            "provider": "openai", "input_tokens": 100, "non_cached_input_tokens": 60,
            "cached_input_tokens": 40, "cache_write_input_tokens": 0, "output_tokens": 20,
            "text_output_tokens": 20, "reasoning_tokens": 5, "total_tokens": 120,
            "topic": "agent_usage"}
    other = {**step, "id": "s2", "user_id": "u2", "model": "claude", "provider": "anthropic",
             "total_tokens": 7}
    usage = message_usage(routed([step, other]))
    month = usage.windows[("month", ms("2026-11-01T00:00:00"))]
    assert month.metrics["tokens"] == 127
    assert month.tokens["openai/gpt-4o"]["cached_input_tokens"] == 40
    assert month.tokens["anthropic/claude"]["total_tokens"] == 7
    assert usage.users[("u1", "day", ms("2026-11-24T00:00:00"))].metrics["tokens"] == 120
    assert usage.users[("u2", "month", ms("2026-11-01T00:00:00"))].metrics["tokens"] == 7


@pytest.mark.parametrize(("granularity", "moment", "start", "end"), [
    ("minute", "2026-11-24T10:00:59.999", "2026-11-24T10:00:00", "2026-11-24T10:01:00"),
    ("hour", "2026-11-24T10:59:00", "2026-11-24T10:00:00", "2026-11-24T11:00:00"),
    ("day", "2026-11-24T23:59:59", "2026-11-24T00:00:00", "2026-11-25T00:00:00"),
    ("month", "2026-12-31T23:59:59", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
    ("month", "2028-02-29T12:00:00", "2028-02-01T00:00:00", "2028-03-01T00:00:00"),
])
def test_windows_are_utc_calendar_periods(granularity: str, moment: str, start: str,
                                          end: str) -> None:
    assert window_start(granularity, ms(moment)) == ms(start)
    assert window_end(granularity, ms(start)) == ms(end)


def test_month_windows_stay_for_the_period_plus_the_grace() -> None:
    november = ms("2026-11-01T00:00:00")
    assert expires_at("month", november, GRACE) == ms("2026-12-02T00:00:00")
    assert expires_at("minute", ms("2026-11-24T10:00:00"), GRACE) == ms("2026-11-24T12:01:00")
    assert label(november) == "2026-11-01"


def test_an_interval_is_cut_at_window_boundaries() -> None:
    pieces = split_interval("hour", ms("2026-11-24T09:30:00"), ms("2026-11-24T11:15:00"))
    assert pieces == [(ms("2026-11-24T09:00:00"), 30 * MINUTE_MS),
                      (ms("2026-11-24T10:00:00"), HOUR_MS),
                      (ms("2026-11-24T11:00:00"), 15 * MINUTE_MS)]


def state() -> UsageState:
    return UsageState({}, GRACE)


def test_a_message_applied_again_counts_once_per_key() -> None:
    live = state()
    now = ms("2026-11-24T10:05:00")
    first = message_usage(routed(at(recent_events("function_execution"), now - 60_000)))
    second = message_usage(routed(at(recent_events("function_execution"), now - 30_000)))
    live.apply("d", first, 0, 10, now)
    live.apply("d", second, 0, 11, now)
    live.apply("d", first, 0, 10, now)  # after a crash: both are processed again
    live.apply("d", second, 0, 11, now)
    day = live.window("d", "day", ms("2026-11-24T00:00:00"))
    assert day["m"]["function_calls"] == 6
    assert day["o"] == 11


def test_a_crash_between_two_keys_of_one_message_still_counts_each_once() -> None:
    live = state()
    now = ms("2026-11-24T10:05:00")
    usage = message_usage(routed(at(recent_events("function_execution"), now - 60_000)))
    live.apply("d", usage, 0, 7, now)
    del live.table[f"d|hour|{ms('2026-11-24T10:00:00')}"]  # that change never reached Kafka
    live.apply("d", usage, 0, 7, now)
    assert live.window("d", "hour", ms("2026-11-24T10:00:00"))["m"]["function_calls"] == 3
    assert live.window("d", "day", ms("2026-11-24T00:00:00"))["m"]["function_calls"] == 3


def snapshot(when: int, documents: int) -> dict:
    event = recent_events("current_storage_usage")[0]
    event.update(timestamp=when, total_document_size_bytes=documents, total_index_size_bytes=0)
    return event


def test_storage_counts_each_snapshot_until_the_next_one_per_window() -> None:
    live = state()
    t0, t1 = ms("2026-11-24T09:30:00"), ms("2026-11-24T10:15:00")
    now = t1 + 1000
    live.apply("d", message_usage(routed([snapshot(t0, 1000)])), 0, 1, now)
    second = message_usage(routed([snapshot(t1, 5000)]))
    live.apply("d", second, 0, 2, now)
    # Reprocessed after a crash that lost the hour window but kept the snapshot key.
    del live.table[f"d|hour|{ms('2026-11-24T10:00:00')}"]
    live.apply("d", second, 0, 2, now)
    nine = live.window("d", "hour", ms("2026-11-24T09:00:00"))["m"]
    ten = live.window("d", "hour", ms("2026-11-24T10:00:00"))["m"]
    assert nine["database_storage_byte_ms"] == 1000 * 30 * MINUTE_MS
    assert ten["database_storage_byte_ms"] == 1000 * 15 * MINUTE_MS
    day = live.window("d", "day", ms("2026-11-24T00:00:00"))["m"]
    assert day["database_storage_byte_ms"] == 1000 * 45 * MINUTE_MS
    assert live.latest_storage("d")["bytes"]["database"] == 5000
    # An older snapshot arriving late does not move time back.
    live.apply("d", message_usage(routed([snapshot(t0 + 1, 9)])), 0, 3, now)
    assert live.latest_storage("d")["ts"] == t1


def test_windows_past_their_retention_are_not_recreated_and_expire() -> None:
    live = state()
    now = ms("2026-11-24T10:00:00")
    old = message_usage(routed(at(recent_events("function_execution"), now - 3 * HOUR_MS)))
    live.apply("d", old, 0, 1, now)
    granularities = sorted(key.split("|")[1] for key in live.table)
    assert granularities == ["day", "hour", "month"]  # the minute window is already gone
    assert live.expiry.expire(0, now + 3 * DAY_MS) == 1  # the hour window
    assert sorted(key.split("|")[1] for key in live.table) == ["day", "month"]


def test_quota_alerts_are_due_for_each_threshold_reached() -> None:
    live = state()
    now = ms("2026-11-24T10:05:00")
    usage = message_usage(routed(at(recent_events("function_execution"), now - 1000)))
    live.apply("d", usage, 0, 1, now)
    quotas = (Quota("function_calls", "month", 3, (0.5, 1.0, 1.5), hard=True),
              Quota("action_compute_gb_hours", "day", 0.001),
              Quota("database_io_bytes", "day", 10 ** 9))
    alerts = due_quota_alerts("d", quotas, live, usage)
    assert [(a["metric"], a["threshold"], a["usage"]) for a in alerts] == [
        ("function_calls", 0.5, 3), ("function_calls", 1.0, 3),
        # 512 MB x 8421 ms = 0.0011710... GB-h, over 0.001 (80 % and 100 %)
        ("action_compute_gb_hours", 0.8, float(Fraction(512 * 8421, 1024 * 3_600_000))),
        ("action_compute_gb_hours", 1.0, float(Fraction(512 * 8421, 1024 * 3_600_000))),
    ]
    assert alerts[0]["id"] == "quota|d|function_calls|month|2026-11-01|0.5"
    assert alerts[0]["period"] == "2026-11-01"
    report = quota_report("d", quotas, live, now)
    assert report["hard_limit_exceeded"] is True
    assert [q["exceeded"] for q in report["quotas"]] == [True, True, False]


def test_a_runaway_is_one_alert_per_episode() -> None:
    live = state()
    detector = RunawayDetector(live, multiple=10, min_calls=100)
    minute = ms("2026-11-24T10:00:00")
    offset = 0

    def send(start: int, count: int) -> list[dict]:
        nonlocal offset
        offset += 1
        event = recent_events("function_execution")[0]
        usage = message_usage(routed([{**event, "timestamp": start + n % 1000}
                                      for n in range(count)]))
        live.apply("d", usage, 0, offset, start + MINUTE_MS)
        return [a["id"] for a in detector.due("d", usage, 0, offset)]

    for n in range(60):  # a baseline of 20 calls a minute
        assert send(minute + n * MINUTE_MS, 20) == []
    hot = minute + 60 * MINUTE_MS
    assert send(hot, 150) == []  # 150 < 10 x 20
    assert send(hot, 100) == [f"runaway|d|{hot}"]  # 250 > 200 and > 100
    assert send(hot + MINUTE_MS, 300) == [f"runaway|d|{hot}"]  # the same episode
    assert send(hot + 2 * MINUTE_MS, 10) == [f"runaway|d|{hot}"]  # still the same id
    assert send(hot + 5 * MINUTE_MS, 3000) == [f"runaway|d|{hot + 5 * MINUTE_MS}"]
