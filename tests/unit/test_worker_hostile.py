"""What a tenant can send cannot stop or blow up the worker: bounded model and user
cardinality, state values under the producer's limit, bounded per-user alerts, poison
messages dead-lettered, agent usage only through its own door, and the late/stray
filter's edges. Pure logic, with a dict standing in for the Faust table and fakes for
Kafka (tests/integration/test_worker_hostile_pipeline.py runs the same on the real broker)."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from meterstream.core.catalogue import LIVE_TOKEN_KINDS as TOKEN_KINDS
from meterstream.core.config import Settings
from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.quotas import Quota
from meterstream.core.registry import Deployment
from meterstream.core.topics import AGENT_ORIGIN as AGENT
from meterstream.core.topics import WEBHOOK_ORIGIN as WEBHOOK
from meterstream.core.usage import OTHER_MODEL, message_usage
from meterstream.core.windows import DAY_MS, HOUR_MS, window_start
from processors import metrics
from processors.alert_log import AlertLog, bound_user_alerts
from processors.dedup import Deduplicator
from processors.due_alerts import RunawayDetector, due_quota_alerts
from processors.ordered_store import MemoryPartitions
from processors.poison import Poison, with_retries
from processors.priced_models import default_price_book, priced_model_keys
from processors.quota_status import quota_report
from processors.raw_processor import ForwardTooLarge, RawProcessor
from processors.split import split_body
from processors.state import (
    StateValueTooLarge,
    UsageState,
    other_users_key,
    user_key,
    users_key,
    window_key,
)
from tests.support import recent_events
from tests.support.records import rows_of

GRACE = DAY_MS
NOW = 1_795_000_000_000  # a fixed clock: 2026-11-17T08:26:40Z, mid-day, mid-month
DAY = window_start("day", NOW)
MONTH = window_start("month", NOW)
PRICED = frozenset({"openai/gpt-4o", "anthropic/claude-sonnet-4-5"})


def step(n: int, user: str = "u", model: str = "gpt-4o", provider: str = "openai",
         tokens: int = 10, deployment: str = "d", timestamp: int = NOW) -> dict[str, Any]:
    return {"topic": "agent_usage", "id": f"s{n}", "deployment": deployment,
            "timestamp": timestamp, "user_id": user, "thread_id": "t", "agent_name": "a",
            "model": model, "provider": provider, "input_tokens": tokens,
            "non_cached_input_tokens": tokens, "cached_input_tokens": 0,
            "cache_write_input_tokens": 0, "output_tokens": 0, "text_output_tokens": 0,
            "reasoning_tokens": 0, "total_tokens": tokens}


def usage_of(events: list[dict[str, Any]], offset: int = 0, priced: frozenset[str] | None
             = PRICED) -> Any:
    return message_usage(split_body(orjson.dumps(events), 0, offset).routed, priced)


# Models -------------------------------------------------------------------------------

def test_unpriced_models_fold_into_one_bucket_and_priced_ones_keep_their_name() -> None:
    events = [step(0, model="gpt-4o"), step(1, provider="anthropic", model="claude-sonnet-4-5")]
    events += [step(n, model="x" * 500 + str(n), provider=f"p{n}") for n in range(2, 5002)]
    usage = usage_of(events)
    month = usage.windows[("month", MONTH)]
    assert set(month.tokens) == {"openai/gpt-4o", "anthropic/claude-sonnet-4-5", OTHER_MODEL}
    assert month.tokens[OTHER_MODEL]["total_tokens"] == 5000 * 10
    assert month.metrics["tokens"] == 5002 * 10
    assert usage.models_folded == 5000
    user = usage.users[("u", "day", DAY)]
    assert set(user.tokens) == set(month.tokens)


def test_the_priced_models_are_the_price_books() -> None:
    keys = priced_model_keys(None)
    assert default_price_book().name == "default_price_book.toml"
    assert {"openai/gpt-4o", "openai.chat/gpt-4o-mini", "anthropic.messages/claude-sonnet-4-5",
            "anthropic/claude-sonnet-4-5"} <= keys
    # The same set billing prices (read here through billing only to compare).
    from billing import pricebook
    assert keys == {f"{p}/{m}" for p, m in pricebook.load().models}


# Users --------------------------------------------------------------------------------

def users_message(users: list[str], offset: int) -> Any:
    return usage_of([step(offset * 10_000 + n, user=u) for n, u in enumerate(users)], offset)


def named(table: dict[str, Any], granularity: str = "day") -> set[str]:
    prefix = f"d|user|{granularity}|{DAY if granularity == 'day' else MONTH}|"
    return {key[len(prefix):] for key in table if key.startswith(prefix)}


def test_users_beyond_the_bound_are_counted_together() -> None:
    table: dict[str, Any] = {}
    live = UsageState(table, GRACE, max_users=3)
    live.apply("d", users_message(["b", "a"], 1), 0, 1, NOW)
    live.apply("d", users_message(["e", "d", "c", "a"], 2), 0, 2, NOW)
    assert named(table) == {"a", "b", "c"}  # a and b first, then c ("c" < "d" < "e")
    assert table[users_key("d", "day", DAY)]["n"] == 3
    assert table[other_users_key("d", "day", DAY)]["m"]["tokens"] == 2 * 10  # d and e
    total = table[window_key("d", "day", DAY)]["m"]["tokens"]
    by_user = sum(table[user_key("d", u, "day", DAY)]["m"]["tokens"] for u in named(table))
    assert by_user + table[other_users_key("d", "day", DAY)]["m"]["tokens"] == total == 60
    report = quota_report("d", (), live, NOW, "e")
    assert report["periods"]["day"]["users"] == {"by_name": 3, "other_users_tokens": 20}
    assert report["user"]["periods"]["day"]["tokens"] == 0  # e is not tracked by name


class Recording(dict[str, Any]):
    """A table that records the order of writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[str, Any]] = []

    def __setitem__(self, key: str, value: Any) -> None:
        self.writes.append((key, copy.deepcopy(value)))
        super().__setitem__(key, value)


