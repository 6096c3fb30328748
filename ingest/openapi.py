"""The receiver's OpenAPI 3.1 documents: one per listener, each served at /openapi.json by
the listener it describes (ingest/receiver.py).

    public_document  the public port: the two ingest doors, the probes (unless
                     METERSTREAM_METRICS_HOST moves them to a listener of their own)
    admin_document   the admin port: the registry, quotas, the log stream's lifecycle,
                     /healthz and /readyz

Written by hand beside the handlers, so that each operation says what its handler
answers; tests/unit/test_openapi.py fails when a listener's routes and its document's
paths and methods differ either way, and the integration tests validate real answers
against these schemas. Every refusal is the shared `Error` schema
(meterstream/core/openapi.py).
"""

from __future__ import annotations

from typing import Any

from ingest.admin import ADMIN, LIFECYCLE
from ingest.provisioning import SUBSCRIBABLE
from ingest.read_token_admin import TOKENS as READ_TOKENS
from meterstream.core.openapi import (
    Schema,
    document,
    json_content,
    ok,
    openapi_path,
    operation,
    probe_paths,
    refusal,
)
from meterstream.core.quotas import METRICS, PERIODS
from meterstream.core.registry import MIN_SECRET_LENGTH

# The receiver's paths (ingest/receiver.py imports this module, so they are spelled here;
# the route-table test keeps both the same).
CONVEX_LOGS = "/v1/convex/logs"
AGENT_USAGE = "/v1/agent/usage"

COUNT: Schema = {"type": ["integer", "null"], "minimum": 0}

LOG_EVENT: Schema = {
    "type": "object",
    "description": "One Convex log-stream event (V2 format). Unknown topics and fields are "
                   "stored untouched; null where a counter is expected is not an error.",
    "required": ["topic", "timestamp", "convex"],
    "properties": {
        "topic": {"type": "string", "description": "function_execution, console, "
                  "current_storage_usage, storage_api_bandwidth, ..., verification"},
        "timestamp": {"type": "integer", "description": "ms since the epoch"},
        "convex": {"type": "object", "required": ["deployment_name"], "properties": {
            "deployment_name": {"type": "string", "minLength": 1, "maxLength": 128},
        }, "additionalProperties": True},
    },
    "additionalProperties": True,
}

TOKEN_USAGE: Schema = {
    "type": "object",
    "description": "The AI SDK's LanguageModelUsage or the Agent component's vUsage.",
    "properties": {name: COUNT for name in (
        "inputTokens", "outputTokens", "totalTokens", "promptTokens", "completionTokens",
        "cachedInputTokens", "nonCachedInputTokens", "cacheWriteInputTokens",
        "reasoningTokens", "textOutputTokens")} | {
        "inputTokenDetails": {"type": "object", "properties": {
            name: COUNT for name in ("noCacheTokens", "cacheReadTokens", "cacheWriteTokens")}},
        "outputTokenDetails": {"type": "object", "properties": {
            name: COUNT for name in ("textTokens", "reasoningTokens")}},
    },
}

TEXT: Schema = {"type": "string", "minLength": 1, "maxLength": 500}
OPTIONAL_TEXT: Schema = {**TEXT, "type": ["string", "null"]}

AGENT_RECORD: Schema = {
    "type": "object",
    "description": "One LLM step's token usage, as the Agent component's usageHandler gets "
                   "it.",
    "required": ["id", "timestamp", "model", "provider", "usage"],
    "properties": {
        "id": {"type": "string", "minLength": 1, "maxLength": 200,
               "description": "Your idempotency key: a record is counted once per id."},
        "timestamp": {"type": "integer", "minimum": 1_577_836_800_000,
                      "description": "ms since the epoch; not more than a day ahead"},
        "deployment": {"type": ["string", "null"], "minLength": 1, "maxLength": 128,
                       "description": "The token's deployment when omitted; no other."},
        "userId": OPTIONAL_TEXT, "threadId": OPTIONAL_TEXT, "agentName": OPTIONAL_TEXT,
        "model": TEXT, "provider": TEXT,
        "usage": {"$ref": "#/components/schemas/TokenUsage"},
        "providerMetadata": {"type": ["object", "null"]},
    },
    "additionalProperties": True,
}

ACCEPTED: Schema = {"type": "object", "required": ["accepted"], "additionalProperties": False,
                    "properties": {"accepted": {"type": "integer", "minimum": 0}}}

