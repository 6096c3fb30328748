"""Checking real answers and real route tables against the services' OpenAPI documents."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of every route of an aiohttp application. aiohttp adds a
    HEAD route beside every GET; it is part of that GET, so only a HEAD without a GET on
    its path is kept."""
    found = {(route.method.lower(), route.resource.canonical)
             for route in app.router.routes() if route.resource is not None}
    return {(method, path) for method, path in found
            if method != "head" or ("get", path) not in found}


def operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    """(method, path template) of every operation of an OpenAPI document."""
    return {(method, path) for path, item in spec["paths"].items()
            for method in METHODS if method in item}


def _template(path: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$")


def operation_of(spec: dict[str, Any], method: str, path: str) -> dict[str, Any] | None:
    """The operation answering `method` on a concrete `path` (query string left off)."""
    path = path.split("?", 1)[0]
    for template, item in spec["paths"].items():
        if _template(template).match(path) and method.lower() in item:
            operation: dict[str, Any] = item[method.lower()]
            return operation
    return None


def schema_errors(spec: dict[str, Any], schema: dict[str, Any], value: Any) -> list[str]:
    """Why `value` does not match `schema` (whose $refs point into the document)."""
    rooted = {**schema, "components": spec["components"]}
    return [f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
            for error in Draft202012Validator(rooted).iter_errors(value)]


def check_answer(spec: dict[str, Any], method: str, path: str, status: int,
                 content_type: str, body: bytes) -> None:
    """Fails unless the document lists this status for the operation and the body matches
    its schema. A refusal must be documented by its own status (no `default`). A path or
    method the document does not list must be refused, 404 or 405, in the Error shape."""
    operation = operation_of(spec, method, path)
    if operation is None:
        assert status in (404, 405), f"{method} {path} is not in the document: {status}"
        assert is_error_shape(body), body[:300]
        return
    responses = operation["responses"]
    assert str(status) in responses, (
        f"{method} {path} answered {status}, which the document does not list "
        f"({sorted(responses)}): {body[:300]!r}")
    content = responses[str(status)].get("content", {})
    media = content_type.split(";")[0].strip()
    assert media in content, f"{method} {path} {status}: {media} is not documented"
    if media == "application/json":
        errors = schema_errors(spec, content[media]["schema"], orjson.loads(body))
        assert not errors, f"{method} {path} {status} {body[:300]!r}: {errors}"


def is_error_shape(body: bytes) -> bool:
    """Whether a refusal's body is the documented Error shape."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return (isinstance(value, dict) and isinstance(value.get("error"), str)
            and isinstance(value.get("reason"), str))


def refusal_refs(spec: dict[str, Any]) -> Iterable[tuple[str, str, str, Any]]:
    """(method, path, status, schema) of every 4xx and 5xx response in the document."""
    for path, item in spec["paths"].items():
        for method in METHODS:
            for status, answer in item.get(method, {}).get("responses", {}).items():
                if status[0] in "45":
                    schema = answer.get("content", {}).get("application/json", {}).get("schema")
                    yield method, path, status, schema


def inline_refs(spec: dict[str, Any], schema: Any) -> Any:
    """`schema` with every `#/components/...` reference replaced by what it names, for
    tools that take one self-contained schema (hypothesis-jsonschema)."""
    if isinstance(schema, list):
        return [inline_refs(spec, item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        target: Any = spec
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return inline_refs(spec, target)
    return {key: inline_refs(spec, value) for key, value in schema.items()}


def exchange(url: str, method: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, bytes, str]:
    """One request: the status, the body and the Content-Type of its answer."""
    request = urllib.request.Request(url, data=body, method=method, headers={
        "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read(), answer.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers.get("Content-Type", "")


JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 63) - 1),
                        st.floats(allow_nan=False, allow_infinity=False),
                        st.text(max_size=20))
ANY_JSON = st.recursive(JSON_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=10), inner, max_size=3)),
    max_leaves=8)


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of a JSON schema, for the keywords the services' documents use (type and
    type lists, properties, required, additionalProperties, items, min/maxItems,
    min/maxLength, minimum, pattern, enum, const, oneOf); `$ref`s must be inlined first
    (`inline_refs`). Optional properties are drawn present or absent, and an object
    allowing more properties sometimes gets a few of any JSON value."""
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "oneOf" in schema:
        return st.one_of([from_schema(option) for option in schema["oneOf"]])
    kinds = schema.get("type")
    if isinstance(kinds, list):
        return st.one_of([from_schema({**schema, "type": kind}) for kind in kinds])
    if kinds is None:
        return ANY_JSON
    if kinds == "null":
        return st.none()
    if kinds == "boolean":
        return st.booleans()
    if kinds == "integer":
        # JSON has no bound, but no sender writes more than 64 bits (nor can orjson).
        return st.integers(min_value=schema.get("minimum", -(1 << 63)),
                           max_value=schema.get("maximum", (1 << 63) - 1))
    if kinds == "number":
        return st.one_of(st.integers(min_value=schema.get("minimum", -(1 << 63)),
                                     max_value=(1 << 63) - 1),
                         st.floats(min_value=schema.get("minimum"), allow_nan=False,
                                   allow_infinity=False))
    if kinds == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(
                lambda text: schema.get("minLength", 0) <= len(text)
                <= schema.get("maxLength", len(text)))
        return st.text(min_size=schema.get("minLength", 0),
                       max_size=min(schema.get("maxLength", 40), 40))
    if kinds == "array":
        return st.lists(from_schema(schema.get("items", {})),
                        min_size=schema.get("minItems", 0),
                        max_size=schema.get("maxItems", schema.get("minItems", 0) + 4))
    assert kinds == "object", schema
    return _object(schema)


def _object(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    properties: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", ()))
    extra = schema.get("additionalProperties", True)

    @st.composite
    def objects(draw: st.DrawFn) -> dict[str, Any]:
        value: dict[str, Any] = {}
        for name, sub in properties.items():
            if name in required or draw(st.booleans()):
                value[name] = draw(from_schema(sub))
        if extra is not False and draw(st.integers(0, 3)) == 0:
            more = ANY_JSON if extra is True else from_schema(extra)
            value.update(draw(st.dictionaries(st.text(min_size=1, max_size=10), more,
                                              max_size=2)))
            value.update({name: value[name] for name in properties if name in value})
        return value

    return objects()
