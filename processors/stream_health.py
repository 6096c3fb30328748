"""Stream health per deployment: what the worker can tell from the events it sees.

Convex log streams are best-effort (docs/stream-health.md): a stream that stopped and an
idle deployment look the same, unless one knows what the deployment used to send. Two
signals are kept per deployment, in the live-state table under `{deployment}|health`:

- the storage heartbeat: every cloud deployment sends `current_storage_usage` every
  30-90 minutes, so no such event for more than `storage_stale_ms` from a deployment
  that sent one before means the stream (or the deployment) stopped;
- silence against the deployment's own baseline: an exponentially weighted mean of the
  gaps between its messages' latest activity (every event type but the storage
  heartbeat), `g`; once `min_messages` gaps were seen, no activity for
  max(`silence_multiple` x g, `silence_floor_ms`) means it was busy and stopped.

All times are event times (Convex's `timestamp`), compared with the clock the caller
passes: tests advance it instead of sleeping.

The value is bounded whatever the tenant sends: one key per deployment (only registered
deployments reach the raw topic), holding one time per event type route (a fixed set,
meterstream/core/events.py) and a few numbers. Like the usage windows it carries the raw
offset that last changed it ("o"), so a message processed again after a crash changes
nothing twice and re-derives the same alerts (`ended`, kept with the value).

An episode is named by the time of the last event before it, so every worker that
looks at the same state names it alike: `stream_stale|{deployment}|{signal}|{since}`
once it is due, and `stream_recovered|{deployment}|{signal}|{since}` when an event ends
it. The alert log (processors/alert_log.py) publishes each id once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meterstream.core import events as event_types
from meterstream.core.windows import DAY_MS, window_start

HEARTBEAT = event_types.CURRENT_STORAGE_USAGE.route
STORAGE_SIGNAL = "storage_heartbeat"
SILENCE_SIGNAL = "silence"
EWMA_WEIGHT = 0.2
"""Weight of the newest gap in the mean: about the last ten gaps matter."""
MAX_COUNTED = 1_000_000
"""Gaps counted up to this (only `min_messages` is ever compared with it)."""
RETENTION_MS = 35 * DAY_MS
"""A deployment's health is forgotten this long after its last event (past any period)."""

OK, STALE, SILENT, NEVER_SEEN = "ok", "stale", "silent", "never_seen"
FAILED = "failed"
STATES = (FAILED, STALE, SILENT, OK, NEVER_SEEN)
"""A deployment's state, worst first: failed (its Convex log stream, processors/
stream_status.py), stale (no heartbeat), silent, ok; never_seen before its first event."""


@dataclass(frozen=True)
class HealthRules:
    storage_stale_ms: int = 2 * 3600 * 1000
    silence_multiple: float = 10.0
    silence_floor_ms: int = 15 * 60 * 1000
    min_messages: int = 20

    def silent_after(self, value: Mapping[str, Any]) -> int | None:
        """Milliseconds without activity after which the deployment is silent; None while
        it has no baseline yet."""
        gap = value.get("g")
        if gap is None or value.get("n", 0) < self.min_messages:
            return None
        return max(int(self.silence_multiple * gap), self.silence_floor_ms)


def health_key(deployment: str) -> str:
    return f"{deployment}|health"


def episode_id(kind: str, deployment: str, signal: str, since: int) -> str:
    return f"{kind}|{deployment}|{signal}|{since}"


def stale_alert(deployment: str, signal: str, since: int, threshold_ms: int) -> dict[str, Any]:
    return {"id": episode_id("stream_stale", deployment, signal, since), "kind": "stream_stale",
            "deployment": deployment, "signal": signal, "since": since,
            "threshold_ms": threshold_ms}


def recovered_alert(deployment: str, signal: str, since: int, until: int) -> dict[str, Any]:
    return {"id": episode_id("stream_recovered", deployment, signal, since),
            "kind": "stream_recovered", "deployment": deployment, "signal": signal,
            "since": since, "until": until,
            "recovers": episode_id("stream_stale", deployment, signal, since)}