PUBLIC_SCHEMAS: dict[str, Schema] = {"LogEvent": LOG_EVENT, "AgentUsageRecord": AGENT_RECORD,
                                     "TokenUsage": TOKEN_USAGE, "Accepted": ACCEPTED}

BUSY = {"429": refusal("overloaded: METERSTREAM_MAX_IN_FLIGHT produces already wait for "
                       "Kafka; retry.", retry=True),
        "503": refusal("kafka_unavailable (not stored; retry), registry_loading, or for a "
                       "webhook secret_changing.", retry=True)}


def _convex_logs() -> dict[str, Any]:
    return operation(
        "A Convex log-stream webhook body, stored in the raw topic before it is answered.",
        {"200": ok("Kafka stored the body (acks=all).", {"$ref": "#/components/schemas/Accepted"}),
         "400": refusal("no_deployment, malformed (with where), wrong_door."),
         "401": refusal("unauthenticated: unknown, removed or unsigned deployment, or a "
                        "missing or wrong signature (one answer for all)."),
         "403": refusal("several_deployments: an event of another deployment."),
         "413": refusal("too_large (METERSTREAM_MAX_BODY_BYTES) or too_many_records "
                        "(METERSTREAM_MAX_RECORDS_PER_REQUEST)."),
         "415": refusal("encoding: a Content-Encoding other than identity."),
         **BUSY},
        "ingest", operationId="convexLogs",
        description="A JSON array of events, or JSONL (one event per line): Convex always "
                    "sends Content-Type application/json. The first deployment_name is the "
                    "body's; every event must be that deployment's.",
        requestBody={"required": True, "content": {"application/json": {"schema": {
            "type": "array", "items": {"$ref": "#/components/schemas/LogEvent"},
            "minItems": 1}}}},
        security=[{"webhookSignature": []}, {}])


def _agent_usage() -> dict[str, Any]:
    record = {"$ref": "#/components/schemas/AgentUsageRecord"}
    return operation(
        "Agent token usage records, for the deployment whose ingest token sends them.",
        {"200": ok("Kafka stored the records.", {"$ref": "#/components/schemas/Accepted"}),
         "400": refusal("malformed (with where) or invalid (with problems and "
                        "problem_count)."),
         "401": refusal("unauthenticated: no bearer token, or not a registered "
                        "deployment's ingest token."),
         "403": refusal("forbidden: a record names another deployment than the token's."),
         "413": refusal("too_large, too_many_records, record_too_large."),
         "415": refusal("encoding: a Content-Encoding other than identity."),
         **BUSY},
        "ingest", operationId="agentUsage",
        requestBody={"required": True, "content": {"application/json": {"schema": {
            "oneOf": [record, {"type": "array", "items": record, "minItems": 1}]}}}},
        security=[{"ingestToken": []}])


USAGE = "/v1/usage"
"""The scoped usage view (billing/usage_view.py), added to the public listener by the
receiver's process: described here, where the listener's document is made."""

USAGE_ANSWER: Schema = {
    "type": "object",
    "description": "What `meterstream usage --format json` prints for the token's scope and "
                   "the period, with the period, the token and the live quota status.",
    "required": ["period", "quota", "token"],
    "properties": {
        "period": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
        "quota": {"type": ["object", "null"], "description": "The worker's quota report "
                  "for a deployment or an end user; null for a team, or when the worker "
                  "did not answer (then a problem says so)."},
        "token": {"type": "object", "required": ["id", "expires_at"],
                  "properties": {"id": {"type": "string"}, "expires_at": {"type": "string"}}},
        "problems": {"type": "array", "items": {"type": "string"}},
    },
    "additionalProperties": True,
}


def _usage_view() -> dict[str, Any]:
    usage = operation(
        "Usage and cost of the read token's own scope (a deployment, a team or one end "
        "user): the scope comes from the token alone.",
        {"200": ok("The usage.", USAGE_ANSWER),
         "400": refusal("invalid (with fields): a parameter other than period and "
                        "resolution, or a bad value."),
         "401": refusal("unauthenticated (no bearer token), invalid_token (malformed, "
                        "unknown or tampered), token_expired, token_revoked."),
         "404": refusal("not_found: the scope has nothing to read any more."),
         "503": refusal("loading, usage_unavailable (ClickHouse or the price book).",
                        retry=True)},
        "usage", operationId="usage", security=[{"readToken": []}],
        parameters=[
            {"name": "period", "in": "query", "required": False,
             "schema": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
             "description": "A UTC month that has begun; default: this month up to now."},
            {"name": "resolution", "in": "query", "required": False,
             "schema": {"enum": ["month", "day", "hour"]}}])
    preflight = operation(
        "CORS preflight for origins in METERSTREAM_USAGE_CORS_ORIGINS.",
        {"204": {"description": "Allowed: GET with Authorization."},
         "403": refusal("origin_not_allowed, method_not_allowed.")},
        "usage", operationId="usagePreflight", security=[])
    return {"get": usage, "options": preflight}


