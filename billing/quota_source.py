"""A deployment's live quota status for the scoped usage view, asked of the worker's API
(`GET /v1/quota/{deployment}`, processors/quota_status.py), which answers from the live
state of the worker that owns the deployment: ClickHouse's rollups lag the worker, and
only the worker knows what a quota has reached this second.

Only what the scope may see is kept: a deployment's quotas that are not per user, or one
end user's per-user quotas (the worker's report also names the deployment's other end
users, which an end user must not see).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp

TIMEOUT_SECONDS = 5.0


class QuotaUnavailable(RuntimeError):
    """The worker did not answer the quota status; the message says why."""


class QuotaSource:
    def __init__(self, worker_url: str, token: str) -> None:
        self.worker_url = worker_url.rstrip("/")
        self.token = token

    async def status(self, deployment: str, user: str | None = None) -> dict[str, Any]:
        """{"at", "quotas", "hard_limit_exceeded"} of the deployment, or of its end user
        `user`; raises QuotaUnavailable."""
        if not self.token:
            raise QuotaUnavailable("the receiver has no token for the worker's API "
                                   "(METERSTREAM_READ_TOKEN or METERSTREAM_ADMIN_TOKEN)")
        url = f"{self.worker_url}/v1/quota/{quote(deployment, safe='')}"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS))
                as session,
                session.get(url, params={"user": user} if user is not None else None,
                            headers={"Authorization": f"Bearer {self.token}"}) as answer,
            ):
                if answer.status != 200:
                    raise QuotaUnavailable(f"the worker answered {answer.status}")
                report = await answer.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise QuotaUnavailable(f"the worker's API at {self.worker_url} did not answer: "
                                   f"{exc!r}") from None
        return scoped(report, user)


def scoped(report: dict[str, Any], user: str | None) -> dict[str, Any]:
    """The part of the worker's quota report the scope may see."""
    quotas = [quota for quota in report.get("quotas", [])
              if bool(quota.get("per_user")) == (user is not None)]
    return {"at": report.get("at"), "quotas": quotas,
            "hard_limit_exceeded": any(q.get("hard") and q.get("exceeded") for q in quotas)}