class StreamHealth:
    """The health values in the live-state table (`table`: get, set, and `expiry`, the
    table's Expiry, processors/expiry.py)."""

    def __init__(self, table: Any, expiry: Any, rules: HealthRules) -> None:
        self.table = table
        self.expiry = expiry
        self.rules = rules

    def observe(self, deployment: str, latest: Mapping[str, int], partition: int,
                offset: int) -> list[dict[str, Any]]:
        """Records a message's latest event time per event type; returns the alerts it
        makes due (an episode it ended: its stale alert, in case no check saw it while
        it lasted, and its recovery)."""
        key = health_key(deployment)
        value = self.table.get(key)
        if value is not None and value["o"] >= offset:
            return self._alerts(deployment, value["e"]) if value["o"] == offset else []
        if not latest:
            return []
        old: dict[str, Any] = value or {"t": {}, "a": None, "g": None, "n": 0}
        times = dict(old["t"])
        ended: list[list[Any]] = []
        heartbeat = latest.get(HEARTBEAT)
        before = times.get(HEARTBEAT)
        if heartbeat is not None and before is not None and (
                heartbeat - before > self.rules.storage_stale_ms):
            ended.append([STORAGE_SIGNAL, before, heartbeat, self.rules.storage_stale_ms])
        activity = max((at for route, at in latest.items() if route != HEARTBEAT), default=None)
        last, gap_mean, counted = old["a"], old["g"], old["n"]
        if activity is not None and (last is None or activity > last):
            if last is not None:
                silent_after = self.rules.silent_after(old)
                if silent_after is not None and activity - last > silent_after:
                    ended.append([SILENCE_SIGNAL, last, activity, silent_after])
                gap = activity - last
                gap_mean = gap if gap_mean is None else gap_mean + EWMA_WEIGHT * (gap - gap_mean)
                counted = min(counted + 1, MAX_COUNTED)
            last = activity
        for route, at in latest.items():
            times[route] = max(at, times.get(route, at))
        expires = window_start("day", max(times.values())) + RETENTION_MS
        self.table[key] = {"o": offset, "p": partition, "x": expires, "t": times, "a": last,
                           "g": gap_mean, "n": counted, "e": ended}
        if value is None or value["x"] != expires:  # at most one more entry a day
            self.expiry.remember(key, partition, expires)
        return self._alerts(deployment, ended)

    @staticmethod
    def _alerts(deployment: str, ended: list[list[Any]]) -> list[dict[str, Any]]:
        alerts = []
        for signal, since, until, threshold in ended:
            alerts.append(stale_alert(deployment, signal, since, threshold))
            alerts.append(recovered_alert(deployment, signal, since, until))
        return alerts

    def value(self, deployment: str) -> dict[str, Any] | None:
        value: dict[str, Any] | None = self.table.get(health_key(deployment))
        return value

    def due(self, deployment: str, now_ms: int) -> tuple[int, list[dict[str, Any]]] | None:
        """(raw partition, stale alerts due now) of a deployment; None if never seen."""
        value = self.value(deployment)
        if value is None:
            return None
        return value["p"], [stale_alert(deployment, signal, since, threshold)
                            for signal, since, threshold in self._stale(value, now_ms)]

    def _stale(self, value: Mapping[str, Any], now_ms: int) -> list[tuple[str, int, int]]:
        found = []
        heartbeat = value["t"].get(HEARTBEAT)
        if heartbeat is not None and now_ms - heartbeat > self.rules.storage_stale_ms:
            found.append((STORAGE_SIGNAL, heartbeat, self.rules.storage_stale_ms))
        silent_after = self.rules.silent_after(value)
        if silent_after is not None and value["a"] is not None and (
                now_ms - value["a"] > silent_after):
            found.append((SILENCE_SIGNAL, value["a"], silent_after))
        return found

    def report(self, deployment: str, now_ms: int) -> dict[str, Any]:
        """What `GET /v1/deployments/{name}/health` shows."""
        value = self.value(deployment)
        if value is None:
            return {"deployment": deployment, "at": now_ms, "state": NEVER_SEEN,
                    "last_event": {}, "storage_heartbeat": None, "silence": None}
        stale = {signal for signal, _, _ in self._stale(value, now_ms)}
        heartbeat = value["t"].get(HEARTBEAT)
        return {
            "deployment": deployment,
            "at": now_ms,
            "state": state_of(stale),
            "last_event": dict(sorted(value["t"].items())),
            "storage_heartbeat": None if heartbeat is None else {
                "last": heartbeat, "age_ms": now_ms - heartbeat,
                "stale_after_ms": self.rules.storage_stale_ms,
                "stale": STORAGE_SIGNAL in stale},
            "silence": {
                "last_activity": value["a"],
                "mean_gap_ms": None if value["g"] is None else round(value["g"]),
                "gaps_seen": value["n"],
                "silent_after_ms": self.rules.silent_after(value),
                "silent": SILENCE_SIGNAL in stale},
        }


def state_of(stale: set[str], failing: bool = False) -> str:
    if failing:
        return FAILED
    if STORAGE_SIGNAL in stale:
        return STALE
    return SILENT if SILENCE_SIGNAL in stale else OK
