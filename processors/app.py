"""`meterstream worker`: the Faust app.

One agent reads the raw bodies (processors/raw_processor.py does the work): it
drops repeats, forwards per body one message with the normalised records of
each event type present to that type's topic (`<ns>.function_execution`, ...,
`<ns>.other`), keeps the live usage windows in the `usage` table and publishes
alerts to `<ns>.alerts`. Working per body, not per event, spreads Faust's
per-message cost over up to 128 events. The web server answers
`GET /v1/quota/{deployment}`, routed to the worker that owns the deployment.

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

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from meterstream.core.config import Settings
from meterstream.core.logs import logging_config
from meterstream.core.quotas import quotas_from_record
from meterstream.core.registry import RegistryView
from meterstream.core.topics import ORIGIN_HEADER, RECEIVED_AT_HEADER, Topics, ensure_topics
from processors import metrics
from processors.alert_log import AlertLog
from processors.alert_webhooks import attach_alert_delivery
from processors.dedup import Deduplicator
from processors.delivery_acks import Deliveries
from processors.due_alerts import RunawayDetector
from processors.poison import Poison, with_retries
from processors.priced_models import priced_model_keys
from processors.quota_status import quota_report
from processors.raw_processor import RawProcessor
from processors.split import ALL_ROUTES
from processors.stall_guard import StallGuard
from processors.state import UsageState

TABLES = ("seen", "usage")


def create_app(settings: Settings, priced: frozenset[str] | None = None) -> faust.App:
    """`priced`: the provider/model keys the live windows keep by name (None: read from
    the price book, processors/priced_models.py)."""
    if priced is None:
        priced = priced_model_keys(settings.price_book)
    topics = Topics.of(settings)
    max_request_size = settings.max_body_bytes + 65536
    app = faust.App(
        settings.namespace,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap.split(",")],
        store="memory://",
        autodiscover=False,
        datadir=str(settings.data_dir / "worker"),
        web_bind=settings.bind_host,
        web_port=settings.worker_port,
        web_host=settings.bind_host,
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        producer_acks=-1,
        # The split records are JSON with every field named in every record: zstd at
        # level 1 shrinks them ~20x at over 1 GB/s, and writing them to the socket
        # (loopback or not) was the worker's single largest cost.
        producer_compression_type="zstd",
        consumer_auto_offset_reset="earliest",
        # Faust's default of 60 s makes every start and rebalance slow.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        producer_max_request_size=max_request_size,
        consumer_max_fetch_size=16 * 1024 * 1024,
        broker_commit_interval=settings.worker_commit_interval,
        broker_commit_every=1_000_000,  # by time only
    )
    raw = app.topic(topics.raw.name, value_serializer="raw", key_serializer="raw",
                    partitions=settings.partitions)
    routed = {route: app.topic(topics.records(route).name, value_serializer="raw",
                               key_serializer="raw", partitions=settings.partitions)
              for route in ALL_ROUTES}
    dead_letters = app.topic(topics.dead_letters.name, value_serializer="raw",
                             key_serializer="raw", partitions=1)

    alerts_topic = app.topic(topics.alerts.name, value_serializer="raw", key_serializer="raw",
                             partitions=settings.partitions)
    registry = RegistryView(settings.kafka_bootstrap, topics.deployments.name)
    seen = app.Table("seen", default=None, partitions=settings.partitions)
    usage_table = app.Table("usage", default=None, partitions=settings.partitions)
    assert tuple(app.tables) == TABLES
    grace_ms = int(settings.late_grace * 1000)
    # Room for the record's framing and headers under the producer's limit.
    state = UsageState(usage_table, grace_ms, settings.worker_max_users,
                       max_request_size - 4096)
    destinations = {**routed, "dead_letter": dead_letters}

    destination_names = {route: topic.get_topic_name()
                         for route, topic in destinations.items()}

    async def send(route: str, key: bytes, value: bytes) -> Any:
        # Straight to the producer: Faust's Topic.send costs more per message than
        # splitting a whole body (channels, FutureMessage, a debug log record).
        return await app.producer.send(destination_names[route], key, value,
                                       partition=None, timestamp=None, headers=None)

    async def publish_alert(key: bytes, value: bytes) -> Any:
        return await alerts_topic.send(key=key, value=value)

    alert_log = AlertLog(settings.kafka_bootstrap, topics.alerts.name, publish_alert,
                         settings.worker_max_user_alerts)
    processor = RawProcessor(
        Deduplicator(seen, int(settings.dedup_retention * 1000)),
        state,
        alert_log,
        RunawayDetector(state, settings.runaway_multiple, settings.runaway_min_calls),
        registry, send, grace_ms,
        lambda: {tp.partition for tp in app.consumer.assignment()
                 if tp.topic == raw.get_topic_name()},
        priced, max_request_size - 4096)

    @app.on_partitions_revoked.connect
    async def forget_revoked(_: faust.App, revoked: set[Any], **__: Any) -> None:
        raw_name = raw.get_topic_name()
        partitions = {tp.partition for tp in revoked if tp.topic == raw_name}
        processor.forget_partitions(partitions)
        guard.forget_partitions(partitions)

    @app.task
    async def follow_registry() -> None:
        registry.start()

    @app.on_before_shutdown.connect
    async def stop_registry(_: faust.App, **__: Any) -> None:
        await registry.stop()

    async def split_raw(stream: faust.StreamT[bytes]) -> None:
        manual = stream.noack()
        streams[:] = [manual]

        async def ack(done: tuple[faust.EventT, bool]) -> None:
            event, counted = done
            await manual.ack(event)
            if counted:  # a repeated body is counted as a duplicate instead
                metrics.RAW_BATCHES.inc()

        deliveries = Deliveries(ack, app.crash)
        deliveries.start()
        try:
            async for body in manual:
                event = manual.current_event
                assert event is not None
                guard.started()
                # Quotas must be known before usage is judged. (Waited for here, not before
                # the loop: an agent that starts iterating late can miss its subscription.)
                await registry.wait_loaded()
                message = event.message
                key = event.key or b""
                try:
                    pending = await with_retries(
                        attempt(processor, key, body, message), settings.worker_max_attempts,
                        {"raw_partition": message.partition, "raw_offset": message.offset,
                         "key": key.decode(errors="replace"), "body_bytes": len(body)},
                        lambda: processor.stage)
                except Poison as poison:
                    metrics.POISON.inc()
                    pending = [await send("dead_letter", key, orjson.dumps(poison.letter))]
                guard.processed(message.partition, message.offset)
                await deliveries.add((event, pending is not None), pending or [])
        finally:
            await deliveries.stop()

    app.agent(raw, name="split_raw", concurrency=1)(split_raw)
    streams: list[faust.StreamT[bytes]] = []
    guard = StallGuard(raw.get_topic_name(), idle_seconds=5.0)

    @app.timer(interval=2.0)
    async def check_stalls() -> None:
        if streams and not app.rebalancing:
            await guard.check(app.consumer, streams[0].channel.queue.empty())
    attach_alert_delivery(app, settings, topics.alerts.name, topics.dead_letters.name)

    @app.page("/v1/quota/{deployment}")
    class QuotaView(faust.web.View):
        @app.topic_route(topic=raw, match_info="deployment")
        async def get(self, request: faust.web.Request, deployment: str) -> faust.web.Response:
            record = registry.get(deployment)
            if record is None or record.removed_at:
                return self.json({"error": f"deployment {deployment!r} is not registered",
                                  "reason": "unknown_deployment"}, status=404)
            at = request.query.get("at", "")
            if at and not at.isdigit():
                return self.json({"error": "at must be a time in ms since the epoch",
                                  "reason": "invalid"}, status=400)
            report = quota_report(deployment, quotas_from_record(record.quotas), state,
                                  int(at) if at else int(time.time() * 1000),
                                  request.query.get("user"))
            return self.bytes(orjson.dumps(report), content_type="application/json")

    async def metrics_page(web: Any, _request: Any) -> Any:
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    app.page("/metrics")(metrics_page)
    return app


def header(message: Any, wanted: str) -> bytes | None:
    """The value of a raw message's header (meterstream/core/topics.py), None when absent."""
    for name, value in message.headers or ():
        if name == wanted:
            return bytes(value)
    return None


