"""`meterstream tokens issue | list | revoke`: read tokens of the scoped usage view
(`GET /v1/usage`), through the admin API (ingest/read_token_admin.py).

`issue` prints the token once, on its own line of the JSON answer; it is stored nowhere
but as a hash, so it cannot be shown again (issue another and revoke this one).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from meterstream.core.config import Settings
from meterstream.deployments import request

_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> int:
    """Seconds from 3600, 90m, 12h or 30d."""
    match = _DURATION.match(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"a duration like 3600, 90m, 12h or 30d, got {text!r}")
    return int(match.group(1)) * _SECONDS[match.group(2)]


ISSUE_EXAMPLES = """\
examples:
  meterstream tokens issue --deployment happy-otter-123
  meterstream tokens issue --deployment happy-otter-123 --user user_2f9KqM --expires-in 12h
  meterstream tokens issue --team acme --expires-in 30d"""

LIST_EXAMPLES = """\
examples:
  meterstream tokens list
  meterstream tokens list --deployment happy-otter-123
  meterstream tokens list --team acme"""

REVOKE_EXAMPLES = """\
examples:
  meterstream tokens revoke 1f2e3d4c5b6a7980"""


def add_parser(commands: Any) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = commands.add_parser(
        "tokens", help="read tokens of the scoped usage view, GET /v1/usage (admin API)",
        epilog="examples:\n  meterstream tokens issue --deployment happy-otter-123\n"
               "  meterstream tokens list\n  meterstream tokens revoke 1f2e3d4c5b6a7980",
        formatter_class=raw)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    issue = actions.add_parser("issue", help="issue a read token for a deployment, a team "
                                             "or an end user; prints it once",
                               epilog=ISSUE_EXAMPLES, formatter_class=raw)
    issue.add_argument("--deployment", help="the deployment it reads (with --user: its end "
                                            "user), e.g. happy-otter-123")
    issue.add_argument("--user", help="one end user (userId) of --deployment, e.g. "
                                      "user_2f9KqM")
    issue.add_argument("--team", help="every deployment of a team, e.g. acme")
    issue.add_argument("--expires-in", type=duration, metavar="DURATION",
                       help="validity, e.g. 30d or 12h (default: METERSTREAM_READ_TOKEN_TTL)")
    listing = actions.add_parser("list", help="the read tokens (never the tokens themselves)",
                                 epilog=LIST_EXAMPLES, formatter_class=raw)
    listing.add_argument("--deployment", help="only this deployment's, e.g. happy-otter-123")
    listing.add_argument("--team", help="only this team's, e.g. acme")
    actions.add_parser("revoke", help="revoke a read token by its id",
                       epilog=REVOKE_EXAMPLES, formatter_class=raw).add_argument(
        "id", help="the token's id (before the dot), e.g. 1f2e3d4c5b6a7980")


def _route(args: argparse.Namespace) -> tuple[str, str, Any]:
    if args.action == "issue":
        scope = {key: value for key, value in (("deployment", args.deployment),
                                               ("team", args.team), ("user", args.user))
                 if value is not None}
        body: dict[str, Any] = {"scope": scope}
        if args.expires_in is not None:
            body["expires_in"] = args.expires_in
        return "POST", "/v1/read-tokens", body
    if args.action == "list":
        query = "&".join(f"{key}={value}" for key, value in (("deployment", args.deployment),
                                                             ("team", args.team)) if value)
        return "GET", "/v1/read-tokens" + (f"?{query}" if query else ""), None
    return "DELETE", f"/v1/read-tokens/{args.id}", None


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.admin_token:
        print("meterstream tokens: set METERSTREAM_ADMIN_TOKEN", file=sys.stderr)
        return 2
    method, path, body = _route(args)
    try:
        status, answer = request(settings, method, path, body)
    except OSError as exc:
        print(f"meterstream tokens: {settings.admin_url} unreachable: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2))
    return 0 if status < 300 else 1
