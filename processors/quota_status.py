"""`GET /v1/quota/{deployment}`: usage against limits for the current periods, from the
live state of the worker that owns the deployment (processors/app.py routes the
request there)."""

from __future__ import annotations

from typing import Any

from meterstream.core import catalogue
from meterstream.core.catalogue import MB_MS_PER_GB_HOUR, STORAGE_CATEGORIES
from meterstream.core.quotas import METRICS, Quota
from meterstream.core.windows import label, window_start
from processors.due_alerts import shown
from processors.state import UsageState, metric_value, storage_gb_hours

DETAILS: tuple[str, ...] = tuple(metric.name for metric in catalogue.LIVE
                                 if metric.name not in METRICS)


def period_usage(window: dict[str, Any], storage: dict[str, Any]) -> dict[str, Any]:
    """Every billing metric of one window, in the units quotas use, plus details: the
    other live counters (meterstream/core/catalogue.py) in their own units."""
    counters = window.get("m", {})
    usage: dict[str, Any] = {metric: shown(metric_value(metric, window, storage))
                             for metric in METRICS}
    for metric in DETAILS:
        usage[metric] = counters.get(metric, 0)
    usage["storage_gb_hours"] = {category: storage_gb_hours(window, category)
                                 for category in STORAGE_CATEGORIES}
    usage["tokens_by_model"] = window.get("t", {})
    return usage


def quota_report(deployment: str, quotas: tuple[Quota, ...], state: UsageState,
                 now_ms: int, user: str | None = None) -> dict[str, Any]:
    storage = state.latest_storage(deployment)
    periods = {}
    for granularity in ("day", "month"):
        start = window_start(granularity, now_ms)
        periods[granularity] = {
            "start": label(start),
            "usage": period_usage(state.window(deployment, granularity, start), storage),
            # End users beyond the live state's bound are counted together (state.py).
            "users": {"by_name": state.named_users(deployment, granularity, start),
                      "other_users_tokens": metric_value("tokens", state.other_users_window(
                          deployment, granularity, start), {})},
        }
    limits = []
    for quota in quotas:
        if quota.per_user and user is None:
            continue
        start = window_start(quota.period, now_ms)
        if quota.per_user:
            assert user is not None
            used = metric_value("tokens", state.user_window(deployment, user, quota.period,
                                                            start), {})
        else:
            used = metric_value(quota.metric, state.window(deployment, quota.period, start),
                                storage)
        limits.append({**quota.to_json(), "period_start": label(start), "usage": shown(used),
                       "exceeded": used >= quota.exact_limit,
                       **({"user": user} if quota.per_user else {})})
    report: dict[str, Any] = {
        "deployment": deployment,
        "at": now_ms,
        "periods": periods,
        "quotas": limits,
        "hard_limit_exceeded": any(q["hard"] and q["exceeded"] for q in limits),
        "storage": {"at": storage.get("ts"), "bytes": storage.get("bytes", {})},
        "units": {"action_compute_gb_hours": f"action_compute_mb_ms / {MB_MS_PER_GB_HOUR}"},
    }
    if user is not None:
        report["user"] = {"id": user, "periods": {
            granularity: {"start": periods[granularity]["start"],
                          "tokens": metric_value("tokens", state.user_window(
                              deployment, user, granularity,
                              window_start(granularity, now_ms)), {}),
                          "tokens_by_model": state.user_window(
                              deployment, user, granularity,
                              window_start(granularity, now_ms)).get("t", {})}
            for granularity in ("day", "month")}}
    return report
