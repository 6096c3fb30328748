"""`meterstream worker`: the Faust app (meterstream/processes/worker.py runs it).

One agent (processors/raw_agent.py) reads the raw bodies (processors/raw_processor.py
does the work): it drops repeats, forwards per body one message with the normalised
records of each event type present to that type's topic (`<ns>.function_execution`,
..., `<ns>.other`), keeps the live usage windows in the `usage` table and publishes
alerts to `<ns>.alerts`, and each deployment's stream health (processors/stream_health.py,
checked by a timer: processors/health_check.py). Working per body, not per event, spreads Faust's
per-message cost over up to 128 events. The web server answers
`GET /v1/quota/{deployment}` and `GET /v1/deployments/{name}/health`, routed to the
worker that owns the deployment, and `GET /v1/health/fleet`, to a
bearer token only (processors/web_access.py), and the probes /healthz, /readyz and
/metrics (unless METERSTREAM_METRICS_HOST moves them to a listener of their own,
meterstream/processes/worker.py). Faust's built-in pages (/table/... serves table
contents, /router/... the cluster's layout, /graph, /stats, /performance) are off.

A raw message whose processing raises is tried METERSTREAM_WORKER_MAX_ATTEMPTS times,
then dead-lettered and acked (processors/poison.py), so no tenant's message can stop
the worker. The `origin` header the receiver sets tells which door a body came in by.

Concurrency stays at 1: with more, Faust can commit an offset past a message
still in flight (faust#606), and a restart would lose it. The agent acks raw
messages itself (a `noack` stream): only once Kafka stored everything forwarded
from a message (processors/delivery_acks.py), so its offset is committed only after
that is safe, while the agent already works on the next messages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import faust
import orjson
from faust.streams import current_event
from faust.types import TP
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from meterstream.core.config import Settings
from meterstream.core.http_errors import json_errors
from meterstream.core.kafka_client import KafkaConnection, faust_credentials
from meterstream.core.openapi import OPENAPI_PATH
from meterstream.core.quotas import quotas_from_record
from meterstream.core.registry import Deployment, RegistryView
from meterstream.core.service import Readiness
from meterstream.core.topics import Topics
from processors import metrics
from processors.alert_log import AlertLog
from processors.alert_webhooks import attach_alert_delivery
from processors.dedup import Deduplicator
from processors.due_alerts import RunawayDetector
from processors.enforcer import attach_enforcement
from processors.health_check import Clock, HealthCheck, fleet
from processors.openapi import worker_document
from processors.ordered_store import FaustPartitions, rocksdb_options
from processors.priced_models import priced_model_keys
from processors.quota_status import quota_report
from processors.raw_agent import RawAgent
from processors.raw_processor import RawProcessor, Send
from processors.split import ALL_ROUTES
from processors.stall_guard import CommittedOffsets, StallGuard, untrack, untrack_from
from processors.state import CachedTable, UsageState
from processors.stream_health import FAILED, HealthRules, StreamHealth
from processors.stream_status import PlatformStatus, StreamStatusCheck
from processors.web_access import api_guard

TABLES = ("seen", "usage")
log = logging.getLogger(__name__)


def create_app(settings: Settings, priced: frozenset[str] | None = None,
               readiness: Readiness | None = None, clock: Clock | None = None) -> faust.App:
    """The worker's Faust app: its topics, tables, agent, timers and pages. `priced`: the
    provider/model keys the live windows keep by name (None: read from the price book,
    processors/priced_models.py). `readiness` gets the worker's checks (registry,
    partitions, tables), for /readyz wherever it is served. `clock`: now in ms for the
    stream health (None: the system's)."""
    if clock is None:
        clock = wall_clock
    if readiness is None:
        readiness = Readiness()
    if priced is None:
        priced = priced_model_keys(settings.price_book)
    topics = Topics.of(settings)
    max_request_size = settings.max_body_bytes + 65536
    app = faust_app(settings, max_request_size)
    partitions = settings.partitions
    raw = _topic(app, topics.raw.name, partitions)
    destinations = {route: _topic(app, topics.records(route).name, partitions)
                    for route in ALL_ROUTES}
    destinations["dead_letter"] = _topic(app, topics.dead_letters.name, 1)
    alerts_topic = _topic(app, topics.alerts.name, partitions)
    registry = RegistryView(KafkaConnection.of(settings), topics.deployments.name)
    # Both tables live in RocksDB (faust_app's store), one database per partition, with
    # bounded memory (ordered_store.rocksdb_options). `seen` holds 21-byte keys and 8-byte
    # values, raw (processors/dedup.py); `usage` keeps its JSON keys and values, so
    # that the live windows of a worker that ran with the memory store before are
    # restored unchanged from its changelog.
    # The changelogs are created beforehand (meterstream/processes/worker.py); Faust is
    # given the same configuration in case it has to create one itself.
    changelog_config = {"min.insync.replicas": str(settings.min_insync_replicas)}
    seen = app.Table("seen", default=None, partitions=partitions, key_type=bytes,
                     value_type=bytes, options=rocksdb_options(partitions),
                     extra_topic_configs=changelog_config)
    usage_table = app.Table("usage", default=None, partitions=partitions,
                            options=rocksdb_options(partitions),
                            extra_topic_configs=changelog_config)
    assert tuple(app.tables) == TABLES
    grace_ms = int(settings.late_grace * 1000)
    usage_store = FaustPartitions(usage_table)

    def usage_entries(partition: int) -> Iterator[tuple[Any, Any]]:
        for key, value in usage_store.items_from(partition, b""):
            yield orjson.loads(key), orjson.loads(value)

    # Room for the record's framing and headers under the producer's limit.
    state = UsageState(CachedTable(usage_table, lambda: current_event() is not None),
                       grace_ms, settings.worker_max_users, max_request_size - 4096,
                       scan=usage_entries)
    send = producer_send(app, destinations)

    async def publish_alert(key: bytes, value: bytes) -> Any:
        return await alerts_topic.send(key=key, value=value)

    alert_log = AlertLog(KafkaConnection.of(settings), topics.alerts.name, publish_alert,
                         settings.worker_max_user_alerts)
    def assigned() -> set[int]:
        return {tp.partition for tp in app.consumer.assignment()
                if tp.topic == raw.get_topic_name()}

    health = StreamHealth(state.table, state.expiry, health_rules(settings))
    processor = RawProcessor(
        Deduplicator(FaustPartitions(seen), int(settings.dedup_retention * 1000)),
        state,
        alert_log,
        RunawayDetector(state, settings.runaway_multiple, settings.runaway_min_calls),
        registry, send, grace_ms, assigned,
        priced, max_request_size - 4096, health)
    committed = CommittedOffsets(KafkaConnection.of(settings), settings.namespace)

    async def start_offset(partition: int) -> int:
        tp = TP(raw.get_topic_name(), partition)
        earliest = (await app.consumer.earliest_offsets(tp)).get(tp) or 0
        return max(await committed.offset(tp.topic, partition), earliest)

    guard = StallGuard(raw.get_topic_name(), idle_seconds=5.0, start_offset=start_offset)
    agent = RawAgent(processor, guard, registry, send, app.crash,
                     settings.worker_max_attempts, consumer_seek(app),
                     lambda message: untrack(app.consumer, message))
    add_agent(app, raw, registry, agent, committed)
    attach_alert_delivery(app, settings, topics.alerts.name, topics.dead_letters.name)
    attach_enforcement(app, settings, registry, topics.alerts.name)
    add_quota_page(app, raw, registry, state)
    status = StreamStatusCheck(
        registry, alert_log, assigned, settings.partitions,
        PlatformStatus(settings.convex_api_url, f"{settings.public_url}/v1/convex/logs"), clock)
    check = HealthCheck(health, registry, alert_log, assigned, clock, status.failing)
    add_health_check(app, check, settings.health_check_interval)
    add_health_check(app, status, settings.health_status_interval)
    add_health_pages(app, raw, registry, health, check, status, settings.partitions, clock)
    watch_readiness(app, registry, readiness)
    if not settings.metrics_host:
        add_probe_pages(app, readiness)
    add_openapi_page(app, worker_document(probes=not settings.metrics_host))
    return app


def watch_readiness(app: faust.App, registry: RegistryView, readiness: Readiness) -> None:
    """Ready once the registry is read, partitions were assigned, and the tables of the
    partitions it owns are restored; not ready again while a rebalance moves partitions
    and their tables are restored (its quota answers would then be wrong or missing)."""
    assigned = False

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def note_assignment(_: faust.App, _assigned: set[Any], **__: Any) -> None:
        nonlocal assigned
        assigned = True

    readiness.add("registry", lambda: registry.loaded)
    readiness.add("partitions", lambda: assigned and not app.rebalancing)
    # Recovery's `completed` is set once the first assignment's tables are restored (or
    # none needed restoring); `in_recovery` while a later rebalance's are.
    readiness.add("tables", lambda: cast(Any, app.tables).recovery.completed.is_set()
                  and not app.in_recovery)


def add_probe_pages(app: faust.App, readiness: Readiness) -> None:
    """/healthz, /readyz and /metrics on the worker's own web server, open to all
    (processors/web_access.py lets them through)."""

    @app.page("/healthz")
    async def healthz(web: Any, _request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: Any, _request: Any) -> Any:
        status, body = readiness.answer()
        return web.json(body, status=status)

    app.page("/metrics")(metrics_page)


def add_openapi_page(app: faust.App, spec: dict[str, Any]) -> None:
    """/openapi.json: the worker's OpenAPI document, open to all like the probes
    (processors/web_access.py): it describes the API, it holds no data."""
    body = orjson.dumps(spec)

    @app.page(OPENAPI_PATH)
    async def openapi(web: Any, _request: Any) -> Any:
        return web.bytes(body, content_type="application/json")


def consumer_seek(app: faust.App) -> Callable[[Any, int], Awaitable[None]]:
    """Seeks a partition of the app's consumer in the consumer's own thread. Faust's
    `Consumer.seek` calls aiokafka's from the caller's thread, where it can change the
    fetcher's buffers while the consumer thread iterates them (seen: the fetcher crashed
    with a KeyError in aiokafka's `fetched_records`, and the worker stopped)."""

    async def seek(tp: Any, offset: int) -> None:
        # Every seek goes back to the partition's next offset to process: what Faust
        # tracks from there on will come again (processors/stall_guard.py).
        untrack_from(app.consumer, tp, offset)
        # seek_wait also moves Faust's read offset back, so the re-fetch is not dropped.
        await cast(Any, app.consumer)._thread.seek_wait({tp: offset})

    return seek


def worker_datadir(settings: Settings) -> Path:
    """One data directory per worker process: RocksDB locks each partition's database
    for one process, so workers on one machine (told apart by their web port) must not
    share theirs."""
    return settings.data_dir / "worker" / f"port-{settings.worker_port}"


def faust_app(settings: Settings, max_request_size: int) -> faust.App:
    return faust.App(
        settings.namespace,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap.split(",")],
        store="rocksdb://",
        autodiscover=False,
        datadir=str(worker_datadir(settings)),
        web_bind=settings.bind_host,
        web_port=settings.worker_port,
        web_host=settings.bind_host,
        # Every route of the web server but the probes needs a token, checked before
        # any view runs (and before Faust forwards a request to another worker).
        # aiohttp's own refusals (404, 405) answer in the JSON error shape too.
        web_application_options={"middlewares": [
            json_errors, api_guard(settings.read_token, settings.admin_token)]},
        # Faust's built-in pages are off: /table/... serves every table's contents (all
        # tenants' usage), /router/... the cluster's layout, /graph, /stats and
        # /performance its internals. The quota page's forwarding to the owning worker
        # does not need them: it asks the partition assignor, not /router.
        web_tables_enabled=False,
        web_router_enabled=False,
        web_stats_enabled=False,
        web_graph_enabled=False,
        web_metrics_enabled=False,
        debug=False,
        # Faust lets an environment variable override any of these (APP_WEB_TABLES_ENABLED
        # would reopen /table); meterstream reads its configuration from its own variables
        # only (meterstream/core/config.py), so Faust gets an empty environment.
        env={},
        topic_partitions=settings.partitions,
        # Every topic Faust creates (changelog, leader, repartition) is replicated so.
        topic_replication_factor=settings.replication_factor,
        producer_acks=-1,
        # The split records are JSON with every field named in every record: zstd at
        # level 1 shrinks them ~20x at over 1 GB/s, and writing them to the socket
        # (loopback or not) was the worker's single largest cost.
        producer_compression_type="zstd",
        consumer_auto_offset_reset="earliest",
        # TLS and SASL as every other client (meterstream/core/kafka_client.py).
        broker_credentials=faust_credentials(settings.kafka_security),
        # Faust's default of 60 s makes every start and rebalance slow.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        producer_max_request_size=max_request_size,
        consumer_max_fetch_size=16 * 1024 * 1024,
        broker_commit_interval=settings.worker_commit_interval,
        broker_commit_every=1_000_000,  # by time only
    )


