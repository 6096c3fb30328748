"""The log stream's lifecycle through the Convex Platform API, against a stand-in of it,
end to end through `meterstream up` into ClickHouse."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

import orjson
import pytest

from tests.support import free_port, meterstream, recent_events, wait_for
from tests.support.convex_standin import ConvexStandIn, Stream
from tests.support.pipeline import ADMIN_TOKEN, Pipeline, running_pipeline

DEPLOY_KEY = "prod:app-one|eyJ2IjoiZGVwbG95LWtleS1mb3ItdGVzdHMifQ"


@pytest.fixture(scope="module")
def convex() -> Iterator[ConvexStandIn]:
    standin = ConvexStandIn().start()
    yield standin
    standin.stop()


@pytest.fixture(scope="module")
def pipeline(kafka_bootstrap: str, convex: ConvexStandIn,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    port = free_port()
    extra = {"METERSTREAM_RECEIVER_PORT": str(port),
             "METERSTREAM_PUBLIC_URL": f"http://127.0.0.1:{port}",
             "METERSTREAM_CONVEX_API_URL": convex.url_template,
             "METERSTREAM_SECRET_OVERLAP": "300"}
    with running_pipeline(kafka_bootstrap, tmp_path_factory.mktemp("lifecycle"),
                          extra_env=extra) as running:
        yield running


_batches = itertools.count()


def _events(name: str) -> list[dict]:
    """The reference's function executions, made distinct per call: a stream never resends a
    batch byte for byte except as a retry, which the worker drops as a duplicate."""
    events = recent_events("function_execution")
    shift = next(_batches)
    for event in events:
        event["convex"]["deployment_name"] = name
        event["timestamp"] += shift
    return events


def _cli(pipeline: Pipeline, *args: str, check: bool = True):
    env = {"METERSTREAM_ADMIN_TOKEN": ADMIN_TOKEN,
           "METERSTREAM_ADMIN_PORT": pipeline.env["METERSTREAM_ADMIN_PORT"],
           "DEPLOY_KEY": DEPLOY_KEY}
    return meterstream(["deployments", *args, "--deploy-key-env", "DEPLOY_KEY"], env,
                       check=check)


def _rows(pipeline: Pipeline, name: str) -> int:
    return int(pipeline.sql(f"SELECT count() FROM function_executions "
                            f"WHERE deployment = '{name}'"))


def test_provision_rotate_deprovision_end_to_end(pipeline: Pipeline,
                                                 convex: ConvexStandIn) -> None:
    convex.add("app-one", DEPLOY_KEY)
    provisioned = _cli(pipeline, "provision", "app-one", "--team", "acme")
    assert '"log_stream_id": "ls' in provisioned.stdout
    stream = convex.deployments["app-one"].live()
    assert stream is not None
    assert stream.url == f"{pipeline.env['METERSTREAM_PUBLIC_URL']}/v1/convex/logs"
    assert (stream.format, stream.topics) == ("jsonl", ["function_execution",
                                                        "current_storage_usage",
                                                        "storage_api_bandwidth",
                                                        "log_stream_egress"])
    # Convex's verification request, signed with the secret it just made, was accepted.
    wait_for(lambda: stream.status == "active", timeout=30, what="the stream to verify")
    sync = pipeline.admin("POST", "/v1/deployments/app-one/sync", {"deploy_key": DEPLOY_KEY})
    assert sync == (200, {**sync[1], "in_sync": True, "drift": []})

    assert convex.deliver("app-one", _events("app-one")) == 200

    # Rotate twice while batches keep coming: none may be refused or dropped.
    sending = threading.Event()
    statuses: list[int] = []

    def keep_sending() -> None:
        while not sending.is_set():
            statuses.append(convex.deliver("app-one", _events("app-one")))

    sender = threading.Thread(target=keep_sending)
    sender.start()
    try:
        wait_for(lambda: len(statuses) >= 5, timeout=30, what="batches before the rotation")
        _cli(pipeline, "rotate-secret", "app-one")
        wait_for(lambda: len(statuses) >= 15, timeout=30, what="batches between rotations")
        _cli(pipeline, "rotate-secret", "app-one")
        count = len(statuses)
        wait_for(lambda: len(statuses) >= count + 10, timeout=30, what="batches after it")
    finally:
        sending.set()
        sender.join(60)
    assert set(statuses) == {200}, statuses
    delivered = 1 + len(statuses)
    wait_for(lambda: _rows(pipeline, "app-one") >= 3 * delivered, timeout=60,
             what=f"{3 * delivered} rows of app-one")
    assert _rows(pipeline, "app-one") == 3 * delivered

    removed = _cli(pipeline, "deprovision", "app-one")
    assert '"removed_at": 1' in removed.stdout
    assert convex.deployments["app-one"].live() is None
    assert convex.deliver("app-one", _events("app-one")) == 0  # Convex no longer sends
    status, answer = pipeline.post(b"\n".join(orjson.dumps(e) for e in _events("app-one")),
                                   stream.secret)
    # Answered like an unknown deployment or a bad signature.
    assert status == 401
    assert b'"unauthenticated"' in answer
    # The history stays queryable.
    assert _rows(pipeline, "app-one") == 3 * delivered
    status, record = pipeline.admin("GET", "/v1/deployments/app-one")
    assert (status, record["team"], record["has_webhook_secret"]) == (200, "acme", False)


def test_an_existing_stream_is_reported_and_adopted_on_request(pipeline: Pipeline,
                                                               convex: ConvexStandIn) -> None:
    deployment = convex.add("app-two", DEPLOY_KEY)
    old = Stream("lsold000", "https://elsewhere.example/hook", "json", None, "0" * 32,
                 status="active")
    deployment.streams[old.id] = old
    refused = _cli(pipeline, "provision", "app-two", check=False)
    assert refused.returncode == 1
    assert "already has a webhook log stream (lsold000" in refused.stdout
    assert pipeline.admin("GET", "/v1/deployments/app-two")[0] == 404
    assert old.url == "https://elsewhere.example/hook"

    _cli(pipeline, "provision", "app-two", "--adopt")
    assert old.url == f"{pipeline.env['METERSTREAM_PUBLIC_URL']}/v1/convex/logs"
    assert old.secret != "0" * 32
    wait_for(lambda: old.status == "active", timeout=30, what="the adopted stream to verify")
    assert convex.deliver("app-two", _events("app-two")) == 200


def test_a_plan_without_log_streams_leaves_nothing_registered(pipeline: Pipeline,
                                                              convex: ConvexStandIn) -> None:
    convex.add("app-free", DEPLOY_KEY, log_streaming=False)
    status, answer = pipeline.admin("POST", "/v1/deployments/app-free/provision",
                                    {"deploy_key": DEPLOY_KEY})
    assert (status, answer["reason"], answer["code"]) == (502, "convex_error",
                                                         "LogStreamingNotEnabled")
    assert pipeline.admin("GET", "/v1/deployments/app-free")[0] == 404


def test_convex_errors_keep_their_code_and_never_the_deploy_key(pipeline: Pipeline,
                                                                convex: ConvexStandIn) -> None:
    convex.add("app-three", DEPLOY_KEY)
    wrong = "prod:app-three|not-the-right-key-0123456789"
    status, answer = pipeline.admin("POST", "/v1/deployments/app-three/provision",
                                    {"deploy_key": wrong})
    assert (status, answer["code"], answer["convex_status"]) == (502, "BadAdminKey", 401)
    assert pipeline.admin("GET", "/v1/deployments/app-three")[0] == 404
    status, answer = pipeline.admin("POST", "/v1/deployments/nothing-here/deprovision",
                                    {"deploy_key": wrong})
    assert status == 404
    assert wrong not in pipeline.log.read_text()
    assert DEPLOY_KEY not in pipeline.log.read_text()


def test_transient_convex_failures_are_retried(pipeline: Pipeline,
                                               convex: ConvexStandIn) -> None:
    convex.add("app-four", DEPLOY_KEY)
    convex.fail_next = 2
    status, record = pipeline.admin("POST", "/v1/deployments/app-four/provision",
                                    {"deploy_key": DEPLOY_KEY, "format": "json",
                                     "topics": None, "plan": "professional"})
    assert status == 200, record
    assert convex.fail_next == 0
    stream = convex.deployments["app-four"].live()
    assert stream is not None
    assert (stream.format, stream.topics) == ("json", None)
    assert record["plan"] == "professional"


def test_sync_reports_drift(pipeline: Pipeline, convex: ConvexStandIn) -> None:
    convex.add("app-five", DEPLOY_KEY)
    pipeline.admin("POST", "/v1/deployments/app-five/provision", {"deploy_key": DEPLOY_KEY})
    stream = convex.deployments["app-five"].live()
    assert stream is not None
    stream.url = "https://somewhere-else.example/hook"
    stream.secret = "f" * 32
    status, report = pipeline.admin("POST", "/v1/deployments/app-five/sync",
                                    {"deploy_key": DEPLOY_KEY})
    assert status == 200
    assert report["in_sync"] is False
    assert len(report["drift"]) == 2
    assert "somewhere-else" in report["drift"][0]
    assert "secret differs" in report["drift"][1]


def test_lifecycle_needs_a_deploy_key(pipeline: Pipeline) -> None:
    status, answer = pipeline.admin("POST", "/v1/deployments/app-one/provision", {})
    assert (status, answer["fields"]) == (400, {"deploy_key": "required"})


def test_invalid_stream_settings_are_refused_before_convex(pipeline: Pipeline,
                                                           convex: ConvexStandIn) -> None:
    convex.add("app-six", DEPLOY_KEY)
    status, answer = pipeline.admin("POST", "/v1/deployments/app-six/provision",
                                    {"deploy_key": DEPLOY_KEY, "format": "xml",
                                     "topics": ["exception"]})
    assert status == 400
    assert set(answer["fields"]) == {"format", "topics"}
    assert convex.deployments["app-six"].live() is None

