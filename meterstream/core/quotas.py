"""Quotas: limits per deployment (or per end user, for tokens) on a billing metric per period.

A quota document is what `PUT /v1/deployments/{name}/quotas` takes:

    {"quotas": [{"metric": "function_calls", "period": "month", "limit": 1000000,
                 "thresholds": [0.8, 1.0], "hard": true}]}

It is validated here, at the boundary, listing every bad field, and stored in the
deployment's registry record, from which every worker reads it without a restart.
Limits are compared exactly: in the metric's own unit as a Fraction, never a float.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, TypeGuard

from meterstream.core.catalogue import QUOTA_METRICS

METRICS: tuple[str, ...] = QUOTA_METRICS
"""The metrics a quota can be set on (meterstream/core/catalogue.py)."""
PERIODS: tuple[str, ...] = ("day", "month")
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.8, 1.0)
MAX_THRESHOLDS = 10


class InvalidQuotas(ValueError):
    """A quota document with bad fields; `fields` maps each bad field to its problem."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in fields.items()))
        self.fields = fields


@dataclass(frozen=True)
class Quota:
    metric: str
    period: str
    limit: int | float
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    hard: bool = False
    per_user: bool = False
    """Tokens only: the limit applies to each end user of the deployment separately."""

    @property
    def exact_limit(self) -> Fraction:
        return Fraction(str(self.limit))

    def crossed(self, usage: Fraction | int) -> list[float]:
        """The thresholds that `usage` has reached, in ascending order."""
        limit = self.exact_limit
        return [t for t in self.thresholds if usage >= Fraction(str(t)) * limit]

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "period": self.period, "limit": self.limit,
                "thresholds": list(self.thresholds), "hard": self.hard,
                "per_user": self.per_user}


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_quotas(document: Any) -> tuple[Quota, ...]:
    """The quotas of a document `{"quotas": [...]}`; raises InvalidQuotas listing every
    problem, e.g. {"quotas[1].metric": "must be one of ..."}."""
    if not isinstance(document, dict) or set(document) != {"quotas"}:
        raise InvalidQuotas({"body": 'must be a JSON object {"quotas": [...]}'})
    entries = document["quotas"]
    if not isinstance(entries, list):
        raise InvalidQuotas({"quotas": "must be a list"})
    problems: dict[str, str] = {}
    quotas: list[Quota] = []
    seen: dict[tuple[str, str, bool], int] = {}
    for index, entry in enumerate(entries):
        where = f"quotas[{index}]"
        if not isinstance(entry, dict):
            problems[where] = "must be an object"
            continue
        bad = len(problems)
        for key in entry:
            if key not in ("metric", "period", "limit", "thresholds", "hard", "per_user"):
                problems[f"{where}.{key}"] = "unknown field"
        metric, period, limit = entry.get("metric"), entry.get("period"), entry.get("limit")
        if metric not in METRICS:
            problems[f"{where}.metric"] = f"must be one of {', '.join(METRICS)}"
        if period not in PERIODS:
            problems[f"{where}.period"] = f"must be one of {', '.join(PERIODS)}"
        if not _number(limit) or not limit > 0 or limit != limit or limit == float("inf"):
            problems[f"{where}.limit"] = "must be a positive number"
        thresholds = entry.get("thresholds", list(DEFAULT_THRESHOLDS))
        if (not isinstance(thresholds, list) or not 0 < len(thresholds) <= MAX_THRESHOLDS
                or not all(_number(t) and 0 < t <= 100 for t in thresholds)):
            problems[f"{where}.thresholds"] = (
                f"must be a list of 1 to {MAX_THRESHOLDS} fractions of the limit in (0, 100], "
                "e.g. [0.8, 1.0]")
        for flag in ("hard", "per_user"):
            if not isinstance(entry.get(flag, False), bool):
                problems[f"{where}.{flag}"] = "must be true or false"
        per_user = entry.get("per_user", False) is True
        if per_user and metric != "tokens":
            problems[f"{where}.per_user"] = "only the tokens metric has per-user quotas"
        if len(problems) > bad:
            continue
        # Checked above: metric and period are among the names, limit is a number.
        assert isinstance(metric, str)
        assert isinstance(period, str)
        assert _number(limit)
        identity = (metric, period, per_user)
        if identity in seen:
            problems[where] = (f"repeats quotas[{seen[identity]}] (same metric, period and "
                               "per_user)")
            continue
        seen[identity] = index
        quotas.append(Quota(metric, period, limit, tuple(sorted(set(thresholds))),
                            entry.get("hard", False) is True, per_user))
    if problems:
        raise InvalidQuotas(problems)
    return tuple(quotas)


def quotas_from_record(stored: Any) -> tuple[Quota, ...]:
    """The quotas kept in a registry record (already validated when they were stored)."""
    if not stored:
        return ()
    return parse_quotas({"quotas": stored})