def replay(writes: list[tuple[str, Any]], base: dict[str, Any]) -> dict[str, Any]:
    table = copy.deepcopy(base)
    for key, value in writes:
        table[key] = copy.deepcopy(value)
    return table


@pytest.mark.parametrize(("max_users", "second", "third", "named_after"), [
    (3, ["e", "c", "d", "a"], ["f", "b"], {"a", "b", "c"}),  # the 2nd message folds d, e
    (5, ["e", "c", "a"], ["h", "g", "f", "b"], {"a", "b", "c", "e", "f"}),  # the 3rd g, h
])
def test_user_admission_is_exactly_once_after_any_partial_write(
        max_users: int, second: list[str], third: list[str], named_after: set[str]) -> None:
    """Every prefix of a message's writes (what a crash can leave, processors/state.py),
    and after all of them every prefix of the next message's, then both processed again:
    the same users by name, the same count, and every token counted once."""
    reference = Recording()
    live = UsageState(reference, GRACE, max_users=max_users)
    live.apply("d", users_message(["a", "b"], 1), 0, 1, NOW)
    base = copy.deepcopy(dict(reference))
    reference.writes.clear()
    live.apply("d", users_message(second, 2), 0, 2, NOW)
    writes_2 = list(reference.writes)
    reference.writes.clear()
    live.apply("d", users_message(third, 3), 0, 3, NOW)
    writes_3 = list(reference.writes)
    expected = dict(reference)
    assert named(expected) == named_after
    assert len(writes_2) > 3
    assert any(key.startswith("d|users|") for key, _ in writes_3) == (max_users == 5)
    for cut_2 in range(len(writes_2) + 1):
        for cut_3 in range(len(writes_3) + 1) if cut_2 == len(writes_2) else [0]:
            crashed = replay(writes_2[:cut_2] + writes_3[:cut_3], base)
            again = UsageState(crashed, GRACE, max_users=max_users)
            again.apply("d", users_message(second, 2), 0, 2, NOW)  # processed again
            again.apply("d", users_message(third, 3), 0, 3, NOW)
            assert dict(crashed) == expected, (cut_2, cut_3)


# State size -----------------------------------------------------------------------------

