"""Stream health per deployment (processors/stream_health.py, processors/health_check.py):
the storage heartbeat, silence against the deployment's own baseline, one alert per
episode and its recovery, exactly once across repeated checks and reprocessed messages,
all on a clock the tests move instead of sleeping."""

from __future__ import annotations

import asyncio
import copy
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from meterstream.core.config import ConfigError, Settings
from meterstream.core.topics import WEBHOOK_ORIGIN
from meterstream.core.windows import DAY_MS, HOUR_MS, MINUTE_MS
from processors import metrics
from processors.app import health_rules
from processors.dedup import Deduplicator
from processors.due_alerts import RunawayDetector
from processors.health_check import HealthCheck, fleet
from processors.ordered_store import MemoryPartitions
from processors.raw_processor import RawProcessor
from processors.state import UsageState
from processors.stream_health import (
    HEARTBEAT,
    RETENTION_MS,
    HealthRules,
    StreamHealth,
    health_key,
)
from tests.support import convex_examples
from tests.support.alerts import ListedAlerts

T0 = 1_795_000_000_000
DEPLOYMENT = "happy-otter-123"
RULES = HealthRules(storage_stale_ms=2 * HOUR_MS, silence_multiple=10,
                    silence_floor_ms=15 * MINUTE_MS, min_messages=3)
STALE_ID = f"stream_stale|{DEPLOYMENT}|storage_heartbeat|{T0}"
RECOVERED_ID = f"stream_recovered|{DEPLOYMENT}|storage_heartbeat|{T0}"


class Expiry:
    def __init__(self) -> None:
        self.remembered: list[tuple[str, int, int]] = []

    def remember(self, key: str, partition: int, expires: int) -> None:
        self.remembered.append((key, partition, expires))


def health() -> tuple[StreamHealth, dict[str, Any], Expiry]:
    table: dict[str, Any] = {}
    expiry = Expiry()
    return StreamHealth(table, expiry, RULES), table, expiry


def ids(alerts: list[dict[str, Any]]) -> list[str]:
    return [alert["id"] for alert in alerts]


def test_no_heartbeat_for_longer_than_the_limit_is_stale_once_seen_before() -> None:
    state, _, _ = health()
    assert state.due(DEPLOYMENT, T0) is None  # never seen: nothing to judge
    assert state.observe(DEPLOYMENT, {HEARTBEAT: T0}, 3, 1) == []
    assert state.due(DEPLOYMENT, T0 + 2 * HOUR_MS) == (3, [])  # exactly the limit: not yet
    partition, alerts = state.due(DEPLOYMENT, T0 + 2 * HOUR_MS + 1) or (None, [])
    assert partition == 3
    assert alerts == [{"id": STALE_ID, "kind": "stream_stale", "deployment": DEPLOYMENT,
                       "signal": "storage_heartbeat", "since": T0,
                       "threshold_ms": 2 * HOUR_MS}]
    report = state.report(DEPLOYMENT, T0 + 3 * HOUR_MS)
    assert report["state"] == "stale"
    assert report["storage_heartbeat"] == {"last": T0, "age_ms": 3 * HOUR_MS,
                                           "stale_after_ms": 2 * HOUR_MS, "stale": True}
    assert report["last_event"] == {HEARTBEAT: T0}


def test_a_deployment_that_never_sent_a_heartbeat_is_never_stale() -> None:
    state, _, _ = health()
    state.observe(DEPLOYMENT, {"function_execution": T0}, 0, 1)
    assert state.due(DEPLOYMENT, T0 + 30 * DAY_MS) == (0, [])
    report = state.report(DEPLOYMENT, T0 + 30 * DAY_MS)
    assert (report["state"], report["storage_heartbeat"]) == ("ok", None)
    assert state.report("unseen-otter-1", T0)["state"] == "never_seen"


