"""`meterstream deployments ...`: the registry's admin API from the command line.

Secrets are read from environment variables named on the command line, so
they do not show in the shell history or in the process list.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ingest.convex_platform import METERING_TOPICS
from meterstream.core.config import Settings


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("deployments", help="the deployment registry (admin API)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="all registered deployments")
    get = actions.add_parser("get", help="one deployment")
    get.add_argument("name")
    put = actions.add_parser("put", help="register a deployment or change its record")
    put.add_argument("name")
    put.add_argument("--webhook-secret-env", metavar="VAR",
                     help="environment variable holding the log stream's HMAC secret")
    put.add_argument("--ingest-token-env", metavar="VAR",
                     help="environment variable holding the agent-usage ingest token")
    put.add_argument("--team")
    put.add_argument("--project")
    put.add_argument("--plan")
    put.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                     help="a label; repeat for several (replaces all labels)")
    put.add_argument("--allow-unsigned", action=argparse.BooleanOptionalAction, default=None,
                     help="take unsigned webhook bodies while the deployment has no webhook "
                          "secret (off unless given; --no-allow-unsigned turns it off)")
    delete = actions.add_parser("delete", help="remove a deployment from the registry")
    delete.add_argument("name")
    actions.add_parser("quotas", help="a deployment's quotas").add_argument("name")
    set_quotas = actions.add_parser(
        "set-quotas", help='replace a deployment\'s quotas with a {"quotas": [...]} document')
    set_quotas.add_argument("name")
    set_quotas.add_argument("file", help="the JSON document's path, or - for stdin")

    provision = actions.add_parser(
        "provision", help="create the deployment's Convex log stream and register it")
    provision.add_argument("name")
    provision.add_argument("--format", choices=("json", "jsonl"), default="jsonl")
    provision.add_argument("--topics", default=",".join(METERING_TOPICS),
                           help="comma-separated log topics, or 'all' "
                                "(default: the metering topics)")
    provision.add_argument("--adopt", action="store_true",
                           help="take over an existing webhook log stream")
    provision.add_argument("--ingest-token-env", metavar="VAR")
    provision.add_argument("--team")
    provision.add_argument("--project")
    provision.add_argument("--plan")
    provision.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    for parser in (put, provision):
        parser.add_argument(
            "--enforce", dest="enforce_at_source", action=argparse.BooleanOptionalAction,
            default=None, help="set an environment variable on the Convex deployment while a "
                               "hard quota is exceeded (docs/enforcement.md; --no-enforce "
                               "turns it off)")
    for step, text in (("rotate-secret", "rotate the webhook secret at Convex and here"),
                       ("deprovision", "delete the log stream, mark the deployment removed"),
                       ("sync", "compare the registry with Convex and report drift")):
        actions.add_parser(step, help=text).add_argument("name")
    for action in ("provision", "rotate-secret", "deprovision", "sync"):
        actions.choices[action].add_argument(
            "--deploy-key-env", metavar="VAR", required=True,
            help="environment variable holding the deployment's deploy key")


def _secret(variable: str | None) -> str | None:
    if variable is None:
        return None
    value = os.environ.get(variable)
    if not value:
        raise SystemExit(f"meterstream deployments: environment variable {variable} is empty")
    return value


def _body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.action != "put":
        body["deploy_key"] = _secret(args.deploy_key_env)
        if args.action != "provision":
            return body
        body["format"] = args.format
        body["topics"] = None if args.topics == "all" else args.topics.split(",")
        body["adopt"] = args.adopt
    for key, value in (("webhook_secret", _secret(getattr(args, "webhook_secret_env", None))),
                       ("ingest_token", _secret(args.ingest_token_env)),
                       ("team", args.team), ("project", args.project), ("plan", args.plan)):
        if value is not None:
            body[key] = value
    if getattr(args, "allow_unsigned", None) is not None:
        body["allow_unsigned"] = args.allow_unsigned
    if getattr(args, "enforce_at_source", None) is not None:
        body["enforce_at_source"] = args.enforce_at_source
    if args.label:
        pairs = [label.partition("=") for label in args.label]
        if any(not key or not sep for key, sep, _ in pairs):
            raise SystemExit("meterstream deployments: --label takes KEY=VALUE")
        body["labels"] = {key: value for key, _, value in pairs}
    return body


def _quota_document(path: str) -> Any:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        return json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SystemExit(
            f"meterstream deployments: cannot read quotas from {path}: {exc}") from None


def request(settings: Settings, method: str, path: str,
            body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        settings.admin_url + path, data=data, method=method,
        headers={"Authorization": f"Bearer {settings.admin_token}",
                 "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.admin_token:
        print("meterstream deployments: set METERSTREAM_ADMIN_TOKEN", file=sys.stderr)
        return 2
    method, path, body = _route(args)
    try:
        status, answer = request(settings, method, path, body)
        if (status == 409 and args.action == "provision"
                and answer.get("reason") == "log_stream_exists" and _ask_adopt(answer)):
            status, answer = request(settings, method, path, {**(body or {}), "adopt": True})
    except OSError as exc:
        print(f"meterstream deployments: {settings.admin_url} unreachable: {exc}",
              file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2))
    return 0 if status < 300 else 1


def _route(args: argparse.Namespace) -> tuple[str, str, Any]:
    """The admin API call of a subcommand: method, path and body."""
    path = "/v1/deployments" + (f"/{args.name}" if hasattr(args, "name") else "")
    if args.action == "quotas":
        return "GET", f"{path}/quotas", None
    if args.action == "set-quotas":
        return "PUT", f"{path}/quotas", _quota_document(args.file)
    method = {"list": "GET", "get": "GET", "put": "PUT", "delete": "DELETE"}.get(args.action)
    if method is None:
        method, path = "POST", f"{path}/{args.action}"
    return method, path, _body(args) if method in ("PUT", "POST") else None


def _ask_adopt(answer: dict[str, Any]) -> bool:
    """Offers to adopt an existing stream when a person is at the terminal."""
    print(answer.get("error", ""), file=sys.stderr)
    if not sys.stdin.isatty():
        print("run again with --adopt to take it over", file=sys.stderr)
        return False
    reply = input("Adopt it (point it at meterstream and rotate its secret)? [y/N] ")
    return reply.strip().lower() in ("y", "yes")
