"""The receiver's OpenAPI documents against the real receiver on the real broker.

Real answers, one for each documented status that can be caused here, are validated
against the documents' response schemas. Then a fuzz draws requests from the documents'
request schemas (hypothesis strategies built from them, tests/support/openapi.py), with
signatures and tokens right, wrong or absent, and checks every answer: no 5xx while
Kafka is healthy, each one documented with its body matching, every refusal in the Error
shape, and exactly the accepted requests in the raw topic (a refused request's body
stored would show as one too many). The run is derandomized with a fixed number of
examples, so CI sees the same requests.
"""

from __future__ import annotations

import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterstream.core.signature import HEADER, sign
from meterstream.core.topics import ORIGIN_HEADER
from tests.support import convex_examples, free_port, read_topic, wait_for
from tests.support.openapi import (
    check_answer,
    exchange,
    from_schema,
    inline_refs,
    is_error_shape,
)
from tests.support.pipeline import ADMIN_TOKEN, READ_TOKEN, Pipeline, running_pipeline
from tests.support.workers import start_worker, worker_processes

SECRET = "fuzz-webhook-secret-0123456789"
INGEST_TOKEN = "fuzz-ingest-token-0123456789"
SIGNED, UNSIGNED, AGENT = "fuzz-otter-1", "fuzz-unsigned-2", "fuzz-agent-3"
FUZZED = (SIGNED, UNSIGNED, AGENT)
MAX_BODY = 65536
EXAMPLES = 120


@pytest.fixture(scope="module")
def receiver(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Pipeline]:
    workdir = tmp_path_factory.mktemp("openapi")
    with running_pipeline(kafka_bootstrap, workdir, command="receiver",
                          extra_env={"METERSTREAM_MAX_BODY_BYTES": str(MAX_BODY)}) as pipeline:
        pipeline.register(SIGNED, webhook_secret=SECRET, team="acme")
        pipeline.register(UNSIGNED)
        pipeline.register(AGENT, ingest_token=INGEST_TOKEN)
        pipeline.register("happy-otter-123", webhook_secret=SECRET,
                          ingest_token="validation-ingest-token-0123")
        yield pipeline


