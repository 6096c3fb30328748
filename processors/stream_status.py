"""The Convex stream status check: `stream_failed` when a provisioned deployment's log stream
is `failed` (with Convex's reason), gone, or pointing elsewhere; `stream_recovered` when it
is `active` and pointing here again.

Only deployments that `provision` set up are checked: they have a log stream id and the
deploy key provisioning stored sealed in the registry (docs/stream-health.md says why
there). Each worker checks the deployments whose raw partition it owns (the receiver's
partitioner decides, so a deployment that never sent an event is found too) and publishes
through the alert log.

Nothing is kept but the alert topic: episodes are numbered, `stream_failed|{deployment}|
stream_status|{n}`, and an episode is open while its `stream_recovered|...|{n}` is not on
the topic. The owner of a partition reads the topic before it publishes (the alert log),
so a restart or a rebalance neither repeats an episode's alert nor misses its recovery.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiokafka.partitioner import DefaultPartitioner

from meterstream.core.registry import RegistryView
from processors import metrics
from processors.alert_log import AlertLog

log = logging.getLogger(__name__)

SIGNAL = "stream_status"
FAILED, GONE, ELSEWHERE, ACTIVE, UNKNOWN = "failed", "gone", "elsewhere", "active", "unknown"


@dataclass(frozen=True)
class StreamStatus:
    state: str
    """failed, gone, elsewhere, active, unknown (no answer), or Convex's own (pending,
    restarting), which change nothing"""
    reason: str | None = None
    url: str | None = None


Fetch = Callable[[str, str, str], Awaitable[StreamStatus]]
"""(deployment, deploy key, log stream id) -> its stream's status"""


def owner_partition(deployment: str, partitions: int) -> int:
    """The raw partition the receiver writes a deployment's bodies to (its key's)."""
    every = list(range(partitions))
    partition: int = DefaultPartitioner()(deployment.encode(), every, every)
    return partition


class PlatformStatus:
    """Reads a log stream's status from the Convex Platform API
    (`GET {base}/get_log_stream/{id}`, `Authorization: Convex <deploy key>`), once per
    check: the next check is the retry. The deploy key appears in no log."""

    def __init__(self, url_template: str, webhook_url: str, timeout: float = 10.0) -> None:
        self.url_template = url_template
        self.webhook_url = webhook_url
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def __call__(self, deployment: str, deploy_key: str, stream_id: str) -> StreamStatus:
        base = self.url_template.replace("{deployment}", deployment).rstrip("/")
        try:
            async with (aiohttp.ClientSession(timeout=self.timeout) as session,
                        session.get(f"{base}/get_log_stream/{stream_id}",
                                    headers={"Authorization": f"Convex {deploy_key}"})
                        as answer):
                body: Any = await answer.json(content_type=None)
                status = answer.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return StreamStatus(UNKNOWN, f"{type(exc).__name__} reaching {base}")
        if status >= 400:
            code = body.get("code") if isinstance(body, dict) else None
            if code == "LogStreamDoesntExist":
                return StreamStatus(GONE, f"log stream {stream_id} does not exist")
            return StreamStatus(UNKNOWN, f"Convex answered {status} {code}")
        return self.judge(body)

    def judge(self, config: Any) -> StreamStatus:
        """A LogStreamConfig's meaning for meterstream."""
        if not isinstance(config, dict):
            return StreamStatus(UNKNOWN, "not a log stream config")
        status = config.get("status")
        kind = str(status.get("type")) if isinstance(status, dict) else str(status)
        reason = status.get("reason") if isinstance(status, dict) else None
        url = config.get("url")
        if kind == "deleting":
            return StreamStatus(GONE, "the log stream is being deleted", url)
        if url != self.webhook_url:
            return StreamStatus(ELSEWHERE, f"the log stream sends to {url}", url)
        if kind == "failed":
            return StreamStatus(FAILED, None if reason is None else str(reason), url)
        return StreamStatus(kind, None, url)


def failed_id(deployment: str, episode: int) -> str:
    return f"stream_failed|{deployment}|{SIGNAL}|{episode}"


def recovered_id(deployment: str, episode: int) -> str:
    return f"stream_recovered|{deployment}|{SIGNAL}|{episode}"


class StreamStatusCheck:
    def __init__(self, registry: RegistryView, alerts: AlertLog,
                 assigned: Callable[[], set[int]], partitions: int, fetch: Fetch,
                 clock: Callable[[], int]) -> None:
        self.registry = registry
        self.alerts = alerts
        self.assigned = assigned
        self.partitions = partitions
        self.fetch = fetch
        self.clock = clock
        self.latest: dict[str, StreamStatus] = {}
        """The last status seen per deployment checked here (for the health API); bounded
        by the registry."""

    async def run(self) -> None:
        """One pass over the provisioned deployments of this worker's partitions."""
        assigned = self.assigned()
        for record in self.registry.all():
            if record.removed_at or not record.log_stream_id or not record.deploy_key:
                self.latest.pop(record.name, None)
                continue
            partition = owner_partition(record.name, self.partitions)
            if partition not in assigned:
                self.latest.pop(record.name, None)
                continue
            status = await self.fetch(record.name, record.deploy_key, record.log_stream_id)
            metrics.STREAM_STATUS_CHECKS.labels(status.state).inc()
            self.latest[record.name] = status
            await self.alerts.ensure_loaded(partition, assigned)
            due = self.due(record.name, record.log_stream_id, partition, status)
            if due:
                await self.alerts.publish(partition, due)

    def due(self, deployment: str, stream_id: str, partition: int,
            status: StreamStatus) -> list[dict[str, Any]]:
        published = self.alerts.published(partition)
        episode = 0
        while failed_id(deployment, episode + 1) in published:
            episode += 1
        open_episode = episode > 0 and recovered_id(deployment, episode) not in published
        common = {"deployment": deployment, "signal": SIGNAL, "log_stream_id": stream_id}
        if status.state in (FAILED, GONE, ELSEWHERE) and not open_episode:
            return [{"id": failed_id(deployment, episode + 1), "kind": "stream_failed",
                     **common, "status": status.state, "reason": status.reason,
                     "since": self.clock()}]
        if status.state == ACTIVE and open_episode:
            return [{"id": recovered_id(deployment, episode), "kind": "stream_recovered",
                     **common, "until": self.clock(),
                     "recovers": failed_id(deployment, episode)}]
        return []

    def failing(self, deployment: str) -> bool:
        """Whether the last status seen here was failed, gone or pointing elsewhere."""
        status = self.latest.get(deployment)
        return status is not None and status.state in (FAILED, GONE, ELSEWHERE)

    def report(self, deployment: str) -> dict[str, Any] | None:
        """The stream status for the health API; None when not checked here."""
        status = self.latest.get(deployment)
        if status is None:
            return None
        return {"state": status.state, "reason": status.reason, "url": status.url}
