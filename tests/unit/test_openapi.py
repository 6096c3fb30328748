"""The OpenAPI documents against the code: each a valid OpenAPI 3.1 document, each
listener's routes exactly its document's operations (both ways), every refusal in the
one Error shape, and each document served at /openapi.json by the listener it describes.
The answers of the running services are checked in tests/integration/test_openapi.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import faust
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from faust.exceptions import SameNode
from openapi_spec_validator import validate

from ingest.openapi import admin_document, public_document
from ingest.receiver import Receiver
from meterstream.core.config import Settings
from meterstream.core.http_errors import json_errors
from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.openapi import ERROR, OPENAPI_PATH
from meterstream.core.read_tokens import ReadTokenView
from meterstream.core.registry import RegistryView
from meterstream.core.service import TIMED_OUT, TOO_MANY
from meterstream.core.topics import Topics
from meterstream.processes.receiver import usage_view
from processors.app import create_app
from processors.openapi import worker_document
from tests.support.openapi import (
    check_answer,
    operations,
    refusal_refs,
    routes,
    schema_errors,
)

READ = "read-token-0123456789abcdef"


class _Producer:
    healthy = False

    async def store(self, *_: Any) -> None:
        raise AssertionError("nothing is stored here")


def _receiver(tmp_path: Path, tokens: bool = False, **env: str) -> Receiver:
    """`tokens`: with the read tokens' view, as the receiver's process makes it."""
    settings = Settings.from_env({"METERSTREAM_DATA_DIR": str(tmp_path),
                                  "METERSTREAM_ADMIN_TOKEN": "admin-token-0123456789", **env})
    topics = Topics.of(settings)
    kafka = KafkaConnection.of(settings)
    registry = RegistryView(kafka, topics.deployments.name)
    view = ReadTokenView(kafka, topics.read_tokens.name) if tokens else None
    return Receiver(settings, _Producer(), registry, topics, view)  # type: ignore[arg-type]


def _with_usage_view(receiver: Receiver) -> web.Application:
    """The public listener as the receiver's process serves it: with the usage view."""
    assert receiver.token_admin is not None
    view = usage_view(receiver.settings, receiver.token_admin.tokens, receiver.registry)
    return receiver.app(view.add_routes)


def _worker(tmp_path: Path, **env: str) -> web.Application:
    settings = Settings.from_env({"METERSTREAM_DATA_DIR": str(tmp_path),
                                  "METERSTREAM_READ_TOKEN": READ, **env})
    app: faust.App = create_app(settings, priced=frozenset())

    async def here(*_: Any, **__: Any) -> Any:
        raise SameNode()  # this worker owns every deployment: the view answers itself

    app.router.route_topic_req = here  # type: ignore[method-assign]
    app.web.init_server()
    web_app: web.Application = cast(Any, app.web).web_app
    return web_app


def _listeners(tmp_path: Path) -> dict[str, tuple[web.Application, dict[str, Any]]]:
    """Every listener that serves an API, in both probe placements, with its document."""
    plain = _receiver(tmp_path / "a")
    apart = _receiver(tmp_path / "b", METERSTREAM_METRICS_HOST="10.0.0.5")
    return {
        "receiver public": (plain.app(), public_document(probes=True)),
        "receiver public, probes apart": (apart.app(), public_document(probes=False)),
        "receiver admin": (plain.admin_app(), admin_document()),
        "receiver public, usage view": (_with_usage_view(_receiver(tmp_path / "e", True)),
                                        public_document(probes=True, usage=True)),
        "receiver admin, read tokens": (_receiver(tmp_path / "f", True).admin_app(),
                                        admin_document(read_tokens=True)),
        "worker": (_worker(tmp_path / "c"), worker_document(probes=True)),
        "worker, probes apart": (_worker(tmp_path / "d", METERSTREAM_METRICS_HOST="10.0.0.5"),
                                 worker_document(probes=False)),
    }


def _serve(app: web.Application,
           scenario: Callable[[TestClient[Any, Any]], Awaitable[None]]) -> None:
    async def run() -> None:
        async with TestClient(TestServer(app)) as client:
            await scenario(client)

    asyncio.run(asyncio.wait_for(run(), 30))


@pytest.mark.parametrize("spec", [public_document(True), public_document(False),
                                  public_document(True, usage=True),
                                  admin_document(), admin_document(read_tokens=True),
                                  worker_document(True),
                                  worker_document(False)])
def test_every_document_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    validate(spec)
    assert spec["openapi"].startswith("3.1")
    assert spec["components"]["schemas"]["Error"] == ERROR


def test_each_listeners_routes_are_exactly_its_documents_operations(tmp_path: Path) -> None:
    for name, (app, spec) in _listeners(tmp_path).items():
        served, documented = routes(app), operations(spec)
        assert served - documented == set(), f"{name}: routes missing from the document"
        assert documented - served == set(), f"{name}: operations no route serves"


