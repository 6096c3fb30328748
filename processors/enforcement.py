"""Enforcement at the source, the decision: which hard quotas a deployment has exceeded
now, and the change to its Convex environment variable that makes the variable say so.

Everything is derived from `<ns>.alerts` (read from the beginning of each partition),
the registry and a clock, so it is the same after a restart:

- exceeded: a `quota` alert that is `hard`, at a threshold >= 1, for the deployment as a
  whole (a per-user quota limits one end user: a variable would stop the whole app),
  whose period has not ended, while the registry still has that quota hard with a limit
  at or below the usage the alert reported (a quota raised or made soft ends it);
- applied: the last `enforcement` alert recorded for the deployment, which says what the
  variable was set to (or that it was removed) at Convex.

A change is due when what the variable should hold differs from what was applied; the
loop (processors/enforcer.py) makes it at Convex, then records it as the next
`enforcement` alert. A deployment that is not opted in (or was removed) should have no
variable, so opting out removes one that was set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

import orjson

from meterstream.core.quotas import PERIODS, quotas_from_record
from meterstream.core.registry import Deployment
from meterstream.core.windows import window_end

KIND = "enforcement"


@dataclass(frozen=True, order=True)
class Exceeded:
    """A hard quota exceeded until the end of its period (`until`, ms)."""

    metric: str
    period: str
    until: int

    def to_json(self) -> dict[str, str]:
        return {"metric": self.metric, "period": self.period, "until": iso(self.until)}


@dataclass(frozen=True)
class Applied:
    """What the last enforcement alert says the variable holds at Convex (None: removed)."""

    variable: str
    value: str | None
    count: int
    """The number of the enforcement alert that says so (the next one is count + 1)."""


@dataclass
class DeploymentEnforcement:
    """What a partition's alerts say about one deployment."""

    hard: dict[tuple[str, str, int], Fraction] = field(default_factory=dict)
    """(metric, period unit, period end) -> the highest usage a hard alert reported"""
    applied: Applied | None = None


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _period_end(unit: Any, label: Any) -> int | None:
    if unit not in PERIODS or not isinstance(label, str):
        return None
    try:
        start = datetime.strptime(label, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None
    return window_end(unit, int(start.timestamp() * 1000))


def _number(alert_id: Any) -> int:
    tail = str(alert_id).rpartition("|")[2]
    return int(tail) if tail.isdigit() else 0


def note(state: DeploymentEnforcement, alert: dict[str, Any]) -> None:
    """Takes in one alert of the deployment's (any kind; the irrelevant ones change nothing)."""
    kind = alert.get("kind")
    if kind == KIND:
        # By number, not by arrival: the loop notes its own record as soon as Kafka has it,
        # and reads it back later.
        number = _number(alert.get("id"))
        if state.applied is None or number > state.applied.count:
            value = alert.get("value")
            state.applied = Applied(str(alert.get("variable")),
                                    value if isinstance(value, str) else None, number)
        return
    if kind != "quota" or alert.get("hard") is not True or "user" in alert:
        return
    threshold, usage = alert.get("threshold"), alert.get("usage")
    if not isinstance(threshold, int | float) or threshold < 1:
        return
    if not isinstance(usage, int | float) or isinstance(usage, bool):
        return
    until = _period_end(alert.get("period_unit"), alert.get("period"))
    if until is None:
        return
    key = (str(alert.get("metric")), str(alert.get("period_unit")), until)
    used = Fraction(str(usage))
    state.hard[key] = max(used, state.hard.get(key, used))


def exceeded(state: DeploymentEnforcement, record: Deployment | None,
             now_ms: int) -> tuple[Exceeded, ...]:
    """The hard quotas exceeded now, sorted; forgets the periods that ended."""
    for key in [key for key in state.hard if key[2] <= now_ms]:
        del state.hard[key]
    if record is None or record.removed_at or not record.enforce_at_source:
        return ()
    quotas = {(q.metric, q.period): q for q in quotas_from_record(record.quotas)
              if not q.per_user}
    found = set()
    for (metric, period, until), used in state.hard.items():
        quota = quotas.get((metric, period))
        if quota is not None and quota.hard and quota.exact_limit <= used:
            found.add(Exceeded(metric, period, until))
    return tuple(sorted(found))


def value_of(found: tuple[Exceeded, ...]) -> str | None:
    """The variable's value: compact JSON naming what is exceeded and until when; None
    (no variable) when nothing is."""
    if not found:
        return None
    return orjson.dumps({"exceeded": [e.to_json() for e in found]}).decode()


def changes(applied: Applied | None, variable: str,
            value: str | None) -> list[dict[str, str]]:
    """The `changes` of Convex's update_environment_variables that take the deployment from
    `applied` to `variable` holding `value` (None: absent); [] when nothing is to do. A
    variable renamed in the settings since it was set is removed in the same request."""
    current_name, current_value = (applied.variable, applied.value) if applied else (
        variable, None)
    if current_value is None:
        current_name = variable  # nothing is set under any name
    if current_name == variable and current_value == value:
        return []
    out = []
    if current_name != variable:
        out.append({"name": current_name})
    out.append({"name": variable} if value is None else {"name": variable, "value": value})
    return out


def enforcement_alert(deployment: str, applied: Applied | None, variable: str,
                      value: str | None, found: tuple[Exceeded, ...],
                      at_ms: int) -> dict[str, Any]:
    """The record of a change made at Convex. Its id numbers the deployment's changes, so a
    record written twice (two owners of a partition during a rebalance) shows as such."""
    number = (applied.count if applied else 0) + 1
    return {"id": f"{KIND}|{deployment}|{number}", "kind": KIND, "deployment": deployment,
            "action": "set" if value is not None else "removed", "variable": variable,
            "value": value, "exceeded": [e.to_json() for e in found], "at": at_ms}
