"""The receiver process on the real broker: refusals, signatures, registry, agent usage."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterstream.core.signature import sign
from tests.support import convex_examples, meterstream, read_topic
from tests.support.agent_steps import AI_SDK, TOKENS, V_USAGE
from tests.support.pipeline import ADMIN_TOKEN, Pipeline, running_pipeline

VECTOR = convex_examples()["signature_test_vector"]
SECRET = VECTOR["secret"]
INGEST_TOKEN = "ingest-token-for-happy-otter"
MAX_BODY = 65536


@pytest.fixture(scope="module")
def receiver(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Pipeline]:
    workdir = tmp_path_factory.mktemp("receiver")
    with running_pipeline(kafka_bootstrap, workdir, command="receiver",
                          extra_env={"METERSTREAM_MAX_BODY_BYTES": str(MAX_BODY)}) as pipeline:
        pipeline.register("happy-otter-123", webhook_secret=SECRET, ingest_token=INGEST_TOKEN,
                          team="acme", plan="professional", labels={"app": "support"})
        pipeline.register("legacy-unsigned-1")
        yield pipeline


def _events(name: str = "happy-otter-123") -> list[dict]:
    events = copy.deepcopy(convex_examples()["events"])
    for event in events:
        event["convex"]["deployment_name"] = name
    return events


def _reason(answer: bytes) -> str:
    return orjson.loads(answer)["reason"]


def _raw_values(bootstrap: str, topic: str) -> list[bytes]:
    return [message.value for message in read_topic(bootstrap, topic)]


def test_the_reference_verification_request_is_accepted(receiver: Pipeline) -> None:
    body = VECTOR["body"].encode()
    status, answer = receiver.post(body, headers={"x-webhook-signature": VECTOR["header"]})
    assert (status, orjson.loads(answer)) == (200, {"accepted": 1})


@pytest.mark.parametrize("signature", [
    None, "sha256=" + "0" * 64,
    "feffd8e3e74f50cc21677bf9ab0b9be0002490101f5beed48c275c104a796ea5",
])
def test_a_missing_or_wrong_signature_is_401(receiver: Pipeline, signature: str | None) -> None:
    headers = {"x-webhook-signature": signature} if signature else {}
    status, answer = receiver.post(orjson.dumps(_events()), headers=headers)
    assert (status, _reason(answer)) == (401, "unauthenticated")


def test_the_signature_of_another_body_is_401(receiver: Pipeline) -> None:
    status, answer = receiver.post(orjson.dumps(_events()),
                                   headers={"x-webhook-signature": VECTOR["header"]})
    assert (status, _reason(answer)) == (401, "unauthenticated")


def test_unregistered_is_401_and_mixed_deployments_are_403(receiver: Pipeline) -> None:
    status, answer = receiver.post(orjson.dumps(_events("stranger-42")), SECRET)
    assert (status, _reason(answer)) == (401, "unauthenticated")
    mixed = _events() + _events("legacy-unsigned-1")
    status, answer = receiver.post(orjson.dumps(mixed), SECRET)
    assert (status, _reason(answer)) == (403, "several_deployments")


def test_a_deployment_without_secret_that_opted_in_takes_unsigned_batches(
        receiver: Pipeline) -> None:
    assert receiver.admin("GET", "/v1/deployments/legacy-unsigned-1")[1]["allow_unsigned"]
    status, _ = receiver.post(orjson.dumps(_events("legacy-unsigned-1")))
    assert status == 200


@pytest.mark.parametrize(("body", "status", "reason"), [
    (b'[{"topic": "console", "convex": {"deployment_name": "legacy-unsigned-1"}, ', 400,
     "malformed"),
    (b'{"convex": {"deployment_name": "legacy-unsigned-1"}}\n[', 400, "malformed"),
    (b"", 400, "no_deployment"),
    (b'[{"topic": "console"}]', 400, "no_deployment"),
    (b"[" + b" " * MAX_BODY + b"]", 413, "too_large"),
])
def test_bad_bodies(receiver: Pipeline, body: bytes, status: int, reason: str) -> None:
    got, answer = receiver.post(body)
    assert got == status
    if status != 413:
        assert _reason(answer) == reason


def test_unknown_topics_and_fields_pass_through_untouched(receiver: Pipeline,
                                                          kafka_bootstrap: str) -> None:
    novel = {"timestamp": 1755820800999, "topic": "quantum_entanglement", "spin": None,
             "convex": {"deployment_name": "happy-otter-123", "brand_new": [1, 2]}}
    body = orjson.dumps([*_events(), novel]) + b"\n"
    status, answer = receiver.post(body, SECRET)
    assert (status, orjson.loads(answer)) == (200, {"accepted": 6})
    assert body in _raw_values(kafka_bootstrap, f"{receiver.namespace}.raw")


def test_refusals_are_counted_by_reason(receiver: Pipeline) -> None:
    def count(reason: str) -> float:
        _, page = receiver.request("GET", "/metrics")
        match = re.search(rb'meterstream_receiver_requests_total\{endpoint="/v1/convex/logs",'
                          rb'reason="' + reason.encode() + rb'",status="\d+"\} (\S+)', page)
        return float(match.group(1)) if match else 0.0

    before = count("unauthenticated")
    receiver.post(orjson.dumps(_events()), headers={"x-webhook-signature": "sha256=00"})
    assert count("unauthenticated") == before + 1


def test_the_public_port_does_not_serve_the_admin_api(receiver: Pipeline) -> None:
    status, _ = receiver.request("GET", "/v1/deployments",
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert status == 404
    assert receiver.admin("GET", "/v1/deployments")[0] == 200


def test_admin_api_needs_the_token(receiver: Pipeline) -> None:
    assert receiver.admin("GET", "/v1/deployments", token="")[0] == 401
    assert receiver.admin("GET", "/v1/deployments", token="x" * 30)[0] == 403


def test_admin_api_never_shows_secrets(receiver: Pipeline) -> None:
    status, record = receiver.admin("GET", "/v1/deployments/happy-otter-123")
    assert status == 200
    assert record["has_webhook_secret"]
    assert record["has_ingest_token"]
    assert (record["team"], record["plan"], record["labels"]) == ("acme", "professional",
                                                                  {"app": "support"})
    status, listing = receiver.admin("GET", "/v1/deployments")
    text = orjson.dumps(listing).decode()
    assert SECRET not in text
    assert INGEST_TOKEN not in text
    assert "happy-otter-123" in [d["name"] for d in listing["deployments"]]
    assert SECRET not in receiver.log.read_text()
    assert INGEST_TOKEN not in receiver.log.read_text()


def test_admin_api_lists_every_bad_field(receiver: Pipeline) -> None:
    status, answer = receiver.admin("PUT", "/v1/deployments/bad-one", {
        "webhook_secret": "short", "team": 5, "labels": {"a": 1}, "colour": "blue"})
    assert status == 400
    assert set(answer["fields"]) == {"webhook_secret", "team", "labels", "colour"}
    assert receiver.admin("GET", "/v1/deployments/bad-one")[0] == 404


def test_put_changes_only_what_it_names_and_delete_refuses_later_batches(
        receiver: Pipeline) -> None:
    secret = "another-secret-0123456789"
    receiver.register("short-lived-7", webhook_secret=secret, team="t1")
    updated = receiver.register("short-lived-7", labels={"tier": "gold"})
    assert (updated["team"], updated["labels"], updated["has_webhook_secret"]) == (
        "t1", {"tier": "gold"}, True)
    assert receiver.post(orjson.dumps(_events("short-lived-7")), secret)[0] == 200
    assert receiver.admin("DELETE", "/v1/deployments/short-lived-7")[0] == 200
    status, answer = receiver.post(orjson.dumps(_events("short-lived-7")), secret)
    assert (status, _reason(answer)) == (401, "unauthenticated")
    assert receiver.admin("DELETE", "/v1/deployments/short-lived-7")[0] == 404


def test_a_second_replica_shares_the_registry(receiver: Pipeline, kafka_bootstrap: str,
                                              tmp_path: Path) -> None:
    # Replicas share the key that seals the registry's webhook secrets.
    extra = {"METERSTREAM_NAMESPACE": receiver.namespace,
             "METERSTREAM_SECRET_KEY_FILE": str(Path(receiver.env["METERSTREAM_DATA_DIR"])
                                                / "secret-key")}
    with running_pipeline(kafka_bootstrap, tmp_path, command="receiver",
                          extra_env=extra) as replica:
        assert replica.post(orjson.dumps(_events()), SECRET)[0] == 200
        replica.register("made-on-the-replica", webhook_secret="replica-secret-0123456789")
        # Visible through the first replica without a restart.
        status, answer = receiver.post(orjson.dumps(_events("made-on-the-replica")),
                                       "replica-secret-0123456789")
        assert status == 200, answer


def test_the_cli_mirrors_the_admin_api(receiver: Pipeline) -> None:
    env = {"METERSTREAM_ADMIN_TOKEN": ADMIN_TOKEN,
           "METERSTREAM_ADMIN_PORT": receiver.env["METERSTREAM_ADMIN_PORT"],
           "CLI_SECRET": "cli-secret-0123456789abc"}
    put = meterstream(["deployments", "put", "from-cli-1", "--webhook-secret-env", "CLI_SECRET",
                       "--team", "cli", "--label", "a=b"], env)
    assert orjson.loads(put.stdout)["labels"] == {"a": "b"}
    got = orjson.loads(meterstream(["deployments", "get", "from-cli-1"], env).stdout)
    assert (got["team"], got["has_webhook_secret"]) == ("cli", True)
    listed = orjson.loads(meterstream(["deployments", "list"], env).stdout)
    assert "from-cli-1" in [d["name"] for d in listed["deployments"]]
    meterstream(["deployments", "delete", "from-cli-1"], env)
    assert meterstream(["deployments", "get", "from-cli-1"], env, check=False).returncode == 1


def _usage(receiver: Pipeline, body: object, token: str | None = INGEST_TOKEN
           ) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, answer = receiver.request("POST", "/v1/agent/usage", orjson.dumps(body), headers)
    return status, orjson.loads(answer)


def test_agent_usage_needs_the_deployments_ingest_token(receiver: Pipeline) -> None:
    assert _usage(receiver, AI_SDK, token=None)[0] == 401
    assert _usage(receiver, AI_SDK, token="not-the-token-at-all")[0] == 401
    other = {**AI_SDK, "deployment": "legacy-unsigned-1"}
    assert _usage(receiver, [AI_SDK, other])[0] == 403


def test_agent_usage_lists_every_bad_field(receiver: Pipeline) -> None:
    status, answer = _usage(receiver, [AI_SDK, {**AI_SDK, "model": "", "usage": None}])
    assert status == 400
    assert sorted((p["index"], p["field"]) for p in answer["problems"]) == [
        (1, "model"), (1, "usage")]


def test_agent_usage_is_stored_normalised(receiver: Pipeline, kafka_bootstrap: str) -> None:
    records = [{**AI_SDK, "id": "stored-1"}, {**V_USAGE, "id": "stored-2"}]
    assert _usage(receiver, records) == (200, {"accepted": 2})
    stored = [orjson.loads(v) for v in
              _raw_values(kafka_bootstrap, f"{receiver.namespace}.raw")]
    batch = next(b for b in stored if isinstance(b, list) and b and b[0].get("id") == "stored-1")
    assert [r["id"] for r in batch] == ["stored-1", "stored-2"]
    for record in batch:
        assert record["topic"] == "agent_usage"
        assert {k: record[k] for k in TOKENS} == TOKENS


def test_readyz_reports_kafka_registry_and_read_tokens(receiver: Pipeline) -> None:
    status, answer = receiver.request("GET", "/readyz")
    assert (status, orjson.loads(answer)) == (200, {"ready": True, "kafka": True,
                                                    "registry": True, "read_tokens": True})


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children,
                                                                       max_size=5),
    max_leaves=20,
)
EVENT = st.fixed_dictionaries(
    {"topic": st.sampled_from(["function_execution", "console", "verification", "x"]) | JSON,
     "convex": st.fixed_dictionaries(
         {"deployment_name": st.sampled_from(["happy-otter-123", "legacy-unsigned-1",
                                              "stranger"]) | JSON})},
    optional={"usage": JSON, "timestamp": JSON, "function": JSON},
)


def _dumps(value: object) -> bytes:
    # The standard library writes what orjson refuses to (integers beyond 64 bits).
    return json.dumps(value, separators=(",", ":")).encode()


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    kind = draw(st.sampled_from(["bytes", "json", "array", "jsonl"]))
    if kind == "bytes":
        body = draw(st.binary(max_size=3000))
    elif kind == "json":
        body = _dumps(draw(JSON))
    else:
        events = draw(st.lists(EVENT | JSON, max_size=8))
        body = (_dumps(events) if kind == "array"
                else b"\n".join(_dumps(e) for e in events))
    signature = draw(st.sampled_from(["none", "right", "garbage"]))
    headers = {}
    if signature == "right":
        headers["x-webhook-signature"] = sign(body, SECRET)
    elif signature == "garbage":
        headers["x-webhook-signature"] = draw(st.text(
            alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80))
    return body, headers


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(bodies())
def test_no_body_gets_a_5xx_while_kafka_is_healthy(receiver: Pipeline,
                                                   case: tuple[bytes, dict[str, str]]) -> None:
    body, headers = case
    status, answer = receiver.post(body, headers=headers)
    assert status in (200, 400, 401, 403), (status, answer)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(JSON, st.lists(st.fixed_dictionaries(
    {"id": st.text(max_size=5), "timestamp": st.integers(), "deployment": st.just(
        "happy-otter-123"), "model": st.text(max_size=5), "provider": st.text(max_size=5)},
    optional={"usage": JSON, "userId": JSON, "providerMetadata": JSON}), max_size=4)))
def test_no_usage_record_gets_a_5xx_while_kafka_is_healthy(receiver: Pipeline,
                                                           record: object) -> None:
    status, answer = receiver.request("POST", "/v1/agent/usage", _dumps(record),
                                      {"Authorization": f"Bearer {INGEST_TOKEN}"})
    assert status in (200, 400, 403), (status, answer)