def test_the_route_comparison_sees_a_difference_either_way(tmp_path: Path) -> None:
    app, spec = _listeners(tmp_path)["receiver admin"]

    async def handler(_: web.Request) -> web.Response:
        return web.Response()

    app.router.add_post("/v1/undocumented", handler)
    assert ("post", "/v1/undocumented") in routes(app) - operations(spec)
    spec = {**spec, "paths": {**spec["paths"], "/v1/imagined": {"get": {}}}}
    assert ("get", "/v1/imagined") in operations(spec) - routes(app)


def test_every_documented_refusal_is_the_error_schema() -> None:
    for spec in (public_document(usage=True), admin_document(read_tokens=True),
                 worker_document()):
        for method, path, status, schema in refusal_refs(spec):
            if path == "/readyz":
                continue  # not a refusal: the readiness state, condition by condition
            assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)


def test_each_listener_serves_its_own_document_without_a_token(tmp_path: Path) -> None:
    served: dict[str, Any] = {}

    async def fetch(client: TestClient[Any, Any], name: str) -> None:
        answer = await client.get(OPENAPI_PATH)
        assert answer.status == 200, name
        assert answer.content_type == "application/json"
        served[name] = orjson.loads(await answer.read())

    for name, (app, spec) in _listeners(tmp_path).items():
        _serve(app, lambda client, name=name: fetch(client, name))  # type: ignore[misc]
        assert served[name] == orjson.loads(orjson.dumps(spec)), name


@pytest.mark.parametrize(("listener", "method", "path", "status"), [
    (listener, method, path, status)
    for listener, wrong_method in [("receiver public", ("GET", "/v1/convex/logs")),
                                   ("receiver admin", ("POST", "/v1/deployments")),
                                   ("worker", ("POST", "/v1/quota/happy-otter-123"))]
    for method, path, status in [("GET", "/nowhere", 404), (*wrong_method, 405),
                                 ("DELETE", "/healthz", 405)]
])
def test_aiohttps_own_refusals_answer_in_the_error_shape(
        tmp_path: Path, listener: str, method: str, path: str, status: int) -> None:
    app, spec = _listeners(tmp_path)[listener]

    async def scenario(client: TestClient[Any, Any]) -> None:
        headers = {"Authorization": f"Bearer {READ}"}
        answer = await client.request(method, path, headers=headers)
        assert answer.status == status
        body = orjson.loads(await answer.read())
        assert schema_errors(spec, {"$ref": "#/components/schemas/Error"}, body) == []
        assert body["reason"] == {404: "not_found", 405: "method_not_allowed"}[status]
        if status == 405:
            assert answer.headers["Allow"]

    _serve(app, scenario)


def test_an_admin_body_over_the_listeners_limit_is_413_in_the_error_shape(
        tmp_path: Path) -> None:
    receiver = _receiver(tmp_path)
    receiver.registry._loaded.set()

    async def scenario(client: TestClient[Any, Any]) -> None:
        answer = await client.put("/v1/deployments/happy-otter-123",
                                  data=b"{" + b" " * (2 << 20) + b"}",
                                  headers={"Authorization": "Bearer admin-token-0123456789"})
        assert answer.status == 413
        assert orjson.loads(await answer.read())["reason"] == "too_large"

    _serve(receiver.admin_app(), scenario)


def test_an_unexpected_exception_is_a_logged_500_in_the_error_shape(
        caplog: pytest.LogCaptureFixture) -> None:
    async def broken(_: web.Request) -> web.Response:
        raise KeyError("a bug")

    app = web.Application(middlewares=[json_errors])
    app.router.add_get("/broken", broken)
    got: list[Any] = []

    async def scenario(client: TestClient[Any, Any]) -> None:
        answer = await client.get("/broken")
        got.append((answer.status, orjson.loads(await answer.read())))

    with caplog.at_level(logging.ERROR, "meterstream.http"):
        _serve(app, scenario)
    assert got == [(500, {"error": "internal error; the service logged it",
                          "reason": "internal"})]
    assert any(record.exc_info for record in caplog.records)


@pytest.mark.parametrize("raw", [TOO_MANY, TIMED_OUT])
def test_the_connection_guards_refusals_are_in_the_error_shape(raw: bytes) -> None:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert schema_errors(public_document(), {"$ref": "#/components/schemas/Error"},
                         orjson.loads(body)) == []


def test_the_workers_refusals_match_its_document(tmp_path: Path) -> None:
    spec = worker_document()
    app = _worker(tmp_path)

    async def scenario(client: TestClient[Any, Any]) -> None:
        for path, headers in [
            ("/v1/quota/happy-otter-123", {}),
            ("/v1/quota/happy-otter-123", {"Authorization": "Bearer wrong-token-0123456789"}),
            ("/v1/quota/happy-otter-123", {"Authorization": f"Bearer {READ}"}),
            ("/", {"Authorization": f"Bearer {READ}"}),
            ("/healthz", {}), ("/readyz", {}), ("/metrics", {}),
        ]:
            answer = await client.get(path, headers=headers)
            check_answer(spec, "GET", path, answer.status, answer.content_type,
                         await answer.read())

    _serve(app, scenario)
