"""The scoped usage view through `meterstream up` on the real broker and the embedded
engine the sink holds: read tokens issued through the admin API, `GET /v1/usage` on the
receiver's public port answering each scope with exactly what `meterstream usage` prints
for it, quota status from the worker, and every refusal.

Every expected number is written by hand, from the events and the default price book
(billing/default_price_book.toml); the load is that of tests/integration/test_billing_pipeline.py.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
import pytest

from billing.periods import Period
from ingest.openapi import admin_document, public_document
from tests.integration.test_billing_pipeline import DEPLOYMENT, SECRET, bodies, load_time
from tests.support import meterstream, metric_sample, wait_for
from tests.support.agent_steps import AI_SDK
from tests.support.openapi import check_answer
from tests.support.pipeline import ADMIN_TOKEN, Pipeline, running_pipeline

OTHER = "quiet-lynx-456"
TEAMMATE = "calm-heron-789"
INGEST_TOKEN = "ingest-token-0123456789abcdef"
ORIGIN = "https://app.example.com"
QUOTAS = {"quotas": [
    {"metric": "function_calls", "period": "month", "limit": 1000, "hard": True},
    {"metric": "tokens", "period": "month", "limit": 3000, "hard": True, "per_user": True}]}


PUBLIC = public_document(usage=True)
ADMIN = admin_document(read_tokens=True)


@dataclass
class Setup:
    pipeline: Pipeline
    period: Period
    tokens: dict[str, str]
    """deployment, team, user, other: a token of each scope."""

    def usage(self, token: str | None, query: str = "",
              headers: dict[str, str] | None = None) -> tuple[int, dict]:
        auth = {"Authorization": f"Bearer {token}"} if token is not None else {}
        status, body = self.pipeline.request("GET", f"/v1/usage{query}", None,
                                             {**auth, **(headers or {})})
        # Every answer, refusals included, as the public listener's document says.
        check_answer(PUBLIC, "GET", "/v1/usage", status, "application/json", body)
        return status, json.loads(body)

    def cli_usage(self, *scope: str) -> dict:
        return json.loads(meterstream(
            ["usage", *scope, "--from", self.period.label[:7], "--to",
             self.period.next().label[:7], "--format", "json"], self.pipeline.env).stdout)


def issue(pipeline: Pipeline, scope: dict, **extra: object) -> dict:
    status, answer = pipeline.admin("POST", "/v1/read-tokens", {"scope": scope, **extra})
    assert status == 201, answer
    check_answer(ADMIN, "POST", "/v1/read-tokens", status, "application/json",
                 orjson.dumps(answer))
    return answer


@pytest.fixture(scope="module")
def setup(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    now = int(time.time() * 1000)
    at = load_time(now)
    with running_pipeline(kafka_bootstrap, tmp_path_factory.mktemp("usage_view"),
                          extra_env={"METERSTREAM_USAGE_CORS_ORIGINS": ORIGIN}) as pipeline:
        pipeline.register(DEPLOYMENT, webhook_secret=SECRET, ingest_token=INGEST_TOKEN,
                          team="acme", plan="starter")
        pipeline.register(TEAMMATE, team="acme", plan="starter")
        pipeline.register(OTHER, team="zenith", plan="starter")
        assert pipeline.admin("PUT", f"/v1/deployments/{DEPLOYMENT}/quotas", QUOTAS)[0] == 200
        for body in bodies(at):
            status, answer = pipeline.post(body, SECRET)
            assert status == 200, answer
        # u1 one step, u2 two: 2,162 tokens each.
        steps = [{**AI_SDK, "id": f"step-{n}", "timestamp": at + n, "userId": user}
                 for n, user in enumerate(("u1", "u2", "u2"))]
        status, answer = pipeline.request("POST", "/v1/agent/usage", orjson.dumps(steps),
                                          {"Authorization": f"Bearer {INGEST_TOKEN}"})
        assert status == 200, answer
        tokens = {name: issue(pipeline, scope)["token"] for name, scope in (
            ("deployment", {"deployment": DEPLOYMENT}), ("team", {"team": "acme"}),
            ("user", {"deployment": DEPLOYMENT, "user": "u1"}),
            ("other", {"deployment": OTHER}))}
        found = Setup(pipeline, Period.containing(at), tokens)
        query = f"?period={found.period.label[:7]}"

        def landed() -> bool:
            status, answer = found.usage(tokens["deployment"], query)
            if status != 200:  # 503 while the sink is still applying its migrations
                return False
            total = answer["total"]["usage"]
            return total["function_calls"] >= 60 and total["tokens"] >= 3 * 2162

        wait_for(landed, timeout=120, what="60 calls and 3 agent steps in the rollups")
        wait_for(lambda: (found.usage(tokens["user"], query)[1].get("quota") or {}).get(
            "quotas", [{}])[0].get("usage") == 2162, timeout=60,
            what="the worker to count u1's tokens")
        yield found


def test_each_scope_reads_what_meterstream_usage_prints_for_it(setup: Setup) -> None:
    query = f"?period={setup.period.label[:7]}"
    status, answer = setup.usage(setup.tokens["deployment"], query)
    assert status == 200, answer
    # The deployment: 60 calls, 3.75 GB of database I/O, 1.875 GB of egress (see
    # test_billing_pipeline); Starter: (3.75 - 1) x 0.22 + (1.875 - 1) x 0.132 = 0.7205.
    # Tokens, gpt-4o-mini per million: 826 x 0.15 + 1024 x 0.075 + 312 x 0.60 = 387.9,
    # so 0.0003879 a step, 0.0011637 for three.
    total = answer["total"]
    assert (total["usage"]["function_calls"], total["usage"]["database_io_gb"],
            total["usage"]["data_egress_gb"], total["usage"]["tokens"]) == (
        60, "3.75", "1.875", 6486)
    assert (total["convex_cost"], total["token_cost"], total["cost"]) == (
        "0.7205", "0.0011637", "0.7216637")
    assert answer["subject"] == {"kind": "deployment", "name": DEPLOYMENT,
                                 "deployments": [DEPLOYMENT]}
    assert answer["period"] == setup.period.label[:7]
    cli = setup.cli_usage("--deployment", DEPLOYMENT)
    assert {k: v for k, v in answer.items() if k not in ("period", "quota", "token")} == cli
    # The deployment's own quota, from the worker: 60 of 1,000 calls this month; the
    # per-user quota is not the deployment's.
    assert answer["quota"]["quotas"] == [{**QUOTAS["quotas"][0], "thresholds": [0.8, 1.0],
                                          "per_user": False, "period_start": answer["quota"][
                                              "quotas"][0]["period_start"],
                                          "usage": 60, "exceeded": False}]
    assert answer["quota"]["hard_limit_exceeded"] is False

    status, team = setup.usage(setup.tokens["team"], query)
    assert status == 200, team
    assert team["subject"] == {"kind": "team", "name": "acme",
                               "deployments": sorted([DEPLOYMENT, TEAMMATE])}
    assert team["total"] == total  # the teammate has no usage
    assert team["quota"] is None
    assert {k: v for k, v in team.items() if k not in ("period", "quota", "token")} == \
        setup.cli_usage("--team", "acme")

    status, user = setup.usage(setup.tokens["user"], query)
    assert status == 200, user
    # u1: one step, 2,162 tokens, 0.0003879; no Convex usage (that is the deployment's).
    assert user["subject"] == {"kind": "end_user", "name": f"{DEPLOYMENT}/u1",
                               "deployments": [DEPLOYMENT], "user_id": "u1"}
    assert (user["total"]["usage"]["tokens"], user["total"]["usage"]["function_calls"],
            user["total"]["cost"]) == (2162, 0, "0.0003879")
    assert {k: v for k, v in user.items() if k not in ("period", "quota", "token")} == \
        setup.cli_usage("--deployment", DEPLOYMENT, "--user", "u1")
    # Only u1's per-user quota: 2,162 of 3,000; u2's 4,324 shows nowhere.
    assert [(q["metric"], q["usage"], q["exceeded"], q["user"])
            for q in user["quota"]["quotas"]] == [("tokens", 2162, False, "u1")]
    assert "u2" not in json.dumps(user)

    status, other = setup.usage(setup.tokens["other"], query)
    assert status == 200, other
    assert other["subject"]["deployments"] == [OTHER]
    assert (other["total"]["usage"]["function_calls"], other["total"]["cost"]) == (0, "0")


def test_the_default_period_is_this_month(setup: Setup) -> None:
    status, answer = setup.usage(setup.tokens["deployment"])
    assert status == 200, answer
    this_month = Period.containing(int(time.time() * 1000))
    assert (answer["period"], answer["from"]) == (this_month.label[:7],
                                                  this_month.label + "T00:00:00Z")


def _refused(answer: tuple[int, dict]) -> tuple[int, str]:
    return answer[0], answer[1]["reason"]


def test_every_way_to_read_outside_the_scope_is_refused(setup: Setup) -> None:
    deployment_token = setup.tokens["deployment"]
    assert _refused(setup.usage(None)) == (401, "unauthenticated")
    assert _refused(setup.usage("msr_not-a-token")) == (401, "invalid_token")
    token_id, _, secret = deployment_token.removeprefix("msr_").partition(".")
    tampered = f"msr_{token_id}.{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}"
    assert _refused(setup.usage(tampered)) == (401, "invalid_token")
    unknown = f"msr_{'0' * 16}.{secret}"
    assert _refused(setup.usage(unknown)) == (401, "invalid_token")
    # Another scope's id with this token's secret: the digest covers the id.
    other_id = setup.tokens["other"].removeprefix("msr_").partition(".")[0]
    assert _refused(setup.usage(f"msr_{other_id}.{secret}")) == (401, "invalid_token")
    assert _refused(setup.usage(ADMIN_TOKEN)) == (401, "invalid_token")

    # Nothing in the query names a scope: each such parameter is refused, not ignored.
    for token, query in ((setup.tokens["other"], f"?deployment={DEPLOYMENT}"),
                         (setup.tokens["other"], "?team=acme"),
                         (setup.tokens["user"], "?user=u2"),
                         (setup.tokens["team"], "?team=zenith")):
        status, answer = setup.usage(token, query)
        assert (status, answer["reason"]) == (400, "invalid"), answer
        assert list(answer["fields"]) == [query[1:].partition("=")[0]]
    assert _refused(setup.usage(deployment_token, "?period=2999-01")) == (400, "invalid")
    assert _refused(setup.usage(deployment_token, "?resolution=minute")) == (400, "invalid")

    # A scoped token opens no admin endpoint.
    for method, path in (("GET", "/v1/deployments"), ("GET", "/v1/read-tokens"),
                         ("POST", "/v1/read-tokens"), ("GET", f"/v1/deployments/{DEPLOYMENT}")):
        status, answer = setup.pipeline.admin(method, path, {"scope": {"team": "acme"}}
                                              if method == "POST" else None,
                                              token=deployment_token)
        assert (status, answer["reason"]) == (403, "forbidden"), (method, path)

    expiring = issue(setup.pipeline, {"deployment": DEPLOYMENT}, expires_in=1)
    wait_for(lambda: setup.usage(expiring["token"])[1].get("reason") == "token_expired",
             timeout=30, what="the one-second token to expire")

    revoked = issue(setup.pipeline, {"deployment": DEPLOYMENT})
    assert setup.usage(revoked["token"])[0] == 200
    status, answer = setup.pipeline.admin("DELETE", f"/v1/read-tokens/{revoked['id']}")
    assert (status, answer["state"]) == (200, "revoked")
    assert _refused(setup.usage(revoked["token"])) == (401, "token_revoked")
    port = setup.pipeline.env["METERSTREAM_RECEIVER_PORT"]
    assert metric_sample(port, "meterstream_usage_view_requests_total",
                         'reason="token_revoked"') == 1
    assert metric_sample(port, "meterstream_usage_view_requests_total",
                         'reason="invalid_token"') == 5


def test_issuing_refuses_what_names_nothing(setup: Setup) -> None:
    for scope, status, reason in (({"deployment": "no-such-app"}, 404, "not_found"),
                                  ({"team": "no-such-team"}, 404, "not_found"),
                                  ({"user": "u1"}, 400, "invalid"),
                                  ({"team": "acme", "deployment": DEPLOYMENT}, 400, "invalid"),
                                  ({}, 400, "invalid")):
        found = setup.pipeline.admin("POST", "/v1/read-tokens", {"scope": scope})
        assert (found[0], found[1]["reason"]) == (status, reason), scope
    found = setup.pipeline.admin("POST", "/v1/read-tokens", {
        "scope": {"deployment": DEPLOYMENT}, "expires_in": 10 * 366 * 86400})
    assert (found[0], list(found[1]["fields"])) == (400, ["expires_in"])


def test_cors_for_the_configured_origin_only(setup: Setup) -> None:
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization"}
    url = f"http://127.0.0.1:{setup.pipeline.env['METERSTREAM_RECEIVER_PORT']}/v1/usage"
    def options(headers: dict[str, str]) -> tuple[int, dict[str, str]]:
        request = urllib.request.Request(url, method="OPTIONS", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, dict(answer.headers)
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers)

    status, headers = options(preflight)
    assert status == 204
    assert (headers["Access-Control-Allow-Origin"], headers["Access-Control-Allow-Methods"],
            headers["Access-Control-Allow-Headers"]) == (ORIGIN, "GET", "Authorization")
    status, headers = options({**preflight, "Origin": "https://evil.example.com"})
    assert status == 403
    assert "Access-Control-Allow-Origin" not in headers

    def allow_origin(origin: str, token: str | None) -> str | None:
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(url, headers={"Origin": origin, **auth})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.headers.get("Access-Control-Allow-Origin")
        except urllib.error.HTTPError as error:
            return error.headers.get("Access-Control-Allow-Origin")

    assert allow_origin(ORIGIN, setup.tokens["deployment"]) == ORIGIN
    assert allow_origin(ORIGIN, None) == ORIGIN  # a page can read why it was refused
    assert allow_origin("https://evil.example.com", setup.tokens["deployment"]) is None


def test_tokens_command_issues_lists_and_revokes(setup: Setup) -> None:
    env = setup.pipeline.env
    issued = json.loads(meterstream(["tokens", "issue", "--deployment", DEPLOYMENT, "--user",
                                     "u2", "--expires-in", "2h"], env).stdout)
    assert issued["scope"] == {"kind": "end_user", "deployment": DEPLOYMENT, "user": "u2"}
    assert issued["expires_at"] - issued["created_at"] == 2 * 3600 * 1000
    status, answer = setup.usage(issued["token"], f"?period={setup.period.label[:7]}")
    assert (status, answer["total"]["usage"]["tokens"]) == (200, 2 * 2162)
    # u2's 4,324 tokens are past its 3,000: its hard per-user quota is exceeded.
    assert answer["quota"]["hard_limit_exceeded"] is True
    listed = json.loads(meterstream(["tokens", "list", "--deployment", DEPLOYMENT], env).stdout)
    mine = [token for token in listed["tokens"] if token["id"] == issued["id"]]
    assert mine == [{k: v for k, v in issued.items() if k != "token"}]
    assert all("token" not in token and "digest" not in token for token in listed["tokens"])
    revoked = json.loads(meterstream(["tokens", "revoke", issued["id"]], env).stdout)
    assert revoked["state"] == "revoked"
    assert _refused(setup.usage(issued["token"])) == (401, "token_revoked")
    missing = meterstream(["tokens", "revoke", "0" * 16], env, check=False)
    assert missing.returncode == 1
    assert json.loads(missing.stdout)["reason"] == "not_found"
