"""The periodic stream health check: stale alerts for the deployments this worker owns,
and the counts by state the fleet view adds up.

An event can end an episode (processors/stream_health.py), but only the clock can start
one: so every METERSTREAM_HEALTH_CHECK_INTERVAL the worker looks at the health of each
registered deployment whose raw partition it owns, and publishes the `stream_stale`
alerts due through the alert log, whose ids make them once per episode whichever worker
owned the deployment when it was due. Deployments are taken from the registry, so the
work is bounded by it, never by names a tenant chose.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from meterstream.core.registry import RegistryView
from processors import metrics
from processors.alert_log import AlertLog
from processors.stream_health import FAILED, NEVER_SEEN, STATES, StreamHealth, state_of

log = logging.getLogger(__name__)

Clock = Callable[[], int]
"""Now, in ms since the epoch (tests pass one they advance)."""


class HealthCheck:
    def __init__(self, health: StreamHealth, registry: RegistryView, alerts: AlertLog,
                 assigned: Callable[[], set[int]], clock: Clock,
                 failing: Callable[[str], bool] = lambda _: False) -> None:
        """`failing`: whether a deployment's Convex log stream is failed, gone or pointing
        elsewhere, as this worker's stream status check last saw it (it holds only
        the deployments of this worker's partitions)."""
        self.health = health
        self.failing = failing
        self.registry = registry
        self.alerts = alerts
        self.assigned = assigned
        self.clock = clock

    async def run(self) -> dict[str, int]:
        """One pass: publishes the stale alerts due; returns the counts by state of the
        deployments seen on this worker's partitions."""
        now = self.clock()
        assigned = self.assigned()
        counts: Counter[str] = Counter()
        for deployment in self.registry.all():
            if deployment.removed_at:
                continue
            due = self.health.due(deployment.name, now)
            if due is None:
                if self.failing(deployment.name):  # provisioned, failed, never heard from
                    counts[FAILED] += 1
                continue
            partition, alerts = due
            if partition not in assigned:  # another worker's (a standby copy here)
                continue
            counts[state_of({alert["signal"] for alert in alerts},
                            self.failing(deployment.name))] += 1
            if alerts:
                await self.alerts.ensure_loaded(partition, assigned)
                await self.alerts.publish(partition, alerts)
        metrics.HEALTH_CHECKS.inc()
        for state in STATES:
            if state != NEVER_SEEN:
                metrics.DEPLOYMENTS_BY_HEALTH.labels(state).set(counts[state])
        return {state: counts[state] for state in STATES if state != NEVER_SEEN}

    def local_counts(self) -> dict[str, Any]:
        """Counts by state of the deployments on this worker's partitions, now, without
        publishing anything (the fleet view's share of this worker)."""
        now = self.clock()
        assigned = self.assigned()
        counts: Counter[str] = Counter()
        for deployment in self.registry.all():
            if deployment.removed_at:
                continue
            value = self.health.value(deployment.name)
            if value is None:
                if self.failing(deployment.name):
                    counts[FAILED] += 1
                continue
            if value["p"] not in assigned:
                continue
            state = self.health.report(deployment.name, now)["state"]
            counts[FAILED if self.failing(deployment.name) else state] += 1
        return {"partitions": sorted(assigned),
                "counts": {state: counts[state] for state in STATES if state != NEVER_SEEN}}


def fleet(registered: int, shares: list[dict[str, Any]], partitions: int) -> dict[str, Any]:
    """The fleet view from every worker's share: counts by state, with `never_seen` the
    registered deployments no share has seen; `complete` when the shares cover every
    raw partition (else the partitions missing are listed and never_seen is None)."""
    counts: Counter[str] = Counter()
    covered: set[int] = set()
    for share in shares:
        counts.update(share["counts"])
        covered.update(share["partitions"])
    missing = sorted(set(range(partitions)) - covered)
    seen = sum(counts.values())
    result: dict[str, Any] = {state: counts[state] for state in STATES if state != NEVER_SEEN}
    result[NEVER_SEEN] = None if missing else max(0, registered - seen)
    return {"counts": result, "registered": registered, "complete": not missing,
            "missing_partitions": missing}