def test_a_heartbeat_after_the_gap_ends_the_episode_and_reprocessing_says_the_same() -> None:
    state, table, _ = health()
    state.observe(DEPLOYMENT, {HEARTBEAT: T0}, 0, 1)
    # Within the limit: no episode.
    assert state.observe(DEPLOYMENT, {HEARTBEAT: T0 + HOUR_MS}, 0, 2) == []
    back = T0 + HOUR_MS + 2 * HOUR_MS + 1
    alerts = state.observe(DEPLOYMENT, {HEARTBEAT: back}, 0, 3)
    since = T0 + HOUR_MS
    assert ids(alerts) == [f"stream_stale|{DEPLOYMENT}|storage_heartbeat|{since}",
                           f"stream_recovered|{DEPLOYMENT}|storage_heartbeat|{since}"]
    assert alerts[1]["until"] == back
    assert alerts[1]["recovers"] == alerts[0]["id"]
    saved = copy.deepcopy(table)
    # The same message again (a crash before its offset was committed): same alerts, no
    # change; an older message again: nothing.
    assert state.observe(DEPLOYMENT, {HEARTBEAT: back}, 0, 3) == alerts
    assert state.observe(DEPLOYMENT, {HEARTBEAT: since}, 0, 2) == []
    assert table == saved
    assert state.due(DEPLOYMENT, back + HOUR_MS) == (0, [])
    assert state.report(DEPLOYMENT, back)["state"] == "ok"


def test_silence_is_judged_against_the_deployments_own_baseline() -> None:
    state, _, _ = health()
    minute = MINUTE_MS
    offset = 0
    for n in range(3):  # three gaps of 1 minute: one short of a baseline of 3 gaps
        offset += 1
        state.observe(DEPLOYMENT, {"function_execution": T0 + n * minute}, 0, offset)
    assert state.report(DEPLOYMENT, T0)["silence"]["silent_after_ms"] is None
    assert state.due(DEPLOYMENT, T0 + DAY_MS) == (0, [])  # no baseline, no silence
    offset += 1
    last = T0 + 3 * minute
    state.observe(DEPLOYMENT, {"function_execution": last}, 0, offset)
    silence = state.report(DEPLOYMENT, last)["silence"]
    assert silence["mean_gap_ms"] == minute
    # 10 x 1 minute is under the 15-minute floor: the floor decides.
    assert silence["silent_after_ms"] == 15 * minute
    assert state.due(DEPLOYMENT, last + 15 * minute) == (0, [])
    _, alerts = state.due(DEPLOYMENT, last + 15 * minute + 1) or (0, [])
    assert ids(alerts) == [f"stream_stale|{DEPLOYMENT}|silence|{last}"]
    assert state.report(DEPLOYMENT, last + 16 * minute)["state"] == "silent"
    # The storage heartbeat is not activity: it neither ends nor feeds the silence.
    offset += 1
    assert state.observe(DEPLOYMENT, {HEARTBEAT: last + 20 * minute}, 0, offset) == []
    assert state.report(DEPLOYMENT, last + 20 * minute)["silence"]["last_activity"] == last
    offset += 1
    back = last + 30 * minute
    assert ids(state.observe(DEPLOYMENT, {"function_execution": back}, 0, offset)) == [
        f"stream_stale|{DEPLOYMENT}|silence|{last}",
        f"stream_recovered|{DEPLOYMENT}|silence|{last}"]
    # The long gap moved the mean (weight 0.2), so the next silence needs longer.
    assert state.report(DEPLOYMENT, back)["silence"]["mean_gap_ms"] == round(
        minute + 0.2 * (30 * minute - minute))


def test_an_older_event_in_a_later_message_moves_nothing_back() -> None:
    state, table, _ = health()
    state.observe(DEPLOYMENT, {HEARTBEAT: T0, "function_execution": T0}, 0, 1)
    state.observe(DEPLOYMENT, {HEARTBEAT: T0 - HOUR_MS, "function_execution": T0 - 5}, 0, 2)
    assert table[health_key(DEPLOYMENT)]["t"] == {HEARTBEAT: T0, "function_execution": T0}
    assert table[health_key(DEPLOYMENT)]["n"] == 0  # no gap counted backwards


def test_the_value_is_bounded_and_its_expiry_remembered_once_a_day() -> None:
    state, table, expiry = health()
    for offset in range(1, 200):
        state.observe(DEPLOYMENT, {"function_execution": T0 + offset * 1000, HEARTBEAT: T0,
                                   "other": T0}, 0, offset)
    value = table[health_key(DEPLOYMENT)]
    assert set(value) == {"o", "p", "x", "t", "a", "g", "n", "e"}
    assert set(value["t"]) == {"function_execution", HEARTBEAT, "other"}
    day = T0 - T0 % DAY_MS
    assert expiry.remembered == [(health_key(DEPLOYMENT), 0, day + RETENTION_MS)]


class Registry:
    def __init__(self, *names: str, removed: tuple[str, ...] = ()) -> None:
        self.records = {name: SimpleNamespace(name=name, removed_at=0, quotas=[])
                        for name in names}
        for name in removed:
            self.records[name] = SimpleNamespace(name=name, removed_at=T0, quotas=[])

    def get(self, name: str) -> Any:
        return self.records.get(name)

    def all(self) -> list[Any]:
        return [self.records[name] for name in sorted(self.records)]


