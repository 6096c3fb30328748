"""Quotas: their validation (meterstream/core/quotas.py), and
`PUT/GET /v1/deployments/{name}/quotas`
with its CLI on a receiver against the real broker."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.quotas import (
    METRICS,
    InvalidQuotas,
    Quota,
    parse_quotas,
    quotas_from_record,
)
from meterstream.core.registry import Deployment, InvalidDeployment, RegistryView, updated
from tests.support import REPO, meterstream, wait_for
from tests.support.pipeline import ADMIN_TOKEN, Pipeline, running_pipeline

MONTHLY_CALLS = {"metric": "function_calls", "period": "month", "limit": 1000000,
                 "thresholds": [0.8, 1.0], "hard": True}
STORED_CALLS = {**MONTHLY_CALLS, "per_user": False}
TOKENS_PER_USER = {"metric": "tokens", "period": "day", "limit": 50000, "per_user": True}
STORED_TOKENS = {**TOKENS_PER_USER, "thresholds": [0.8, 1.0], "hard": False}


def _problems(document: Any) -> dict[str, str]:
    with pytest.raises(InvalidQuotas) as raised:
        parse_quotas(document)
    return raised.value.fields


# --- meterstream/core/quotas.py ---------------------------------------------------------------


def test_every_bad_field_is_listed_at_once_with_its_path() -> None:
    problems = _problems({"quotas": [
        MONTHLY_CALLS,
        {"metric": "cpu", "period": "week", "limit": -1, "thresholds": [0, 2000],
         "hard": "yes", "per_user": 1, "colour": "blue"},
        "not an object",
        {"metric": "storage_bytes", "period": "day", "limit": True, "thresholds": []},
    ]})
    assert set(problems) == {
        "quotas[1].metric", "quotas[1].period", "quotas[1].limit", "quotas[1].thresholds",
        "quotas[1].hard", "quotas[1].per_user", "quotas[1].colour",
        "quotas[2]", "quotas[3].limit", "quotas[3].thresholds"}
    assert all(name in problems["quotas[1].metric"] for name in METRICS)
    assert problems["quotas[1].colour"] == "unknown field"


@pytest.mark.parametrize("document", [[MONTHLY_CALLS], {"quotas": [], "extra": 1}, {}, None])
def test_the_body_must_be_an_object_of_quotas_only(document: Any) -> None:
    assert set(_problems(document)) == {"body"}


def test_the_quotas_must_be_a_list() -> None:
    assert _problems({"quotas": {"metric": "tokens"}}) == {"quotas": "must be a list"}


@pytest.mark.parametrize("limit", [0, -5, "100", None, True, float("nan"), float("inf")])
def test_a_limit_must_be_a_positive_finite_number(limit: Any) -> None:
    entry = {**MONTHLY_CALLS, "limit": limit}
    assert set(_problems({"quotas": [entry]})) == {"quotas[0].limit"}


@pytest.mark.parametrize("thresholds", [[], [0], [-0.5], [100.5], [True], ["0.8"], 0.8,
                                        [0.1] * 11])
def test_thresholds_must_be_fractions_of_the_limit(thresholds: Any) -> None:
    entry = {**MONTHLY_CALLS, "thresholds": thresholds}
    assert set(_problems({"quotas": [entry]})) == {"quotas[0].thresholds"}


def test_defaults_are_filled_and_thresholds_sorted_without_repeats() -> None:
    (tokens, calls) = parse_quotas({"quotas": [
        {"metric": "tokens", "period": "day", "limit": 5},
        {**MONTHLY_CALLS, "thresholds": [1.5, 0.5, 1, 0.5]},
    ]})
    assert tokens == Quota("tokens", "day", 5, (0.8, 1.0), hard=False, per_user=False)
    assert tokens.to_json() == {"metric": "tokens", "period": "day", "limit": 5,
                                "thresholds": [0.8, 1.0], "hard": False, "per_user": False}
    assert calls.thresholds == (0.5, 1, 1.5)
    assert calls.hard is True


def test_a_repeated_metric_and_period_is_refused_naming_the_first() -> None:
    problems = _problems({"quotas": [
        MONTHLY_CALLS,
        {**MONTHLY_CALLS, "period": "day"},
        {**MONTHLY_CALLS, "limit": 5, "hard": False},
    ]})
    assert set(problems) == {"quotas[2]"}
    assert "quotas[0]" in problems["quotas[2]"]


def test_a_deployment_limit_and_a_per_user_limit_on_tokens_may_coexist() -> None:
    quotas = parse_quotas({"quotas": [
        TOKENS_PER_USER, {**TOKENS_PER_USER, "per_user": False, "limit": 10**9}]})
    assert [q.per_user for q in quotas] == [True, False]


@pytest.mark.parametrize("metric", [m for m in METRICS if m != "tokens"])
def test_only_tokens_have_per_user_quotas(metric: str) -> None:
    problems = _problems({"quotas": [{**TOKENS_PER_USER, "metric": metric}]})
    assert problems == {"quotas[0].per_user": "only the tokens metric has per-user quotas"}


def test_crossing_is_exact_for_a_fractional_limit() -> None:
    (quota,) = parse_quotas({"quotas": [
        {"metric": "action_compute_gb_hours", "period": "month", "limit": 0.1}]})
    # In floats 0.8 * 0.1 is 0.08000000000000002, so a usage of exactly 0.08 would not cross.
    assert quota.crossed(Fraction(8, 100)) == [0.8]
    assert quota.crossed(Fraction(8, 100) - Fraction(1, 10**15)) == []
    assert quota.crossed(Fraction(1, 10)) == [0.8, 1.0]
    assert quota.crossed(Fraction(1, 10) - Fraction(1, 10**15)) == [0.8]


def test_crossing_counts_and_thresholds_above_the_limit() -> None:
    quota = Quota("function_calls", "day", 1000, (0.8, 1.0, 1.5))
    assert quota.crossed(799) == []
    assert quota.crossed(800) == [0.8]
    assert quota.crossed(1499) == [0.8, 1.0]
    assert quota.crossed(1500) == [0.8, 1.0, 1.5]


def test_the_stored_form_reads_back_as_the_same_quotas() -> None:
    quotas = parse_quotas({"quotas": [MONTHLY_CALLS, TOKENS_PER_USER]})
    assert quotas_from_record([q.to_json() for q in quotas]) == quotas
    assert quotas_from_record([]) == ()
    assert quotas_from_record(None) == ()


VALUE = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
ENTRY = st.fixed_dictionaries({}, optional={
    "metric": st.sampled_from(METRICS) | VALUE,
    "period": st.sampled_from(["day", "month"]) | VALUE,
    "limit": st.floats(min_value=1e-6, max_value=1e12) | st.integers(1, 10**12) | VALUE,
    "thresholds": st.lists(st.floats(0.01, 100) | VALUE, max_size=12) | VALUE,
    "hard": VALUE, "per_user": VALUE, "other": VALUE,
})


@given(st.lists(ENTRY | VALUE, max_size=4))
def test_any_document_is_either_quotas_or_a_list_of_problems(entries: list[Any]) -> None:
    problems: dict[str, str] = {}
    try:
        quotas = parse_quotas({"quotas": entries})
    except InvalidQuotas as exc:
        problems = exc.fields
        quotas = None
    if quotas is None:
        assert problems
        assert all(re.fullmatch(r"quotas\[\d+\](\.\w+)?", key) for key in problems)
        return
    assert len(quotas) == len(entries)
    assert quotas_from_record([q.to_json() for q in quotas]) == quotas


# --- the registry record ------------------------------------------------------------------


def test_a_record_of_an_older_version_loads_without_quotas() -> None:
    record = Deployment.from_json(b'{"name": "old-1", "team": "acme", "updated_at": 5}')
    assert (record.team, record.quotas) == ("acme", [])
    assert record.public()["quotas"] == []


def test_the_general_update_refuses_quotas_and_keeps_them() -> None:
    current = Deployment(name="app-1", team="a", quotas=[STORED_CALLS])
    with pytest.raises(InvalidDeployment) as raised:
        updated(current, "app-1", {"team": "b", "quotas": []})
    assert set(raised.value.fields) == {"quotas"}
    assert raised.value.fields["quotas"].startswith("unknown field")
    changed = updated(current, "app-1", {"team": "b"})
    assert (changed.team, changed.quotas) == ("b", [STORED_CALLS])
    assert Deployment.from_json(changed.to_json()) == changed


# --- the admin API on the real broker ----------------------------------------------------

KAFKA = pytest.mark.kafka


@pytest.fixture(scope="module")
def receiver(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Pipeline]:
    with running_pipeline(kafka_bootstrap, tmp_path_factory.mktemp("quotas"),
                          command="receiver") as pipeline:
        yield pipeline


def _quotas_path(name: str) -> str:
    return f"/v1/deployments/{name}/quotas"


def _set(receiver: Pipeline, name: str, quotas: list[dict]) -> dict:
    status, answer = receiver.admin("PUT", _quotas_path(name), {"quotas": quotas})
    assert status == 200, answer
    return answer


async def _store_record(bootstrap: str, topic: str, name: str, value: dict) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, orjson.dumps(value), key=name.encode())
    finally:
        await producer.stop()


def _write_directly(receiver: Pipeline, bootstrap: str, name: str, value: dict) -> None:
    """Writes a registry record as another (e.g. an older) version would, and waits until
    the receiver holds it."""
    topic = f"{receiver.namespace}.deployments"
    asyncio.run(_store_record(bootstrap, topic, name, value))
    wait_for(lambda: receiver.admin("GET", f"/v1/deployments/{name}")[1].get("updated_at")
             == value["updated_at"], timeout=30, what=f"the receiver to load {name}")


async def _fresh_view(bootstrap: str, topic: str, name: str) -> Deployment | None:
    view = RegistryView(KafkaConnection(bootstrap), topic)
    view.start()
    try:
        await asyncio.wait_for(view.wait_loaded(), 30)
        return view.get(name)
    finally:
        await view.stop()


@KAFKA
def test_put_then_get_roundtrip_with_defaults_filled(receiver: Pipeline) -> None:
    receiver.register("quota-app-1", team="acme")
    answer = _set(receiver, "quota-app-1", [MONTHLY_CALLS, TOKENS_PER_USER])
    expected = {"name": "quota-app-1", "quotas": [STORED_CALLS, STORED_TOKENS]}
    assert answer == expected
    assert receiver.admin("GET", _quotas_path("quota-app-1")) == (200, expected)
    status, record = receiver.admin("GET", "/v1/deployments/quota-app-1")
    assert (status, record["quotas"], record["team"]) == (200, expected["quotas"], "acme")


@KAFKA
def test_a_put_replaces_the_whole_list_and_an_empty_list_clears_it(
        receiver: Pipeline) -> None:
    receiver.register("quota-app-2")
    _set(receiver, "quota-app-2", [MONTHLY_CALLS, TOKENS_PER_USER])
    assert _set(receiver, "quota-app-2", [TOKENS_PER_USER])["quotas"] == [STORED_TOKENS]
    assert _set(receiver, "quota-app-2", [])["quotas"] == []
    assert receiver.admin("GET", _quotas_path("quota-app-2")) == (
        200, {"name": "quota-app-2", "quotas": []})


@KAFKA
def test_an_invalid_document_is_400_listing_every_bad_field_and_changes_nothing(
        receiver: Pipeline) -> None:
    receiver.register("quota-app-3")
    _set(receiver, "quota-app-3", [MONTHLY_CALLS])
    status, answer = receiver.admin("PUT", _quotas_path("quota-app-3"), {"quotas": [
        {"metric": "cpu_seconds", "period": "week", "limit": 0},
        {**TOKENS_PER_USER, "metric": "storage_bytes", "hard": "yes"}]})
    assert status == 400
    assert (answer["reason"], answer["error"]) == ("invalid", "invalid quotas")
    assert set(answer["fields"]) == {"quotas[0].metric", "quotas[0].period", "quotas[0].limit",
                                     "quotas[1].per_user", "quotas[1].hard"}
    assert receiver.admin("GET", _quotas_path("quota-app-3"))[1]["quotas"] == [STORED_CALLS]
    status, body = receiver.request("PUT", _quotas_path("quota-app-3"), b'{"quotas": [',
                                    {"Authorization": f"Bearer {ADMIN_TOKEN}"},
                                    port_variable="METERSTREAM_ADMIN_PORT")
    assert (status, orjson.loads(body)["reason"]) == (400, "malformed")


@KAFKA
def test_refusals_are_counted(receiver: Pipeline) -> None:
    def count(reason: str) -> float:
        _, page = receiver.request("GET", "/metrics")
        match = re.search(rb'meterstream_receiver_requests_total\{endpoint="/v1/deployments",'
                          rb'reason="' + reason.encode() + rb'",status="\d+"\} (\S+)', page)
        return float(match.group(1)) if match else 0.0

    receiver.register("quota-app-4")
    invalid, not_found = count("invalid"), count("not_found")
    receiver.admin("PUT", _quotas_path("quota-app-4"), {"quotas": [{"metric": "x"}]})
    receiver.admin("GET", _quotas_path("no-such-app"))
    assert (count("invalid"), count("not_found")) == (invalid + 1, not_found + 1)


@KAFKA
def test_an_unknown_or_removed_deployment_is_404(receiver: Pipeline,
                                                 kafka_bootstrap: str) -> None:
    for method, body in (("GET", None), ("PUT", {"quotas": [MONTHLY_CALLS]})):
        status, answer = receiver.admin(method, _quotas_path("never-registered"), body)
        assert (status, answer["reason"]) == (404, "not_found")
    _write_directly(receiver, kafka_bootstrap, "removed-app-1",
                    {"name": "removed-app-1", "removed_at": 1_700_000_000_000,
                     "updated_at": 1_700_000_000_001})
    for method, body in (("GET", None), ("PUT", {"quotas": [MONTHLY_CALLS]})):
        status, answer = receiver.admin(method, _quotas_path("removed-app-1"), body)
        assert (status, answer["reason"]) == (404, "not_found")
    assert receiver.admin("GET", "/v1/deployments/removed-app-1")[1]["quotas"] == []


@KAFKA
def test_the_quotas_routes_need_the_admin_token(receiver: Pipeline) -> None:
    receiver.register("quota-app-5")
    _set(receiver, "quota-app-5", [MONTHLY_CALLS])
    for token, status in (("", 401), ("x" * 30, 403)):
        assert receiver.admin("GET", _quotas_path("quota-app-5"), token=token)[0] == status
        assert receiver.admin("PUT", _quotas_path("quota-app-5"), {"quotas": []},
                              token=token)[0] == status
    assert receiver.admin("GET", _quotas_path("quota-app-5"))[1]["quotas"] == [STORED_CALLS]


@KAFKA
def test_updating_the_deployment_keeps_its_quotas(receiver: Pipeline) -> None:
    receiver.register("quota-app-6", team="first")
    _set(receiver, "quota-app-6", [MONTHLY_CALLS])
    record = receiver.register("quota-app-6", team="second")
    assert (record["team"], record["quotas"]) == ("second", [STORED_CALLS])
    assert receiver.admin("GET", _quotas_path("quota-app-6"))[1]["quotas"] == [STORED_CALLS]


@KAFKA
def test_the_general_put_refuses_quotas(receiver: Pipeline) -> None:
    receiver.register("quota-app-7", team="kept")
    status, answer = receiver.admin("PUT", "/v1/deployments/quota-app-7",
                                    {"team": "changed", "quotas": [MONTHLY_CALLS]})
    assert status == 400
    assert set(answer["fields"]) == {"quotas"}
    assert answer["fields"]["quotas"].startswith("unknown field")
    record = receiver.admin("GET", "/v1/deployments/quota-app-7")[1]
    assert (record["team"], record["quotas"]) == ("kept", [])


@KAFKA
def test_a_record_of_an_older_version_gets_quotas(receiver: Pipeline,
                                                  kafka_bootstrap: str) -> None:
    _write_directly(receiver, kafka_bootstrap, "legacy-app-1",
                    {"name": "legacy-app-1", "team": "old", "updated_at": 1_600_000_000_000})
    assert receiver.admin("GET", _quotas_path("legacy-app-1"))[1]["quotas"] == []
    _set(receiver, "legacy-app-1", [MONTHLY_CALLS])
    record = receiver.admin("GET", "/v1/deployments/legacy-app-1")[1]
    assert (record["team"], record["quotas"]) == ("old", [STORED_CALLS])


@KAFKA
def test_a_running_replica_and_a_fresh_view_see_the_quotas(
        receiver: Pipeline, kafka_bootstrap: str, tmp_path: Path) -> None:
    receiver.register("quota-app-8")
    # Replicas share the key that seals the registry's webhook secrets.
    key_file = str(Path(receiver.env["METERSTREAM_DATA_DIR"]) / "secret-key")
    with running_pipeline(kafka_bootstrap, tmp_path, command="receiver",
                          extra_env={"METERSTREAM_NAMESPACE": receiver.namespace,
                                     "METERSTREAM_SECRET_KEY_FILE": key_file}) as replica:
        assert replica.admin("GET", _quotas_path("quota-app-8"))[1]["quotas"] == []
        _set(receiver, "quota-app-8", [MONTHLY_CALLS, TOKENS_PER_USER])
        wait_for(lambda: replica.admin("GET", _quotas_path("quota-app-8"))[1]["quotas"]
                 == [STORED_CALLS, STORED_TOKENS], timeout=30,
                 what="the replica to see the quotas")
    record = asyncio.run(_fresh_view(kafka_bootstrap, f"{receiver.namespace}.deployments",
                                     "quota-app-8"))
    assert record is not None
    # What the worker reads.
    assert quotas_from_record(record.quotas) == parse_quotas(
        {"quotas": [MONTHLY_CALLS, TOKENS_PER_USER]})


def _cli_env(receiver: Pipeline) -> dict[str, str]:
    return {"METERSTREAM_ADMIN_TOKEN": ADMIN_TOKEN,
            "METERSTREAM_ADMIN_PORT": receiver.env["METERSTREAM_ADMIN_PORT"]}


@KAFKA
def test_the_cli_sets_and_shows_quotas(receiver: Pipeline, tmp_path: Path) -> None:
    env = _cli_env(receiver)
    receiver.register("quota-cli-1")
    document = tmp_path / "quotas.json"
    document.write_text(json.dumps({"quotas": [MONTHLY_CALLS, TOKENS_PER_USER]}))
    expected = {"name": "quota-cli-1", "quotas": [STORED_CALLS, STORED_TOKENS]}
    put = meterstream(["deployments", "set-quotas", "quota-cli-1", str(document)], env)
    assert json.loads(put.stdout) == expected
    shown = meterstream(["deployments", "quotas", "quota-cli-1"], env)
    assert json.loads(shown.stdout) == expected

    from_stdin = subprocess.run(
        [sys.executable, "-m", "meterstream", "deployments", "set-quotas", "quota-cli-1", "-"],
        input=json.dumps({"quotas": []}), env={**os.environ, **env},
        capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert json.loads(from_stdin.stdout) == {"name": "quota-cli-1", "quotas": []}


@KAFKA
def test_the_cli_reports_errors_and_exits_1(receiver: Pipeline, tmp_path: Path) -> None:
    env = _cli_env(receiver)
    receiver.register("quota-cli-2")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"quotas": [{"metric": "tokens", "period": "year"}]}))
    refused = meterstream(["deployments", "set-quotas", "quota-cli-2", str(bad)], env,
                          check=False)
    assert refused.returncode == 1
    assert set(json.loads(refused.stdout)["fields"]) == {"quotas[0].period", "quotas[0].limit"}
    missing = meterstream(["deployments", "quotas", "no-such-app"], env, check=False)
    assert (missing.returncode, json.loads(missing.stdout)["reason"]) == (1, "not_found")
    unreadable = meterstream(["deployments", "set-quotas", "quota-cli-2",
                              str(tmp_path / "absent.json")], env, check=False)
    assert unreadable.returncode == 1
    assert "cannot read quotas" in unreadable.stderr