def _topic(app: faust.App, name: str, partitions: int) -> faust.TopicT:
    return app.topic(name, value_serializer="raw", key_serializer="raw",
                     partitions=partitions)


def producer_send(app: faust.App, destinations: dict[str, faust.TopicT]) -> Send:
    """Sends (route, key, value) to the route's topic; returns the delivery future."""
    names = {route: topic.get_topic_name() for route, topic in destinations.items()}

    async def send(route: str, key: bytes, value: bytes,
                   headers: list[tuple[str, bytes]] | None = None) -> Any:
        # Straight to the producer: Faust's Topic.send costs more per message than
        # splitting a whole body (channels, FutureMessage, a debug log record).
        # `headers`: the record format's (meterstream/core/record_format.py).
        return await app.producer.send(names[route], key, value,
                                       partition=None, timestamp=None, headers=headers)

    return send


def add_agent(app: faust.App, raw: faust.TopicT, registry: RegistryView,
              agent: RawAgent, committed: CommittedOffsets) -> None:
    """The agent on the raw topic, the registry it waits for, and its stall check."""

    # mode's SignalHandlerT requires a `signal` argument typed by a name no receiver can
    # match, so every receiver fails the check: the ignores below.
    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def forget_revoked(_: faust.App, revoked: set[Any], **__: Any) -> None:
        raw_name = raw.get_topic_name()
        agent.forget_partitions({tp.partition for tp in revoked if tp.topic == raw_name})

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def count_assigned(_: faust.App, assigned: set[Any], **__: Any) -> None:
        # Faust sends the whole new assignment, not only what was added.
        raw_name = raw.get_topic_name()
        metrics.RAW_PARTITIONS.set(sum(1 for tp in assigned if tp.topic == raw_name))

    @app.task
    async def follow_registry() -> None:
        registry.start()

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def stop_registry(_: faust.App, **__: Any) -> None:
        await registry.stop()
        await committed.close()

    app.agent(raw, name="split_raw", concurrency=1)(agent.run)

    @app.timer(interval=2.0)
    async def check_stalls() -> None:
        if not app.rebalancing:
            await agent.check_stalls(app.consumer)