def received_at(message: Any) -> int:
    """When the receiver acknowledged the body (ms): the reference time for late events,
    the same however late the worker processes it."""
    value = header(message, RECEIVED_AT_HEADER)
    return int(value) if value is not None else int(message.timestamp * 1000)


def attempt(processor: RawProcessor, key: bytes, body: bytes,
            message: Any) -> Callable[[], Awaitable[list[Awaitable[Any]] | None]]:
    """One try at processing a raw message (the clock read at each try)."""
    return lambda: processor.process(key, body, message.partition, message.offset,
                                     received_at(message), int(time.time() * 1000),
                                     # None from a receiver that predates the header
                                     header(message, ORIGIN_HEADER))


def main(settings: Settings) -> None:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    topics = Topics.of(settings)
    loop.run_until_complete(ensure_topics(
        settings.kafka_bootstrap,
        [topics.raw, topics.dead_letters, topics.alerts, topics.deployments,
         *(topics.changelog(table) for table in TABLES),
         *(topics.records(r) for r in ALL_ROUTES)],
    ))
    (settings.data_dir / "worker").mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    worker = faust.Worker(
        app,
        loop=loop,
        loglevel=settings.log_level,
        logging_config=logging_config("worker", settings.log_level),
        redirect_stdouts=False,
        quiet=True,
    )
    worker.execute_from_commandline()
