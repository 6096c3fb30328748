"""What every service's OpenAPI 3.1 document shares: the error shape, the probes, the
document's own route, and serving it at `/openapi.json`.

Each listener serves the document of its own routes (ingest/openapi.py for the
receiver's public and admin listeners, processors/openapi.py for the worker), written
beside the code and checked against the aiohttp application's route table by
tests/unit/test_openapi.py in both directions, so a route without its operation, or an
operation without its route, fails the tests.

Every refusal and failure any listener answers has one JSON shape, the `Error`
schema: `{"error": <a sentence for a person>, "reason": <a stable word for a
program>}`, sometimes with details beside them (`where`, `fields`, `problems`, ...).
aiohttp's own refusals (no such path, method not allowed, body too large) take that
shape too (meterstream/core/http_errors.py).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

import orjson
from aiohttp import web

OPENAPI_PATH = "/openapi.json"
OPENAPI_VERSION = "3.1.0"

Schema = dict[str, Any]

ERROR: Schema = {
    "type": "object",
    "description": "Every refusal and failure: a sentence for a person and a stable reason "
                   "for a program, sometimes with details.",
    "required": ["error", "reason"],
    "properties": {
        "error": {"type": "string", "description": "What went wrong, for a person."},
        "reason": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$",
                   "description": "What went wrong, for a program: one lowercase word "
                                  "(e.g. unauthenticated, malformed, too_large)."},
        "where": {"type": ["string", "null"],
                  "description": "Where a malformed body broke (line and column, or the "
                                 "event's index)."},
        "fields": {"type": "object", "additionalProperties": {"type": "string"},
                   "description": "Each invalid field with its problem."},
        "problems": {"type": "array", "items": {
            "type": "object", "required": ["index", "field", "problem"],
            "properties": {"index": {"type": ["integer", "null"]},
                           "field": {"type": "string"}, "problem": {"type": "string"}}},
            "description": "The first METERSTREAM_MAX_PROBLEMS invalid fields of the records."},
        "problem_count": {"type": "integer", "minimum": 0,
                          "description": "How many problems there are in all."},
    },
    "additionalProperties": True,
}

ERROR_REF: Schema = {"$ref": "#/components/schemas/Error"}

RETRY_AFTER: Schema = {"description": "Seconds to wait before retrying.",
                       "schema": {"type": "string"}}


def json_content(schema: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def ok(description: str, schema: Schema) -> dict[str, Any]:
    return {"description": description, "content": json_content(schema)}


def refusal(description: str, retry: bool = False) -> dict[str, Any]:
    """A response in the Error shape; `retry`: it carries Retry-After (429 and 503)."""
    answer: dict[str, Any] = {"description": description, "content": json_content(ERROR_REF)}
    if retry:
        answer["headers"] = {"Retry-After": RETRY_AFTER}
    return answer


def operation(summary: str, responses: dict[str, Any], tag: str, **more: Any
              ) -> dict[str, Any]:
    """One operation; `more`: operationId, parameters, requestBody, security, ..."""
    return {"summary": summary, "tags": [tag], "responses": responses, **more}


READINESS: Schema = {
    "type": "object", "required": ["ready"],
    "properties": {"ready": {"type": "boolean"}},
    "additionalProperties": {"type": "boolean"},
    "description": "ready, and each named condition (kafka, registry, partitions, ...).",
}


def probe_paths(metrics: bool = True) -> dict[str, Any]:
    """/healthz, /readyz and (with `metrics`) /metrics: open to all, state, never data."""
    paths: dict[str, Any] = {
        "/healthz": {"get": operation(
            "Liveness: the process runs and its event loop answers.",
            {"200": ok("Alive.", {"type": "object", "required": ["status"],
                                  "properties": {"status": {"const": "ok"}}})},
            "probes", operationId="healthz", security=[])},
        "/readyz": {"get": operation(
            "Readiness: every condition the service needs holds.",
            {"200": ok("Ready.", READINESS),
             "503": ok("Not ready; the conditions that do not hold are false.", READINESS)},
            "probes", operationId="readyz", security=[])},
    }
    if metrics:
        paths["/metrics"] = {"get": operation(
            "Prometheus metrics of this process.",
            {"200": {"description": "The Prometheus text format.",
                     "content": {"text/plain": {"schema": {"type": "string"}}}}},
            "probes", operationId="metrics", security=[])}
    return paths


def openapi_path() -> dict[str, Any]:
    """The document's own route (open to all: it describes, it holds no data)."""
    return {OPENAPI_PATH: {"get": operation(
        "This OpenAPI 3.1 document.",
        {"200": ok("The document.", {"type": "object", "required": ["openapi", "paths"]})},
        "meta", operationId="openapi", security=[])}}


def _version() -> str:
    try:
        return version("meterstream")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0.0.0"


def document(title: str, description: str, paths: dict[str, Any],
             schemas: dict[str, Schema] | None = None,
             security_schemes: dict[str, Any] | None = None,
             security: list[dict[str, list[str]]] | None = None) -> dict[str, Any]:
    """A whole OpenAPI 3.1 document; the Error schema is always among its components."""
    components: dict[str, Any] = {"schemas": {"Error": ERROR, **(schemas or {})}}
    if security_schemes:
        components["securitySchemes"] = security_schemes
    spec: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": _version(), "description": description,
                 "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}},
        "paths": dict(sorted(paths.items())),
        "components": components,
    }
    if security is not None:
        spec["security"] = security
    return spec


def add_openapi(app: web.Application, spec: dict[str, Any]) -> web.Application:
    """Serves `spec` at GET /openapi.json on `app` (encoded once); returns `app`."""
    body = orjson.dumps(spec)

    async def page(_: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app.router.add_get(OPENAPI_PATH, page)
    return app