def test_a_state_value_cannot_outgrow_the_producers_limit() -> None:
    """The worst case by construction: every metric, every priced model with every token
    kind, 20-digit counters (2**64 - 1: Faust's JSON takes no more), against the smallest
    producer limit the configuration allows (METERSTREAM_MAX_BODY_BYTES at its minimum of
    1024, + 65536)."""
    settings = Settings.from_env({"METERSTREAM_MAX_BODY_BYTES": "1024"})
    limit = settings.max_body_bytes + 65536 - 4096
    priced = priced_model_keys(None)
    big = 2**64 - 1
    counters = {name: big for name in (
        "function_calls", "database_io_read_bytes", "database_io_write_bytes",
        "database_io_bytes", "action_compute_mb_ms", "data_egress_bytes", "search_query_bytes",
        "file_downloads", "file_download_bytes", "log_stream_egress_bytes", "tokens",
        "database_storage_byte_ms", "file_storage_byte_ms", "search_storage_byte_ms")}
    value = {"o": big, "c": big, "x": big, "p": 1023, "m": counters,
             "t": {model: dict.fromkeys(TOKEN_KINDS, big) for model in (*priced, OTHER_MODEL)}}
    key = user_key("d" * 64, "u" * 0, "month", MONTH)
    assert len(key) + len(orjson.dumps(value)) < limit
    # And it is what a hostile message makes: thousands of models and users.
    table: dict[str, Any] = {}
    live = UsageState(table, GRACE, max_users=1000, max_value_bytes=limit)
    live.apply("d", usage_of([step(n, user=f"u{n}", model="m" * 500 + str(n))
                              for n in range(3000)], 1, priced), 0, 1, NOW)
    assert max(len(orjson.dumps(v)) for v in table.values()) < limit
    assert table[users_key("d", "month", MONTH)]["n"] == 1000


def test_a_value_over_the_limit_refuses_the_message_and_writes_nothing() -> None:
    table: dict[str, Any] = {}
    live = UsageState(table, GRACE, max_value_bytes=300)
    before = metrics.STATE_TOO_LARGE._value.get()
    with pytest.raises(StateValueTooLarge):
        live.apply("d", usage_of([step(n, model=f"m{n}") for n in range(20)], 1, None),
                   0, 1, NOW)
    assert table == {}
    assert metrics.STATE_TOO_LARGE._value.get() == before + 1


def test_a_counter_beyond_64_bits_refuses_the_message_instead_of_crashing_the_changelog() -> None:
    table: dict[str, Any] = {}
    live = UsageState(table, GRACE)
    live.apply("d", usage_of([step(1, tokens=2**64 - 1)], 1), 0, 1, NOW)
    kept = copy.deepcopy(table)
    with pytest.raises(StateValueTooLarge, match="64-bit"):
        live.apply("d", usage_of([step(2, tokens=1)], 2), 0, 2, NOW)
    assert table == kept


# Per-user alerts ------------------------------------------------------------------------

PER_USER = Quota("tokens", "day", 100, (0.8, 1.0), per_user=True)


def test_two_thousand_users_over_a_per_user_quota_raise_a_bounded_number_of_alerts() -> None:
    """The finding: one 150 KB body with 2,000 userIds raised 4,000 alerts."""
    events = [step(n, user=f"user-{n:04}", tokens=150) for n in range(2000)]
    table: dict[str, Any] = {}
    live = UsageState(table, GRACE, max_users=1000)
    usage = usage_of(events, 1)
    live.apply("d", usage, 0, 1, NOW)
    due = due_quota_alerts("d", (PER_USER,), live, usage)
    assert len(due) == 2 * 1000  # only the users the state names can be judged
    bounded = bound_user_alerts(due, {}, 100)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for alert in bounded:
        by_kind.setdefault(alert["kind"], []).append(alert)
    assert len(by_kind["quota"]) == 2 * 100
    assert len({a["user"] for a in by_kind["quota"]}) == 100
    assert sorted((a["threshold"], a["users"]) for a in by_kind["quota_users"]) == [
        (0.8, 900), (1.0, 900)]
    assert {a["id"] for a in by_kind["quota_users"]} == {
        f"quota|d|tokens|day|{by_kind['quota'][0]['period']}|{t}|users" for t in (0.8, 1.0)}


