"""Registering the simulated deployments through the admin API, as a platform does when
it creates an app: each with its log stream's webhook secret and its agent's ingest token."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp

from meterstream.loadgen.catalogue import Deployment

CONCURRENCY = 16


class RegistrationError(RuntimeError):
    """The admin API refused or could not be reached."""


def record(deployment: Deployment, prefix: str) -> dict[str, object]:
    return {
        "webhook_secret": deployment.webhook_secret,
        "ingest_token": deployment.ingest_token,
        "team": "loadgen",
        "project": deployment.convex["project_slug"],
        "plan": "professional",
        "labels": {"loadgen": prefix},
    }


async def register(session: aiohttp.ClientSession, admin_url: str, admin_token: str,
                   deployments: Sequence[Deployment], prefix: str) -> None:
    """PUTs every deployment's record; answered once the receiver's registry holds it."""
    if not admin_token:
        raise RegistrationError("set METERSTREAM_ADMIN_TOKEN: the deployments are registered "
                                "through the admin API")
    slots = asyncio.Semaphore(CONCURRENCY)

    async def put(deployment: Deployment) -> None:
        url = f"{admin_url}/v1/deployments/{deployment.name}"
        async with slots:
            try:
                async with session.put(url, json=record(deployment, prefix), headers={
                        "Authorization": f"Bearer {admin_token}"}) as response:
                    answer = await response.text()
                    if response.status != 200:
                        raise RegistrationError(
                            f"registering {deployment.name}: {response.status} {answer}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise RegistrationError(f"the admin API at {admin_url} is unreachable: "
                                        f"{exc!r}") from None

    await asyncio.gather(*(put(deployment) for deployment in deployments))
