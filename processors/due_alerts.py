"""Which alerts the live state makes due: quota thresholds and runaway workloads.

Both are derived from the state after a message was applied, whether or not the
message changed it (see processors/alert_log.py for why), and only for the windows
the message touched, so the cost is per message, not per deployment.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from meterstream.core.quotas import Quota
from meterstream.core.usage import MessageUsage
from meterstream.core.windows import HOUR_MS, MINUTE_MS, label, window_start
from processors.state import UsageState, metric_value

BASELINE_MINUTES = 60


def shown(value: Fraction | int) -> int | float:
    return value if isinstance(value, int) else float(value)


def quota_alert(deployment: str, quota: Quota, start: int, threshold: float,
                usage: Fraction | int, user: str | None = None) -> dict[str, Any]:
    period = label(start)
    alert_id = f"quota|{deployment}|{quota.metric}|{quota.period}|{period}|{threshold}"
    alert: dict[str, Any] = {
        "id": alert_id + (f"|user:{user}" if user is not None else ""),
        "kind": "quota", "deployment": deployment, "metric": quota.metric,
        "period": period, "period_unit": quota.period, "threshold": threshold,
        "usage": shown(usage), "limit": quota.limit, "hard": quota.hard,
    }
    if user is not None:
        alert["user"] = user
    return alert


def due_quota_alerts(deployment: str, quotas: tuple[Quota, ...], state: UsageState,
                     usage: MessageUsage) -> list[dict[str, Any]]:
    alerts = []
    storage = state.latest_storage(deployment) if usage.snapshots else {}
    for quota in quotas:
        if quota.per_user:
            for user, granularity, start in usage.users:
                if granularity == quota.period:
                    used = metric_value("tokens", state.user_window(
                        deployment, user, granularity, start), {})
                    alerts += [quota_alert(deployment, quota, start, t, used, user)
                               for t in quota.crossed(used)]
            continue
        if quota.metric == "storage_bytes":
            if storage:  # a gauge: the latest snapshot, in the period it was taken
                used = metric_value("storage_bytes", {}, storage)
                start = window_start(quota.period, storage["ts"])
                alerts += [quota_alert(deployment, quota, start, t, used)
                           for t in quota.crossed(used)]
            continue
        for granularity, start in usage.windows:
            if granularity == quota.period:
                used = metric_value(quota.metric, state.window(deployment, granularity, start),
                                    {})
                alerts += [quota_alert(deployment, quota, start, t, used)
                           for t in quota.crossed(used)]
    return alerts


def runaway_key(deployment: str) -> str:
    return f"{deployment}|runaway"


class RunawayDetector:
    """Function calls in a minute above `multiple` x the deployment's average per minute
    over the previous hour (and above `min_calls`) start an episode; it lasts while the
    following minutes stay above, and raises one alert.

    The episode is kept in the state table under `{deployment}|runaway`, with the raw
    offset that last changed it, like the usage windows."""

    def __init__(self, state: UsageState, multiple: float, min_calls: int) -> None:
        self.state = state
        self.multiple = Fraction(str(multiple))
        self.min_calls = min_calls

    def due(self, deployment: str, usage: MessageUsage, partition: int,
            offset: int) -> list[dict[str, Any]]:
        minutes = sorted(start for granularity, start in usage.windows if granularity == "minute")
        table = self.state.table
        key = runaway_key(deployment)
        episode = table.get(key)
        if minutes and (episode is None or episode["o"] < offset):
            changed = False
            for minute in minutes:
                hot = self._hot(deployment, minute)
                if hot is None:
                    continue
                calls, baseline = hot
                if episode is not None and episode["start"] - MINUTE_MS <= minute <= (
                        episode["last"] + MINUTE_MS):
                    episode["last"] = max(episode["last"], minute)
                else:
                    episode = {"start": minute, "last": minute, "calls": calls,
                               "baseline": str(baseline), "p": partition}
                changed = True
            if changed and episode is not None:
                episode["o"] = offset
                episode["x"] = episode["last"] + 2 * HOUR_MS
                table[key] = episode
                self.state.expiry.remember(key, partition, episode["x"])
        if episode is None or not minutes or episode["last"] < minutes[0] - MINUTE_MS:
            return []
        return [self._alert(deployment, episode)]

    def _hot(self, deployment: str, minute: int) -> tuple[int, Fraction] | None:
        calls = self.state.window(deployment, "minute", minute).get("m", {}).get(
            "function_calls", 0)
        if calls <= self.min_calls:
            return None
        before = sum(self.state.window(deployment, "minute", minute - n * MINUTE_MS)
                     .get("m", {}).get("function_calls", 0)
                     for n in range(1, BASELINE_MINUTES + 1))
        baseline = Fraction(before, BASELINE_MINUTES)
        return (calls, baseline) if calls > self.multiple * baseline else None

    def _alert(self, deployment: str, episode: dict[str, Any]) -> dict[str, Any]:
        baseline = Fraction(episode["baseline"])
        return {"id": f"runaway|{deployment}|{episode['start']}", "kind": "runaway",
                "deployment": deployment, "metric": "function_calls",
                "minute": episode["start"], "calls": episode["calls"],
                "baseline_per_minute": float(baseline), "multiple": float(self.multiple)}
