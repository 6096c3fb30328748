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
from meterstream.core.exit_codes import ExitCode
from meterstream.core.text_table import aligned, is_terminal

# Each action's examples, shown by `meterstream deployments ACTION --help`.
EXAMPLES = {
    "list": ["meterstream deployments list", "meterstream deployments list --format json"],
    "get": ["meterstream deployments get happy-otter-123"],
    "put": ["WEBHOOK_SECRET=3f1c... meterstream deployments put happy-otter-123 "
            "--webhook-secret-env WEBHOOK_SECRET",
            "meterstream deployments put happy-otter-123 --team acme --project chat "
            "--plan pro --label env=prod --label tier=gold",
            "INGEST_TOKEN=... meterstream deployments put happy-otter-123 "
            "--ingest-token-env INGEST_TOKEN --no-allow-unsigned"],
    "delete": ["meterstream deployments delete happy-otter-123"],
    "quotas": ["meterstream deployments quotas happy-otter-123"],
    "health": ["meterstream deployments health happy-otter-123",
               "meterstream deployments health"],
    "set-quotas": ["meterstream deployments set-quotas happy-otter-123 quotas.json",
                   "echo '{\"quotas\": []}' | meterstream deployments set-quotas "
                   "happy-otter-123 -"],
    "provision": ["DEPLOY_KEY=prod:happy-otter-123|... meterstream deployments provision "
                  "happy-otter-123 --deploy-key-env DEPLOY_KEY --team acme --plan pro "
                  "--label env=prod",
                  "meterstream deployments provision happy-otter-123 --deploy-key-env "
                  "DEPLOY_KEY --format json --topics all --adopt --ingest-token-env "
                  "INGEST_TOKEN --project chat"],
    "rotate-secret": ["meterstream deployments rotate-secret happy-otter-123 "
                      "--deploy-key-env DEPLOY_KEY"],
    "deprovision": ["meterstream deployments deprovision happy-otter-123 "
                    "--deploy-key-env DEPLOY_KEY"],
    "sync": ["meterstream deployments sync happy-otter-123 --deploy-key-env DEPLOY_KEY"],
}


def _examples(action: str) -> str:
    return "examples:\n" + "\n".join(f"  {example}" for example in EXAMPLES[action])


