"""Stream health on the real broker: a deployment whose storage heartbeat stops raises one
`stream_stale` alert (on `<ns>.alerts` and at the alert webhook), shows as stale on the
worker's health API and in the fleet view, and recovers when storage usage arrives again;
a provisioned deployment whose log stream the stand-in Platform API reports `failed`
raises one `stream_failed` alert, and recovers when it is `active` again.

The threshold is configured to seconds (METERSTREAM_HEALTH_STORAGE_STALE) instead of
the default two hours; the test waits for each alert, never for a time."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support import free_port, meterstream, read_topic, recent_events, wait_for
from tests.support.convex_standin import ConvexStandIn
from tests.support.pipeline import running_pipeline, worker_page

SECRET = "3f1c2b7e9a0d4c5e8b6a7f0e1d2c3b4a"
ALERT_SECRET = "alert-secret-0123456789abcdef-0123"
DEPLOYMENT = "beating-otter-7"
STALE_SECONDS = 4


@pytest.fixture
def hook() -> Iterator[tuple[list[dict[str, Any]], str]]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(orjson.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield received, f"http://127.0.0.1:{server.server_port}/alerts"
    finally:
        server.shutdown()


def heartbeat(at_ms: int) -> bytes:
    event = recent_events("current_storage_usage")[0]
    event["convex"]["deployment_name"] = DEPLOYMENT
    event["timestamp"] = at_ms
    return orjson.dumps([event])


def page(port: str, path: str) -> Any:
    try:
        return json.loads(worker_page(port, path))
    except OSError:  # the worker's web server is not up yet
        return None


def alerts_of(bootstrap: str, namespace: str) -> list[dict[str, Any]]:
    return [orjson.loads(m.value) for m in read_topic(bootstrap, f"{namespace}.alerts")]


def test_a_stopped_heartbeat_raises_one_stale_alert_and_recovers(
        kafka_bootstrap: str, tmp_path: Path,
        hook: tuple[list[dict[str, Any]], str]) -> None:
    received, url = hook
    env = {"METERSTREAM_HEALTH_STORAGE_STALE": str(STALE_SECONDS),
           "METERSTREAM_HEALTH_CHECK_INTERVAL": "0.5",
           "METERSTREAM_ALERT_WEBHOOKS": url,
           "METERSTREAM_ALERT_WEBHOOK_SECRET": ALERT_SECRET}
    with running_pipeline(kafka_bootstrap, tmp_path, extra_env=env) as pipeline:
        pipeline.register(DEPLOYMENT, webhook_secret=SECRET)
        pipeline.register("idle-otter-8", webhook_secret=SECRET)
        port = pipeline.env["METERSTREAM_WORKER_PORT"]
        namespace = pipeline.namespace
        first = int(time.time() * 1000)
        assert pipeline.post(heartbeat(first), SECRET)[0] == 200
        wait_for(lambda: (page(port, f"/v1/deployments/{DEPLOYMENT}/health") or {}).get(
            "last_event"), timeout=90, what="the heartbeat seen by the worker")

        stale_id = f"stream_stale|{DEPLOYMENT}|storage_heartbeat|{first}"
        wait_for(lambda: any(a["id"] == stale_id for a in alerts_of(kafka_bootstrap, namespace)),
                 timeout=60, what="the stream_stale alert")
        report = page(port, f"/v1/deployments/{DEPLOYMENT}/health")
        assert report["state"] == "stale"
        assert report["storage_heartbeat"]["last"] == first
        assert report["storage_heartbeat"]["stale_after_ms"] == STALE_SECONDS * 1000
        fleet = page(port, "/v1/health/fleet")
        assert fleet["complete"] is True
        assert fleet["counts"]["stale"] == 1
        assert fleet["counts"]["never_seen"] == 1  # idle-otter-8 sent nothing
        assert page(port, "/v1/deployments/idle-otter-8/health")["state"] == "never_seen"
        # The command asks the same API with the read token.
        printed = json.loads(meterstream(["deployments", "health", DEPLOYMENT],
                                         pipeline.env).stdout)
        assert (printed["state"], printed["storage_heartbeat"]["last"]) == ("stale", first)
        assert json.loads(meterstream(["deployments", "health"], pipeline.env).stdout)[
            "counts"]["stale"] == 1
        missing = meterstream(["deployments", "health", "nobody-here"], pipeline.env,
                              check=False)
        assert missing.returncode == 1
        assert json.loads(missing.stdout)["reason"] == "unknown_deployment"
        with pytest.raises(urllib.error.HTTPError) as unknown:
            worker_page(port, "/v1/deployments/nobody-here/health")
        assert unknown.value.code == 404
        with pytest.raises(urllib.error.HTTPError) as anonymous:
            worker_page(port, f"/v1/deployments/{DEPLOYMENT}/health", token=None)
        assert anonymous.value.code == 401

        # Storage usage arrives again: the episode ends.
        back = int(time.time() * 1000)
        assert pipeline.post(heartbeat(back), SECRET)[0] == 200
        recovered_id = f"stream_recovered|{DEPLOYMENT}|storage_heartbeat|{first}"

        def recovered() -> list[dict[str, Any]] | None:
            found = alerts_of(kafka_bootstrap, namespace)
            return found if any(a["id"] == recovered_id for a in found) else None

        alerts = wait_for(recovered, timeout=60, what="the stream_recovered alert")
        wait_for(lambda: len(received) >= 2, timeout=60, what="both alerts at the webhook")

    # One alert per kind for the first episode, whatever the checks did every 0.5 s (a
    # second episode may have begun since: its alerts carry its own start).
    episode = [a for a in alerts if a["since"] == first]
    assert [(a["id"], a["kind"]) for a in episode] == [
        (stale_id, "stream_stale"), (recovered_id, "stream_recovered")]
    assert episode[1]["until"] == back
    assert {a["deployment"] for a in alerts} == {DEPLOYMENT}
    assert [a["id"] for a in received if a["since"] == first] == [stale_id, recovered_id]


def test_a_failed_stream_at_the_platform_api_raises_one_stream_failed_alert(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    name, deploy_key = "failing-otter-9", "prod:failing-otter-9|eyJ2IjoiaGVhbHRoLXRlc3QifQ"
    convex = ConvexStandIn().start()
    try:
        convex.add(name, deploy_key)
        receiver = free_port()
        env = {"METERSTREAM_RECEIVER_PORT": str(receiver),
               "METERSTREAM_PUBLIC_URL": f"http://127.0.0.1:{receiver}",
               "METERSTREAM_CONVEX_API_URL": convex.url_template,
               "METERSTREAM_HEALTH_STATUS_INTERVAL": "0.5"}
        with running_pipeline(kafka_bootstrap, tmp_path, extra_env=env) as pipeline:
            status, answer = pipeline.admin("POST", f"/v1/deployments/{name}/provision",
                                            {"deploy_key": deploy_key})
            assert status == 200, answer
            assert "deploy_key" not in json.dumps(answer)  # stored sealed, never shown
            stream = convex.deployments[name].streams[answer["log_stream_id"]]
            port = pipeline.env["METERSTREAM_WORKER_PORT"]
            namespace = pipeline.namespace
            wait_for(lambda: ((page(port, f"/v1/deployments/{name}/health") or {}).get(
                "stream_status") or {}).get("state") == "active", timeout=90,
                what="the stream seen active (verified) by the worker's check")

            stream.status, stream.reason = "failed", "verification: 404 Not Found"
            failed_id = f"stream_failed|{name}|stream_status|1"
            wait_for(lambda: any(a["id"] == failed_id
                                 for a in alerts_of(kafka_bootstrap, namespace)),
                     timeout=60, what="the stream_failed alert")
            report = page(port, f"/v1/deployments/{name}/health")
            assert report["state"] == "failed"
            assert report["stream_status"]["reason"] == "verification: 404 Not Found"
            assert page(port, "/v1/health/fleet")["counts"]["failed"] == 1

            stream.status, stream.reason = "active", None
            recovered_id = f"stream_recovered|{name}|stream_status|1"

            def recovered() -> list[dict[str, Any]] | None:
                found = alerts_of(kafka_bootstrap, namespace)
                return found if any(a["id"] == recovered_id for a in found) else None

            alerts = wait_for(recovered, timeout=60, what="the stream_recovered alert")
            assert page(port, f"/v1/deployments/{name}/health")["state"] != "failed"
    finally:
        convex.stop()

    # Checked every 0.5 s while it was failed: one alert for the episode, one recovery.
    assert [(a["id"], a["kind"]) for a in alerts] == [
        (failed_id, "stream_failed"), (recovered_id, "stream_recovered")]
    assert (alerts[0]["status"], alerts[0]["reason"], alerts[0]["log_stream_id"]) == (
        "failed", "verification: 404 Not Found", stream.id)
    assert alerts[1]["recovers"] == failed_id
