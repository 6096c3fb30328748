"""Alert webhooks against local aiohttp servers: signature, retries, backoff, dead letters.

The backoff schedule is read from a virtual clock (`VirtualTime`): the delivery's sleeps
are recorded and advance that clock instead of waiting, so the assertions are on the
delays the code chose, never on elapsed wall time."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import types
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY

from processors import alert_webhooks as alert_delivery
from processors.alert_webhooks import AlertDelivery, handle_alert, sign, verify
from tests.support import free_port

T = TypeVar("T")

SECRET = "alert-secret-0123456789-0123456789"
ALERT = orjson.dumps({
    "id": "quota|happy-otter-123|function_calls|month|2026-11-01|0.8", "kind": "quota",
    "deployment": "happy-otter-123", "metric": "function_calls", "period": "2026-11-01",
    "threshold": 0.8, "usage": 800000, "limit": 1000000, "at": 1795000000000,
})
ALERT_ID = "quota|happy-otter-123|function_calls|month|2026-11-01|0.8"


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


class VirtualTime:
    """Stands in for the `asyncio` module inside processors/alert_webhooks.py: the running
    loop's `time()` is a virtual clock, `sleep(d)` records d and moves the clock by d at
    once (yielding to the loop, so the servers still answer); the rest is asyncio's."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    def get_running_loop(self) -> Any:
        return types.SimpleNamespace(time=lambda: self.now)

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await asyncio.sleep(0)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> VirtualTime:
    """A virtual clock for the delivery, and no jitter (its full delay, x1.0), so that the
    schedule is exact."""
    virtual = VirtualTime()
    monkeypatch.setattr(alert_delivery, "asyncio", virtual)
    monkeypatch.setattr(alert_delivery, "random",
                        types.SimpleNamespace(uniform=lambda _low, high: high))
    return virtual


@dataclass
class Endpoint:
    """Answers the scripted (status, headers) in turn, then 200; records every request.
    With a gate, it answers 500 unless the gate lets the request through."""

    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    gate: Callable[[], Awaitable[bool]] | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(Received(dict(request.headers), await request.read()))
        if self.gate is not None and not await self.gate():
            return web.Response(status=500)
        status, headers = self.script.pop(0) if self.script else (200, {})
        return web.Response(status=status, headers=headers)


def statuses(*codes: int) -> Endpoint:
    return Endpoint(script=[(code, {}) for code in codes])


async def serve(endpoint: Endpoint) -> TestServer:
    app = web.Application()
    app.router.add_post("/hook", endpoint.handle)
    server = TestServer(app)
    await server.start_server()
    return server


def run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(asyncio.wait_for(scenario(), 30))


async def deliver_to(endpoints: list[Endpoint], retry_seconds: float = 5.0,
                     clock: Callable[[], float] | None = None,
                     **backoff: float) -> tuple[list[str], dict[str, str]]:
    servers = [await serve(endpoint) for endpoint in endpoints]
    try:
        urls = [str(server.make_url("/hook")) for server in servers]
        options: dict[str, Any] = {**backoff} if clock is None else {**backoff, "clock": clock}
        async with AlertDelivery(urls, SECRET, retry_seconds, **options) as delivery:
            return urls, await delivery.deliver(ALERT)
    finally:
        for server in servers:
            await server.close()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_signature_is_hmac_sha256_of_the_timestamp_and_the_body() -> None:
    expected = hmac.new(SECRET.encode("ascii"), b"1795000000." + ALERT,
                        hashlib.sha256).hexdigest()
    assert sign(SECRET, ALERT, 1795000000) == f"sha256={expected}"
    assert sign(SECRET, ALERT, 1795000001) != sign(SECRET, ALERT, 1795000000)


def test_a_request_carries_the_exact_alert_signed_with_a_timestamp_and_its_id() -> None:
    endpoint = Endpoint()
    _, outcomes = run(lambda: deliver_to([endpoint], clock=lambda: 1795000000.75))
    assert list(outcomes.values()) == ["delivered"]
    (request,) = endpoint.requests
    assert request.body == ALERT
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["x-meterstream-alert-id"] == ALERT_ID
    assert request.headers["x-webhook-timestamp"] == "1795000000"
    digest = hmac.new(SECRET.encode("ascii"), b"1795000000." + request.body,
                      hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["x-webhook-signature"], f"sha256={digest}")