def _registered(registry: RegistryView, deployment: str) -> Deployment | None:
    """A per-deployment page's deployment: None when not registered, or removed."""
    record = registry.get(deployment)
    return None if record is None or record.removed_at else record


def _unknown(view: faust.web.View, deployment: str) -> faust.web.Response:
    return view.json({"error": f"deployment {deployment!r} is not registered",
                      "reason": "unknown_deployment"}, status=404)


def add_quota_page(app: faust.App, raw: faust.TopicT, registry: RegistryView,
                   state: UsageState) -> None:
    """`GET /v1/quota/{deployment}[?at=ms][&user=id]`, answered by the worker that owns the
    deployment's raw partition (Faust forwards the request there)."""

    @app.page("/v1/quota/{deployment}")
    class QuotaView(faust.web.View):
        @app.topic_route(topic=raw, match_info="deployment")
        async def get(self: faust.web.View, request: faust.web.Request, *_: Any,
                      deployment: str = "", **__: Any) -> faust.web.Response:
            record = _registered(registry, deployment)
            if record is None:
                return _unknown(self, deployment)
            at = request.query.get("at", "")
            if at and not at.isdigit():
                return self.json({"error": "at must be a time in ms since the epoch",
                                  "reason": "invalid"}, status=400)
            report = quota_report(deployment, quotas_from_record(record.quotas), state,
                                  int(at) if at else int(time.time() * 1000),
                                  request.query.get("user"))
            return self.bytes(orjson.dumps(report), content_type="application/json")