def add_parser(commands: Any) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = commands.add_parser(
        "deployments", help="the deployment registry (admin API)",
        epilog="examples:\n  meterstream deployments list\n"
               "  meterstream deployments put happy-otter-123 --webhook-secret-env "
               "WEBHOOK_SECRET\n  meterstream deployments ACTION --help",
        formatter_class=raw)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, text: str) -> argparse.ArgumentParser:
        added: argparse.ArgumentParser = actions.add_parser(
            name, help=text, epilog=_examples(name), formatter_class=raw)
        return added

    listing = action("list", "all registered deployments")
    listing.add_argument("--format", choices=("table", "json"), default=None,
                         help="default: an aligned table at a terminal, the admin API's JSON "
                              "when piped, e.g. --format json")
    name_help = "the deployment's name, e.g. happy-otter-123"
    get = action("get", "one deployment")
    get.add_argument("name", help=name_help)
    put = action("put", "register a deployment or change its record")
    put.add_argument("name", help=name_help)
    put.add_argument("--webhook-secret-env", metavar="VAR",
                     help="environment variable holding the log stream's HMAC secret, "
                          "e.g. WEBHOOK_SECRET")
    put.add_argument("--ingest-token-env", metavar="VAR",
                     help="environment variable holding the agent-usage ingest token, "
                          "e.g. INGEST_TOKEN")
    put.add_argument("--team", help="the team it belongs to, e.g. acme")
    put.add_argument("--project", help="its project, e.g. chat")
    put.add_argument("--plan", help="its price-book plan, e.g. pro")
    put.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                     help="a label; repeat for several (replaces all labels), e.g. env=prod")
    put.add_argument("--allow-unsigned", action=argparse.BooleanOptionalAction, default=None,
                     help="take unsigned webhook bodies while the deployment has no webhook "
                          "secret (off unless given; --no-allow-unsigned turns it off)")
    delete = action("delete", "remove a deployment from the registry")
    delete.add_argument("name", help=name_help)
    action("quotas", "a deployment's quotas").add_argument("name", help=name_help)
    action("health", "a deployment's stream health, or the fleet's without a name (the "
                     "worker's API)").add_argument(
        "name", nargs="?", help="a registered deployment (default: the fleet's counts), "
                                "e.g. happy-otter-123")
    set_quotas = action(
        "set-quotas", 'replace a deployment\'s quotas with a {"quotas": [...]} document')
    set_quotas.add_argument("name", help=name_help)
    set_quotas.add_argument("file", help="the JSON document's path, or - for stdin, "
                                         "e.g. quotas.json")

    provision = action("provision", "create the deployment's Convex log stream and register it")
    provision.add_argument("name", help=name_help)
    provision.add_argument("--format", choices=("json", "jsonl"), default="jsonl",
                           help="the log stream's body format (default jsonl), e.g. "
                                "--format json")
    provision.add_argument("--topics", default=",".join(METERING_TOPICS),
                           help="comma-separated log topics, or 'all' "
                                "(default: the metering topics), e.g. --topics all")
    provision.add_argument("--adopt", action="store_true",
                           help="take over an existing webhook log stream")
    provision.add_argument("--ingest-token-env", metavar="VAR",
                           help="environment variable holding the agent-usage ingest token, "
                                "e.g. INGEST_TOKEN")
    provision.add_argument("--team", help="the team it belongs to, e.g. acme")
    provision.add_argument("--project", help="its project, e.g. chat")
    provision.add_argument("--plan", help="its price-book plan, e.g. pro")
    provision.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                           help="a label; repeat for several, e.g. env=prod")
    for parser in (put, provision):
        parser.add_argument(
            "--enforce", dest="enforce_at_source", action=argparse.BooleanOptionalAction,
            default=None, help="set an environment variable on the Convex deployment while a "
                               "hard quota is exceeded (docs/enforcement.md), e.g. --enforce; "
                               "--no-enforce turns it off")
    for step, text in (("rotate-secret", "rotate the webhook secret at Convex and here"),
                       ("deprovision", "delete the log stream, mark the deployment removed"),
                       ("sync", "compare the registry with Convex and report drift")):
        action(step, text).add_argument("name", help=name_help)
    for step in ("provision", "rotate-secret", "deprovision", "sync"):
        actions.choices[step].add_argument(
            "--deploy-key-env", metavar="VAR", required=True,
            help="environment variable holding the deployment's deploy key, e.g. DEPLOY_KEY")


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
    if args.action == "health":  # the worker's API, with the read token
        from meterstream import health_cli

        return health_cli.run(args, settings)
    if not settings.admin_token:
        print("meterstream deployments: set METERSTREAM_ADMIN_TOKEN", file=sys.stderr)
        return ExitCode.USAGE
    method, path, body = _route(args)
    try:
        status, answer = request(settings, method, path, body)
        if (status == 409 and args.action == "provision"
                and answer.get("reason") == "log_stream_exists" and _ask_adopt(answer)):
            status, answer = request(settings, method, path, {**(body or {}), "adopt": True})
    except OSError as exc:
        print(f"meterstream deployments: {settings.admin_url} unreachable: {exc}",
              file=sys.stderr)
        return ExitCode.ADMIN_API_UNREACHABLE
    if status >= 300:
        print(json.dumps(answer, indent=2))
        return ExitCode.FAILED
    if args.action == "list" and (args.format or (
            "table" if is_terminal(sys.stdout) else "json")) == "table":
        sys.stdout.write(aligned([_listed(d) for d in answer["deployments"]])
                         or "no deployments\n")
        return ExitCode.OK
    print(json.dumps(answer, indent=2))
    return ExitCode.OK


def _listed(deployment: dict[str, Any]) -> dict[str, Any]:
    """One deployment as a line of the terminal table (`get NAME` shows the whole record)."""
    labels = deployment.get("labels") or {}
    return {"name": deployment["name"], "team": deployment.get("team") or "",
            "project": deployment.get("project") or "", "plan": deployment.get("plan") or "",
            "labels": ",".join(f"{key}={value}" for key, value in sorted(labels.items())),
            "secret": "yes" if deployment.get("has_webhook_secret") else "no",
            "log_stream": deployment.get("log_stream_id") or "",
            "quotas": len(deployment.get("quotas") or []),
            "removed": "yes" if deployment.get("removed_at") else ""}


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
