"""The deployment registry as billing needs it: each deployment's team, project and plan.

Billing reads the registry where it lives, the compacted `<ns>.deployments`
topic (meterstream/core/registry.py), so plans and teams are those in force everywhere,
with no copy to keep in step. A deployment with usage but no record (deleted
from the registry) is billed on the price book's default plan with no team.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from meterstream.core.config import Settings
from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.registry import Deployment, RegistryView
from meterstream.core.topics import Topics, existing_topics

LOAD_SECONDS = 60.0


@dataclass(frozen=True)
class Owner:
    team: str
    project: str
    plan: str | None


Owners = Mapping[str, Owner]


def owners(deployments: list[Deployment]) -> dict[str, Owner]:
    return {d.name: Owner(d.team or "", d.project or "", d.plan) for d in deployments}


def owner_of(registry: Owners, deployment: str) -> Owner:
    return registry.get(deployment) or Owner("", "", None)


async def load(settings: Settings, seconds: float = LOAD_SECONDS) -> dict[str, Owner]:
    """The registry as it is now, read from Kafka; raises TimeoutError naming the topic.

    Reading creates nothing: with no registry topic yet (no deployment ever registered)
    the registry is empty. Following a missing topic would have the broker create it
    (auto.create.topics.enable) with the broker's defaults instead of the registry's."""
    topic = Topics.of(settings).deployments
    kafka = KafkaConnection.of(settings)
    if topic.name not in await existing_topics(kafka, [topic.name]):
        return {}
    view = RegistryView(kafka, topic.name)
    view.start()
    try:
        async with asyncio.timeout(seconds):
            await view.wait_loaded()
    except TimeoutError:
        raise TimeoutError(f"the deployment registry ({topic.name} on "
                           f"{settings.kafka_bootstrap}) did not load within {seconds:.0f}s"
                           ) from None
    finally:
        await view.stop()
    return owners(view.all())


def load_now(settings: Settings) -> dict[str, Owner]:
    return asyncio.run(load(settings))
