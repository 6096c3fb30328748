"""Sending the traffic model's bodies to the receiver the way Convex does, and keeping
the expected totals of what the receiver acknowledged.

`connections` senders share one model: each takes the next body (an agent body or
a repeat waiting to go first), sends it and waits for the answer. With a rate,
body k of the log stream is due at start + (events before it) / rate and is built
when due, so its events' times are the time it is sent. Retries are Convex's:
5xx, 408, 421, 425, 429 and lost connections are retried, up to 6 attempts, after
a full-jitter backoff (random up to 1 s doubling to 60 s); any other 4xx drops
the body.

Exactness. A body's totals join the expected totals when the receiver answers
200, once, whichever delivery got the 200. A body that was never answered 200
was either never stored (every answer a 4xx or a 429, or a 503 saying the
registry or the secret was not ready) and is counted nowhere, or may have been
stored (a lost connection, a timeout, a 503 after the Kafka produce timed out,
which may still complete): then the totals are not exact and
`undetermined_bodies` says by how many bodies. A retry or a configured repeat of
a stored body has the same bytes, so the worker drops it by content hash:
retries and repeats never count twice.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import orjson

from meterstream.core.config import Settings
from meterstream.core.progress import bar
from meterstream.core.signature import HEADER, sign
from meterstream.loadgen.catalogue import Deployment
from meterstream.loadgen.expected import DeploymentTotals, ExpectedTotals
from meterstream.loadgen.register import register
from meterstream.loadgen.traffic import LOGS, MAX_BATCH, Delivery, TrafficModel, TrafficOptions

CONVEX_LOGS = "/v1/convex/logs"
AGENT_USAGE = "/v1/agent/usage"
RETRIED_STATUSES = frozenset({408, 421, 425, 429})
# 503 reasons under which the receiver did not store the body.
NOT_STORED_REASONS = frozenset({"registry_loading", "secret_changing", "overloaded"})
DEFAULT_DURATION = 10.0


@dataclass(frozen=True)
class LoadOptions:
    deployments: int = 10
    users: int = 20
    seed: int = 0
    prefix: str | None = None
    """deployment name prefix; None: loadgen-<6 random hex>, new deployments each run"""
    rate: float = 0.0
    """log-stream events per second; 0: as fast as the receiver takes them"""
    duration: float | None = None
    """seconds of sending; with neither duration nor events, 10 s"""
    events: int | None = None
    """log-stream events to send (agent usage records come on top)"""
    connections: int = 8
    batch_size: int = MAX_BATCH
    duplicates: float = 0.0
    late: float = 0.0
    too_late: float = 0.0
    storage_interval: float = 3600.0
    egress_interval: float = 60.0
    max_attempts: int = 6
    backoff: float = 1.0
    """the first retry's longest wait (s), doubling up to 60 s, as Convex's webhook sink"""
    timeout: float = 30.0
    """seconds per request, as Convex's webhook sink"""
    progress: bool | None = None
    """a progress bar on stderr; None: when stderr is a terminal"""

    def __post_init__(self) -> None:
        problems = []
        if self.rate < 0:
            problems.append("rate must be 0 (as fast as possible) or more")
        if self.duration is not None and self.duration <= 0:
            problems.append("duration must be above 0")
        if self.events is not None and self.events < 1:
            problems.append("events must be at least 1")
        if self.connections < 1:
            problems.append("connections must be at least 1")
        if self.max_attempts < 1:
            problems.append("max attempts must be at least 1")
        if problems:
            raise ValueError("; ".join(problems))

    def traffic(self, grace_ms: int) -> TrafficOptions:
        return TrafficOptions(
            deployments=self.deployments, users=self.users, seed=self.seed,
            prefix=self.prefix or f"loadgen-{secrets.token_hex(3)}",
            batch_size=self.batch_size, duplicates=self.duplicates, late=self.late,
            too_late=self.too_late, grace_ms=grace_ms,
            storage_interval_ms=int(self.storage_interval * 1000),
            egress_interval_ms=int(self.egress_interval * 1000))


