"""`meterstream deployments health [NAME]`: a deployment's stream health, or the fleet's
counts by state, from the worker's API (docs/stream-health.md).

It asks the worker on this machine (METERSTREAM_WORKER_PORT) with the read token; Faust
forwards a deployment's question to the worker that owns it, and the fleet view adds
every worker's counts, so any worker will do.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from meterstream.core.config import Settings


def worker_url(settings: Settings) -> str:
    # A worker listening on every interface is reached on loopback from here.
    host = settings.bind_host if settings.bind_host not in ("0.0.0.0", "::") else "127.0.0.1"
    return f"http://{host}:{settings.worker_port}"


def path_of(name: str | None) -> str:
    if name is None:
        return "/v1/health/fleet"
    return f"/v1/deployments/{urllib.parse.quote(name, safe='')}/health"


def run(args: argparse.Namespace, settings: Settings) -> int:
    token = settings.read_token or settings.admin_token
    if not token:
        print("meterstream deployments health: set METERSTREAM_READ_TOKEN (or "
              "METERSTREAM_ADMIN_TOKEN)", file=sys.stderr)
        return 2
    url = worker_url(settings) + path_of(args.name)
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    answer: Any
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, answer = response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        status, answer = error.code, json.loads(error.read() or b"null")
    except (OSError, ValueError) as exc:
        print(f"meterstream deployments health: {url} unreachable: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2))
    return 0 if status < 300 else 1
