"""The worker's web server, as `meterstream worker` builds it (processors/app.py), served
by aiohttp's test server: which routes exist, which need a token, which are off.

No broker: the Faust app is built, not started, so the quota view is made to answer
locally (its forwarding needs the running consumer's assignment); everything in front
of it, the token check included, is the production code."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import faust
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from faust.exceptions import SameNode

from meterstream.core.config import Settings
from meterstream.core.service import Readiness
from processors import metrics
from processors.app import create_app
from processors.web_access import TokenCheck, api_guard

READ = "read-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"
QUOTA = "/v1/quota/happy-otter-123"
PROBES = ("/healthz", "/readyz", "/metrics")
# Faust's built-in pages, each of which this faust-streaming serves when enabled: table
# contents, the cluster's layout, the service graph, sensor statistics, performance.
FAUST_PAGES = ("/table/", "/table/usage/", "/table/seen/x/", "/router/", "/router/topics",
               "/router/usage/", "/router/usage/x/", "/graph/", "/stats/", "/assignment/",
               "/performance/")


def _app(tmp_path: Path, read: str = READ, admin: str = ADMIN, **env: str) -> faust.App:
    settings = Settings.from_env({"METERSTREAM_DATA_DIR": str(tmp_path),
                                  "METERSTREAM_READ_TOKEN": read,
                                  "METERSTREAM_ADMIN_TOKEN": admin, **env})
    app = create_app(settings, priced=frozenset())

    async def here(*_: Any, **__: Any) -> Any:
        raise SameNode()  # this worker owns every deployment: the view answers itself

    app.router.route_topic_req = here  # type: ignore[method-assign]
    app.web.init_server()
    return app


def _web_app(app: faust.App) -> web.Application:
    """The aiohttp application of Faust's aiohttp driver."""
    web_app: web.Application = cast(Any, app.web).web_app
    return web_app


def _serve(app: faust.App | web.Application,
           scenario: Callable[[TestClient[Any, Any]], Awaitable[None]]) -> None:
    web_app = app if isinstance(app, web.Application) else _web_app(app)

    async def run() -> None:
        async with TestClient(TestServer(web_app)) as client:
            await scenario(client)

    asyncio.run(asyncio.wait_for(run(), 30))


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _refused(reason: str) -> float:
    return metrics.API_REFUSED.labels(reason)._value.get()


def test_the_worker_serves_its_own_routes_only(tmp_path: Path) -> None:
    app = _app(tmp_path)
    paths = {route.resource.canonical for route in _web_app(app).router.routes()
             if route.resource is not None}
    # "/" is Faust's production index ({"status": "OK"}, nothing more), which Faust serves
    # whenever its statistics page is off; it needs a token like any other path.
    # /openapi.json describes the API (processors/openapi.py).
    assert paths == {"/v1/quota/{deployment}", "/v1/deployments/{deployment}/health",
                     "/v1/health/fleet", *PROBES, "/", "/openapi.json"}


def test_the_health_api_needs_a_token_like_the_quota_api(tmp_path: Path) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        for path in ("/v1/deployments/happy-otter-123/health", "/v1/health/fleet"):
            answer = await client.get(path)
            assert answer.status == 401, path
            assert (await answer.json())["reason"] == "unauthenticated"
        # With the token the view answers: the deployment is not in the (unloaded) registry.
        answer = await client.get("/v1/deployments/happy-otter-123/health",
                                  headers=_bearer(READ))
        assert answer.status == 404
        assert (await answer.json())["reason"] == "unknown_deployment"

    _serve(_app(tmp_path), scenario)


def test_the_quota_api_refuses_a_request_without_a_token(tmp_path: Path) -> None:
    before = _refused("unauthenticated")

    async def scenario(client: TestClient[Any, Any]) -> None:
        for headers in ({}, {"Authorization": f"Basic {READ}"}, {"Authorization": "Bearer "},
                        {"Authorization": READ}):
            answer = await client.get(QUOTA, headers=headers)
            assert answer.status == 401, headers
            assert await answer.json() == {
                "error": "send Authorization: Bearer <read token or admin token>",
                "reason": "unauthenticated"}
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")

    _serve(_app(tmp_path), scenario)
    assert _refused("unauthenticated") == before + 4


@pytest.mark.parametrize("token", ["wrong-token-0123456789abcdef", READ[:-1], READ + "x",
                                   READ.upper(), f"{READ} {ADMIN}", "é" * 20])
def test_the_quota_api_refuses_a_wrong_token(tmp_path: Path, token: str) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        answer = await client.get(QUOTA, headers=_bearer(token))
        assert answer.status == 403
        assert (await answer.json())["reason"] == "forbidden"

    _serve(_app(tmp_path), scenario)


@pytest.mark.parametrize("token", [READ, ADMIN])
def test_the_read_token_and_the_admin_token_open_the_quota_api(tmp_path: Path,
                                                               token: str) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        # The view answers: the deployment is not in the (unloaded) registry.
        answer = await client.get(QUOTA, headers=_bearer(token))
        assert answer.status == 404
        assert (await answer.json())["reason"] == "unknown_deployment"
        lower = await client.get(QUOTA, headers={"Authorization": f"bearer {token}"})
        assert lower.status == 404

    _serve(_app(tmp_path), scenario)


def test_a_read_token_alone_opens_the_api_and_the_admin_token_alone_too(
        tmp_path: Path) -> None:
    async def scenario(client: TestClient[Any, Any], token: str, other: str) -> None:
        assert (await client.get(QUOTA, headers=_bearer(token))).status == 404
        assert (await client.get(QUOTA, headers=_bearer(other))).status == 403

    _serve(_app(tmp_path / "r", admin=""), lambda c: scenario(c, READ, ADMIN))
    _serve(_app(tmp_path / "a", read=""), lambda c: scenario(c, ADMIN, READ))