@dataclass
class LoadStats:
    bodies: int = 0
    """distinct bodies sent (log-stream and agent usage)"""
    acked_bodies: int = 0
    events: int = 0
    """log-stream events in acknowledged bodies, each once"""
    agent_records: int = 0
    """agent usage records in acknowledged bodies, each once"""
    late: int = 0
    """acknowledged events and records late but within the grace (counted)"""
    dead_lettered: int = 0
    """acknowledged events and records older than the grace (dead-lettered, not counted)"""
    requests: int = 0
    """POSTs answered (retries and repeats included)"""
    repeats: int = 0
    """configured duplicate deliveries of acknowledged bodies"""
    repeats_acked: int = 0
    retries: int = 0
    """attempts after a retryable failure (429, 5xx, lost connection)"""
    rejected: int = 0
    """bodies never stored: refused with a 4xx, or retried out on answers that say so"""
    undetermined: int = 0
    """bodies retried out after failures that may have stored them"""
    failures: Counter[str] = field(default_factory=Counter)
    """answers other than 2xx by status (and reason), and lost connections"""
    bytes_sent: int = 0
    elapsed: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    """of the POSTs answered 2xx"""

    @property
    def events_per_second(self) -> float:
        return self.events / self.elapsed if self.elapsed else 0.0

    def latency_ms(self, quantile: float) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]

    def to_json(self) -> dict[str, Any]:
        return {
            "bodies": self.bodies, "acked_bodies": self.acked_bodies, "events": self.events,
            "agent_records": self.agent_records, "late": self.late,
            "dead_lettered": self.dead_lettered,
            "requests": self.requests, "repeats": self.repeats,
            "repeats_acked": self.repeats_acked, "retries": self.retries,
            "rejected": self.rejected, "undetermined": self.undetermined,
            "failures": dict(sorted(self.failures.items())), "bytes_sent": self.bytes_sent,
            "elapsed_s": round(self.elapsed, 3),
            "events_per_s": round(self.events_per_second, 1),
            "latency_p50_ms": self.latency_ms(0.50), "latency_p99_ms": self.latency_ms(0.99),
        }


@dataclass
class LoadResult:
    options: LoadOptions
    traffic: TrafficOptions
    deployments: list[Deployment]
    stats: LoadStats
    expected: ExpectedTotals
    started_ms: int

    def to_json(self) -> dict[str, Any]:
        """The expected-totals document (`--expected-out`), which `loadgen check` reads."""
        return {
            "kind": "meterstream-loadgen-expected",
            "version": 1,
            "started_ms": self.started_ms,
            "seed": self.traffic.seed,
            "prefix": self.traffic.prefix,
            "late_grace_ms": self.traffic.grace_ms,
            "stats": self.stats.to_json(),
            **self.expected.to_json(),
        }


@dataclass
class _Send:
    delivery: Delivery
    repeat: bool = False


