"""Billing metrics derived from normalised records, as Convex bills them.

What each metric is computed from is meterstream/core/catalogue.py; the plain sums are
compiled from it (below) into one function per event type, so the hot path does
per record only the additions it needs; action compute is written here.

Tenants choose the provider and model names of their agent usage, so the live
windows keep tokens by name only for the models the price book prices; every other
name is counted under OTHER_MODEL. A window's token map therefore has at most
(priced models + 1) entries whatever the tenants send, and the forwarded records
(and so ClickHouse and the invoices) keep the names as sent.

Every counter is an integer, so sums are exact; units are converted only when
shown or compared (as Fractions). Work is per raw message: events are summed per
minute first and the minutes rolled up into hours, days and months, so a
128-event body costs a few dictionary updates per window, not per event.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from meterstream.core import catalogue, events
from meterstream.core.catalogue import LIVE_TOKEN_KINDS, STORAGE_CATEGORIES
from meterstream.core.records import AgentUsage, FunctionExecution, Record, StorageSnapshot
from meterstream.core.windows import DAY_MS, GRANULARITIES, window_start

ACTION_TYPES = frozenset({"action", "http_action"})
# A deployment that sent no snapshot for this long is forgotten by the live state, and
# billing does not bridge a gap between two snapshots longer than this.
STORAGE_RETENTION_MS = 40 * DAY_MS

Counters = dict[str, int]


@dataclass
class WindowDelta:
    """What one raw message adds to one window."""

    metrics: Counters = field(default_factory=lambda: defaultdict(int))
    tokens: dict[str, Counters] = field(default_factory=dict)
    """provider/model -> token kind -> count"""

    def add(self, other: WindowDelta) -> None:
        for name, value in other.metrics.items():
            self.metrics[name] += value
        for model, kinds in other.tokens.items():
            mine = self.tokens.setdefault(model, defaultdict(int))
            for kind, value in kinds.items():
                mine[kind] += value


@dataclass
class MessageUsage:
    """The usage one raw message carries for its deployment."""

    windows: dict[tuple[str, int], WindowDelta] = field(default_factory=dict)
    """(granularity, window start) -> delta"""
    users: dict[tuple[str, str, int], WindowDelta] = field(default_factory=dict)
    """(end user, "day" | "month", window start) -> token delta"""
    snapshots: list[StorageSnapshot] = field(default_factory=list)
    """current_storage_usage records, in event-time order"""
    models_folded: int = 0
    """agent usage records whose model is counted under OTHER_MODEL"""


Derive = Callable[[Any, Counters], None]
"""(a record of one event type, a minute's counters) -> adds the record's metrics"""


def action_compute(record: FunctionExecution, into: Counters) -> None:
    if record["function_type"] in ACTION_TYPES:
        memory = record["action_memory_used_mb"] or record["memory_used_mb"]
        into["action_compute_mb_ms"] += memory * record["execution_time_ms"]


# The custom live metrics computed per record here (catalogue `custom`); tokens are
# counted per model by add_tokens.
CUSTOM: dict[str, tuple[str, Derive]] = {
    "action_compute_mb_ms": (events.FUNCTION_EXECUTION.topic, action_compute),
}


def _compile(topic: str, metrics: Iterable[catalogue.Metric]) -> Derive | None:
    """One function adding the plain-sum metrics fed by `topic`, written out as a human
    would (one `+=` per metric), so that it costs no loop over the catalogue per record."""
    lines = []
    for metric in metrics:
        for source, fields in metric.sources:
            if source == topic:
                added = " + ".join(f"record[{name!r}]" for name in fields) or "1"
                lines.append(f"    into[{metric.name!r}] += {added}")
    if not lines:
        return None
    namespace: dict[str, Any] = {}
    exec("def derive(record, into):\n" + "\n".join(lines), namespace)
    return cast(Derive, namespace["derive"])


def _derivations() -> dict[str, tuple[Derive, ...]]:
    found: dict[str, tuple[Derive, ...]] = {}
    for event_type in events.EVENT_TYPES:
        if event_type is events.AGENT_USAGE:
            continue  # tokens: add_tokens, per model
        derive = [compiled] if (compiled := _compile(event_type.topic, catalogue.SUMS)) else []
        derive += [custom for topic, custom in CUSTOM.values() if topic == event_type.topic]
        if derive:
            found[event_type.topic] = tuple(derive)
    return found


METRICS_OF_ROUTE: dict[str, tuple[Derive, ...]] = _derivations()
"""route -> what its records add to a minute's counters"""


OTHER_MODEL = "other"
"""Where the live windows count the tokens of models the price book does not price."""


def model_key(record: AgentUsage) -> str:
    return f"{record['provider'] or 'unknown'}/{record['model'] or 'unknown'}"


def bounded_model_key(record: AgentUsage, priced: frozenset[str] | None) -> str:
    """The record's provider/model if it is priced (or `priced` is None), else OTHER_MODEL."""
    key = model_key(record)
    return key if priced is None or key in priced else OTHER_MODEL


def add_tokens(record: Mapping[str, Any], delta: WindowDelta, model: str) -> None:
    """Adds an AgentUsage record's tokens to `delta` under `model`."""
    kinds = delta.tokens.setdefault(model, defaultdict(int))
    for kind in LIVE_TOKEN_KINDS:
        kinds[kind] += record[kind]
    delta.metrics["tokens"] += record["total_tokens"]


def message_usage(routed: dict[str, list[Record]],
                  priced: frozenset[str] | None = None) -> MessageUsage:
    """Sums the records of one raw message per window (all of one deployment).

    `priced`: the provider/model keys kept by name (the others fold into OTHER_MODEL);
    None keeps every name (for tests and tools that count a known, small set)."""
    minutes: dict[int, WindowDelta] = {}

    def minute(timestamp: int) -> WindowDelta:
        start = timestamp - timestamp % 60_000
        delta = minutes.get(start)
        if delta is None:
            delta = minutes[start] = WindowDelta()
        return delta

    for route, derivations in METRICS_OF_ROUTE.items():
        for record in routed.get(route, ()):
            counters = minute(record["timestamp"]).metrics
            for derive in derivations:
                derive(record, counters)
    user_minutes: dict[tuple[str, int], WindowDelta] = {}
    folded = 0
    agent_usage = cast(list[AgentUsage], routed.get(events.AGENT_USAGE.route, []))
    for step in agent_usage:
        model = bounded_model_key(step, priced)
        folded += model == OTHER_MODEL
        add_tokens(step, minute(step["timestamp"]), model)
        start = step["timestamp"] - step["timestamp"] % 60_000
        add_tokens(step, user_minutes.setdefault((step["user_id"], start), WindowDelta()),
                   model)

    snapshots = sorted(cast(list[StorageSnapshot],
                            routed.get(events.CURRENT_STORAGE_USAGE.route, [])),
                       key=lambda r: (r["timestamp"], r["event_index"]))
    return _rolled_up(minutes, user_minutes, snapshots, folded)


def _rolled_up(minutes: dict[int, WindowDelta],
               user_minutes: dict[tuple[str, int], WindowDelta],
               snapshots: list[StorageSnapshot], folded: int) -> MessageUsage:
    """A message's usage from its per-minute deltas: each minute added to the windows of
    every granularity it falls in."""
    usage = MessageUsage(models_folded=folded)
    for start, delta in minutes.items():
        for granularity in GRANULARITIES:
            key = (granularity, start if granularity == "minute"
                   else window_start(granularity, start))
            usage.windows.setdefault(key, WindowDelta()).add(delta)
    for (user, start), delta in user_minutes.items():
        for granularity in ("day", "month"):
            user_key = (user, granularity, window_start(granularity, start))
            usage.users.setdefault(user_key, WindowDelta()).add(delta)
    usage.snapshots = snapshots
    return usage


# The columnar path: the same sums over a message's table columns (the worker's fast
# split, processors/fast_split.py), a sum per column and minute instead of additions
# per record. tests/unit/test_usage.py checks it equals message_usage on the records.

def _column_sums(topic: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(metric, the fields it sums; none: it counts rows) for the plain sums fed by `topic`."""
    return tuple((metric.name, fields) for metric in catalogue.SUMS
                 for source, fields in metric.sources if source == topic)


SUMS_OF_ROUTE: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    event_type.route: _column_sums(event_type.topic) for event_type in events.EVENT_TYPES
    if event_type is not events.AGENT_USAGE}
"""route -> (metric, summed fields) of the plain sums its columns feed"""

COLUMNAR_ROUTES: frozenset[str] = frozenset(SUMS_OF_ROUTE)
"""The routes columns_usage takes: all but agent usage (its tokens are per model and end
user: message_usage) and `other` (it feeds no metric)."""

assert set(CUSTOM) == {"action_compute_mb_ms"}, "columns_usage computes each custom metric"

Columns = Mapping[str, Sequence[Any]]
"""A table's columns by name (meterstream/core/events.py), rows in the table's types."""


def columns_usage(routed: Mapping[str, Columns]) -> MessageUsage:
    """message_usage of a message whose records are given as columns per route (routes in
    COLUMNAR_ROUTES only: raises ValueError for another)."""
    minutes: dict[int, WindowDelta] = {}
    for route, columns in routed.items():
        sums = SUMS_OF_ROUTE.get(route)
        if sums is None:
            raise ValueError(f"columns_usage does not take {route} records")
        action = route == events.FUNCTION_EXECUTION.route
        timestamps = columns["timestamp"]
        if not timestamps or not (sums or action):
            continue  # as message_usage: no minute for a route that feeds no metric
        starts = [timestamp - timestamp % 60_000 for timestamp in timestamps]
        first = starts[0]
        if starts.count(first) == len(starts):
            groups: dict[int, list[int] | None] = {first: None}  # every row
        else:
            groups = {}
            for row, start in enumerate(starts):
                rows = groups.get(start)
                if rows is None:
                    groups[start] = [row]
                else:
                    rows.append(row)
        for start, rows in groups.items():
            delta = minutes.get(start)
            if delta is None:
                delta = minutes[start] = WindowDelta()
            counters = delta.metrics
            count = len(timestamps) if rows is None else len(rows)
            for name, fields in sums:
                if not fields:
                    counters[name] += count
                for field_name in fields:
                    column = columns[field_name]
                    counters[name] += (sum(column) if rows is None
                                       else sum([column[row] for row in rows]))
            if action:
                _action_compute(columns, rows, counters)
    snapshot_columns = routed.get(events.CURRENT_STORAGE_USAGE.route)
    snapshots = [] if snapshot_columns is None else sorted(
        _snapshots(snapshot_columns), key=lambda r: (r["timestamp"], r["event_index"]))
    return _rolled_up(minutes, {}, snapshots, 0)


def _action_compute(columns: Columns, rows: list[int] | None, into: Counters) -> None:
    """action_compute over the rows (None: all) of function_execution columns."""
    types = columns["function_type"]
    picked = range(len(types)) if rows is None else rows
    actions = [row for row in picked if types[row] in ACTION_TYPES]
    if not actions:
        return
    action_memory, memory = columns["action_memory_used_mb"], columns["memory_used_mb"]
    execution = columns["execution_time_ms"]
    into["action_compute_mb_ms"] += sum([(action_memory[row] or memory[row]) * execution[row]
                                         for row in actions])


def _snapshots(columns: Columns) -> list[StorageSnapshot]:
    names = [name for name, _ in events.CURRENT_STORAGE_USAGE.columns]
    return [cast(StorageSnapshot, dict(zip(names, values, strict=True)))
            for values in zip(*(columns[name] for name in names), strict=True)]


def storage_bytes(snapshot: Mapping[str, Any]) -> Counters:
    """Bytes per storage category of one snapshot (a StorageSnapshot)."""
    return {category: sum(snapshot[field] for field in fields)
            for category, fields in STORAGE_CATEGORIES.items()}