class Checked:
    """Requests to one listener, each answer checked against its document."""

    def __init__(self, pipeline: Pipeline, port_variable: str, port: int | None = None
                 ) -> None:
        self.port = int(pipeline.env[port_variable]) if port is None else port
        status, body, _ = exchange(f"http://127.0.0.1:{self.port}/openapi.json", "GET")
        assert status == 200
        self.spec: dict[str, Any] = orjson.loads(body)
        self.statuses: Counter[tuple[str, str, int]] = Counter()

    def __call__(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        status, answer, content_type = exchange(f"http://127.0.0.1:{self.port}{path}",
                                                method, body, headers)
        assert status < 500, f"{method} {path}: {status} {answer[:300]!r}"
        check_answer(self.spec, method, path, status, content_type, answer)
        if status >= 400:
            assert is_error_shape(answer), answer[:300]
        self.statuses[(method, path.split("?")[0], status)] += 1
        return status, answer


def _events(name: str) -> list[dict[str, Any]]:
    now = int(time.time() * 1000)
    return [{**event, "timestamp": now + i, "convex": {**event["convex"],
                                                      "deployment_name": name}}
            for i, event in enumerate(convex_examples()["events"])]


def _agent_record(record_id: str) -> dict[str, Any]:
    return {"id": record_id, "timestamp": int(time.time() * 1000), "userId": None,
            "model": "gpt-4o", "provider": "openai",
            "usage": {"inputTokens": 10, "outputTokens": 5}}


def test_real_answers_of_the_public_port_match_its_document(receiver: Pipeline) -> None:
    public = Checked(receiver, "METERSTREAM_RECEIVER_PORT")
    logs, usage = "/v1/convex/logs", "/v1/agent/usage"
    body = orjson.dumps(_events("happy-otter-123"))
    signed = {HEADER: sign(body, SECRET)}
    token = {"Authorization": "Bearer validation-ingest-token-0123"}
    assert public("POST", logs, body, signed)[0] == 200
    assert public("POST", logs, b"[]")[0] == 400
    assert public("POST", logs, b'[{"convex": {"deployment_name": "' + SIGNED.encode()
                  + b'"}}, ', {HEADER: sign(b"x", SECRET)})[0] == 401
    mixed = orjson.dumps(_events("happy-otter-123") + _events(SIGNED))
    assert public("POST", logs, mixed, {HEADER: sign(mixed, SECRET)})[0] == 403
    assert public("POST", logs, b"[" + b" " * MAX_BODY + b"]")[0] == 413
    assert public("POST", logs, body, {**signed, "Content-Encoding": "gzip"})[0] == 415
    # One aiohttp cannot inflate: refused the same way, not by aiohttp's parser in text.
    assert public("POST", logs, body, {**signed, "Content-Encoding": "br"})[0] == 415
    assert public("POST", usage, orjson.dumps(_agent_record("v-1")), token)[0] == 200
    assert public("POST", usage, b"{", token)[0] == 400
    assert public("POST", usage, orjson.dumps({"id": 1}), token)[0] == 400
    assert public("POST", usage, b"{}")[0] == 401
    foreign = {**_agent_record("v-2"), "deployment": SIGNED}
    assert public("POST", usage, orjson.dumps(foreign), token)[0] == 403
    assert public("POST", usage, orjson.dumps([_agent_record("v-3")] * 1001), token)[0] == 413
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert public("GET", path)[0] == 200
    assert public("GET", "/v1/nothing-here")[0] == 404
    assert public("GET", logs)[0] == 405


def test_real_answers_of_the_admin_port_match_its_document(receiver: Pipeline) -> None:
    admin = Checked(receiver, "METERSTREAM_ADMIN_PORT")
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    one = "/v1/deployments/validation-otter-9"
    record = orjson.dumps({"team": "acme", "plan": "pro", "labels": {"app": "1"},
                           "webhook_secret": SECRET})
    assert admin("PUT", one, record, auth)[0] == 200
    assert admin("GET", one, None, auth)[0] == 200
    assert admin("GET", "/v1/deployments", None, auth)[0] == 200
    assert admin("PUT", one, b'{"team": 5, "colour": "red"}', auth)[0] == 400
    assert admin("PUT", one, b"{", auth)[0] == 400
    quotas = orjson.dumps({"quotas": [{"metric": "function_calls", "period": "month",
                                       "limit": 1000, "thresholds": [0.8], "hard": True}]})
    assert admin("PUT", one + "/quotas", quotas, auth)[0] == 200
    assert admin("GET", one + "/quotas", None, auth)[0] == 200
    assert admin("PUT", one + "/quotas", b'{"quotas": [{"metric": "x"}]}', auth)[0] == 400
    assert admin("POST", one + "/sync", b"{}", auth)[0] == 400  # no deploy key
    assert admin("POST", one + "/rotate-secret", b"[]", auth)[0] == 400
    assert admin("GET", "/v1/deployments/nobody-here-1", None, auth)[0] == 404
    assert admin("GET", "/v1/deployments/nobody-here-1/quotas", None, auth)[0] == 404
    assert admin("GET", "/v1/deployments")[0] == 401
    assert admin("GET", "/v1/deployments", None, {"Authorization": "Bearer wrong"})[0] == 403
    assert admin("DELETE", one, None, auth)[0] == 200
    assert admin("DELETE", one, None, auth)[0] == 404
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert admin("GET", path)[0] == 200
    assert admin("GET", "/metrics")[0] == 404


def _convex_request(spec: dict[str, Any]) -> st.SearchStrategy[tuple[bytes, dict[str, str]]]:
    """A webhook request drawn from the document: its events from the request schema,
    their deployment one of ours or the drawn one, JSON or JSONL, signed with the right
    secret, a wrong one, garbage or not at all, sometimes with a Content-Encoding."""
    operation = spec["paths"]["/v1/convex/logs"]["post"]
    schema = inline_refs(spec, operation["requestBody"]["content"]["application/json"]
                         ["schema"])
    events = from_schema({**schema, "maxItems": 6})

    @st.composite
    def requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
        batch: list[dict[str, Any]] = cast(Any, draw(events))
        name = draw(st.sampled_from([SIGNED, UNSIGNED, AGENT, None]))
        if name is not None:
            for event in batch:
                event["convex"]["deployment_name"] = name
        if draw(st.booleans()):
            body = orjson.dumps(batch)
        else:
            body = b"\n".join(orjson.dumps(event) for event in batch)
        signature = draw(st.sampled_from(["right", "wrong", "garbage", "none"]))
        headers = {"right": {HEADER: sign(body, SECRET)},
                   "wrong": {HEADER: sign(body, SECRET + "x")},
                   "garbage": {HEADER: draw(st.text(
                       st.characters(min_codepoint=32, max_codepoint=126), max_size=80))},
                   "none": {}}[signature]
        if draw(st.integers(0, 9)) == 0:
            headers["Content-Encoding"] = draw(st.sampled_from(["gzip", "br", "identity"]))
        return body, headers

    return requests()


def _agent_request(spec: dict[str, Any]) -> st.SearchStrategy[tuple[bytes, dict[str, str]]]:
    """An agent usage request drawn from the document: records from the request schema,
    now-stamped or as drawn, the right ingest token, a wrong one or none."""
    operation = spec["paths"]["/v1/agent/usage"]["post"]
    schema = inline_refs(spec, operation["requestBody"]["content"]["application/json"]
                         ["schema"])
    record_schema, array_schema = schema["oneOf"]
    records = st.one_of(from_schema(record_schema),
                        from_schema({**array_schema, "maxItems": 4}))

    @st.composite
    def requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
        drawn = draw(records)
        if draw(st.booleans()):
            for record in drawn if isinstance(drawn, list) else [drawn]:
                record["timestamp"] = int(time.time() * 1000)
                record["deployment"] = draw(st.sampled_from([AGENT, None, SIGNED]))
        token = draw(st.sampled_from(["right", "wrong", "none"]))
        headers = {"right": {"Authorization": f"Bearer {INGEST_TOKEN}"},
                   "wrong": {"Authorization": "Bearer not-an-ingest-token-0123"},
                   "none": {}}[token]
        return orjson.dumps(drawn), headers

    return requests()


def _stored(pipeline: Pipeline, kafka_bootstrap: str
            ) -> tuple[Counter[bytes], Counter[str]]:
    """The fuzzed deployments' raw messages: webhook bodies, and agent record ids."""
    bodies: Counter[bytes] = Counter()
    ids: Counter[str] = Counter()
    for message in read_topic(kafka_bootstrap, f"{pipeline.namespace}.raw"):
        if message.key is None or message.key.decode() not in FUZZED:
            continue
        origin = dict(message.headers).get(ORIGIN_HEADER)
        if origin == b"agent":
            ids.update(record["id"] for record in orjson.loads(message.value))
        else:
            bodies[message.value] += 1
    return bodies, ids


def test_fuzzed_requests_from_the_document_never_fail_and_refusals_store_nothing(
        receiver: Pipeline, kafka_bootstrap: str) -> None:
    public = Checked(receiver, "METERSTREAM_RECEIVER_PORT")
    before_bodies, before_ids = _stored(receiver, kafka_bootstrap)
    accepted_bodies: Counter[bytes] = Counter()
    accepted_ids: Counter[str] = Counter()
    refused = 0

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(_convex_request(public.spec).map(lambda r: ("/v1/convex/logs", *r)),
                     _agent_request(public.spec).map(lambda r: ("/v1/agent/usage", *r))))
    def one(request: tuple[str, bytes, dict[str, str]]) -> None:
        nonlocal refused
        path, body, headers = request
        status, _ = public("POST", path, body, headers)
        if status != 200:
            refused += 1
        elif path == "/v1/convex/logs":
            accepted_bodies[body] += 1
        else:
            parsed = orjson.loads(body)
            accepted_ids.update(r["id"] for r in (parsed if isinstance(parsed, list)
                                                   else [parsed]))

    one()
    bodies, ids = _stored(receiver, kafka_bootstrap)
    assert bodies - before_bodies == accepted_bodies
    assert ids - before_ids == accepted_ids
    # The fuzz reached both sides of the door: some requests stored, many refused.
    assert accepted_bodies, public.statuses
    assert accepted_ids, public.statuses
    assert refused, public.statuses
    statuses = {status for (_, _, status) in public.statuses}
    assert {200, 400, 401}.issubset(statuses), public.statuses