def wall_clock() -> int:
    return int(time.time() * 1000)


def health_rules(settings: Settings) -> HealthRules:
    return HealthRules(storage_stale_ms=int(settings.health_storage_stale * 1000),
                       silence_multiple=settings.health_silence_multiple,
                       silence_floor_ms=int(settings.health_silence_floor * 1000),
                       min_messages=settings.health_silence_min_messages)


def add_health_check(app: faust.App, check: HealthCheck | StreamStatusCheck,
                     interval: float) -> None:
    """A periodic stream health check (of the events seen, or of the Convex stream
    status), while the worker's partitions and their tables are settled (during a
    rebalance another worker may own a deployment already)."""

    @app.timer(interval=interval, name=f"{type(check).__name__}.run")
    async def check_health() -> None:
        if (app.rebalancing or app.in_recovery
                or not cast(Any, app.tables).recovery.completed.is_set()):
            return
        await run_check(check)


async def run_check(check: HealthCheck | StreamStatusCheck) -> bool:
    """One pass of a check; False if it raised (a broker or registry hiccup): the checks
    are best-effort and the next pass does the same work again, so the failure is
    logged instead of crashing the worker, which owns the usage too."""
    try:
        await check.run()
    except Exception:
        metrics.HEALTH_CHECK_FAILURES.labels(type(check).__name__).inc()
        log.exception("stream health check failed; the next one tries again")
        return False
    return True


