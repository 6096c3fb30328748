"""The load generator's sender against a stand-in receiver that answers as scripted:
signatures, retries, refusals and repeats, and which bodies the expected totals count."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from meterstream.core.config import Settings
from meterstream.core.signature import HEADER, verify
from meterstream.loadgen import LoadOptions, LoadResult, run_load
from tests.support import free_port
from tests.support.independent_totals import Independent, events_of, nonzero

ADMIN_TOKEN = "stand-in-admin-token-0123"
GRACE_MS = 86_400_000


@dataclass
class StandIn:
    """Registers deployments, checks signatures and tokens, answers log POSTs from
    `script` (status, reason) in order and 200 once it is empty."""

    script: deque[tuple[int, str]] = field(default_factory=deque)
    secrets: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    stored: list[tuple[str, bytes, int]] = field(default_factory=list)
    """(endpoint, body, receipt ms) of each body answered 200"""
    posts: list[tuple[bytes, str]] = field(default_factory=list)
    """(body, signature) of every log-stream POST"""
    refused: list[str] = field(default_factory=list)
    stop_after: int | None = None
    """set `stop` once this many bodies are stored"""
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 << 20)
        app.router.add_put("/v1/deployments/{name}", self.put)
        app.router.add_post("/v1/convex/logs", self.logs)
        app.router.add_post("/v1/agent/usage", self.agent)
        return app

    async def put(self, request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == f"Bearer {ADMIN_TOKEN}"
        body = await request.json()
        self.secrets[request.match_info["name"]] = body["webhook_secret"]
        self.tokens[request.match_info["name"]] = body["ingest_token"]
        return web.json_response({"name": request.match_info["name"]})

    async def logs(self, request: web.Request) -> web.Response:
        body = await request.read()
        signature = request.headers[HEADER]
        self.posts.append((body, signature))
        name = orjson.loads(body if body.startswith(b"[") else body.split(b"\n")[0])
        name = (name[0] if isinstance(name, list) else name)["convex"]["deployment_name"]
        if not verify(body, signature, self.secrets[name]):
            self.refused.append("signature")
            return web.json_response({"reason": "signature_invalid"}, status=401)
        if self.script:
            status, reason = self.script.popleft()
            return web.json_response({"reason": reason}, status=status)
        self.stored.append(("logs", body, _now()))
        if self.stop_after is not None and len(self.stored) >= self.stop_after:
            self.stop.set()
        return web.json_response({"accepted": 1})

    async def agent(self, request: web.Request) -> web.Response:
        body = await request.read()
        records = orjson.loads(body)
        token = request.headers["Authorization"].removeprefix("Bearer ")
        if any(self.tokens[r["deployment"]] != token for r in records):
            self.refused.append("token")
            return web.json_response({"reason": "forbidden"}, status=403)
        self.stored.append(("agent", body, _now()))
        return web.json_response({"accepted": len(records)})


def _now() -> int:
    return int(time.time() * 1000)


def _load(stand_in: StandIn, **options: Any) -> LoadResult:
    async def main() -> LoadResult:
        port = free_port()
        runner = web.AppRunner(stand_in.app())
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            settings = Settings.from_env({"METERSTREAM_ADMIN_TOKEN": ADMIN_TOKEN,
                                          "METERSTREAM_RECEIVER_PORT": str(port),
                                          "METERSTREAM_ADMIN_PORT": str(port)})
            return await run_load(LoadOptions(**{
                "deployments": 4, "users": 3, "seed": 9, "connections": 4,
                "backoff": 0.01, **options}), settings, stand_in.stop)
        finally:
            await runner.cleanup()

    return asyncio.run(main())


def _totals_of_stored(stand_in: StandIn) -> dict[str, Any]:
    """Independent totals of the distinct bodies the stand-in stored."""
    independent = Independent(GRACE_MS)
    seen = set()
    for endpoint, body, received in stand_in.stored:
        if body in seen:
            continue
        seen.add(body)
        if endpoint == "logs":
            independent.log_body(body, received)
        else:
            independent.agent_body(body, received)
    return nonzero(independent.totals)


def _expected(result: LoadResult) -> dict[str, Any]:
    document = result.to_json()["deployments"]
    for totals in document.values():
        del totals["first_event_ms"], totals["last_event_ms"]
    return nonzero(document)


def _log_events(bodies: list[bytes]) -> int:
    return sum(len(events_of(body)) for body in bodies)


def _distinct_logs(stand_in: StandIn) -> list[bytes]:
    return list(dict.fromkeys(body for endpoint, body, _ in stand_in.stored
                              if endpoint == "logs"))


def test_every_body_is_signed_and_a_repeat_is_the_same_bytes() -> None:
    stand_in = StandIn()
    result = _load(stand_in, events=2_000, duplicates=0.3)
    stats = result.stats
    assert stand_in.refused == []
    assert stats.events == _log_events(_distinct_logs(stand_in)) == 2_000
    distinct = {body for _, body, _ in stand_in.stored}
    assert len(distinct) == stats.bodies == stats.acked_bodies
    assert len(stand_in.stored) == stats.bodies + stats.repeats
    assert stats.repeats == stats.repeats_acked > 0
    # A repeat is the same body with the same signature.
    signatures: dict[bytes, set[str]] = {}
    for body, signature in stand_in.posts:
        signatures.setdefault(body, set()).add(signature)
    assert all(len(s) == 1 for s in signatures.values())
    assert stats.retries == stats.rejected == stats.undetermined == 0
    assert result.expected.exact
    assert _expected(result) == _totals_of_stored(stand_in)


def test_retryable_answers_are_retried_and_the_body_counts_once() -> None:
    stand_in = StandIn(script=deque([(429, "overloaded"), (503, "kafka_unavailable"),
                                     (503, "registry_loading"), (502, "")]))
    result = _load(stand_in, events=1_500)
    stats = result.stats
    assert stats.retries == 4
    assert stats.failures == {"429 overloaded": 1, "503 kafka_unavailable": 1,
                              "503 registry_loading": 1, "502": 1}
    assert stats.events == _log_events(_distinct_logs(stand_in)) == 1_500
    assert stats.rejected == stats.undetermined == 0
    assert result.expected.exact
    assert _expected(result) == _totals_of_stored(stand_in)


def test_a_refused_body_is_counted_nowhere() -> None:
    stand_in = StandIn(script=deque([(400, "malformed"), (403, "unregistered")]))
    result = _load(stand_in, events=1_500)
    stats = result.stats
    assert stats.rejected == 2
    assert stats.retries == 0
    refused = [body for body, _ in stand_in.posts[:2]]
    assert stats.events == _log_events(_distinct_logs(stand_in)) == 1_500 - _log_events(refused)
    assert result.expected.exact
    assert _expected(result) == _totals_of_stored(stand_in)


def test_a_body_that_may_have_been_stored_makes_the_totals_inexact() -> None:
    stand_in = StandIn(script=deque([(503, "kafka_unavailable")] * 3))
    result = _load(stand_in, events=1_000, max_attempts=3, connections=1)
    assert result.stats.undetermined == 1
    assert result.stats.retries == 2
    assert not result.expected.exact
    assert result.to_json()["undetermined_bodies"] == 1
    assert _expected(result) == _totals_of_stored(stand_in)


def test_an_event_count_is_sent_exactly() -> None:
    stand_in = StandIn()
    result = _load(stand_in, events=1_000, connections=3)
    counts = sorted(len(events_of(body)) for body in _distinct_logs(stand_in))
    assert sum(counts) == result.stats.events == 1_000
    assert counts == [104] + [128] * 7


def test_stopping_finishes_the_bodies_in_flight_and_counts_what_was_stored() -> None:
    stand_in = StandIn(stop_after=5)
    result = _load(stand_in, events=1_000_000, duplicates=0.5)
    assert stand_in.stop.is_set()
    assert 5 <= result.stats.bodies < 100
    assert result.stats.events == _log_events(_distinct_logs(stand_in))
    assert result.stats.undetermined == 0
    assert _expected(result) == _totals_of_stored(stand_in)
