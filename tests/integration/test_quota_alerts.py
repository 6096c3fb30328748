"""Quotas end to end on the real broker: a signed batch crosses a threshold, the alert
lands on `<ns>.alerts` once and reaches the alert webhook signed; late events are dead
letters; the worker's quota API answers from its live state."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest

from tests.support import free_port, read_topic, recent_events, wait_for
from tests.support.clock import settled
from tests.support.load import function_load
from tests.support.pipeline import running_pipeline, worker_page

SECRET = "3f1c2b7e9a0d4c5e8b6a7f0e1d2c3b4a"
ALERT_SECRET = "alert-secret-0123456789abcdef-0123"


class Hook:
    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.answers = [503]  # the first delivery fails, so it is retried


@pytest.fixture
def hook() -> Iterator[tuple[Hook, str]]:
    state = Hook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.received.append((dict(self.headers), body))
            status = state.answers.pop(0) if state.answers else 200
            self.send_response(status)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_port}/alerts"
    finally:
        server.shutdown()


def _quota(port: str, deployment: str, query: str = "") -> dict:
    return json.loads(worker_page(port, f"/v1/quota/{deployment}{query}"))


def _day_calls(port: str, deployment: str, at_ms: int) -> int | None:
    try:
        return _quota(port, deployment, f"?at={at_ms}")["periods"]["day"]["usage"][
            "function_calls"]
    except OSError:  # the worker's web server is not up yet
        return None


LOAD_SPAN_MS = 5_000  # function_load stamps its events at at_ms + n % 5000


def load_time(now_ms: int) -> int:
    """Where the load's events are: one UTC day (the quota's period, read back at that
    time) for all of them, at least 10 s in the past, whatever time of day `now_ms` is."""
    return settled(now_ms, LOAD_SPAN_MS, "day", before_ms=10_000)


def test_a_crossed_quota_alerts_once_to_kafka_and_the_signed_webhook(
        kafka_bootstrap: str, tmp_path: Path, hook: tuple[Hook, str]) -> None:
    received, url = hook
    deployment = "quota-otter-1"
    now = int(time.time() * 1000)  # read once: every time below derives from it
    at = load_time(now)
    load = function_load(deployment, bodies=4, events_per_body=25, at_ms=at)
    calls = load.totals["function_calls"]
    late = recent_events("function_execution")[:1]
    late[0]["convex"]["deployment_name"] = deployment
    late[0]["timestamp"] = now - 2 * 86_400_000  # two days old: beyond the 1-day grace
    env = {"METERSTREAM_ALERT_WEBHOOKS": url, "METERSTREAM_ALERT_WEBHOOK_SECRET": ALERT_SECRET}
    with running_pipeline(kafka_bootstrap, tmp_path, extra_env=env) as pipeline:
        pipeline.register(deployment, webhook_secret=SECRET)
        status, _ = pipeline.admin("PUT", f"/v1/deployments/{deployment}/quotas", {"quotas": [
            {"metric": "function_calls", "period": "day", "limit": calls, "hard": True}]})
        assert status == 200
        port = pipeline.env["METERSTREAM_WORKER_PORT"]
        for body in load.bodies[:3]:
            assert pipeline.post(body, SECRET)[0] == 200
        # 75 % of the limit: below both thresholds.
        wait_for(lambda: _day_calls(port, deployment, at) == calls * 3 // 4, timeout=60,
                 what="three bodies counted")
        assert read_topic(kafka_bootstrap, f"{pipeline.namespace}.alerts") == []
        assert pipeline.post(load.bodies[3], SECRET)[0] == 200
        assert pipeline.post(load.bodies[3], SECRET)[0] == 200  # a Convex retry
        assert pipeline.post(orjson.dumps(late), SECRET)[0] == 200

        day = time.strftime("%Y-%m-%d", time.gmtime(at / 1000))
        expected_ids = [f"quota|{deployment}|function_calls|day|{day}|{t}" for t in (0.8, 1.0)]
        wait_for(lambda: len(received.received) >= 3, timeout=60,
                 what="two alerts delivered, one after a retry")
        alerts = [orjson.loads(m.value)
                  for m in read_topic(kafka_bootstrap, f"{pipeline.namespace}.alerts")]
        assert [a["id"] for a in alerts] == expected_ids
        assert [(a["usage"], a["limit"], a["hard"]) for a in alerts] == [(calls, calls, True)] * 2

        report = _quota(port, deployment, f"?at={at}")
        assert report["periods"]["day"]["usage"]["function_calls"] == calls
        assert report["hard_limit_exceeded"] is True
        letters = wait_for(lambda: [orjson.loads(m.value) for m in read_topic(
            kafka_bootstrap, f"{pipeline.namespace}.deadletter")], timeout=30,
            what="the late event's dead letter")
        assert [letter["reason"].split(":")[0] for letter in letters] == ["late"]
        with pytest.raises(urllib.error.HTTPError) as unknown:
            _quota(port, "nobody-here")
        assert unknown.value.code == 404

    # The webhook got every alert, signed, the first one twice (503, then delivered).
    ids = [headers["x-meterstream-alert-id"] for headers, _ in received.received]
    assert sorted(ids) == sorted([expected_ids[0], *expected_ids])
    for headers, body in received.received:
        signed = headers["x-webhook-timestamp"].encode() + b"." + body
        digest = hmac.new(ALERT_SECRET.encode(), signed, hashlib.sha256).hexdigest()
        assert headers["x-webhook-signature"] == f"sha256={digest}"
        assert orjson.loads(body)["id"] == headers["x-meterstream-alert-id"]
