"""What the worker does with one raw message (up to 128 events of one deployment).

1. Drop it if its body was seen before (Convex's retries).
2. Split it into normalised records by event type; events that cannot be understood,
   that came in by the wrong door (its `origin` header: agent usage only from the
   agent endpoint, webhook events only from the webhook endpoint), that belong to
   another deployment than the message's key, or whose time is outside the late-event
   grace around the message's receipt become dead letters. Then drop agent usage
   records whose id was seen before.
3. Serialise what it forwards (refusing the message, before anything is written, if a
   part is over the producer's limit), add its usage to the live windows (exactly once
   per key, processors/state.py).
4. Forward the records and dead letters, and publish the alerts now due.

A message whose processing raises is retried and then dead-lettered by the caller
(processors/poison.py); `stage` tells how far its last attempt got.

`process` returns the pending deliveries of the forwarded records (None for a repeated
body, which forwards nothing and counts as a duplicate, not as a body); the caller acks
the message only once they completed (processors/delivery_acks.py), so the message's
offset is committed only after what came out of it is safe. Alerts are awaited
here, before the next message is judged (processors/alert_log.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from meterstream.core import events as event_types
from meterstream.core.quotas import quotas_from_record
from meterstream.core.record_format import ARROW, FORMAT_HEADER, EncodeError, encode
from meterstream.core.records import Record
from meterstream.core.registry import RegistryView
from meterstream.core.topics import AGENT_ORIGIN
from meterstream.core.usage import MessageUsage, columns_usage, message_usage
from processors import metrics
from processors.alert_log import AlertLog
from processors.dedup import Deduplicator
from processors.due_alerts import RunawayDetector, due_quota_alerts
from processors.fast_split import fast_columns, record_columns
from processors.split import OTHER, SplitBatch, dead_letter, split_body
from processors.state import UsageState
from processors.stream_health import StreamHealth

Headers = list[tuple[str, bytes]]


class Send(Protocol):
    """(route or "dead_letter", key, value, headers) -> a future that completes when Kafka
    stored it"""

    def __call__(self, route: str, key: bytes, value: bytes,
                 headers: Headers | None = None, /) -> Awaitable[Awaitable[Any]]: ...


ARROW_HEADERS: Headers = [(FORMAT_HEADER, ARROW)]
"""A version 2 record message's headers (meterstream/core/record_format.py)."""


@dataclass(frozen=True)
class Forward:
    """One message to a record topic: a route's records of one raw message."""

    route: str
    value: bytes
    headers: Headers | None
    """ARROW_HEADERS for version 2, None for version 1 (JSON)"""
    count: int


@dataclass
class Plan:
    """What a raw message yields, all of it computed before anything is written."""

    forwarded: list[Forward]
    dead_letters: list[Record]
    usage: MessageUsage
    latest: dict[str, int]
    """route -> the latest event time of the records it forwards (stream health)"""


def forward_of(route: str, records: list[Record]) -> Forward:
    """A route's records as version 2 (Arrow), or as version 1 (JSON) when a value does not
    fit its column: the sink then dead-letters that record and keeps the others."""
    event_type = event_types.BY_TOPIC.get(route, event_types.OTHER)
    try:
        columns = record_columns(event_type, records)
        value = encode(event_type, [columns[name] for name, _ in event_type.columns])
    except EncodeError:
        metrics.JSON_RECORDS.inc(len(records))
        return Forward(route, orjson.dumps(records), None, len(records))
    return Forward(route, value, ARROW_HEADERS, len(records))

AGENT_ROUTE = "agent_usage"


class ForwardTooLarge(ValueError):
    """What a message forwards to one topic is over the producer's limit."""