def test_the_check_publishes_each_episode_once_and_the_recovery_after_it() -> None:
    state, _, _ = health()
    alerts = ListedAlerts()
    now = [T0]
    check = HealthCheck(state, Registry(DEPLOYMENT, "quiet-otter-2"),  # type: ignore[arg-type]
                        alerts, lambda: {0}, lambda: now[0])

    async def scenario() -> None:
        state.observe(DEPLOYMENT, {HEARTBEAT: T0}, 0, 1)
        assert await check.run() == {"failed": 0, "stale": 0, "silent": 0, "ok": 1}
        now[0] = T0 + 3 * HOUR_MS
        assert await check.run() == {"failed": 0, "stale": 1, "silent": 0, "ok": 0}
        # Again: still stale, not sent again.
        assert await check.run() == {"failed": 0, "stale": 1, "silent": 0, "ok": 0}
        assert metrics.DEPLOYMENTS_BY_HEALTH.labels("stale")._value.get() == 1
        # The heartbeat is back: the message re-derives the stale alert (already on the
        # topic) and adds the recovery.
        await alerts.publish(0, state.observe(DEPLOYMENT, {HEARTBEAT: now[0]}, 0, 2))
        assert await check.run() == {"failed": 0, "stale": 0, "silent": 0, "ok": 1}

    asyncio.run(scenario())
    assert [(a["id"], a["kind"]) for a in alerts.stored] == [
        (STALE_ID, "stream_stale"), (RECOVERED_ID, "stream_recovered")]


def test_a_missed_episode_is_still_told_when_it_ends() -> None:
    """No check ran while the heartbeat was missing (the worker was down): the message
    that ends it publishes the stale alert and the recovery, once."""
    state, _, _ = health()
    alerts = ListedAlerts()

    async def scenario() -> None:
        await alerts.ensure_loaded(0, {0})
        state.observe(DEPLOYMENT, {HEARTBEAT: T0}, 0, 1)
        for _ in range(2):  # the same message processed twice
            await alerts.publish(0, state.observe(
                DEPLOYMENT, {HEARTBEAT: T0 + 5 * HOUR_MS}, 0, 2))

    asyncio.run(scenario())
    assert [a["id"] for a in alerts.stored] == [STALE_ID, RECOVERED_ID]


def test_the_check_leaves_other_workers_and_removed_deployments_alone() -> None:
    state, _, _ = health()
    alerts = ListedAlerts()
    state.observe(DEPLOYMENT, {HEARTBEAT: T0}, 1, 1)  # partition 1: not this worker's
    state.observe("gone-otter-3", {HEARTBEAT: T0}, 0, 2)
    check = HealthCheck(state, Registry(DEPLOYMENT, removed=("gone-otter-3",)),  # type: ignore[arg-type]
                        alerts, lambda: {0}, lambda: T0 + DAY_MS)
    assert asyncio.run(check.run()) == {"failed": 0, "stale": 0, "silent": 0, "ok": 0}
    assert alerts.stored == []
    assert check.local_counts() == {"partitions": [0],
                                    "counts": {"failed": 0, "stale": 0, "silent": 0, "ok": 0}}


def test_the_fleet_view_adds_the_shares_and_says_what_it_misses() -> None:
    shares = [{"partitions": [0, 1], "counts": {"failed": 1, "ok": 3, "stale": 1, "silent": 0}},
              {"partitions": [2], "counts": {"failed": 0, "ok": 1, "stale": 0, "silent": 2}}]
    assert fleet(10, shares, 3) == {
        "counts": {"failed": 1, "stale": 1, "silent": 2, "ok": 4, "never_seen": 2},
        "registered": 10, "complete": True, "missing_partitions": []}
    partial = fleet(10, shares[:1], 3)
    assert partial["complete"] is False
    assert partial["missing_partitions"] == [2]
    assert partial["counts"]["never_seen"] is None  # unknowable without every share


