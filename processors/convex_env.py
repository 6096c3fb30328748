"""Setting and removing a Convex deployment's environment variables, as `npx convex env
set/remove` does:

    POST <deployment URL>/api/update_environment_variables
    Authorization: Convex <deploy key>
    {"changes": [{"name": "N", "value": "v"}, {"name": "M"}]}   (no value: remove M)

The deployment URL is METERSTREAM_CONVEX_API_URL's template with the deployment's name
put in and its `/api/v1` (the Platform API's prefix) taken off. Setting a variable to the
value it has, or removing one that is absent, changes nothing: the request is idempotent,
which is what lets the enforcement loop repeat it after a crash.

A request is retried with exponential backoff on connection errors, timeouts, 429 and
5xx, up to `attempts` times; any other status is final. The deploy key appears in no
error and no log. (A client of its own: processors/ may not import ingest/, where the
Platform API client lives.)
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import aiohttp
import orjson

from processors import metrics

log = logging.getLogger(__name__)

PATH = "/api/update_environment_variables"


class EnvUpdateFailed(RuntimeError):
    """The change was not made: refused (`final`) or no answer after the retries."""

    def __init__(self, message: str, final: bool) -> None:
        super().__init__(message)
        self.final = final


def deployment_url(api_template: str, deployment: str) -> str:
    """The deployment's own URL from the Platform API's template (`.../api/v1`)."""
    base = api_template.replace("{deployment}", deployment).rstrip("/")
    return base.removesuffix("/api/v1")


class ConvexEnv:
    def __init__(self, api_template: str, attempts: int = 5, first_backoff: float = 0.5,
                 max_backoff: float = 30.0, timeout: float = 10.0) -> None:
        self.api_template = api_template
        self.attempts = attempts
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def update(self, deployment: str, deploy_key: str,
                     changes: list[dict[str, str]]) -> int:
        """Makes the changes; returns the attempts it took. Raises EnvUpdateFailed."""
        base = deployment_url(self.api_template, deployment)
        url = base + PATH
        headers = {"Authorization": f"Convex {deploy_key}"}
        last = "no attempt"
        async with aiohttp.ClientSession(timeout=self.timeout) as session:
            for attempt in range(1, self.attempts + 1):
                if attempt > 1:
                    metrics.ENFORCEMENT_RETRIES.inc()
                    await asyncio.sleep(self._backoff(attempt - 1))
                try:
                    async with session.post(url, json={"changes": changes},
                                            headers=headers) as answer:
                        status, text = answer.status, await answer.text()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    # aiohttp's exceptions can carry the request headers: keep only the kind.
                    last = f"{type(exc).__name__} reaching {base}"
                else:
                    if status < 300:
                        return attempt
                    last = f"Convex answered {status} {_code(text)}"
                    if status < 500 and status != 429:
                        raise EnvUpdateFailed(last, final=True)
                log.warning("Convex environment update failed; retrying", extra={
                    "deployment": deployment, "attempt": attempt, "error": last})
        raise EnvUpdateFailed(f"gave up after {self.attempts} attempts: {last}", final=False)

    def _backoff(self, retries: int) -> float:
        # Up to 10% less, so that deployments failing together do not retry in lockstep.
        return min(self.max_backoff, self.first_backoff * 2.0 ** min(retries - 1, 30)) * (
            random.uniform(0.9, 1.0))


def _code(text: str) -> str:
    """Convex's error code from {"code", "message"}, else the start of the body."""
    try:
        body: Any = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text[:200]
    return str(body.get("code")) if isinstance(body, dict) else text[:200]