def test_fuzzed_registry_writes_never_fail(receiver: Pipeline) -> None:
    admin = Checked(receiver, "METERSTREAM_ADMIN_PORT")
    operation = admin.spec["paths"]["/v1/deployments/{name}"]["put"]
    changes = from_schema(inline_refs(admin.spec, operation["requestBody"]["content"]
                                      ["application/json"]["schema"]))
    # Any name but a path separator or a dot segment, which would be another path.
    names = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF,
                                  exclude_characters="/%?#\\"),
                    min_size=1, max_size=40).filter(lambda name: name not in (".", ".."))
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    @settings(max_examples=40, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(names, st.one_of(changes, st.just({"bogus": 1})))
    def one(name: str, body: dict[str, Any]) -> None:
        path = "/v1/deployments/" + urllib.parse.quote(name, safe="")
        status, _ = admin("PUT", path, orjson.dumps(body), auth)
        assert status in (200, 400)

    one()
    assert {400} <= {status for (_, _, status) in admin.statuses}, admin.statuses


def test_real_answers_of_a_real_worker_match_its_document(receiver: Pipeline,
                                                          tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    quotas = orjson.dumps({"quotas": [
        {"metric": "function_calls", "period": "month", "limit": 1000, "hard": True},
        {"metric": "tokens", "period": "day", "limit": 500, "per_user": True}]})
    status, _, _ = exchange(f"{receiver.admin_url}/v1/deployments/{AGENT}/quotas", "PUT",
                         quotas, auth)
    assert status == 200
    port = free_port()
    with worker_processes() as workers:
        workers.append(start_worker(receiver.env, tmp_path / "worker.log", port))

        def ready() -> bool:
            try:
                return exchange(f"http://127.0.0.1:{port}/readyz", "GET")[0] == 200
            except OSError:  # not listening yet
                return False

        wait_for(ready, timeout=180, what="the worker to be ready")
        worker = Checked(receiver, "METERSTREAM_WORKER_PORT", port)
        token = {"Authorization": f"Bearer {READ_TOKEN}"}
        quota = f"/v1/quota/{AGENT}"
        wait_for(lambda: worker("GET", quota, None, token)[0] == 200, timeout=60,
                 what="the worker to know the deployment")
        for path in (quota, f"{quota}?user=alice", f"{quota}?at=1764547200000"):
            assert worker("GET", path, None, token)[0] == 200
        assert worker("GET", f"{quota}?at=yesterday", None, token)[0] == 400
        assert worker("GET", "/v1/quota/nobody-here-1", None, token)[0] == 404
        assert worker("GET", quota)[0] == 401
        assert worker("GET", quota, None, {"Authorization": "Bearer wrong-0123456789"}
                      )[0] == 403
        assert worker("GET", "/", None, token)[0] == 200
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert worker("GET", path)[0] == 200
        assert worker("GET", "/v1/nothing-here", None, token)[0] == 404
        assert worker("POST", quota, b"{}", token)[0] == 405