def test_without_any_token_configured_the_api_is_off_and_the_probes_stay(
        tmp_path: Path) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        for headers in ({}, _bearer(READ), _bearer(ADMIN), _bearer("")):
            answer = await client.get(QUOTA, headers=headers)
            assert answer.status == 403
            assert (await answer.json())["reason"] == "api_disabled"
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/metrics")).status == 200
        assert (await client.get("/readyz")).status == 503  # not started: not ready
        # The API's description stays open: it holds no data.
        assert (await client.get("/openapi.json")).status == 200

    _serve(_app(tmp_path, read="", admin=""), scenario)


def test_fausts_pages_are_off_even_with_a_token(tmp_path: Path) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        for path in FAUST_PAGES:
            assert (await client.get(path)).status == 401, path
            assert (await client.get(path, headers=_bearer(ADMIN))).status == 404, path

    _serve(_app(tmp_path), scenario)


def test_fausts_environment_variables_cannot_reopen_its_pages(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("APP_WEB_TABLES_ENABLED", "APP_WEB_ROUTER_ENABLED", "APP_WEB_STATS_ENABLED",
                 "APP_WEB_GRAPH_ENABLED", "APP_WEB_METRICS_ENABLED", "APP_DEBUG"):
        monkeypatch.setenv(name, "true")
    app = _app(tmp_path)
    for setting in ("web_tables_enabled", "web_router_enabled", "web_stats_enabled",
                    "web_graph_enabled", "web_metrics_enabled", "debug"):
        assert getattr(app.conf, setting) is False, setting

    async def scenario(client: TestClient[Any, Any]) -> None:
        for path in FAUST_PAGES:
            assert (await client.get(path, headers=_bearer(READ))).status == 404, path

    _serve(app, scenario)


def test_the_probes_answer_without_a_token(tmp_path: Path) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        health = await client.get("/healthz")
        assert (health.status, await health.json()) == (200, {"status": "ok"})
        ready = await client.get("/readyz")
        # Built, not started: no registry, no partitions, no restored tables yet.
        assert (ready.status, await ready.json()) == (503, {
            "ready": False, "registry": False, "partitions": False, "tables": False})
        page = await client.get("/metrics")
        assert page.status == 200
        assert "meterstream_worker_api_refused_total" in await page.text()
        # Only these exact paths: a look-alike is not a probe.
        for path in ("/metrics/", "/healthz/x", "/v1/../metrics/x"):
            assert (await client.get(path)).status == 401, path

    _serve(_app(tmp_path), scenario)


def test_with_a_metrics_host_the_probes_leave_the_api_port(tmp_path: Path) -> None:
    app = _app(tmp_path, METERSTREAM_METRICS_HOST="127.0.0.1")
    paths = {route.resource.canonical for route in _web_app(app).router.routes()
             if route.resource is not None}
    assert paths == {"/v1/quota/{deployment}", "/v1/deployments/{deployment}/health",
                     "/v1/health/fleet", "/", "/openapi.json"}

    async def scenario(client: TestClient[Any, Any]) -> None:
        for path in PROBES:
            assert (await client.get(path)).status == 404, path
            assert (await client.get(path, headers=_bearer(READ))).status == 404, path

    _serve(app, scenario)


def test_the_token_check_compares_every_configured_token() -> None:
    check = TokenCheck(READ, "", ADMIN)
    assert check.enabled
    assert check.accepts(READ)
    assert check.accepts(ADMIN)
    assert not check.accepts("")
    assert not check.accepts(READ[:8])
    assert not TokenCheck("", "").enabled
    assert not TokenCheck("", "").accepts("")


def test_the_guard_on_any_aiohttp_application() -> None:
    async def hello(_: web.Request) -> web.Response:
        return web.json_response({"hello": True})

    app = web.Application(middlewares=[api_guard(READ, "")])
    app.router.add_get("/v1/anything", hello)
    app.router.add_get("/healthz", hello)

    async def scenario(client: TestClient[Any, Any]) -> None:
        assert (await client.get("/v1/anything")).status == 401
        assert (await client.get("/v1/anything", headers=_bearer(ADMIN))).status == 403
        assert (await client.get("/v1/anything", headers=_bearer(READ))).status == 200
        assert (await client.get("/healthz")).status == 200

    _serve(app, scenario)


def test_the_worker_is_ready_once_assigned_with_its_tables_restored_and_not_while_moving(
        tmp_path: Path) -> None:
    readiness = Readiness()
    settings = Settings.from_env({"METERSTREAM_DATA_DIR": str(tmp_path),
                                  "METERSTREAM_READ_TOKEN": READ})
    app = create_app(settings, priced=frozenset(), readiness=readiness)
    recovery = cast(Any, app.tables).recovery
    seen = [readiness.state()]

    async def scenario() -> None:
        # What Faust does on a rebalance: the signal with the new assignment, then the
        # tables' recovery; the registry is followed meanwhile.
        await app.on_partitions_assigned.send(set())
        seen.append(readiness.state())
        recovery.completed.set()
        seen.append(readiness.state())
        app.rebalancing = app.in_recovery = True  # the next rebalance
        seen.append(readiness.state())

    asyncio.run(scenario())
    assert seen == [
        {"registry": False, "partitions": False, "tables": False},
        {"registry": False, "partitions": True, "tables": False},
        {"registry": False, "partitions": True, "tables": True},
        {"registry": False, "partitions": False, "tables": False},
    ]