def public_document(probes: bool = True, usage: bool = False) -> dict[str, Any]:
    """The public listener's document; `probes`: it serves /healthz, /readyz, /metrics;
    `usage`: the scoped usage view is on it."""
    paths: dict[str, Any] = {CONVEX_LOGS: {"post": _convex_logs()},
                             AGENT_USAGE: {"post": _agent_usage()}, **openapi_path()}
    if probes:
        paths.update(probe_paths())
    if usage:
        paths[USAGE] = _usage_view()
    return document(
        "meterstream receiver (public)",
        "The ingest doors of the receiver's public port. The admin API is on the admin "
        "port, with its own /openapi.json.",
        paths, PUBLIC_SCHEMAS,
        security_schemes={
            "webhookSignature": {
                "type": "apiKey", "in": "header", "name": "x-webhook-signature",
                "description": "sha256=<hex HMAC-SHA256 of the exact body bytes, keyed by "
                               "the deployment's webhook secret>. Unsigned bodies are taken "
                               "only for a deployment without a secret that set "
                               "allow_unsigned."},
            "ingestToken": {"type": "http", "scheme": "bearer",
                            "description": "The deployment's ingest token."},
            "readToken": {"type": "http", "scheme": "bearer",
                          "description": "A read token of the scoped usage view "
                                         "(msr_<id>.<secret>)."}})


OWNER: Schema = {"type": ["string", "null"], "minLength": 1, "maxLength": 200}
SECRET: Schema = {"type": ["string", "null"], "minLength": MIN_SECRET_LENGTH,
                  "pattern": "^[\\x20-\\x7e]+$", "writeOnly": True}

QUOTA: Schema = {
    "type": "object", "required": ["metric", "period", "limit"],
    "properties": {
        "metric": {"enum": sorted(METRICS)},
        "period": {"enum": list(PERIODS)},
        "limit": {"type": "number", "minimum": 0},
        "thresholds": {"type": "array", "items": {"type": "number"}},
        "hard": {"type": "boolean"},
        "per_user": {"type": "boolean"},
    },
}

DEPLOYMENT: Schema = {
    "type": "object",
    "description": "A registry record as the admin API shows it: never a secret.",
    "required": ["name", "has_webhook_secret", "has_ingest_token", "quotas", "allow_unsigned",
                 "enforce_at_source", "updated_at"],
    "properties": {
        "name": {"type": "string"},
        "team": {"type": ["string", "null"]}, "project": {"type": ["string", "null"]},
        "plan": {"type": ["string", "null"]},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "has_webhook_secret": {"type": "boolean"}, "has_ingest_token": {"type": "boolean"},
        "log_stream_id": {"type": ["string", "null"]},
        "previous_secret_until": {"type": ["integer", "null"]},
        "removed_at": {"type": ["integer", "null"]},
        "quotas": {"type": "array", "items": {"$ref": "#/components/schemas/Quota"}},
        "allow_unsigned": {"type": "boolean"},
        "enforce_at_source": {"type": "boolean", "description": "Opted in to enforcement "
                              "at the source (docs/enforcement.md)."},
        "updated_at": {"type": "integer"},
    },
    "additionalProperties": False,
}

DEPLOYMENT_CHANGES: Schema = {
    "type": "object",
    "description": "Fields given replace the stored ones, null clears one, omitted fields "
                   "keep their value.",
    "properties": {
        "webhook_secret": SECRET, "ingest_token": SECRET,
        "team": OWNER, "project": OWNER, "plan": OWNER,
        "labels": {"type": ["object", "null"], "additionalProperties": {"type": "string"}},
        "allow_unsigned": {"type": "boolean"},
        "enforce_at_source": {"type": "boolean"},
    },
    "additionalProperties": False,
}

QUOTAS: Schema = {"type": "object", "required": ["quotas"], "additionalProperties": False,
                  "properties": {"quotas": {"type": "array",
                                            "items": {"$ref": "#/components/schemas/Quota"}}}}