class FakeAlerts(AlertLog):
    """An alert log whose topic is a list."""

    def __init__(self, max_user_alerts: int = 100, stored: list[str] | None = None) -> None:
        self.topic_ids: list[str] = list(stored or [])
        super().__init__(KafkaConnection(""), "alerts", self._store, max_user_alerts)

    async def _store(self, key: bytes, value: bytes) -> Any:
        self.topic_ids.append(orjson.loads(value)["id"])
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def _read_ids(self, partitions: set[int]) -> dict[int, set[str]]:
        return {p: set(self.topic_ids) for p in partitions}


def test_user_alerts_stay_bounded_across_messages_and_a_restart() -> None:
    def alerts(users: range) -> list[dict[str, Any]]:
        return [{"id": f"quota|d|tokens|day|2026-11-17|1.0|user:u{n}", "kind": "quota",
                 "deployment": "d", "metric": "tokens", "period": "2026-11-17",
                 "period_unit": "day", "threshold": 1.0, "usage": 200, "limit": 100,
                 "hard": False, "user": f"u{n}"} for n in users]

    async def run() -> list[str]:
        log = FakeAlerts(max_user_alerts=3)
        await log.ensure_loaded(0, {0})
        await log.publish(0, alerts(range(2)))
        restarted = FakeAlerts(max_user_alerts=3, stored=log.topic_ids)  # reads the topic
        await restarted.ensure_loaded(0, {0})
        await restarted.publish(0, alerts(range(1, 6)))  # u1 again, then 4 new users
        await restarted.publish(0, alerts(range(6, 9)))
        return restarted.topic_ids

    ids = asyncio.run(run())
    assert ids == [*(f"quota|d|tokens|day|2026-11-17|1.0|user:u{n}" for n in range(3)),
                   "quota|d|tokens|day|2026-11-17|1.0|users"]


# Poison messages ---------------------------------------------------------------------------

def test_a_failing_message_is_tried_max_attempts_times_then_becomes_a_dead_letter() -> None:
    tries = []

    async def attempt() -> None:
        tries.append(1)
        raise ZeroDivisionError("a bug the message trips")

    with pytest.raises(Poison) as poison:
        asyncio.run(with_retries(attempt, 3, {"raw_partition": 2, "raw_offset": 7,
                                              "key": "d"}, lambda: "split"))
    assert len(tries) == 3
    assert poison.value.letter == {
        "reason": "worker: processing raised ZeroDivisionError: a bug the message trips",
        "error_type": "ZeroDivisionError", "attempts": 3, "stage": "split",
        "raw_partition": 2, "raw_offset": 7, "key": "d"}


def test_a_passing_failure_is_retried_and_kafkas_own_failures_are_not_dead_lettered() -> None:
    from aiokafka.errors import KafkaTimeoutError
    tries = []

    async def flaky() -> str:
        tries.append(1)
        if len(tries) < 2:
            raise RuntimeError("once")
        return "done"

    assert asyncio.run(with_retries(flaky, 3, {}, lambda: "")) == "done"

    async def broker_away() -> None:
        raise KafkaTimeoutError()

    with pytest.raises(KafkaTimeoutError):
        asyncio.run(with_retries(broker_away, 3, {}, lambda: ""))


# The processor: doors, strays, memory ----------------------------------------------------

class Registry:
    def __init__(self, quotas: list[dict[str, Any]] | None = None) -> None:
        self.quotas = quotas or []

    def get(self, name: str) -> Deployment:
        return Deployment(name=name, quotas=self.quotas)


class Harness:
    def __init__(self, quotas: list[dict[str, Any]] | None = None,
                 max_forward_bytes: int = 1 << 30) -> None:
        self.table: dict[str, Any] = {}
        self.sent: list[tuple[str, bytes, Any]] = []
        self.state = UsageState(self.table, GRACE)
        self.alerts = FakeAlerts()
        self.processor = RawProcessor(
            Deduplicator(MemoryPartitions(), 7 * DAY_MS), self.state, self.alerts,
            RunawayDetector(self.state, 10, 1000), Registry(quotas),  # type: ignore[arg-type]
            self._send, GRACE, lambda: {0}, PRICED, max_forward_bytes)

    async def _send(self, route: str, key: bytes, value: bytes,
                    headers: list[tuple[str, bytes]] | None = None) -> Any:
        self.sent.append((route, key, orjson.loads(value) if route == "dead_letter"
                          else rows_of(route, value, headers)))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def process(self, events: list[Any], offset: int, origin: bytes | None = None,
                key: bytes = b"d", received_at: int = NOW) -> Any:
        return asyncio.run(self.processor.process(key, orjson.dumps(events), 0, offset,
                                                  received_at, NOW, origin))

    def routed(self, route: str) -> list[dict[str, Any]]:
        return [r for name, _, records in self.sent if name == route for r in records]

    def dead(self) -> list[dict[str, Any]]:
        return [letter for name, _, letter in self.sent if name == "dead_letter"]

    def tokens(self) -> int:
        return self.state.window("d", "day", DAY).get("m", {}).get("tokens", 0)


