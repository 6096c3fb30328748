"""The receiver under hostile input, on the real broker: issue 12's reproductions.

Authentication before any parsing, refusals that tell nothing, bounded answers, bounded
connections (slow clients cut off), bounded metric labels, one door per kind of data, and
nothing refused ever reaching Kafka.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from meterstream.core.config import ConfigError, Settings
from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.registry import Deployment, RegistryView, token_digest
from meterstream.core.service import CONNECTIONS_CUT, ConnectionLimits, healthz, start_site
from meterstream.core.signature import sign
from tests.support import free_port, meterstream, read_topic, recent_events, wait_for
from tests.support.agent_steps import AI_SDK
from tests.support.pipeline import ADMIN_TOKEN, Pipeline, running_pipeline

KAFKA = pytest.mark.kafka

SECRET = "hostile-test-secret-0123456789"
TOKEN = "hostile-test-ingest-token-0123"
OTHER_TOKEN = "hostile-other-ingest-token-0123"
SIGNED = "signed-app-1"
OTHER = "other-app-2"
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.5
MAX_CONNECTIONS = 6
EIGHT_MIB = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def receiver(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Pipeline]:
    extra = {"METERSTREAM_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
             "METERSTREAM_BODY_TIMEOUT": str(BODY_TIMEOUT),
             "METERSTREAM_KEEPALIVE_TIMEOUT": "30",
             "METERSTREAM_MAX_CONNECTIONS": str(MAX_CONNECTIONS)}
    with running_pipeline(kafka_bootstrap, tmp_path_factory.mktemp("hostile"),
                          command="receiver", extra_env=extra) as pipeline:
        pipeline.register(SIGNED, webhook_secret=SECRET, ingest_token=TOKEN)
        pipeline.register(OTHER, webhook_secret=SECRET[::-1], ingest_token=OTHER_TOKEN)
        yield pipeline


# --- helpers ---------------------------------------------------------------------------


def _events(name: str, count: int = 0) -> list[dict]:
    events = recent_events("function_execution")
    if count:
        events = [dict(events[i % len(events)]) for i in range(count)]
    for event in events:
        event["convex"] = {**event["convex"], "deployment_name": name}
    return events


def _usage(receiver: Pipeline, body: bytes, token: str | None = TOKEN,
           headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    return receiver.request("POST", "/v1/agent/usage", body, {**auth, **(headers or {})})


def _metrics(receiver: Pipeline) -> bytes:
    status, page = receiver.request("GET", "/metrics")
    assert status == 200
    return page


def _sample(page: bytes, name: str, **labels: str) -> float:
    """One sample of the exposition; 0 when the series does not exist yet."""
    for line in page.decode().splitlines():
        if not line.startswith((name + "{", name + " ")):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[len(name):line.rfind("}") + 1]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _parsed(receiver: Pipeline, endpoint: str) -> float:
    return _sample(_metrics(receiver), "meterstream_receiver_bodies_parsed_total",
                   endpoint=endpoint)


def _cut(receiver: Pipeline, reason: str) -> float:
    return _sample(_metrics(receiver), "meterstream_http_connections_cut_total", reason=reason)


def _peak_rss_kib(receiver: Pipeline) -> int:
    status = Path(f"/proc/{receiver.process.pid}/status").read_text()
    peak = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert peak is not None, status
    return int(peak.group(1))


def _raw(receiver: Pipeline, bootstrap: str) -> list:
    return read_topic(bootstrap, f"{receiver.namespace}.raw")


def _connect(receiver: Pipeline) -> socket.socket:
    return socket.create_connection(
        ("127.0.0.1", int(receiver.env["METERSTREAM_RECEIVER_PORT"])), timeout=30)


def _closed_by_server(sock: socket.socket) -> bytes:
    """Reads until the server closes; what it sent before (b"" when it reset)."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def _trickle_until_cut(sock: socket.socket, data: bytes) -> bytes:
    """Sends `data` one byte at a time, checking after each for the server's close; returns
    what the server sent. Fails if all of `data` went through without a cut."""
    sock.settimeout(0.2)
    received = b""
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return received
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue  # still open: this pause is the trickle's pace
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
        sock.settimeout(5)
        return received + _closed_by_server(sock)
    raise AssertionError("the server took the whole trickle without cutting it off")


