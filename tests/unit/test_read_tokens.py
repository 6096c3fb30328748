"""Read tokens (meterstream/core/read_tokens.py) and the usage view's refusals and failure
modes that need no broker (billing/usage_view.py); the view on the real pipeline is in
tests/integration/test_usage_view.py."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from billing import pricebook
from billing.periods import Period
from billing.quota_source import QuotaSource, scoped
from billing.usage_view import UsageView, period_range
from meterstream.core.config import ClickHouseTarget, ConfigError, Settings
from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.query import ClickHouseUnavailable, reader
from meterstream.core.read_tokens import (
    InvalidScope,
    ReadTokenView,
    Scope,
    TokenRefused,
    digest,
    issue,
)
from meterstream.core.registry import Deployment, RegistryView
from meterstream.tokens_cli import duration
from tests.support import free_port

NOW = 1_764_590_400_000  # 2025-12-01T12:00:00Z
DAY = 86_400_000


def _view(*records: Any) -> ReadTokenView:
    view = ReadTokenView(KafkaConnection.of(Settings.from_env({})), "t.read-tokens")
    for record in records:
        view._apply(record.id.encode(), record.to_json())
    view._loaded.set()
    return view


def _cause(view: ReadTokenView, token: str, now: int = NOW) -> tuple[str, str]:
    with pytest.raises(TokenRefused) as refused:
        view.check(token, now)
    return refused.value.reason, refused.value.cause


def test_a_token_is_stored_as_the_sha256_of_itself_and_checked_in_full() -> None:
    token, record = issue(Scope("deployment", deployment="app-1"), NOW, NOW + DAY)
    assert token.startswith(f"msr_{record.id}.")
    assert len(token) == 4 + 16 + 1 + 43
    assert record.digest == hashlib.sha256(token.encode()).hexdigest() == digest(token)
    assert token not in record.to_json().decode()
    view = _view(record)
    assert view.check(token, NOW) == record
    assert view.check(token, NOW + DAY - 1) == record


def test_every_bad_token_is_refused_and_only_a_real_one_learns_more() -> None:
    token, record = issue(Scope("deployment", deployment="app-1"), NOW, NOW + DAY)
    other_token, other = issue(Scope("deployment", deployment="app-2"), NOW, NOW + DAY)
    view = _view(record, other)
    secret = token.partition(".")[2]
    assert _cause(view, "") == ("invalid_token", "malformed")
    assert _cause(view, "msr_abc.def") == ("invalid_token", "malformed")
    assert _cause(view, token + "x") == ("invalid_token", "malformed")
    assert _cause(view, f"msr_{'f' * 16}.{secret}") == ("invalid_token", "unknown")
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert _cause(view, f"msr_{record.id}.{flipped}") == ("invalid_token", "tampered")
    # This token's secret under the other record's id: the digest covers the id.
    assert _cause(view, f"msr_{other.id}.{secret}") == ("invalid_token", "tampered")
    assert view.check(other_token, NOW) == other
    assert _cause(view, token, NOW + DAY) == ("token_expired", "expired")
    revoked = _view(replace(record, revoked_at=NOW))
    assert _cause(revoked, token) == ("token_revoked", "revoked")


def test_the_view_skips_unreadable_records_and_follows_tombstones() -> None:
    _, record = issue(Scope("team", team="acme"), NOW, NOW + DAY)
    view = _view(record)
    view._apply(b"0123456789abcdef", b"not json")
    view._apply(b"0123456789abcdef", b"[1, 2]")
    view._apply(b"0123456789abcdef", record.to_json())  # stored under another id
    view._apply(b"0123456789abcdef", orjson.dumps({"id": "0123456789abcdef"}))
    assert [token.id for token in view.all()] == [record.id]
    view._apply(record.id.encode(), None)
    assert view.all() == []


@pytest.mark.parametrize(("document", "scope"), [
    ({"deployment": "app-1"}, Scope("deployment", deployment="app-1")),
    ({"team": "acme"}, Scope("team", team="acme")),
    ({"deployment": "app-1", "user": "u1"}, Scope("end_user", deployment="app-1", user="u1")),
])
def test_scopes(document: dict[str, str], scope: Scope) -> None:
    assert Scope.parse(document) == scope


@pytest.mark.parametrize(("document", "field"), [
    (None, "scope"), ({}, "scope"), ({"user": "u1"}, "user"),
    ({"team": "acme", "deployment": "app-1"}, "team"), ({"deployment": "bad name"}, "deployment"),
    ({"team": ""}, "team"), ({"deployment": "app-1", "admin": True}, "admin"),
])
def test_scopes_that_are_refused(document: Any, field: str) -> None:
    with pytest.raises(InvalidScope) as refused:
        Scope.parse(document)
    assert field in refused.value.fields


def test_the_period_is_this_month_to_now_or_a_whole_past_month() -> None:
    december = Period(2025, 12)
    assert period_range(None, NOW) == (december, december.start_ms, NOW)
    november = Period(2025, 11)
    assert period_range("2025-11", NOW) == (november, november.start_ms, november.end_ms)
    with pytest.raises(ValueError, match="has not begun"):
        period_range("2026-01", NOW)
    with pytest.raises(ValueError, match="YYYY-MM"):
        period_range("december", NOW)


def test_a_scope_sees_only_its_own_quotas() -> None:
    report: dict[str, Any] = {"at": NOW, "quotas": [
        {"metric": "function_calls", "hard": True, "exceeded": True, "per_user": False},
        {"metric": "tokens", "hard": True, "exceeded": False, "per_user": True, "user": "u1"}],
        "periods": {"month": {"users": {"by_name": {"u2": 9}}}}}
    assert scoped(report, None) == {"at": NOW, "quotas": [report["quotas"][0]],
                                    "hard_limit_exceeded": True}
    assert scoped(report, "u1") == {"at": NOW, "quotas": [report["quotas"][1]],
                                    "hard_limit_exceeded": False}


def test_settings_of_the_usage_view() -> None:
    settings = Settings.from_env({"METERSTREAM_USAGE_CORS_ORIGINS": "https://A.example.com, "
                                  "http://localhost:3000", "METERSTREAM_BIND_HOST": "0.0.0.0",
                                  "METERSTREAM_WORKER_PORT": "7000"})
    assert settings.usage_cors_origins == ("https://a.example.com", "http://localhost:3000")
    assert settings.worker_url == "http://127.0.0.1:7000"
    assert Settings.from_env({"METERSTREAM_USAGE_CORS_ORIGINS": "*"}).usage_cors_origins == ("*",)
    for origins in ("https://a.example.com/path", "*,https://a.example.com", "a.example.com"):
        with pytest.raises(ConfigError, match="METERSTREAM_USAGE_CORS_ORIGINS"):
            Settings.from_env({"METERSTREAM_USAGE_CORS_ORIGINS": origins})
    with pytest.raises(ConfigError, match="METERSTREAM_READ_TOKEN_MAX_TTL"):
        Settings.from_env({"METERSTREAM_READ_TOKEN_TTL": "100",
                           "METERSTREAM_READ_TOKEN_MAX_TTL": "10"})


def test_durations_of_the_tokens_command() -> None:
    assert [duration(text) for text in ("3600", "90m", "12h", "30d", "5s")] == [
        3600, 5400, 43200, 2_592_000, 5]
    for text in ("0", "1w", "-5", "1.5h", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            duration(text)


def test_the_receiver_never_opens_the_embedded_engine(tmp_path: Path) -> None:
    path = tmp_path / "clickhouse"
    run = reader(ClickHouseTarget(url=f"chdb://{path}", chdb_path=path))
    with pytest.raises(ClickHouseUnavailable, match="is it running"):
        run("SELECT 1", "JSONEachRow")
    assert not path.exists()
    assert not path.with_name("clickhouse.lock").exists()


# The view on an aiohttp test server, with what it needs and nothing else.

Scenario = Callable[[TestClient[Any, Any]], Awaitable[None]]


def _serve(view: UsageView, scenario: Scenario) -> None:
    app = web.Application()
    view.add_routes(app)

    async def run() -> None:
        async with TestClient(TestServer(app)) as client:
            await scenario(client)

    asyncio.run(asyncio.wait_for(run(), 30))


def _usage_view(tmp_path: Path, run: Any, tokens: ReadTokenView, *,
                book: bool = True, cors: tuple[str, ...] = ()) -> UsageView:
    registry = RegistryView(KafkaConnection.of(Settings.from_env({})), "t.deployments")
    registry._deployments["app-1"] = Deployment("app-1", team="acme", plan="starter")
    registry._loaded.set()
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: no quota status
    return UsageView(tokens, registry, pricebook.load(None) if book else None, run,
                     QuotaSource(closed, "read-token-0123456789"), cors)


def _no_rows(_sql: str, _fmt: str) -> bytes:
    return b""


def test_usage_answers_zero_usage_and_says_why_the_quota_is_missing(tmp_path: Path) -> None:
    token, record = issue(Scope("deployment", deployment="app-1"), NOW, 2 * NOW)
    view = _usage_view(tmp_path, _no_rows, _view(record))
    found: list[Any] = []

    async def scenario(client: TestClient[Any, Any]) -> None:
        answer = await client.get("/v1/usage?period=2025-11",
                                  headers={"Authorization": f"Bearer {token}"})
        found.append((answer.status, await answer.json()))

    _serve(view, scenario)
    status, answer = found[0]
    assert status == 200, answer
    assert (answer["period"], answer["from"], answer["to"]) == (
        "2025-11", "2025-11-01T00:00:00Z", "2025-12-01T00:00:00Z")
    assert (answer["total"]["cost"], answer["total"]["usage"]["function_calls"]) == ("0", 0)
    assert answer["quota"] is None
    assert [p for p in answer["problems"] if p.startswith("quota status unavailable: ")]
    assert answer["token"]["id"] == record.id


def _statuses(view: UsageView, requests: list[tuple[str, str, dict[str, str]]]
              ) -> list[tuple[int, str | None]]:
    found: list[tuple[int, str | None]] = []

    async def scenario(client: TestClient[Any, Any]) -> None:
        for method, path, headers in requests:
            answer = await client.request(method, path, headers=headers)
            body = await answer.json() if answer.content_type == "application/json" else {}
            found.append((answer.status, body.get("reason")))

    _serve(view, scenario)
    return found


def test_usage_is_unavailable_without_clickhouse_tokens_or_price_book(tmp_path: Path) -> None:
    token, record = issue(Scope("team", team="acme"), NOW, 2 * NOW)
    auth = {"Authorization": f"Bearer {token}"}
    engine = tmp_path / "clickhouse"
    no_sink = reader(ClickHouseTarget(url=f"chdb://{engine}", chdb_path=engine))
    assert _statuses(_usage_view(tmp_path, no_sink, _view(record)),
                     [("GET", "/v1/usage", auth)]) == [(503, "usage_unavailable")]
    loading = _view(record)
    loading._loaded.clear()
    assert _statuses(_usage_view(tmp_path, _no_rows, loading),
                     [("GET", "/v1/usage", auth)]) == [(503, "loading")]
    assert _statuses(_usage_view(tmp_path, _no_rows, _view(record), book=False),
                     [("GET", "/v1/usage", auth)]) == [(503, "usage_unavailable")]


def test_a_team_with_no_deployment_left_reads_nothing(tmp_path: Path) -> None:
    token, record = issue(Scope("team", team="gone"), NOW, 2 * NOW)
    assert _statuses(_usage_view(tmp_path, _no_rows, _view(record)),
                     [("GET", "/v1/usage", {"Authorization": f"Bearer {token}"})]) == [
        (404, "not_found")]


def test_cors_with_any_origin_and_with_none(tmp_path: Path) -> None:
    _token, record = issue(Scope("deployment", deployment="app-1"), NOW, 2 * NOW)
    preflight = {"Origin": "https://x.example.com", "Access-Control-Request-Method": "GET"}
    anyone = _usage_view(tmp_path, _no_rows, _view(record), cors=("*",))
    assert _statuses(anyone, [("OPTIONS", "/v1/usage", preflight),
                              ("OPTIONS", "/v1/usage", {**preflight,
                                                        "Access-Control-Request-Method": "POST"})
                              ]) == [(204, None), (403, "method_not_allowed")]
    nobody = _usage_view(tmp_path, _no_rows, _view(record))
    assert _statuses(nobody, [("OPTIONS", "/v1/usage", preflight)]) == [
        (403, "origin_not_allowed")]
