"""The worker's OpenAPI 3.1 document, served at /openapi.json on its web port
(processors/app.py).

Written by hand beside the views; tests/unit/test_openapi.py fails when the Faust web
application's routes and this document's paths and methods differ either way. Every path
but the probes and this document needs a read or admin token (processors/web_access.py),
and every refusal is the shared `Error` schema (meterstream/core/openapi.py).
"""

from __future__ import annotations

from typing import Any

from meterstream.core.openapi import (
    Schema,
    document,
    ok,
    openapi_path,
    operation,
    probe_paths,
    refusal,
)

QUOTA_PATH = "/v1/quota/{deployment}"
HEALTH_PATH = "/v1/deployments/{deployment}/health"
FLEET_PATH = "/v1/health/fleet"

NUMBER: Schema = {"type": "number"}

PERIOD: Schema = {
    "type": "object", "required": ["start", "usage", "users"],
    "properties": {
        "start": {"type": "string", "description": "The period's start, UTC."},
        "usage": {"type": "object", "description": "Every billing metric in the units "
                  "quotas use, the other live counters in their own units, storage GB-hours "
                  "per category and tokens per model.",
                  "additionalProperties": True},
        "users": {"type": "object", "required": ["by_name", "other_users_tokens"],
                  "properties": {"by_name": {"type": "integer", "minimum": 0,
                                             "description": "End users counted by name "
                                             "(up to METERSTREAM_WORKER_MAX_USERS)."},
                                 "other_users_tokens": {
                                     **NUMBER, "description": "Tokens of the end users "
                                     "beyond that bound, together."}}},
    },
}

QUOTA_STATE: Schema = {
    "type": "object",
    "required": ["metric", "period", "limit", "period_start", "usage", "exceeded"],
    "properties": {"metric": {"type": "string"}, "period": {"type": "string"},
                   "limit": NUMBER, "thresholds": {"type": "array", "items": NUMBER},
                   "hard": {"type": "boolean"}, "per_user": {"type": "boolean"},
                   "period_start": {"type": "string"}, "usage": NUMBER,
                   "exceeded": {"type": "boolean"}, "user": {"type": "string"}},
}

QUOTA_REPORT: Schema = {
    "type": "object",
    "description": "Live usage against limits for the current day and month.",
    "required": ["deployment", "at", "periods", "quotas", "hard_limit_exceeded", "storage",
                 "units"],
    "properties": {
        "deployment": {"type": "string"},
        "at": {"type": "integer", "description": "The time asked about, ms since the epoch."},
        "periods": {"type": "object", "required": ["day", "month"],
                    "properties": {"day": PERIOD, "month": PERIOD}},
        "quotas": {"type": "array", "items": QUOTA_STATE},
        "hard_limit_exceeded": {"type": "boolean"},
        "storage": {"type": "object", "required": ["at", "bytes"],
                    "properties": {"at": {"type": ["integer", "null"]},
                                   "bytes": {"type": "object"}}},
        "units": {"type": "object", "additionalProperties": {"type": "string"}},
        "user": {"type": "object", "required": ["id", "periods"]},
    },
}

GUARD = {"401": refusal("unauthenticated: no bearer token (with WWW-Authenticate)."),
         "403": refusal("forbidden: neither the read nor the admin token; api_disabled: "
                        "neither METERSTREAM_READ_TOKEN nor METERSTREAM_ADMIN_TOKEN is set.")}


def worker_document(probes: bool = True) -> dict[str, Any]:
    """The worker's document; `probes`: its web port serves /healthz, /readyz, /metrics
    (not when METERSTREAM_METRICS_HOST gives them a listener of their own)."""
    paths: dict[str, Any] = {
        QUOTA_PATH: {"get": operation(
            "Live usage and quota state of one deployment, from the worker that owns it.",
            {"200": ok("The report.", {"$ref": "#/components/schemas/QuotaReport"}),
             "400": refusal("invalid: at is not a time in ms."),
             "404": refusal("unknown_deployment: not registered, or removed."),
             **GUARD},
            "worker", operationId="quotaStatus",
            parameters=[
                {"name": "deployment", "in": "path", "required": True,
                 "schema": {"type": "string", "minLength": 1}},
                {"name": "at", "in": "query", "required": False,
                 "schema": {"type": "string", "pattern": "^[0-9]+$"},
                 "description": "A time in ms since the epoch (default: now)."},
                {"name": "user", "in": "query", "required": False,
                 "schema": {"type": "string"},
                 "description": "An end user: adds their tokens and per-user quotas."},
            ])},
        HEALTH_PATH: {"get": operation(
            "Stream health of one deployment (docs/stream-health.md), from the worker that "
            "owns it: last event per type, storage heartbeat, silence, Convex stream status.",
            {"200": ok("The report.", {"type": "object", "required": ["state"],
                                       "properties": {"state": {"type": "string"}}}),
             "404": refusal("unknown_deployment: not registered, or removed."),
             **GUARD},
            "worker", operationId="streamHealth",
            parameters=[{"name": "deployment", "in": "path", "required": True,
                         "schema": {"type": "string", "minLength": 1}}])},
        FLEET_PATH: {"get": operation(
            "Deployments by stream health state across every worker (with local=1: this "
            "worker's share only).",
            {"200": ok("The counts.", {"type": "object"}), **GUARD},
            "worker", operationId="fleetHealth",
            parameters=[{"name": "local", "in": "query", "required": False,
                         "schema": {"type": "string"},
                         "description": "Any value: this worker's counts only (what the "
                                        "worker asked for the fleet view asks the others)."}])},
        "/": {"get": operation(
            "Faust's index page: says the web server runs, nothing more.",
            {"200": ok("Running.", {"type": "object"}), **GUARD},
            "worker", operationId="index")},
        **openapi_path(),
    }
    if probes:
        paths.update(probe_paths())
    return document(
        "meterstream worker",
        "The worker's web API. Every path but the probes and this document needs "
        "Authorization: Bearer <METERSTREAM_READ_TOKEN or METERSTREAM_ADMIN_TOKEN>.",
        paths, {"QuotaReport": QUOTA_REPORT},
        security_schemes={"readToken": {"type": "http", "scheme": "bearer",
                                        "description": "METERSTREAM_READ_TOKEN or "
                                                       "METERSTREAM_ADMIN_TOKEN"}},
        security=[{"readToken": []}])