@pytest.mark.parametrize(("origin", "counted"), [(AGENT, True), (None, True), (WEBHOOK, False),
                                                 (b"something-else", False)])
def test_agent_usage_counts_only_from_the_agent_door(origin: bytes | None,
                                                     counted: bool) -> None:
    harness = Harness()
    harness.process([step(1, tokens=7), step(2, tokens=5)], 1, origin)
    assert harness.tokens() == (12 if counted else 0)
    assert len(harness.routed("agent_usage")) == (2 if counted else 0)
    dead = harness.dead()
    assert len(dead) == (0 if counted else 2)
    if not counted:
        assert "may come only through /v1/agent/usage" in dead[0]["reason"]
        # The refused ids are not remembered: the same records through the agent door count.
        harness.process([step(2, tokens=5), step(1, tokens=7)], 2, AGENT)
        assert harness.tokens() == 12


def test_webhook_events_in_an_agent_message_are_dead_letters() -> None:
    events = [e for e in recent_events("function_execution")]
    for event in events:
        event["timestamp"] = NOW
    harness = Harness()
    key = events[0]["convex"]["deployment_name"].encode()
    harness.process(events, 1, AGENT, key)
    assert harness.routed("function_execution") == []
    assert len(harness.dead()) == len(events)
    harness.process(events[::-1], 2, WEBHOOK, key)
    assert len(harness.routed("function_execution")) == len(events)


def test_the_grace_boundaries_are_inclusive_at_both_ends() -> None:
    """Kept: an event exactly `grace` before or after its receipt; refused: 1 ms beyond."""
    harness = Harness()
    times = {"early-edge": NOW - GRACE, "too-early": NOW - GRACE - 1,
             "late-edge": NOW + GRACE, "too-late": NOW + GRACE + 1}
    harness.process([step(n, user=name, timestamp=t) for n, (name, t) in
                     enumerate(times.items())], 1, AGENT)
    assert sorted(r["user_id"] for r in harness.routed("agent_usage")) == [
        "early-edge", "late-edge"]
    reasons = {letter["event"]["user_id"]: letter["reason"] for letter in harness.dead()}
    assert reasons["too-early"].startswith("late: event time is more than the grace before")
    assert reasons["too-late"] == "event time is more than the grace after its receipt"


def test_an_event_dated_far_in_the_future_is_a_dead_letter_and_counts_nowhere() -> None:
    harness = Harness()
    harness.process([step(1, timestamp=NOW + 365 * DAY_MS)], 1, AGENT)
    assert harness.routed("agent_usage") == []
    assert harness.table == {}
    assert len(harness.dead()) == 1


def test_a_record_of_another_deployment_than_its_message_is_a_dead_letter() -> None:
    harness = Harness()
    harness.process([step(1, deployment="d"), step(2, deployment="victim")], 1, AGENT, b"d")
    assert [r["deployment"] for r in harness.routed("agent_usage")] == ["d"]
    assert harness.dead()[0]["reason"] == "deployment 'victim' differs from the message's 'd'"
    assert harness.state.window("victim", "day", DAY) == {}


def execution(memory: int | None, action_memory: int | None) -> dict[str, Any]:
    event = next(e for e in recent_events("function_execution")
                 if e["function"]["type"] == "action")
    event["timestamp"] = NOW
    event["usage"] = {**event["usage"], "memory_used_mb": memory,
                      "action_memory_used_mb": action_memory}
    event["execution_time_ms"] = 1000
    return event


