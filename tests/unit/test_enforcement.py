"""Enforcement at the source without a broker: the decision (processors/enforcement.py),
the loop's changes and their records (processors/enforcer.Enforcer, with the alerts topic
as a list), and the Convex client (processors/convex_env.py) against the stand-in."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
import pytest
from prometheus_client import REGISTRY

from meterstream.core import secret_box
from meterstream.core.registry import Deployment, InvalidDeployment, updated
from meterstream.core.secret_box import Keyring
from processors.convex_env import ConvexEnv, EnvUpdateFailed, deployment_url
from processors.enforcement import (
    Applied,
    DeploymentEnforcement,
    Exceeded,
    changes,
    exceeded,
    note,
    value_of,
)
from processors.enforcer import Enforcer
from tests.support.convex_standin import ConvexStandIn

T = TypeVar("T")
NAME = "happy-otter-123"
KEY = "prod:happy-otter-123|secret-deploy-key"
VAR = "METERSTREAM_QUOTA_EXCEEDED"
HARD = {"metric": "function_calls", "period": "month", "limit": 1000, "hard": True}


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


DEC_1 = ms("2026-12-01T00:00:00")
JAN_1 = ms("2027-01-01T00:00:00")
DEC_10 = ms("2026-12-10T12:00:00")


def quota_alert(threshold: float = 1.0, usage: int = 1000, hard: bool = True,
                period: str = "2026-12-01", unit: str = "month",
                metric: str = "function_calls", **extra: Any) -> dict[str, Any]:
    return {"id": f"quota|{NAME}|{metric}|{unit}|{period}|{threshold}", "kind": "quota",
            "deployment": NAME, "metric": metric, "period": period, "period_unit": unit,
            "threshold": threshold, "usage": usage, "limit": 1000, "hard": hard, **extra}


def record(quotas: list[dict[str, Any]] | None = None, opted: bool = True,
           key: str | None = KEY, removed_at: int = 0) -> Deployment:
    return Deployment(NAME, quotas=[HARD] if quotas is None else quotas,
                      enforce_at_source=opted, deploy_key=key, removed_at=removed_at)


def state_of(*alerts: dict[str, Any]) -> DeploymentEnforcement:
    state = DeploymentEnforcement()
    for alert in alerts:
        note(state, alert)
    return state


def run(scenario: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(scenario, 30))


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- the opt-in and the deploy key in the registry ------------------------------------------

def test_the_opt_in_is_set_by_put_kept_by_other_updates_and_refused_when_not_a_boolean(
) -> None:
    opted = updated(None, NAME, {"enforce_at_source": True})
    assert opted.enforce_at_source
    assert opted.public()["enforce_at_source"] is True
    assert updated(opted, NAME, {"team": "acme"}).enforce_at_source
    assert not updated(opted, NAME, {"enforce_at_source": False}).enforce_at_source
    for bad in ("yes", 1, None):
        with pytest.raises(InvalidDeployment) as refused:
            updated(opted, NAME, {"enforce_at_source": bad})
        assert refused.value.fields == {"enforce_at_source": "must be true or false"}


@pytest.mark.parametrize(("flags", "expected"), [
    (["--enforce"], True), (["--no-enforce"], False), ([], None)])
def test_put_and_provision_take_enforce(flags: list[str], expected: bool | None,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from meterstream.cli import _parser
    from meterstream.deployments import _body

    monkeypatch.setenv("DEPLOY_KEY", KEY)
    for action in (["put", NAME], ["provision", NAME, "--deploy-key-env", "DEPLOY_KEY"]):
        body = _body(_parser().parse_args(["deployments", *action, *flags]))
        assert body.get("enforce_at_source") is expected


def test_the_deploy_key_is_sealed_at_rest_and_never_shown() -> None:
    secret_box.install(Keyring(bytes(range(32))))
    try:
        stored = record().to_json()
        assert KEY.encode() not in stored
        assert orjson.loads(stored)["deploy_key"]["sealed"] == 1
        assert Deployment.from_json(stored).deploy_key == KEY
    finally:
        secret_box.install(None)
    assert KEY not in repr(record())
    assert "deploy_key" not in record().public()


# --- the decision --------------------------------------------------------------------------

def test_a_hard_quota_reached_is_exceeded_until_its_period_ends() -> None:
    state = state_of(quota_alert(0.8, 800), quota_alert(1.0, 1000))
    assert exceeded(state, record(), DEC_10) == (Exceeded("function_calls", "month", JAN_1),)
    assert value_of(exceeded(state, record(), DEC_10)) == (
        '{"exceeded":[{"metric":"function_calls","period":"month",'
        '"until":"2027-01-01T00:00:00Z"}]}')
    assert exceeded(state, record(), JAN_1) == ()
    assert state.hard == {}  # an ended period is forgotten


def test_a_day_quota_ends_at_the_next_utc_midnight() -> None:
    day = {**HARD, "period": "day"}
    state = state_of(quota_alert(unit="day", period="2026-12-10"))
    assert exceeded(state, record([day]), DEC_10) == (
        Exceeded("function_calls", "day", ms("2026-12-11T00:00:00")),)


@pytest.mark.parametrize("alert", [
    quota_alert(0.8, 800),                     # below the limit
    quota_alert(hard=False),                   # a soft quota's alert
    quota_alert(user="u1", metric="tokens"),   # one end user's quota
    {**quota_alert(), "kind": "quota_users"},  # the folded per-user alerts
    quota_alert(period="2026-13-01"),          # unreadable period
    quota_alert(unit="week"),                  # unknown period unit
    {**quota_alert(), "usage": "1000"},        # usage not a number
    {"id": "runaway|x|1", "kind": "runaway", "deployment": NAME},
])
def test_only_a_deployment_wide_hard_alert_at_the_limit_counts(alert: dict[str, Any]) -> None:
    assert exceeded(state_of(alert), record(), DEC_10) == ()


def test_a_quota_raised_above_the_usage_or_made_soft_or_removed_ends_it() -> None:
    state = state_of(quota_alert(1.0, 1000))
    assert exceeded(state, record([{**HARD, "limit": 1001}]), DEC_10) == ()
    assert exceeded(state, record([{**HARD, "hard": False}]), DEC_10) == ()
    assert exceeded(state, record([]), DEC_10) == ()
    # Raised, but usage reported later (a higher threshold) is above it again.
    note(state, quota_alert(1.5, 1500))
    assert exceeded(state, record([{**HARD, "limit": 1200}]), DEC_10) != ()


def test_not_opted_in_removed_or_unknown_deployments_want_no_variable() -> None:
    state = state_of(quota_alert())
    assert exceeded(state, record(opted=False), DEC_10) == ()
    assert exceeded(state, record(removed_at=DEC_1), DEC_10) == ()
    assert exceeded(state, None, DEC_10) == ()


def test_several_quotas_are_named_in_one_value_in_a_stable_order() -> None:
    storage = {**HARD, "metric": "storage_bytes", "period": "day"}
    state = state_of(quota_alert(metric="storage_bytes", unit="day", period="2026-12-10"),
                     quota_alert())
    found = exceeded(state, record([HARD, storage]), DEC_10)
    assert [e.metric for e in found] == ["function_calls", "storage_bytes"]
    value = orjson.loads(value_of(found) or "")
    assert value["exceeded"][1] == {"metric": "storage_bytes", "period": "day",
                                    "until": "2026-12-11T00:00:00Z"}


def test_the_change_is_made_only_when_the_wanted_value_differs_from_the_applied() -> None:
    assert changes(None, VAR, None) == []
    assert changes(None, VAR, "v") == [{"name": VAR, "value": "v"}]
    assert changes(Applied(VAR, "v", 1), VAR, "v") == []
    assert changes(Applied(VAR, "v", 1), VAR, "w") == [{"name": VAR, "value": "w"}]
    assert changes(Applied(VAR, "v", 1), VAR, None) == [{"name": VAR}]
    assert changes(Applied(VAR, None, 2), VAR, None) == []
    # The variable was renamed in the settings while set: the old one goes in the same call.
    assert changes(Applied("OLD", "v", 1), VAR, "v") == [{"name": "OLD"},
                                                          {"name": VAR, "value": "v"}]
    assert changes(Applied("OLD", None, 2), VAR, None) == []


def test_enforcement_alerts_are_taken_by_number_so_reading_one_back_changes_nothing() -> None:
    state = DeploymentEnforcement()
    second = {"id": f"enforcement|{NAME}|2", "kind": "enforcement", "deployment": NAME,
              "variable": VAR, "value": None}
    first = {**second, "id": f"enforcement|{NAME}|1", "value": "v"}
    note(state, first)
    note(state, second)
    note(state, first)  # an older record again
    assert state.applied == Applied(VAR, None, 2)


# --- the loop's changes ----------------------------------------------------------------------

class FakeEnv:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, list[dict[str, str]]]] = []
        self.failures: list[EnvUpdateFailed] = []

    async def update(self, deployment: str, deploy_key: str,
                     changes: list[dict[str, str]]) -> int:
        self.calls.append((deployment, deploy_key, changes))
        if self.failures:
            raise self.failures.pop(0)
        return 1


class Setup:
    def __init__(self, deployment: Deployment | None = None) -> None:
        self.now = DEC_10
        self.records = {NAME: deployment or record()}
        self.env = FakeEnv()
        self.topic: list[tuple[bytes, bytes]] = []
        self.enforcer = self.new_enforcer()

    def new_enforcer(self) -> Enforcer:
        async def store(key: bytes, value: bytes) -> None:
            self.topic.append((key, value))

        return Enforcer(self.records, self.env, store, VAR, lambda: self.now, retry_ms=1000)

    def replay(self, enforcer: Enforcer, alerts: list[dict[str, Any]]) -> None:
        """A fresh assignment of partition 0, read from its beginning to its end."""
        enforcer.assign([0])
        for alert in alerts:
            enforcer.take(0, orjson.dumps(alert))
        for _, value in self.topic:
            enforcer.take(0, value)
        enforcer.caught_up(0)

    @property
    def recorded(self) -> list[dict[str, Any]]:
        return [orjson.loads(value) for _, value in self.topic]


def test_the_variable_is_set_once_recorded_and_a_restart_changes_nothing() -> None:
    setup = Setup()
    alerts = [quota_alert(0.8, 800), quota_alert(1.0, 1000)]
    setup.replay(setup.enforcer, alerts)
    run(setup.enforcer.enforce())
    run(setup.enforcer.enforce())
    (call,) = setup.env.calls
    assert call[:2] == (NAME, KEY)
    assert call[2][0]["name"] == VAR
    assert "function_calls" in call[2][0]["value"]
    (alert,) = setup.recorded
    assert setup.topic[0][0] == NAME.encode()  # keyed: the deployment's own partition
    assert alert["id"] == f"enforcement|{NAME}|1"
    assert (alert["kind"], alert["action"], alert["value"]) == ("enforcement", "set",
                                                                 call[2][0]["value"])
    assert alert["exceeded"] == [{"metric": "function_calls", "period": "month",
                                  "until": "2027-01-01T00:00:00Z"}]
    restarted = setup.new_enforcer()
    setup.replay(restarted, alerts)
    run(restarted.enforce())
    assert len(setup.env.calls) == 1
    assert len(setup.topic) == 1


def test_the_period_end_removes_it_once_and_the_next_period_can_set_it_again() -> None:
    setup = Setup()
    setup.replay(setup.enforcer, [quota_alert()])
    run(setup.enforcer.enforce())
    setup.now = JAN_1
    run(setup.enforcer.enforce())
    run(setup.enforcer.enforce())
    assert [c[2] for c in setup.env.calls][1:] == [[{"name": VAR}]]
    assert [(a["id"], a["action"], a["value"]) for a in setup.recorded] == [
        (f"enforcement|{NAME}|1", "set", setup.recorded[0]["value"]),
        (f"enforcement|{NAME}|2", "removed", None)]
    setup.enforcer.take(0, orjson.dumps(quota_alert(period="2027-01-01")))
    run(setup.enforcer.enforce([NAME]))
    assert setup.recorded[-1]["id"] == f"enforcement|{NAME}|3"
    assert setup.recorded[-1]["exceeded"][0]["until"] == "2027-02-01T00:00:00Z"


def test_a_quota_raised_or_an_opt_out_removes_it() -> None:
    for changed in (record([{**HARD, "limit": 5000}]), record(opted=False)):
        setup = Setup()
        setup.replay(setup.enforcer, [quota_alert()])
        run(setup.enforcer.enforce())
        setup.records[NAME] = changed
        run(setup.enforcer.enforce())
        assert [a["action"] for a in setup.recorded] == ["set", "removed"]


def test_nothing_is_decided_before_the_partition_was_read_to_its_end() -> None:
    setup = Setup()
    setup.enforcer.assign([0])
    setup.enforcer.take(0, orjson.dumps(quota_alert()))
    run(setup.enforcer.enforce())
    assert setup.env.calls == []
    setup.enforcer.caught_up(0)
    run(setup.enforcer.enforce())
    assert len(setup.env.calls) == 1


def test_a_revoked_partition_is_forgotten_and_unreadable_messages_are_skipped() -> None:
    setup = Setup()
    setup.replay(setup.enforcer, [])
    assert setup.enforcer.take(0, b"not json") is None
    assert setup.enforcer.take(0, b"[1]") is None
    assert setup.enforcer.take(0, None) is None
    assert setup.enforcer.take(1, orjson.dumps(quota_alert())) is None  # not assigned
    setup.enforcer.revoke([0])
    assert setup.enforcer.take(0, orjson.dumps(quota_alert())) is None
    run(setup.enforcer.enforce())
    assert setup.env.calls == []


@pytest.mark.parametrize(("failure", "reason"), [
    (EnvUpdateFailed("Convex answered 401 BadAdminKey", final=True), "refused"),
    (EnvUpdateFailed("gave up after 5 attempts", final=False), "unavailable"),
])
def test_a_failed_change_is_not_recorded_and_is_tried_again_after_a_backoff(
        failure: EnvUpdateFailed, reason: str) -> None:
    setup = Setup()
    setup.env.failures = [failure, failure]
    setup.replay(setup.enforcer, [quota_alert()])
    before = sample("meterstream_worker_enforcement_failures_total", reason=reason)
    run(setup.enforcer.enforce())
    run(setup.enforcer.enforce())  # within the backoff: not tried
    assert len(setup.env.calls) == 1
    assert setup.topic == []
    setup.now += 1000
    run(setup.enforcer.enforce())  # the second failure doubles the wait
    setup.now += 1999
    run(setup.enforcer.enforce())
    assert len(setup.env.calls) == 2
    assert setup.topic == []
    setup.now += 1
    run(setup.enforcer.enforce())
    assert len(setup.env.calls) == 3
    assert [a["action"] for a in setup.recorded] == ["set"]
    assert sample("meterstream_worker_enforcement_failures_total", reason=reason) == before + 2


def test_a_deployment_without_a_deploy_key_is_not_changed() -> None:
    setup = Setup(record(key=None))
    setup.replay(setup.enforcer, [quota_alert()])
    before = sample("meterstream_worker_enforcement_failures_total", reason="no_deploy_key")
    run(setup.enforcer.enforce())
    assert setup.env.calls == []
    assert setup.topic == []
    assert sample("meterstream_worker_enforcement_failures_total",
                  reason="no_deploy_key") == before + 1


# --- the Convex client -------------------------------------------------------------------------

@pytest.fixture
def standin() -> Iterator[ConvexStandIn]:
    convex = ConvexStandIn().start()
    convex.add(NAME, KEY)
    try:
        yield convex
    finally:
        convex.stop()


def test_the_deployment_url_is_the_platform_api_template_without_its_prefix() -> None:
    assert deployment_url("https://{deployment}.convex.cloud/api/v1", NAME) == (
        f"https://{NAME}.convex.cloud")
    assert deployment_url("http://127.0.0.1:9/d/{deployment}/api/v1/", NAME) == (
        f"http://127.0.0.1:9/d/{NAME}")


def test_the_client_sets_and_removes_a_variable(standin: ConvexStandIn) -> None:
    env = ConvexEnv(standin.url_template)
    assert run(env.update(NAME, KEY, [{"name": VAR, "value": "v"}])) == 1
    assert standin.deployments[NAME].env == {VAR: "v"}
    run(env.update(NAME, KEY, [{"name": VAR}]))
    assert standin.deployments[NAME].env == {}
    assert standin.deployments[NAME].env_updates == [[{"name": VAR, "value": "v"}],
                                                     [{"name": VAR}]]


def test_the_client_retries_unavailability_with_backoff(standin: ConvexStandIn) -> None:
    env = ConvexEnv(standin.url_template, attempts=4, first_backoff=0.001)
    before = sample("meterstream_worker_enforcement_retries_total")
    standin.fail_next = 2
    assert run(env.update(NAME, KEY, [{"name": VAR, "value": "v"}])) == 3
    assert standin.deployments[NAME].env == {VAR: "v"}
    assert sample("meterstream_worker_enforcement_retries_total") == before + 2
    standin.fail_next = 4
    with pytest.raises(EnvUpdateFailed) as failed:
        run(env.update(NAME, KEY, [{"name": VAR}]))
    assert not failed.value.final
    assert "503 Overloaded" in str(failed.value)
    assert standin.deployments[NAME].env == {VAR: "v"}


def test_the_client_does_not_retry_a_refusal_and_never_shows_the_key(
        standin: ConvexStandIn) -> None:
    env = ConvexEnv(standin.url_template, first_backoff=0.001)
    with pytest.raises(EnvUpdateFailed) as failed:
        run(env.update(NAME, "wrong-key", [{"name": VAR, "value": "v"}]))
    assert failed.value.final
    assert "401 BadAdminKey" in str(failed.value)
    assert "wrong-key" not in str(failed.value)
    assert standin.deployments[NAME].env_updates == []


def test_the_client_gives_up_on_an_unreachable_deployment() -> None:
    env = ConvexEnv("http://127.0.0.1:9/d/{deployment}/api/v1", attempts=2,
                    first_backoff=0.001, timeout=2)
    with pytest.raises(EnvUpdateFailed) as failed:
        run(env.update(NAME, KEY, [{"name": VAR}]))
    assert not failed.value.final
    assert KEY not in str(failed.value)