NAMED_QUOTAS: Schema = {"type": "object", "required": ["name", "quotas"],
                        "properties": {"name": {"type": "string"},
                                       "quotas": QUOTAS["properties"]["quotas"]}}

LIFECYCLE_BODY: Schema = {
    "type": "object", "required": ["deploy_key"],
    "properties": {
        "deploy_key": {"type": "string", "minLength": 1, "writeOnly": True,
                       "description": "The deployment's deploy key: passed to Convex, "
                                      "stored sealed (the stream status check and "
                                      "enforcement use it), never logged or shown."},
        "adopt": {"type": "boolean", "description": "provision: take over an existing "
                  "webhook log stream"},
        "format": {"enum": ["json", "jsonl"], "description": "provision"},
        "topics": {"type": ["array", "null"], "items": {"enum": sorted(SUBSCRIBABLE)},
                   "description": "provision; null: every topic"},
    },
    "additionalProperties": True,
}

SYNC_REPORT: Schema = {
    "type": "object", "required": ["deployment", "in_sync", "drift", "log_stream"],
    "properties": {"deployment": {"type": "string"}, "in_sync": {"type": "boolean"},
                   "drift": {"type": "array", "items": {"type": "string"}},
                   "log_stream": {"type": ["object", "null"]}},
}

ADMIN_SCHEMAS: dict[str, Schema] = {"Deployment": DEPLOYMENT,
                                    "DeploymentChanges": DEPLOYMENT_CHANGES,
                                    "Quota": QUOTA, "Quotas": QUOTAS,
                                    "LifecycleRequest": LIFECYCLE_BODY}

NAME = {"name": "name", "in": "path", "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": 128},
        "description": "The Convex deployment's name, e.g. happy-otter-123."}

GUARD = {"401": refusal("unauthenticated: no bearer token."),
         "403": refusal("forbidden: a wrong admin token; admin_disabled: "
                        "METERSTREAM_ADMIN_TOKEN is not set."),
         "503": refusal("registry_loading; for a write kafka_unavailable or not_applied.",
                        retry=True)}


def _admin(summary: str, operation_id: str, answers: dict[str, Any], **more: Any
           ) -> dict[str, Any]:
    return operation(summary, {**GUARD, **answers}, "admin", operationId=operation_id,
                     **more)


def _body(ref: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _record(description: str) -> dict[str, Any]:
    return ok(description, {"$ref": "#/components/schemas/Deployment"})


READ_TOKEN: Schema = {
    "type": "object", "description": "A read token as the admin API shows it: never its "
                                     "secret (given once, when issued).",
    "required": ["id", "scope", "created_at", "expires_at", "revoked_at", "state"],
    "properties": {"id": {"type": "string"}, "token": {"type": "string"},
                   "scope": {"type": "object"}, "created_at": {"type": "integer"},
                   "expires_at": {"type": "integer"},
                   "revoked_at": {"type": ["integer", "null"]},
                   "state": {"type": "string"}},
}

READ_TOKEN_REQUEST: Schema = {
    "type": "object", "required": ["scope"],
    "description": "The scope: a deployment, an end user of one, or a team; expires_in "
                   "seconds (default METERSTREAM_READ_TOKEN_TTL).",
    "properties": {
        "scope": {"type": "object", "properties": {
            "deployment": {"type": "string"}, "user": {"type": "string"},
            "team": {"type": "string"}}},
        "expires_in": {"type": "number"}},
}

TOKEN_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}


def _read_token_paths() -> dict[str, Any]:
    loading = {"503": refusal("tokens_loading, kafka_unavailable, not_applied, "
                              "registry_loading.", retry=True)}
    return {
        READ_TOKENS: {
            "post": _admin("Issues a read token for a deployment, an end user of one, or a "
                           "team; the answer holds the token, shown this once.",
                           "issueReadToken",
                           {"201": ok("The token and its record.", READ_TOKEN),
                            "400": refusal("malformed JSON, or invalid (with fields)."),
                            "404": refusal("not_found: no such deployment or team."),
                            **loading},
                           requestBody={"required": True, "content": json_content(
                               READ_TOKEN_REQUEST)}),
            "get": _admin("Every read token (filters: deployment, team).", "listReadTokens",
                          {"200": ok("The tokens.", {"type": "object", "required": ["tokens"],
                                                     "properties": {"tokens": {
                                                         "type": "array",
                                                         "items": READ_TOKEN}}}),
                           **loading}),
        },
        READ_TOKENS + "/{id}": {
            "parameters": [TOKEN_ID],
            "get": _admin("One read token's record.", "getReadToken",
                          {"200": ok("The record.", READ_TOKEN),
                           "404": refusal("not_found: no such read token."), **loading}),
            "delete": _admin("Revokes a read token (its record stays, revoked).",
                             "revokeReadToken",
                             {"200": ok("The record, revoked.", READ_TOKEN),
                              "404": refusal("not_found: no such read token."), **loading}),
        },
    }