def test_the_worker_keeps_health_from_both_paths_for_registered_deployments_only() -> None:
    """The processor hands the latest event time per event type of what it forwards, from
    the fast path (a clean body) and from the slow one (a body with a stray event)."""
    table: dict[str, Any] = {}
    usage = UsageState(table, DAY_MS)
    state = StreamHealth(table, usage.expiry, RULES)
    processor = RawProcessor(
        Deduplicator(MemoryPartitions(), 7 * DAY_MS), usage, ListedAlerts(),
        RunawayDetector(usage, 10, 10**9), Registry(DEPLOYMENT),  # type: ignore[arg-type]
        lambda *_: _done(), DAY_MS, lambda: {0}, None, health=state)
    examples = convex_examples()["events"]

    def body(deployment: str, at: int, *, stray: bool = False) -> bytes:
        events = []
        for n, event in enumerate(copy.deepcopy(examples)):
            event["timestamp"] = at + n
            event["convex"]["deployment_name"] = deployment
            events.append(event)
        if stray:
            # Beyond the grace after its receipt: a dead letter, so not the newest time.
            events[0]["timestamp"] = at + 3 * DAY_MS
        return orjson.dumps(events)

    asyncio.run(processor.process(DEPLOYMENT.encode(), body(DEPLOYMENT, T0), 0, 1, T0, T0,
                                  WEBHOOK_ORIGIN))
    def newest(at: int, skip: int = -1) -> dict[str, int]:
        times: dict[str, int] = {}
        for n, example in enumerate(examples):
            if n != skip:
                times[example["topic"]] = max(at + n, times.get(example["topic"], 0))
        return times

    fast = dict(table[health_key(DEPLOYMENT)]["t"])
    assert fast == newest(T0)
    later = T0 + MINUTE_MS
    asyncio.run(processor.process(DEPLOYMENT.encode(), body(DEPLOYMENT, later, stray=True),
                                  0, 2, later, later, WEBHOOK_ORIGIN))
    slow = table[health_key(DEPLOYMENT)]["t"]
    # The stray event did not count.
    assert slow == {**fast, **newest(later, skip=0)}
    asyncio.run(processor.process(b"stranger-otter-9", body("stranger-otter-9", T0), 0, 3,
                                  T0, T0, WEBHOOK_ORIGIN))
    assert health_key("stranger-otter-9") not in table


async def _done() -> Any:
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


def test_a_threshold_of_nothing_is_refused_at_start() -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"METERSTREAM_HEALTH_STORAGE_STALE": "0",
                           "METERSTREAM_HEALTH_CHECK_INTERVAL": "never"})
    assert raised.value.problems == (
        "METERSTREAM_HEALTH_STORAGE_STALE must be between 1.0 and 2678400.0, got '0'",
        "METERSTREAM_HEALTH_CHECK_INTERVAL must be a float, got 'never'")
    defaults = health_rules(Settings.from_env({}))
    assert defaults == HealthRules(storage_stale_ms=2 * HOUR_MS, silence_multiple=10.0,
                                   silence_floor_ms=15 * MINUTE_MS, min_messages=20)



class GatedAlerts(ListedAlerts):
    """An alert log whose topic read waits for the test's word."""

    def __init__(self, on_topic: set[str]) -> None:
        super().__init__()
        self.on_topic = on_topic
        self.reads = 0
        self.gate = asyncio.Event()

    async def _read_ids(self, partitions: set[int]) -> dict[int, set[str]]:
        self.reads += 1
        await self.gate.wait()
        return {p: set(self.on_topic) for p in partitions}


def test_the_check_and_the_agent_loading_at_once_read_the_topic_once() -> None:
    log = GatedAlerts({STALE_ID})

    async def scenario() -> None:
        agent = asyncio.create_task(log.ensure_loaded(0, {0}))
        check = asyncio.create_task(log.ensure_loaded(0, {0}))
        log.gate.set()
        await asyncio.gather(agent, check)
        # Both know what is on the topic: the episode is not sent again.
        await log.publish(0, [{"id": STALE_ID, "kind": "stream_stale",
                               "deployment": DEPLOYMENT}])

    asyncio.run(scenario())
    assert log.reads == 1
    assert log.stored == []


def test_a_partition_revoked_during_a_check_publishes_nothing_and_raises_nothing() -> None:
    log = ListedAlerts()
    alert = {"id": STALE_ID, "kind": "stream_stale", "deployment": DEPLOYMENT}
    store = log._store

    async def store_then_revoke(key: bytes, value: bytes) -> Any:
        log.forget_partitions({0})  # a rebalance while the send is under way
        return await store(key, value)

    async def scenario() -> None:
        await log.ensure_loaded(0, {0})
        log.publish_raw = store_then_revoke
        await log.publish(0, [alert])  # sent, then the partition was gone: not remembered
        await log.publish(0, [{**alert, "id": RECOVERED_ID}])  # no longer ours: not sent

    asyncio.run(scenario())
    assert [a["id"] for a in log.stored] == [STALE_ID]