@pytest.mark.parametrize(("memory", "action_memory", "mb_ms"), [
    (256, None, 256 * 1000),   # null: the fallback to memory_used_mb
    (256, 1024, 1024 * 1000),  # both, differing: action_memory_used_mb
    (None, 512, 512 * 1000),
])
def test_action_compute_takes_action_memory_else_memory(memory: int | None,
                                                         action_memory: int | None,
                                                         mb_ms: int) -> None:
    harness = Harness()
    event = execution(memory, action_memory)
    deployment = event["convex"]["deployment_name"]
    harness.process([event], 1, WEBHOOK, deployment.encode())
    assert harness.routed("function_execution")[0]["action_memory_used_mb"] == (
        action_memory or 0)
    assert harness.state.window(deployment, "day", DAY)["m"]["action_compute_mb_ms"] == mb_ms


def test_a_message_forwarding_more_than_the_producer_takes_is_refused_before_counting() -> None:
    harness = Harness(max_forward_bytes=4096)
    with pytest.raises(ForwardTooLarge):
        harness.process([step(n) for n in range(100)], 1, AGENT)
    assert harness.table == {}
    assert harness.sent == []
    assert harness.processor.stage == "split"


def test_a_processing_error_dead_letters_the_message_and_the_next_one_counts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An injected bug in the usage step: the message is tried 3 times, dead-lettered with
    its stage, and the partition goes on; nothing of it was counted."""
    harness = Harness()
    processor = harness.processor
    real_apply = harness.state.apply
    calls = []

    def broken_apply(deployment: str, usage: Any, *args: Any) -> None:
        calls.append(1)
        if usage.windows[("day", DAY)].metrics["tokens"] == 13:
            raise KeyError("a bug")
        real_apply(deployment, usage, *args)

    monkeypatch.setattr(harness.state, "apply", broken_apply)

    letters = []

    def attempt(offset: int, tokens: int) -> Callable[[], Awaitable[Any]]:
        body = orjson.dumps([step(offset, tokens=tokens)])
        return lambda: processor.process(b"d", body, 0, offset, NOW, int(time.time() * 1000),
                                         AGENT)

    async def run() -> None:
        for offset, tokens in ((1, 13), (2, 5)):
            try:
                await with_retries(attempt(offset, tokens), 3, {"raw_offset": offset},
                                   lambda: processor.stage)
            except Poison as poison:
                letters.append(poison.letter)

    asyncio.run(run())
    assert [(x["raw_offset"], x["stage"], x["attempts"]) for x in letters] == [(1, "state", 3)]
    assert len(calls) == 4
    assert harness.tokens() == 5
    assert [r["total_tokens"] for r in harness.routed("agent_usage")] == [5]


def test_unpriced_names_reach_the_sink_as_sent() -> None:
    harness = Harness()
    harness.process([step(1, model="z" * 500, provider="acme")], 1, AGENT)
    assert harness.routed("agent_usage")[0]["model"] == "z" * 500
    assert set(harness.state.window("d", "month", MONTH)["t"]) == {OTHER_MODEL}


def test_per_user_alerts_through_the_processor_are_bounded() -> None:
    harness = Harness(quotas=[PER_USER.to_json()])
    harness.process([step(n, user=f"user-{n:04}", tokens=150) for n in range(2000)], 1, AGENT)
    ids = harness.alerts.topic_ids
    assert len(ids) == 2 * 100 + 2
    assert sum(i.endswith("|users") for i in ids) == 2
    assert HOUR_MS  # (the fixed clock keeps every event inside one day)


def test_an_event_without_a_time_is_kept_and_does_not_stop_the_message() -> None:
    """Convex's `verification` event and others carry no usable time: they go to `other`
    without one, and the stream health's latest time per type (raw_processor.py) must not
    fail the whole message on them (it once did: every such body became a dead letter)."""
    timed = recent_events("function_execution")[0]
    timed["timestamp"] = NOW
    key = timed["convex"]["deployment_name"]
    untimed = {"topic": "verification", "convex": {"deployment_name": key}}
    harness = Harness()
    assert harness.process([timed, untimed], 1, WEBHOOK, key.encode()) is not None
    assert len(harness.routed("function_execution")) == 1
    assert [r.get("topic") for r in harness.routed("other")] == ["verification"]
    assert harness.dead() == []
