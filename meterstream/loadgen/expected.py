"""The totals a load must produce: per deployment, every billing metric and every
ClickHouse table's row count and counter sums.

Computed here from the events as generated, on their own, not through the
worker's code, so that a run checks the pipeline rather than itself: each event's
counted fields are read from the event as Convex sends it, and the metrics that are
plain sums are added up from those by their definitions in meterstream/core/catalogue.py
(docs/worker-and-quotas.md "Billing metrics", reference section 5):

    function_calls            function executions (all types, cached and OCC-failed
                              attempts included) + file downloads
    database_io_*_bytes       usage.database_io_read_bytes / _write_bytes, and their sum
    action_compute_mb_ms      actions and HTTP actions: (action_memory_used_mb, or
                              memory_used_mb when that is null or 0) x execution_time_ms
    data_egress_bytes         usage.network_egress_bytes + usage.file_storage_read_bytes
                              + file downloads' and log-stream egress bytes
    search_query_bytes        text and vector search bytes, queries and index writes
    file_downloads            storage_api_bandwidth events (and their bytes)
    log_stream_egress_bytes   log_stream_egress events' bytes
    tokens                    agent usage total tokens; also per provider/model by kind,
                              per deployment and per end user
    storage                   the latest snapshot (by event time) per category:
                              database = documents + indexes, file = files + backups,
                              search = text + vector

Counters that are null count as 0. Only events the worker counts are in the totals:
events older than the late-event grace are dead-lettered and only counted as such.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from meterstream.core import catalogue, events
from meterstream.core.catalogue import LIVE_TOKEN_KINDS, STORAGE_CATEGORIES
from meterstream.core.records import AGENT_TOKENS, STORAGE_TOTALS, USAGE_COUNTERS

FUNCTION_EXECUTIONS = "function_executions"
FILE_DOWNLOADS = "file_downloads"
LOG_STREAM_EGRESS = "log_stream_egress"
AGENT_USAGE = "agent_usage"
STORAGE_SNAPSHOTS = "storage_snapshots"

# The summed columns of each ClickHouse table (meterstream/core/migrations 0001 and 0002);
# every table is also checked for its row count, "rows".
TABLE_SUMS: dict[str, tuple[str, ...]] = {
    FUNCTION_EXECUTIONS: ("execution_time_ms", "user_execution_time_ms",
                          "mutation_retry_count", *USAGE_COUNTERS),
    FILE_DOWNLOADS: ("egress_bytes",),
    LOG_STREAM_EGRESS: ("egress_bytes",),
    AGENT_USAGE: AGENT_TOKENS,
    STORAGE_SNAPSHOTS: STORAGE_TOTALS,
}
TABLES: tuple[str, ...] = tuple(TABLE_SUMS)

# Each billing metric the worker counts and the tables it is derived from.
METRIC_TABLES: dict[str, tuple[str, ...]] = {
    metric.name: tuple(dict.fromkeys(metric.tables)) for metric in catalogue.LIVE}
METRICS: tuple[str, ...] = tuple(METRIC_TABLES)
# The plain-sum metrics per topic: (metric, fields summed; none: 1 per event).
SUMS_OF_TOPIC: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
for _metric in catalogue.SUMS:
    for _topic, _fields in _metric.sources:
        SUMS_OF_TOPIC.setdefault(_topic, []).append((_metric.name, _fields))

ACTION_TYPES = frozenset({"action", "http_action"})

TABLE_OF_TOPIC = {event_type.topic: event_type.table for event_type in events.EVENT_TYPES}


def _n(value: Any) -> int:
    return 0 if value is None else int(value)


@dataclass
class DeploymentTotals:
    metrics: Counter[str] = field(default_factory=Counter)
    tables: dict[str, Counter[str]] = field(
        default_factory=lambda: {table: Counter() for table in TABLES})
    tokens_by_model: dict[str, Counter[str]] = field(default_factory=dict)
    """provider/model -> token kind -> tokens"""
    tokens_by_user: dict[str, dict[str, Counter[str]]] = field(default_factory=dict)
    """end user -> provider/model -> token kind -> tokens"""
    storage: dict[str, Any] | None = None
    """the latest snapshot: {"at": ms, "bytes": {category: bytes}}"""
    dead_lettered: Counter[str] = field(default_factory=Counter)
    """events older than the grace, per topic: dead-lettered, counted nowhere"""
    first_event_ms: int | None = None
    last_event_ms: int | None = None
    """event times of the counted events"""

    # Adding what one event or record contributes.

    def _seen(self, timestamp: int) -> None:
        if self.first_event_ms is None or timestamp < self.first_event_ms:
            self.first_event_ms = timestamp
        if self.last_event_ms is None or timestamp > self.last_event_ms:
            self.last_event_ms = timestamp

    def add_event(self, event: dict[str, Any]) -> None:
        """A log-stream event the worker will count."""
        topic = event["topic"]
        self._seen(event["timestamp"])
        metrics = self.metrics
        if topic == "function_execution":
            usage = event["usage"]
            counted = {key: _n(usage[key]) for key in USAGE_COUNTERS}  # null counts as 0
            counted["execution_time_ms"] = _n(event["execution_time_ms"])
            counted["user_execution_time_ms"] = _n(event["user_execution_time_ms"])
            counted["mutation_retry_count"] = _n(event["function"]["mutation_retry_count"])
            if event["function"]["type"] in ACTION_TYPES:
                memory = counted["action_memory_used_mb"] or counted["memory_used_mb"]
                metrics["action_compute_mb_ms"] += memory * counted["execution_time_ms"]
        elif topic in ("storage_api_bandwidth", "log_stream_egress"):
            counted = {"egress_bytes": event["egress_bytes"]}
        elif topic == "current_storage_usage":
            counted = {key: event[key] for key in STORAGE_TOTALS}
            self._snapshot(event["timestamp"], {
                category: sum(event[key] for key in keys)
                for category, keys in STORAGE_CATEGORIES.items()})
        else:
            raise ValueError(f"no totals for topic {topic!r}")
        table = self.tables[TABLE_OF_TOPIC[topic]]
        table["rows"] += 1
        for key in TABLE_SUMS[TABLE_OF_TOPIC[topic]]:
            table[key] += counted[key]
        for metric, fields in SUMS_OF_TOPIC.get(topic, ()):
            metrics[metric] += sum(counted[key] for key in fields) if fields else 1

    def _snapshot(self, at: int, sizes: dict[str, int]) -> None:
        if self.storage is None or at > self.storage["at"]:
            self.storage = {"at": at, "bytes": sizes}

    def add_agent_step(self, user: str, model_key: str, timestamp: int,
                       tokens: dict[str, int]) -> None:
        """An agent usage record the worker will count; `tokens` has every AGENT_TOKENS kind."""
        self._seen(timestamp)
        table = self.tables[AGENT_USAGE]
        table["rows"] += 1
        for key in AGENT_TOKENS:
            table[key] += tokens[key]
        self.metrics["tokens"] += tokens["total_tokens"]
        by_model = self.tokens_by_model.setdefault(model_key, Counter())
        by_user = self.tokens_by_user.setdefault(user, {}).setdefault(model_key, Counter())
        for kind in LIVE_TOKEN_KINDS:
            by_model[kind] += tokens[kind]
            by_user[kind] += tokens[kind]

    def add_dead_letter(self, topic: str) -> None:
        self.dead_lettered[topic] += 1

    # Combining and serialising.

    def merge(self, other: DeploymentTotals) -> None:
        self.metrics.update(other.metrics)
        for table, sums in other.tables.items():
            self.tables[table].update(sums)
        for model, kinds in other.tokens_by_model.items():
            self.tokens_by_model.setdefault(model, Counter()).update(kinds)
        for user, models in other.tokens_by_user.items():
            mine = self.tokens_by_user.setdefault(user, {})
            for model, kinds in models.items():
                mine.setdefault(model, Counter()).update(kinds)
        if other.storage is not None:
            self._snapshot(other.storage["at"], other.storage["bytes"])
        self.dead_lettered.update(other.dead_lettered)
        for timestamp in (other.first_event_ms, other.last_event_ms):
            if timestamp is not None:
                self._seen(timestamp)

    def to_json(self) -> dict[str, Any]:
        return {
            "metrics": {metric: self.metrics[metric] for metric in METRICS},
            "tables": {table: {"rows": sums["rows"],
                               **{column: sums[column] for column in TABLE_SUMS[table]}}
                       for table, sums in self.tables.items()},
            "tokens_by_model": {model: {kind: kinds[kind] for kind in LIVE_TOKEN_KINDS}
                                for model, kinds in sorted(self.tokens_by_model.items())},
            "tokens_by_user": {user: {model: {kind: kinds[kind] for kind in LIVE_TOKEN_KINDS}
                                      for model, kinds in sorted(models.items())}
                               for user, models in sorted(self.tokens_by_user.items())},
            "storage": self.storage,
            "dead_lettered": dict(sorted(self.dead_lettered.items())),
            "first_event_ms": self.first_event_ms,
            "last_event_ms": self.last_event_ms,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeploymentTotals:
        totals = cls(metrics=Counter(data["metrics"]),
                     storage=data.get("storage"),
                     dead_lettered=Counter(data.get("dead_lettered", {})),
                     first_event_ms=data.get("first_event_ms"),
                     last_event_ms=data.get("last_event_ms"))
        for table, sums in data["tables"].items():
            totals.tables[table] = Counter(sums)
        totals.tokens_by_model = {model: Counter(kinds)
                                  for model, kinds in data["tokens_by_model"].items()}
        totals.tokens_by_user = {user: {model: Counter(kinds) for model, kinds in models.items()}
                                 for user, models in data["tokens_by_user"].items()}
        return totals


@dataclass
class ExpectedTotals:
    """What a run must produce, over the bodies the receiver acknowledged."""

    deployments: dict[str, DeploymentTotals] = field(default_factory=dict)
    undetermined_bodies: int = 0
    """bodies whose every attempt failed in a way that may still have stored them (a 5xx
    or a lost connection): each counted in the pipeline once or not at all"""

    @property
    def exact(self) -> bool:
        return self.undetermined_bodies == 0

    def add(self, deployment: str, totals: DeploymentTotals) -> None:
        self.deployments.setdefault(deployment, DeploymentTotals()).merge(totals)

    def overall(self) -> DeploymentTotals:
        """Every deployment together; storage is the sum of their latest snapshots."""
        total = DeploymentTotals()
        for totals in self.deployments.values():
            total.merge(totals)
        latest = [t.storage for t in self.deployments.values() if t.storage is not None]
        if latest:
            total.storage = {"at": max(s["at"] for s in latest),
                             "bytes": {category: sum(s["bytes"][category] for s in latest)
                                       for category in STORAGE_CATEGORIES}}
        return total

    def to_json(self) -> dict[str, Any]:
        return {
            "exact": self.exact,
            "undetermined_bodies": self.undetermined_bodies,
            "deployments": {name: totals.to_json()
                            for name, totals in sorted(self.deployments.items())},
            "overall": self.overall().to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExpectedTotals:
        return cls(deployments={name: DeploymentTotals.from_json(totals)
                                for name, totals in data["deployments"].items()},
                   undetermined_bodies=data.get("undetermined_bodies", 0))