def add_health_pages(app: faust.App, raw: faust.TopicT, registry: RegistryView,
                     health: StreamHealth, check: HealthCheck, status: StreamStatusCheck,
                     partitions: int, clock: Clock) -> None:
    """`GET /v1/deployments/{deployment}/health`, answered by the worker that owns the
    deployment (as the quota page), and `GET /v1/health/fleet`: this worker's counts
    by state added to every other worker's (asked with `?local=1` and the same token)."""

    @app.page("/v1/deployments/{deployment}/health")
    class HealthView(faust.web.View):
        @app.topic_route(topic=raw, match_info="deployment")
        async def get(self: faust.web.View, request: faust.web.Request, *_: Any,
                      deployment: str = "", **__: Any) -> faust.web.Response:
            record = _registered(registry, deployment)
            if record is None:
                return _unknown(self, deployment)
            report = health.report(deployment, clock())
            report["stream_status"] = status.report(deployment)
            if status.failing(deployment):
                report["state"] = FAILED
            return self.bytes(orjson.dumps(report), content_type="application/json")

    @app.page("/v1/health/fleet")
    class FleetView(faust.web.View):
        async def get(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
            mine = check.local_counts()
            if request.query.get("local"):
                return self.json(mine)
            shares = [mine]
            for url in other_workers(app, raw.get_topic_name()):
                share = await ask_worker(f"{url.rstrip('/')}/v1/health/fleet?local=1",
                                         request.headers.get("Authorization", ""))
                if share is not None:
                    shares.append(share)
            registered = sum(1 for record in registry.all() if not record.removed_at)
            return self.json(fleet(registered, shares, partitions))


def other_workers(app: faust.App, raw_topic: str) -> list[str]:
    """The web URLs of the other workers holding raw partitions (from the assignor)."""
    own = str(app.conf.canonical_url).rstrip("/")
    hosts = cast(Any, app.router).external_topics_metadata()
    return sorted(str(url) for url, topics in hosts.items()
                  if str(url).rstrip("/") != own and topics.get(raw_topic))


async def ask_worker(url: str, authorization: str) -> dict[str, Any] | None:
    """Another worker's share of the fleet view; None if it does not answer (the view
    then says which partitions it misses)."""
    try:
        async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
                    session.get(url, headers={"Authorization": authorization}) as answer):
            if answer.status != 200:
                return None
            share: dict[str, Any] = await answer.json()
            return share
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def metrics_page(web: Any, _request: Any) -> Any:
    return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])