# --- authentication before work --------------------------------------------------------


@KAFKA
def test_an_8_mib_body_with_a_made_up_token_is_401_without_being_parsed(
        receiver: Pipeline) -> None:
    body = b"[" + b"1," * (EIGHT_MIB // 2 - 2) + b"1 ]"
    assert len(body) == EIGHT_MIB
    receiver.request("GET", "/healthz")
    parsed, peak = _parsed(receiver, "/v1/agent/usage"), _peak_rss_kib(receiver)
    status, answer = _usage(receiver, body, token="made-up-token-that-is-nobodys")
    assert (status, orjson.loads(answer)["reason"]) == (401, "unauthenticated")
    assert len(answer) < 200
    assert _parsed(receiver, "/v1/agent/usage") == parsed
    # Parsing it took 1.6 GB; reading it would take 8 MiB. Neither happened.
    assert _peak_rss_kib(receiver) - peak < 8 * 1024


@KAFKA
def test_the_agent_door_answers_an_unknown_token_before_the_body_is_sent(
        receiver: Pipeline) -> None:
    with _connect(receiver) as sock:
        sock.sendall(b"POST /v1/agent/usage HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer made-up-token-that-is-nobodys\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n[1," % EIGHT_MIB)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 401 ")


@KAFKA
def test_an_8_mib_unsigned_body_for_a_signed_deployment_is_refused_before_parsing(
        receiver: Pipeline) -> None:
    event = orjson.dumps(_events(SIGNED)[0])
    body = b"[" + b",".join([event] * (EIGHT_MIB // (len(event) + 1) - 1)) + b"]"
    assert len(body) <= EIGHT_MIB
    parsed = _parsed(receiver, "/v1/convex/logs")
    status, answer = receiver.post(body)
    assert (status, orjson.loads(answer)["reason"]) == (401, "unauthenticated")
    assert _parsed(receiver, "/v1/convex/logs") == parsed


@KAFKA
def test_unknown_deployment_bad_signature_and_no_opt_in_are_answered_alike(
        receiver: Pipeline) -> None:
    receiver.register("no-secret-no-opt-in", allow_unsigned=False)
    answers = {
        "unknown": receiver.post(orjson.dumps(_events("never-registered-9")), SECRET),
        "bad signature": receiver.post(orjson.dumps(_events(SIGNED)), SECRET[::-1]),
        "no signature": receiver.post(orjson.dumps(_events(SIGNED))),
        "no opt-in": receiver.post(orjson.dumps(_events("no-secret-no-opt-in"))),
    }
    assert {status for status, _ in answers.values()} == {401}
    assert len({answer for _, answer in answers.values()}) == 1, answers


@KAFKA
def test_unsigned_bodies_are_taken_only_after_the_opt_in(receiver: Pipeline) -> None:
    receiver.register("legacy-stream-3", allow_unsigned=False)
    body = orjson.dumps(_events("legacy-stream-3"))
    assert receiver.post(body)[0] == 401
    env = {"METERSTREAM_ADMIN_TOKEN": ADMIN_TOKEN,
           "METERSTREAM_ADMIN_PORT": receiver.env["METERSTREAM_ADMIN_PORT"]}
    put = meterstream(["deployments", "put", "legacy-stream-3", "--allow-unsigned"], env)
    assert orjson.loads(put.stdout)["allow_unsigned"] is True
    assert receiver.post(body)[0] == 200
    meterstream(["deployments", "put", "legacy-stream-3", "--no-allow-unsigned"], env)
    assert receiver.post(body)[0] == 401


@KAFKA
def test_an_opted_in_deployment_with_a_secret_still_needs_the_signature(
        receiver: Pipeline) -> None:
    receiver.register("both-4", webhook_secret=SECRET, allow_unsigned=True)
    body = orjson.dumps(_events("both-4"))
    assert receiver.post(body)[0] == 401
    assert receiver.post(body, SECRET)[0] == 200


@KAFKA
def test_a_body_signed_for_one_deployment_cannot_bill_another(receiver: Pipeline) -> None:
    # The first event claims SIGNED (whose secret signs it); a later one names OTHER.
    body = orjson.dumps(_events(SIGNED) + _events(OTHER))
    status, answer = receiver.post(body, SECRET)
    assert (status, orjson.loads(answer)["reason"]) == (403, "several_deployments")
    # A crafted key makes the byte search find SIGNED while no event names it.
    crafted = orjson.dumps([{"x\"deployment_name": SIGNED, **e} for e in _events(OTHER)])
    status, answer = receiver.post(crafted, SECRET)
    assert (status, orjson.loads(answer)["reason"]) == (403, "several_deployments")


@KAFKA
def test_a_deprovisioned_deployment_is_refused_on_both_doors(receiver: Pipeline) -> None:
    name, secret, token = "leaving-5", "leaving-secret-0123456789", "leaving-token-0123456789"
    receiver.register(name, webhook_secret=secret, ingest_token=token)
    record = orjson.dumps({**AI_SDK, "id": "before-leaving", "deployment": name,
                           "timestamp": int(time.time() * 1000)})
    assert _usage(receiver, record, token=token)[0] == 200
    assert receiver.post(orjson.dumps(_events(name)), secret)[0] == 200
    # No log stream recorded, so no call to Convex is made.
    status, answer = receiver.admin("POST", f"/v1/deployments/{name}/deprovision",
                                    {"deploy_key": "prod:leaving-5|unused"})
    assert status == 200, answer
    assert (answer["has_ingest_token"], answer["has_webhook_secret"]) == (False, False)
    status, refused = _usage(receiver, record, token=token)
    assert (status, orjson.loads(refused)["reason"]) == (401, "unauthenticated")
    status, refused = receiver.post(orjson.dumps(_events(name)), secret)
    assert (status, orjson.loads(refused)["reason"]) == (401, "unauthenticated")


@KAFKA
def test_an_ingest_token_belongs_to_one_deployment(receiver: Pipeline) -> None:
    status, answer = receiver.admin("PUT", "/v1/deployments/token-thief-6",
                                    {"ingest_token": TOKEN})
    assert status == 400
    assert set(answer["fields"]) == {"ingest_token"}


# --- one door per kind of data ----------------------------------------------------------


@KAFKA
def test_agent_usage_in_a_webhook_body_is_refused(receiver: Pipeline) -> None:
    forged = [{**AI_SDK, "topic": "agent_usage", "convex": {"deployment_name": SIGNED}}]
    status, answer = receiver.post(orjson.dumps(_events(SIGNED) + forged), SECRET)
    assert (status, orjson.loads(answer)["reason"]) == (400, "wrong_door")


@KAFKA
def test_agent_records_name_the_tokens_deployment_or_none(receiver: Pipeline,
                                                          kafka_bootstrap: str) -> None:
    now = int(time.time() * 1000)
    other = {**AI_SDK, "id": "for-another", "deployment": OTHER, "timestamp": now}
    status, answer = _usage(receiver, orjson.dumps(other))
    assert (status, orjson.loads(answer)["reason"]) == (403, "forbidden")
    unnamed = {k: v for k, v in AI_SDK.items() if k != "deployment"}
    body = orjson.dumps({**unnamed, "id": "unnamed-record-1", "timestamp": now})
    assert _usage(receiver, body) == (200, b'{"accepted": 1}')
    stored = [orjson.loads(m.value) for m in _raw(receiver, kafka_bootstrap)
              if b"unnamed-record-1" in m.value]
    assert [r["deployment"] for batch in stored for r in batch] == [SIGNED]


@KAFKA
def test_stored_messages_carry_their_origin(receiver: Pipeline, kafka_bootstrap: str) -> None:
    now = int(time.time() * 1000)
    events = _events(SIGNED)
    events[0]["origin_marker"] = "webhook-origin-1"
    assert receiver.post(orjson.dumps(events), SECRET)[0] == 200
    record = {**AI_SDK, "id": "agent-origin-1", "deployment": SIGNED, "timestamp": now}
    assert _usage(receiver, orjson.dumps(record))[0] == 200
    origins = {}
    for message in _raw(receiver, kafka_bootstrap):
        for marker in (b"webhook-origin-1", b"agent-origin-1"):
            if marker in message.value:
                origins[marker] = dict(message.headers)["origin"]
    assert origins == {b"webhook-origin-1": b"webhook", b"agent-origin-1": b"agent"}


# --- caps ----------------------------------------------------------------------------------


@KAFKA
@pytest.mark.parametrize("endpoint", ["/v1/convex/logs", "/v1/agent/usage"])
def test_a_compressed_body_is_415(receiver: Pipeline, endpoint: str) -> None:
    body = gzip.compress(b"[" + b"1," * 1_000_000 + b"1]")
    status, answer = receiver.request("POST", endpoint, body, {
        "Content-Encoding": "gzip", "Authorization": f"Bearer {TOKEN}"})
    assert (status, orjson.loads(answer)["reason"]) == (415, "encoding")


@KAFKA
def test_too_many_records_are_413_on_both_doors(receiver: Pipeline) -> None:
    events = b"\n".join(orjson.dumps(e) for e in _events(SIGNED, 1001))
    status, answer = receiver.post(events, SECRET)
    assert (status, orjson.loads(answer)["reason"]) == (413, "too_many_records")
    records = orjson.dumps([{**AI_SDK, "id": f"r{i}", "deployment": SIGNED}
                            for i in range(1001)])
    status, answer = _usage(receiver, records)
    assert (status, orjson.loads(answer)["reason"]) == (413, "too_many_records")


@KAFKA
def test_a_400_lists_the_first_problems_and_counts_them_all(receiver: Pipeline) -> None:
    truncated = _sample(_metrics(receiver), "meterstream_receiver_problems_truncated_total")
    status, answer = _usage(receiver, orjson.dumps([1] * 1000))
    problems = orjson.loads(answer)
    assert _sample(_metrics(receiver), "meterstream_receiver_problems_truncated_total") == \
        truncated + 1
    assert status == 400
    assert (len(problems["problems"]), problems["problem_count"]) == (20, 1000)
    assert len(answer) < 4096


@KAFKA
def test_an_agent_batch_over_one_message_is_stored_in_several(receiver: Pipeline,
                                                              kafka_bootstrap: str) -> None:
    # ~3.3 MiB on the wire; its floats grow 3.6 times when stored (1e15 ->
    # 1000000000000000.0), over the producer's largest request: this was a 503.
    now = int(time.time() * 1000)
    records = [{**AI_SDK, "id": f"big-{i}", "deployment": SIGNED, "timestamp": now,
                "providerMetadata": {"x": [1e15] * 1400}} for i in range(500)]
    body = orjson.dumps(records).replace(b"1000000000000000.0", b"1e15")
    assert 3 << 20 < len(body) < EIGHT_MIB
    assert _usage(receiver, body) == (200, b'{"accepted": 500}')
    stored = [m for m in _raw(receiver, kafka_bootstrap) if b'"big-' in m.value]
    assert len(stored) >= 2
    assert all(len(m.value) <= EIGHT_MIB for m in stored)
    ids = [r["id"] for m in stored for r in orjson.loads(m.value)]
    assert sorted(ids) == sorted(f"big-{i}" for i in range(500))


@KAFKA
def test_a_thousand_distinct_topics_do_not_grow_metrics(receiver: Pipeline) -> None:
    before = len(_metrics(receiver))
    events = _events(SIGNED, 1000)
    for index, event in enumerate(events):
        event["topic"] = f"{index:04d}" + "t" * 2044
    status, answer = receiver.post(orjson.dumps(events), SECRET)
    assert (status, answer) == (200, b'{"accepted": 1000}')
    page = _metrics(receiver)
    assert b"tttttttt" not in page
    # At most a handful of new series (the `other` topic, a few counters' first samples).
    assert len(page) - before < 2048
    assert _sample(page, "meterstream_receiver_events_accepted_total", topic="other") >= 1000


# --- slow and many clients ---------------------------------------------------------------


@KAFKA
def test_a_client_trickling_its_headers_is_cut_off(receiver: Pipeline) -> None:
    cuts = _cut(receiver, "header_timeout")
    with _connect(receiver) as sock:
        answer = _trickle_until_cut(sock, b"POST /v1/convex/logs HTTP/1.1\r\n"
                                    + b"X-Slow: " + b"a" * 4000 + b"\r\n\r\n")
    assert answer in (b"", ) or answer.startswith(b"HTTP/1.1 408 ")
    assert _cut(receiver, "header_timeout") == cuts + 1


@KAFKA
@pytest.mark.parametrize("endpoint", ["/v1/convex/logs", "/v1/agent/usage"])
def test_a_client_trickling_its_body_is_cut_off(receiver: Pipeline, kafka_bootstrap: str,
                                                endpoint: str) -> None:
    cuts = _cut(receiver, "body_timeout")
    body = orjson.dumps(_events(SIGNED))
    with _connect(receiver) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer %s\r\nx-webhook-signature: %s\r\n"
                     b"Content-Length: %d\r\n\r\n"
                     % (endpoint.encode(), TOKEN.encode(), sign(body, SECRET).encode(),
                        len(body)))
        answer = _trickle_until_cut(sock, body)
    assert answer == b""
    assert _cut(receiver, "body_timeout") == cuts + 1


@KAFKA
def test_connections_beyond_the_limit_get_503(receiver: Pipeline) -> None:
    # Earlier tests' connections are closed, but the server may not have seen it yet:
    # wait until the only one open is the one asking (or it is refused: then not yet).
    wait_for(lambda: _sample(receiver.request("GET", "/metrics")[1],
                             "meterstream_http_connections_open") == 1,
             timeout=30, what="the earlier connections to be closed")
    held: list[socket.socket] = []
    try:
        # Each proven accepted by an answer on it, then left open (keep-alive).
        while len(held) < MAX_CONNECTIONS:
            sock = _connect(receiver)
            held.append(sock)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        with _connect(receiver) as extra:
            assert _closed_by_server(extra).startswith(b"HTTP/1.1 503 ")
        held.pop().close()
        wait_for(lambda: receiver.request("GET", "/healthz")[0] == 200, timeout=30,
                 what="a connection slot to free up")
    finally:
        for sock in held:
            sock.close()
    assert _cut(receiver, "too_many_connections") >= 1


# --- nothing refused reaches Kafka ---------------------------------------------------------


@KAFKA
def test_refused_requests_leave_nothing_in_kafka(receiver: Pipeline,
                                                 kafka_bootstrap: str) -> None:
    before = {(m.partition, m.offset) for m in _raw(receiver, kafka_bootstrap)}
    events = orjson.dumps(_events(SIGNED))
    refused = [
        receiver.post(orjson.dumps(_events("never-registered-9")), SECRET),
        receiver.post(events, "wrong-secret-0123456789"),
        receiver.post(events),
        receiver.post(orjson.dumps(_events(SIGNED) + _events(OTHER)), SECRET),
        receiver.request("POST", "/v1/convex/logs", gzip.compress(events),
                         {"Content-Encoding": "gzip"}),
        _usage(receiver, orjson.dumps(AI_SDK), token="made-up-token-that-is-nobodys"),
        _usage(receiver, orjson.dumps({**AI_SDK, "deployment": OTHER})),
        _usage(receiver, orjson.dumps([{**AI_SDK, "model": ""}])),
    ]
    assert all(400 <= status < 500 for status, _ in refused), refused
    marker = _events(SIGNED)
    marker[0]["marker"] = "after-the-refusals"
    assert receiver.post(orjson.dumps(marker), SECRET)[0] == 200
    after = [m for m in _raw(receiver, kafka_bootstrap) if (m.partition, m.offset) not in before]
    assert [b"after-the-refusals" in m.value for m in after] == [True]


# --- the registry's token index (no broker) -----------------------------------------------


def test_the_token_index_follows_updates_and_deletes() -> None:
    view = RegistryView(KafkaConnection("127.0.0.1:1"), "unused")
    first = Deployment(name="a", ingest_token_sha256=token_digest("token-one-0123456789"))
    view._apply(b"a", first.to_json())
    assert view.by_token("token-one-0123456789") == first
    moved = Deployment(name="a", ingest_token_sha256=token_digest("token-two-0123456789"))
    view._apply(b"a", moved.to_json())
    assert view.by_token("token-one-0123456789") is None
    assert view.by_token("token-two-0123456789") == moved
    view._apply(b"a", None)
    assert view.by_token("token-two-0123456789") is None


def test_the_admin_url_follows_the_admin_listener() -> None:
    assert Settings.from_env({}).admin_url == "http://127.0.0.1:8688"
    assert Settings.from_env({"METERSTREAM_ADMIN_PORT": "9999"}).admin_url == \
        "http://127.0.0.1:9999"
    assert Settings.from_env({"METERSTREAM_ADMIN_HOST": "0.0.0.0"}).admin_url == \
        "http://127.0.0.1:8688"
    # Off loopback the admin token would cross the network in clear: plain http only for a
    # host the operator names in METERSTREAM_INSECURE_HTTP_HOSTS, else an https:// URL.
    with pytest.raises(ConfigError, match="METERSTREAM_ADMIN_URL"):
        Settings.from_env({"METERSTREAM_ADMIN_HOST": "10.1.2.3"})
    assert Settings.from_env({"METERSTREAM_ADMIN_HOST": "10.1.2.3",
                              "METERSTREAM_INSECURE_HTTP_HOSTS": "10.1.2.3"}).admin_url == \
        "http://10.1.2.3:8688"
    assert Settings.from_env({"METERSTREAM_ADMIN_URL": "https://admin.internal:1"}).admin_url \
        == "https://admin.internal:1"


# --- the connection guard in-process (no broker) ------------------------------------------


def _guarded(client: Callable[[int], Awaitable[None]]) -> None:
    """Runs `client(port)` against a guarded server whose limits are all half a second."""
    async def main() -> None:
        app = web.Application()
        app.router.add_get("/healthz", healthz)
        port = free_port()
        runner = await start_site(app, "127.0.0.1", port, ConnectionLimits(
            header=0.5, body=0.5, keepalive=0.5, max_connections=2))
        try:
            await client(port)
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_an_idle_connection_is_closed_after_the_keepalive_timeout() -> None:
    before = CONNECTIONS_CUT.labels("idle_timeout")._value.get()

    async def client(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # Never a byte sent: closed by the server, nothing answered.
        assert await reader.read() == b""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await reader.read()  # the answer, then the close once idle
        assert answer.startswith(b"HTTP/1.1 200 ")
        writer.close()

    _guarded(client)
    assert CONNECTIONS_CUT.labels("idle_timeout")._value.get() == before + 2


def test_a_connection_over_the_limit_is_answered_503_and_closed() -> None:
    async def client(port: int) -> None:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for reader, writer in held:  # proven accepted before the third one connects
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200 ")
        reader, _ = await asyncio.open_connection("127.0.0.1", port)
        assert (await reader.read()).startswith(b"HTTP/1.1 503 ")
        for _, writer in held:
            writer.close()

    _guarded(client)