def test_each_attempt_is_signed_at_its_own_time() -> None:
    times = iter([1795000000.0, 1795000042.0])
    endpoint = statuses(503)
    _, outcomes = run(lambda: deliver_to([endpoint], first_backoff=0.01,
                                         clock=lambda: next(times)))
    assert list(outcomes.values()) == ["delivered"]
    first, second = endpoint.requests
    assert (first.headers["x-webhook-timestamp"], second.headers["x-webhook-timestamp"]) == (
        "1795000000", "1795000042")
    for request in (first, second):
        assert verify(SECRET, request.body, request.headers["x-webhook-timestamp"],
                      request.headers["x-webhook-signature"], now=1795000042)


@pytest.mark.parametrize(("timestamp", "now", "body", "secret", "valid"), [
    ("1795000000", 1795000000, ALERT, SECRET, True),
    ("1795000000", 1795000300, ALERT, SECRET, True),
    ("1795000000", 1795000301, ALERT, SECRET, False),  # replayed too late
    ("1795000000", 1794999699, ALERT, SECRET, False),  # from the future
    ("1795000000", 1795000000, ALERT + b" ", SECRET, False),
    ("1795000000", 1795000000, ALERT, "another-secret-of-32-characters!!", False),
    ("+1795000000", 1795000000, ALERT, SECRET, False),
    ("", 1795000000, ALERT, SECRET, False),
])
def test_a_receiver_verifies_the_timestamp_and_the_signature(
        timestamp: str, now: int, body: bytes, secret: str, valid: bool) -> None:
    header = sign(SECRET, ALERT, 1795000000)
    assert verify(secret, body, timestamp, header, now=now) is valid


@pytest.mark.parametrize("status", [503, 500, 429, 408])
def test_retryable_answers_are_retried_with_growing_delays(status: int,
                                                          clock: VirtualTime) -> None:
    before = {o: sample("meterstream_worker_alert_webhook_attempts_total", outcome=o)
              for o in ("ok", "retry")}
    delivered = sample("meterstream_worker_alert_webhook_deliveries_total", outcome="delivered")
    latencies = sample("meterstream_worker_alert_webhook_delivery_seconds_count")
    endpoint = statuses(status, status)
    urls, outcomes = run(lambda: deliver_to([endpoint], first_backoff=0.05, max_backoff=1.0))
    assert outcomes == {urls[0]: "delivered"}
    assert len(endpoint.requests) == 3
    # The first backoff, then twice it (no jitter here).
    assert clock.sleeps == [0.05, 0.1]
    assert sample("meterstream_worker_alert_webhook_attempts_total",
                  outcome="retry") - before["retry"] == 2
    assert sample("meterstream_worker_alert_webhook_attempts_total",
                  outcome="ok") - before["ok"] == 1
    assert sample("meterstream_worker_alert_webhook_deliveries_total",
                  outcome="delivered") - delivered == 1
    assert sample("meterstream_worker_alert_webhook_delivery_seconds_count") - latencies == 1


