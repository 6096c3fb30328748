"""The worker's doors on a real worker (real broker, a receiver for the registry): the
quota API takes the read or the admin token and nothing else, Faust's own pages are off,
the probes are open; with METERSTREAM_METRICS_HOST the probes move to their own
listener and leave the API port."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port, metric_sample, wait_for
from tests.support.pipeline import ADMIN_TOKEN, READ_TOKEN, Pipeline, running_pipeline
from tests.support.workers import start_worker, worker_processes

DEPLOYMENT = "doors-otter-1"
# Every built-in page of faust-streaming that serves table contents or internals.
FAUST_PAGES = ("/table/", "/table/usage/", f"/table/usage/{DEPLOYMENT}/", "/router/",
               "/router/topics", "/router/usage/", f"/router/usage/{DEPLOYMENT}/", "/graph/",
               "/stats/", "/assignment/", "/performance/")
PROBES = ("/healthz", "/readyz", "/metrics")


def _get(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _status(port: int, path: str, token: str | None = None) -> int | None:
    try:
        return _get(port, path, token)[0]
    except OSError:  # not listening yet
        return None


@pytest.fixture(scope="module")
def receiver(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Pipeline]:
    with running_pipeline(kafka_bootstrap, tmp_path_factory.mktemp("doors"),
                          command="receiver") as pipeline:
        pipeline.register(DEPLOYMENT, team="doors")
        yield pipeline


def _wait_ready(port: int, what: str) -> None:
    wait_for(lambda: _status(port, "/readyz") == 200, timeout=120,
             what=f"{what} to answer /readyz with 200")


def _wait_registered(port: int) -> None:
    """Until the worker's registry view holds the deployment (it follows the topic)."""
    wait_for(lambda: _status(port, f"/v1/quota/{DEPLOYMENT}", READ_TOKEN) == 200,
             timeout=60, what="the worker to know the deployment")


def test_the_quota_api_takes_the_read_or_admin_token_only_and_fausts_pages_are_off(
        receiver: Pipeline, tmp_path: Path) -> None:
    port = free_port()
    quota = f"/v1/quota/{DEPLOYMENT}"
    with worker_processes() as workers:
        workers.append(start_worker(receiver.env, tmp_path / "worker.log", port))
        _wait_ready(port, "the worker")
        status, body = _get(port, "/readyz")
        assert json.loads(body) == {"ready": True, "registry": True, "partitions": True,
                                    "tables": True}
        _wait_registered(port)

        status, body = _get(port, quota)
        assert status == 401
        assert json.loads(body)["reason"] == "unauthenticated"
        status, body = _get(port, quota, "wrong-token-0123456789abcdef")
        assert status == 403
        assert json.loads(body)["reason"] == "forbidden"
        for token in (READ_TOKEN, ADMIN_TOKEN):
            status, body = _get(port, quota, token)
            assert status == 200, body
            assert json.loads(body)["deployment"] == DEPLOYMENT

        for path in FAUST_PAGES:
            assert _get(port, path)[0] == 401, path
            assert _get(port, path, ADMIN_TOKEN)[0] == 404, path
        for path in PROBES:
            assert _get(port, path)[0] == 200, path
        # Every refusal is counted, by reason (1 unauthenticated above, 1 per Faust page).
        assert metric_sample(str(port), "meterstream_worker_api_refused_total",
                             'reason="unauthenticated"') == 1 + len(FAUST_PAGES)
        assert metric_sample(str(port), "meterstream_worker_api_refused_total",
                             'reason="forbidden"') == 1


def test_with_a_metrics_host_the_probes_have_their_own_listener(
        receiver: Pipeline, tmp_path: Path) -> None:
    port, probes = free_port(), free_port()
    env = {**receiver.env, "METERSTREAM_METRICS_HOST": "127.0.0.1",
           "METERSTREAM_WORKER_METRICS_PORT": str(probes)}
    with worker_processes() as workers:
        workers.append(start_worker(env, tmp_path / "worker.log", port))
        _wait_ready(probes, "the worker's probe listener")
        for path in PROBES:
            assert _get(probes, path)[0] == 200, path
            # Gone from the API port, with or without a token.
            assert _get(port, path)[0] == 404, path
            assert _get(port, path, READ_TOKEN)[0] == 404, path
        _wait_registered(port)
        assert _get(port, f"/v1/quota/{DEPLOYMENT}")[0] == 401
        # The probe listener serves the probes and nothing else.
        assert _get(probes, f"/v1/quota/{DEPLOYMENT}", READ_TOKEN)[0] == 404
        assert _get(probes, "/table/", READ_TOKEN)[0] == 404