class Sender:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, model: TrafficModel,
                 options: LoadOptions, expected: ExpectedTotals, stats: LoadStats,
                 stop: asyncio.Event) -> None:
        self.session = session
        self.base_url = base_url
        self.model = model
        self.options = options
        self.expected = expected
        self.stats = stats
        self.stop = stop
        self.ready: deque[_Send] = deque()
        self.in_flight = 0
        self.scheduled = 0
        """log-stream events given out so far"""
        self.changed = asyncio.Event()
        """set whenever a body is queued or a send ends: what idle senders wait for"""
        self.jitter = random.Random()
        self.started = 0.0
        self.duration = options.duration
        if options.duration is None and options.events is None:
            self.duration = DEFAULT_DURATION
        self.progress = bar(options.events, "loadgen", unit="ev", force=options.progress)

    async def run(self) -> None:
        self.started = time.monotonic()
        try:
            await asyncio.gather(*(self._worker() for _ in range(self.options.connections)))
        finally:
            self.stats.elapsed = time.monotonic() - self.started
            self.progress.close()

    async def _worker(self) -> None:
        while (send := await self._next()) is not None:
            try:
                await self._send(send)
            finally:
                self._done()

    def _done(self) -> None:
        self.in_flight -= 1
        self.changed.set()

    def _more(self) -> int:
        """How many log-stream events the next body may hold; 0 when the load is done."""
        if self.stop.is_set():
            return 0
        if self.duration is not None and (
                time.monotonic() - self.started >= self.duration
                or (self.options.rate and self.scheduled / self.options.rate >= self.duration)):
            return 0
        if self.options.events is None:
            return self.options.batch_size
        return min(self.options.batch_size, self.options.events - self.scheduled)

    async def _next(self) -> _Send | None:
        while True:
            if self.ready:
                self.in_flight += 1
                return self.ready.popleft()
            size = self._more()
            if size > 0:
                due = self.scheduled / self.options.rate if self.options.rate else 0.0
                self.scheduled += size
                self.in_flight += 1
                if due and not await self._wait_until(due):
                    self._done()
                    continue
                first, *rest = self.model.next_batch(int(time.time() * 1000), size)
                self.ready.extend(_Send(delivery) for delivery in rest)
                return _Send(first)
            if self.in_flight == 0:
                return None
            self.changed.clear()
            await self.changed.wait()

    async def _wait_until(self, offset: float) -> bool:
        """Waits until `offset` seconds after the start; False when stopped first."""
        delay = self.started + offset - time.monotonic()
        if delay > 0:
            try:
                await asyncio.wait_for(self.stop.wait(), delay)
                return False
            except TimeoutError:
                pass
        return not self.stop.is_set()

    def _request(self, delivery: Delivery) -> tuple[str, dict[str, str]]:
        deployment = delivery.deployment
        if delivery.endpoint == LOGS:
            return self.base_url + CONVEX_LOGS, {
                "Content-Type": "application/json", "User-Agent": "Convex/1.0",
                HEADER: sign(delivery.body, deployment.webhook_secret)}
        return self.base_url + AGENT_USAGE, {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {deployment.ingest_token}"}

    async def _send(self, send: _Send) -> None:
        delivery, stats = send.delivery, self.stats
        if send.repeat:
            stats.repeats += 1
        else:
            stats.bodies += 1
        outcome = await self._post(delivery)
        if send.repeat:
            stats.repeats_acked += outcome == "acked"
            return
        if outcome == "acked":
            stats.acked_bodies += 1
            if delivery.endpoint == LOGS:
                stats.events += delivery.events
                self.progress.update(delivery.events)
            else:
                stats.agent_records += delivery.events
            stats.late += delivery.late
            stats.dead_lettered += sum(delivery.totals.dead_lettered.values())
            self.expected.add(delivery.deployment.name, delivery.totals)
            if delivery.duplicate:
                self.ready.append(_Send(delivery, repeat=True))
                self.changed.set()
        elif outcome == "undetermined":
            stats.undetermined += 1
            self.expected.undetermined_bodies += 1
        else:
            stats.rejected += 1

    async def _post(self, delivery: Delivery) -> str:
        """"acked", "rejected" (certainly not stored) or "undetermined"."""
        url, headers = self._request(delivery)
        stats = self.stats
        maybe_stored = False
        for attempt in range(self.options.max_attempts):
            if attempt:
                stats.retries += 1
                longest = min(self.options.backoff * 2.0 ** (attempt - 1), 60.0)
                await asyncio.sleep(self.jitter.random() * longest)
            started = time.perf_counter()
            try:
                async with self.session.post(url, data=delivery.body, headers=headers) as answer:
                    text = await answer.read()
                    status = answer.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                stats.failures[f"connection: {type(exc).__name__}"] += 1
                maybe_stored = True
                continue
            stats.requests += 1
            stats.bytes_sent += len(delivery.body)
            if status < 400:
                stats.latencies_ms.append(1000 * (time.perf_counter() - started))
                return "acked"
            reason = _reason(text)
            stats.failures[f"{status} {reason}".strip()] += 1
            if status >= 500 or status in RETRIED_STATUSES:
                maybe_stored = maybe_stored or reason not in NOT_STORED_REASONS
                continue
            return "undetermined" if maybe_stored else "rejected"
        return "undetermined" if maybe_stored else "rejected"


def _reason(body: bytes) -> str:
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    return str(answer.get("reason", "")) if isinstance(answer, dict) else ""


async def run_load(options: LoadOptions, settings: Settings,
                   stop: asyncio.Event | None = None, register_deployments: bool = True
                   ) -> LoadResult:
    """Registers the deployments, sends the load to the receiver at
    METERSTREAM_PUBLIC_URL (default: the local receiver) and returns what was sent
    and the totals the pipeline must arrive at. Setting `stop` ends the load early:
    bodies in flight are finished, nothing new is sent."""
    traffic = options.traffic(int(settings.late_grace * 1000))
    model = TrafficModel(traffic)
    expected = ExpectedTotals({d.name: DeploymentTotals() for d in model.deployments})
    stats = LoadStats()
    started_ms = int(time.time() * 1000)
    connector = aiohttp.TCPConnector(limit=options.connections + 4)
    async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=options.timeout)) as session:
        if register_deployments:
            await register(session, settings.admin_url, settings.admin_token, model.deployments,
                           traffic.prefix)
        sender = Sender(session, settings.public_url, model, options, expected, stats,
                        stop or asyncio.Event())
        await sender.run()
    return LoadResult(replace(options, prefix=traffic.prefix), traffic, model.deployments,
                      stats, expected, started_ms)