def test_jitter_takes_at_most_a_tenth_off_each_delay(clock: VirtualTime,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[tuple[float, float]] = []

    def most_jitter(low: float, high: float) -> float:
        drawn.append((low, high))
        return low

    monkeypatch.setattr(alert_delivery, "random", types.SimpleNamespace(uniform=most_jitter))
    endpoint = statuses(503, 503)
    urls, outcomes = run(lambda: deliver_to([endpoint], first_backoff=0.05, max_backoff=1.0))
    assert outcomes == {urls[0]: "delivered"}
    assert drawn == [(0.9, 1.0)] * 2
    assert clock.sleeps == pytest.approx([0.045, 0.09])


@pytest.mark.parametrize("status", [400, 401, 404, 410, 302])
def test_other_answers_are_refused_without_retry(status: int) -> None:
    refused = sample("meterstream_worker_alert_webhook_deliveries_total", outcome="refused")
    endpoint = statuses(status)
    urls, outcomes = run(lambda: deliver_to([endpoint], first_backoff=0.01))
    assert outcomes == {urls[0]: f"refused {status}"}
    assert len(endpoint.requests) == 1
    assert sample("meterstream_worker_alert_webhook_deliveries_total",
                  outcome="refused") - refused == 1


def test_a_dead_url_is_given_up_after_the_retry_time(caplog: pytest.LogCaptureFixture,
                                                     clock: VirtualTime) -> None:
    caplog.set_level(logging.INFO, logger="processors.alert_webhooks")
    port = free_port()
    url = f"http://user:pa55word@127.0.0.1:{port}/hook?token=t0ken"

    async def scenario() -> dict[str, str]:
        async with AlertDelivery([url], SECRET, 0.5, first_backoff=0.2) as delivery:
            return await delivery.deliver(ALERT)

    outcomes = run(scenario)
    # Attempts at 0 s and 0.2 s; the next backoff (0.4 s) passes the deadline, so the
    # third and last attempt is at the deadline itself, 0.3 s later.
    assert outcomes[url].startswith("gave up after 3 attempts: ClientConnectorError: ")
    assert f"127.0.0.1:{port}" in outcomes[url]
    assert clock.sleeps == pytest.approx([0.2, 0.3])
    assert clock.now == pytest.approx(0.5)
    logged = caplog.text + " ".join(str(vars(r)) for r in caplog.records)
    assert f"http://127.0.0.1:{port}/hook" in logged
    for secret in ("pa55word", "t0ken"):
        assert secret not in logged
        assert secret not in outcomes[url]


def test_no_retry_time_means_one_attempt() -> None:
    endpoint = statuses(503)
    urls, outcomes = run(lambda: deliver_to([endpoint], retry_seconds=0))
    assert outcomes == {urls[0]: "gave up after 1 attempt: status 503"}
    assert len(endpoint.requests) == 1


def test_urls_are_delivered_to_concurrently() -> None:
    # Each endpoint answers 200 only once both requests arrived: delivered one URL after
    # the other, the first would wait for the second until it answers 500, with no retry.
    endpoints = [Endpoint(), Endpoint()]
    both_arrived = asyncio.Event()

    async def wait_for_both() -> bool:
        if all(e.requests for e in endpoints):
            both_arrived.set()
        try:
            await asyncio.wait_for(both_arrived.wait(), 5)
        except TimeoutError:
            return False
        return True

    for endpoint in endpoints:
        endpoint.gate = wait_for_both
    urls, outcomes = run(lambda: deliver_to(endpoints, retry_seconds=0))
    assert outcomes == {url: "delivered" for url in urls}
    assert [len(e.requests) for e in endpoints] == [1, 1]


@pytest.mark.parametrize(("max_backoff", "delay"), [(0.3, 0.3), (5.0, 1.0)])
def test_retry_after_is_honoured_up_to_the_longest_backoff(max_backoff: float, delay: float,
                                                           clock: VirtualTime) -> None:
    endpoint = Endpoint(script=[(503, {"Retry-After": "1"})])
    urls, outcomes = run(lambda: deliver_to([endpoint], first_backoff=0.01,
                                            max_backoff=max_backoff))
    assert outcomes == {urls[0]: "delivered"}
    assert len(endpoint.requests) == 2
    # Retry-After: 1 rather than the 0.01 s backoff, capped at the longest backoff.
    assert clock.sleeps == [delay]


@dataclass
class FakeTopic:
    sent: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    acknowledged: int = 0

    async def send(self, *, key: bytes | None, value: bytes) -> asyncio.Future[None]:
        self.sent.append((key, value))
        future = asyncio.get_running_loop().create_future()

        def acknowledge() -> None:
            self.acknowledged += 1
            future.set_result(None)

        asyncio.get_running_loop().call_soon(acknowledge)
        return future


def test_each_url_that_did_not_take_the_alert_gets_a_dead_letter() -> None:
    good, bad = Endpoint(), statuses(400)
    dead_letters = FakeTopic()

    async def scenario() -> tuple[list[str], dict[str, str]]:
        servers = [await serve(good), await serve(bad)]
        try:
            urls = [str(servers[0].make_url("/hook")),
                    str(servers[1].make_url("/hook")).replace("://", "://u:pw@") + "?k=s3"]
            async with AlertDelivery(urls, SECRET, 5.0, first_backoff=0.01) as delivery:
                return urls, await handle_alert(delivery, ALERT, dead_letters)
        finally:
            for server in servers:
                await server.close()

    urls, outcomes = run(scenario)
    assert outcomes == {urls[0]: "delivered", urls[1]: "refused 400"}
    ((key, value),) = dead_letters.sent
    assert dead_letters.acknowledged == 1
    assert key == b"happy-otter-123"
    clean = urls[1].replace("u:pw@", "").removesuffix("?k=s3")
    assert orjson.loads(value) == {"reason": f"alert webhook {clean}: refused 400",
                                   "alert": orjson.loads(ALERT)}
    assert ALERT in value