def admin_document(read_tokens: bool = False) -> dict[str, Any]:
    """The admin listener's document; `read_tokens`: the read tokens' routes are on it."""
    one = ADMIN + "/{name}"
    paths: dict[str, Any] = {
        ADMIN: {"get": _admin("Every deployment of the registry, removed ones included.",
                              "listDeployments", {"200": ok("The records.", {
                                  "type": "object", "required": ["deployments"],
                                  "properties": {"deployments": {"type": "array", "items": {
                                      "$ref": "#/components/schemas/Deployment"}}}})})},
        one: {
            "parameters": [NAME],
            "get": _admin("One deployment's record.", "getDeployment",
                          {"200": _record("The record."),
                           "404": refusal("not_found: no such deployment.")}),
            "put": _admin("Creates or updates a deployment; answered once this replica's "
                          "view holds it.", "putDeployment",
                          {"200": _record("The record as stored."),
                           "400": refusal("malformed JSON, or invalid (with fields: every "
                                          "bad field).")},
                          requestBody=_body("DeploymentChanges")),
            "delete": _admin("Deletes a deployment's record.", "deleteDeployment",
                             {"200": ok("Deleted.", {"type": "object",
                                                     "required": ["deleted"],
                                                     "properties": {
                                                         "deleted": {"type": "string"}}}),
                              "400": refusal("invalid: not a deployment name."),
                              "404": refusal("not_found: no such deployment.")}),
        },
        one + "/quotas": {
            "parameters": [NAME],
            "get": _admin("The deployment's quotas.", "getQuotas",
                          {"200": ok("The quotas.", NAMED_QUOTAS),
                           "404": refusal("not_found: no such deployment (or removed).")}),
            "put": _admin("Replaces the deployment's quotas; {\"quotas\": []} clears them.",
                          "putQuotas",
                          {"200": ok("The quotas, normalised.", NAMED_QUOTAS),
                           "400": refusal("malformed JSON, or invalid (with fields)."),
                           "404": refusal("not_found: no such deployment (or removed).")},
                          requestBody=_body("Quotas")),
        },
    }
    steps = {
        "provision": ("Creates (or with adopt takes over) the deployment's webhook log "
                      "stream at Convex and stores its secret.", _record("The record.")),
        "rotate-secret": ("Rotates the log stream's secret without refusing a batch.",
                          _record("The record.")),
        "deprovision": ("Deletes the log stream and marks the deployment removed.",
                        _record("The record.")),
        "sync": ("Compares the registry with Convex and reports the drift.",
                 ok("The drift.", SYNC_REPORT)),
    }
    assert set(steps) == set(LIFECYCLE)
    for step, (summary, answer) in steps.items():
        paths[f"{one}/{step}"] = {"parameters": [NAME], "post": _admin(
            summary, step.replace("-s", "S"),
            {"200": answer,
             "400": refusal("malformed, missing deploy_key, or invalid (with fields)."),
             "404": refusal("not_found or not_provisioned."),
             "409": refusal("log_stream_exists (with log_stream_id and url): provision "
                            "again with adopt."),
             "502": refusal("convex_error: Convex refused (with code and convex_status)."),
             "503": refusal("convex_unavailable, kafka_unavailable, registry_loading.",
                            retry=True)},
            requestBody=_body("LifecycleRequest"))}
    if read_tokens:
        paths.update(_read_token_paths())
    paths.update(openapi_path())
    paths.update(probe_paths(metrics=False))
    return document(
        "meterstream receiver (admin)",
        "The deployment registry's admin API, on the receiver's admin port (loopback by "
        "default). Every operation but the probes and this document needs "
        "Authorization: Bearer <METERSTREAM_ADMIN_TOKEN>.",
        paths, ADMIN_SCHEMAS,
        security_schemes={"adminToken": {"type": "http", "scheme": "bearer",
                                         "description": "METERSTREAM_ADMIN_TOKEN"}},
        security=[{"adminToken": []}])