class RawProcessor:
    def __init__(self, dedup: Deduplicator, state: UsageState, alerts: AlertLog,
                 runaway: RunawayDetector, registry: RegistryView, send: Send,
                 grace_ms: int, assigned: Callable[[], set[int]],
                 priced: frozenset[str] | None = None,
                 max_forward_bytes: int = 1 << 30,
                 health: StreamHealth | None = None) -> None:
        self.dedup = dedup
        self.state = state
        self.alerts = alerts
        self.runaway = runaway
        self.registry = registry
        self.send = send
        self.grace_ms = grace_ms
        self.assigned = assigned
        self.priced = priced
        """provider/model keys the live windows keep by name (meterstream/core/usage.py)"""
        self.max_forward_bytes = max_forward_bytes
        self.health = health
        self.stage = "start"
        """How far the current (or last) message got: start, split, state, forward, alerts."""

    def forget_partitions(self, partitions: set[int]) -> None:
        self.dedup.forget_partitions(partitions)
        self.state.expiry.forget_partitions(partitions)
        self.alerts.forget_partitions(partitions)

    async def process(self, key: bytes, body: bytes, partition: int, offset: int,
                      received_at: int, now_ms: int,
                      origin: bytes | None = None) -> list[Awaitable[Any]] | None:
        """`origin`: the message's `origin` header (None: from a receiver older than it,
        taken as before)."""
        self.stage = "start"
        metrics.EXPIRED.inc(self.dedup.expire(partition, now_ms))
        metrics.WINDOWS_EXPIRED.inc(self.state.expiry.expire(partition, now_ms))
        await self.alerts.ensure_loaded(partition, self.assigned())
        if self.dedup.seen_before(Deduplicator.body_key(key, body), partition, offset, now_ms):
            metrics.DUPLICATES.labels("body").inc()
            return None
        self.stage = "split"
        deployment = key.decode(errors="replace")
        plan = self._fast(body, deployment, partition, offset, received_at, origin)
        if plan is None:
            plan = self._slow(body, deployment, partition, offset, received_at, now_ms,
                              origin)
        metrics.MODELS_FOLDED.inc(plan.usage.models_folded)
        for forward in plan.forwarded:
            if len(forward.value) + len(key) > self.max_forward_bytes:
                raise ForwardTooLarge(f"the {forward.count} {forward.route} records are "
                                      f"{len(forward.value)} bytes, over the producer's "
                                      f"{self.max_forward_bytes}")
        self.stage = "state"
        usage = plan.usage
        self.state.apply(deployment, usage, partition, offset, received_at)
        record = self.registry.get(deployment)
        quotas = quotas_from_record(record.quotas) if record is not None else ()
        due = due_quota_alerts(deployment, quotas, self.state, usage)
        due += self.runaway.due(deployment, usage, partition, offset)
        if self.health is not None and record is not None:
            due += self.health.observe(deployment, plan.latest, partition, offset)

        self.stage = "forward"
        sent = []
        for forward in plan.forwarded:
            sent.append(await self.send(forward.route, key, forward.value, forward.headers))
            metrics.EVENTS.labels(forward.route).inc(forward.count)
        for letter in plan.dead_letters:
            sent.append(await self.send("dead_letter", key, orjson.dumps(letter)))
        self.stage = "alerts"
        await self.alerts.publish(partition, due)
        self.stage = "done"
        metrics.EVENTS.labels("dead_letter").inc(len(plan.dead_letters))
        return sent

    def _fast(self, body: bytes, deployment: str, partition: int, offset: int,
              received_at: int, origin: bytes | None) -> Plan | None:
        """The plan of a body that needs no judgement (processors/fast_split.py): every
        event valid, of the message's deployment, within the grace, in by the webhook
        door, every value fitting its column; None for any other body, which the slow
        path then takes whole (and decides as it always did)."""
        if origin == AGENT_ORIGIN:  # webhook events only: by the agent door, dead letters
            return None
        routed = fast_columns(body, partition, offset)
        if routed is None:
            return None
        earliest, latest = received_at - self.grace_ms, received_at + self.grace_ms
        for columns in routed.values():
            timestamps, deployments = columns["timestamp"], columns["deployment"]
            if (min(timestamps) < earliest or max(timestamps) > latest
                    or deployments.count(deployment) != len(deployments)):
                return None
        forwarded = []
        newest = {}
        for route, columns in routed.items():
            newest[route] = max(columns["timestamp"])
            event_type = event_types.BY_TOPIC[route]
            try:
                value = encode(event_type, [columns[name] for name, _ in event_type.columns])
            except EncodeError:
                return None
            forwarded.append(Forward(route, value, ARROW_HEADERS, len(columns["timestamp"])))
        return Plan(forwarded, [], columns_usage(routed), newest)

    def _slow(self, body: bytes, deployment: str, partition: int, offset: int,
              received_at: int, now_ms: int, origin: bytes | None) -> Plan:
        """The plan of any body, event by event (processors/split.py)."""
        batch = split_body(body, partition, offset)
        self._divert_wrong_door(batch, origin)
        self._divert_strays(batch, deployment, received_at)
        self._drop_repeated_usage(batch, partition, offset, now_ms)
        usage = message_usage(batch.routed, self.priced)
        forwarded = [forward_of(route, records) for route, records in batch.routed.items()]
        # An event Convex sent without a usable time goes to `other` with none: it says
        # nothing about when the stream was last heard from.
        latest: dict[str, int] = {}
        for route, records in batch.routed.items():
            times = [t for record in records if type(t := record.get("timestamp")) is int]
            if times:
                latest[route] = max(times)
        return Plan(forwarded, batch.dead_letters, usage, latest)

    def _drop_repeated_usage(self, batch: SplitBatch, partition: int, offset: int,
                             now_ms: int) -> None:
        records = batch.routed.pop("agent_usage", [])
        kept, here = [], set()
        for record in records:
            id_key = Deduplicator.record_key(record["deployment"], record["id"])
            if id_key in here or self.dedup.seen_before(id_key, partition, offset, now_ms):
                continue
            here.add(id_key)
            kept.append(record)
        metrics.DUPLICATES.labels("agent_usage_id").inc(len(records) - len(kept))
        if kept:
            batch.routed["agent_usage"] = kept

    def _divert_wrong_door(self, batch: SplitBatch, origin: bytes | None) -> None:
        """Agent usage only from the agent endpoint, webhook events only from the webhook
        endpoint; a message without `origin` (an older receiver) is taken as before."""
        if origin is None:
            return
        for route in list(batch.routed):
            if (route == AGENT_ROUTE) == (origin == AGENT_ORIGIN):
                continue
            reason = (f"{route} events may come only through "
                      f"{'/v1/agent/usage' if route == AGENT_ROUTE else '/v1/convex/logs'}; "
                      f"this one came with origin {origin.decode(errors='replace')!r}")
            for record in batch.routed.pop(route):
                batch.dead_letters.append(dead_letter(
                    reason, record, record["raw_partition"], record["raw_offset"],
                    record["event_index"]))
                metrics.WRONG_ORIGIN.inc()

    def _divert_strays(self, batch: SplitBatch, deployment: str, received_at: int) -> None:
        """Moves records that must not count to the dead letters, with the reason."""
        earliest, latest = received_at - self.grace_ms, received_at + self.grace_ms
        for route in list(batch.routed):
            if route == OTHER:
                continue
            kept: list[Record] = []
            for record in batch.routed[route]:
                reason = None
                if record["deployment"] != deployment:
                    reason = (f"deployment {record['deployment']!r} differs from the "
                              f"message's {deployment!r}")
                elif record["timestamp"] < earliest:
                    reason = "late: event time is more than the grace before its receipt"
                    metrics.LATE.inc()
                elif record["timestamp"] > latest:
                    reason = "event time is more than the grace after its receipt"
                    metrics.LATE.inc()
                if reason is None:
                    kept.append(record)
                else:
                    batch.dead_letters.append(dead_letter(
                        reason, record, record["raw_partition"], record["raw_offset"],
                        record["event_index"]))
            if kept:
                batch.routed[route] = kept
            else:
                del batch.routed[route]
