"""`meterstream worker`: the Faust app.

One agent reads the raw bodies and forwards, per body, one message with the
normalised records of each event type present to that type's topic
(`<ns>.function_execution`, `<ns>.current_storage_usage`, ..., `<ns>.other`).
Working per body, not per event, spreads Faust's per-message cost over up to
128 events.

Concurrency stays at 1: with more, Faust can commit an offset past a message
still in flight (faust#606), and a restart would lose it. Each forward is
awaited until Kafka acknowledged it, so a raw body's offset is committed only
after everything split out of it is stored.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import faust
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from meterstream.config import Settings
from meterstream.logs import logging_config
from meterstream.topics import Topics, ensure_topics
from processors import metrics
from processors.dedup import Deduplicator
from processors.split import ALL_ROUTES, split_body


def create_app(settings: Settings) -> faust.App:
    topics = Topics.of(settings)
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
        consumer_auto_offset_reset="earliest",
        # Faust's default of 60 s makes every start and rebalance slow.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        producer_max_request_size=settings.max_body_bytes + 65536,
        consumer_max_fetch_size=16 * 1024 * 1024,
    )
    raw = app.topic(topics.raw.name, value_serializer="raw", key_serializer="raw",
                    partitions=settings.partitions)
    routed = {route: app.topic(topics.records(route).name, value_serializer="raw",
                               key_serializer="raw", partitions=settings.partitions)
              for route in ALL_ROUTES}
    dead_letters = app.topic(topics.dead_letters.name, value_serializer="raw",
                             key_serializer="raw", partitions=1)

    seen = app.Table("seen", default=None, partitions=settings.partitions)
    dedup = Deduplicator(seen, int(settings.dedup_retention * 1000))

    @app.on_partitions_revoked.connect
    async def forget_revoked(_: faust.App, revoked: set[Any], **__: Any) -> None:
        raw_name = raw.get_topic_name()
        dedup.forget_partitions({tp.partition for tp in revoked if tp.topic == raw_name})

    async def split_raw(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            message = event.message
            partition, offset = message.partition, message.offset
            now = int(time.time() * 1000)
            metrics.EXPIRED.inc(dedup.expire(partition, now))
            if dedup.seen_before(Deduplicator.body_key(event.key, event.value),
                                 partition, offset, now):
                metrics.DUPLICATES.labels("body").inc()
                continue
            batch = split_body(event.value, partition, offset)
            usage = batch.routed.pop("agent_usage", [])
            kept = _first_of_each_id(usage, dedup, partition, offset, now)
            metrics.DUPLICATES.labels("agent_usage_id").inc(len(usage) - len(kept))
            if kept:
                batch.routed["agent_usage"] = kept
            sent: list[Any] = []
            for route, records in batch.routed.items():
                sent.append(await routed[route].send(key=event.key, value=orjson.dumps(records)))
                metrics.EVENTS.labels(route).inc(len(records))
            for letter in batch.dead_letters:
                sent.append(await dead_letters.send(key=event.key, value=orjson.dumps(letter)))
            # Only once Kafka stored what came out of this body may its offset be committed.
            for future in sent:
                await future
            metrics.RAW_BATCHES.inc()
            metrics.EVENTS.labels("dead_letter").inc(len(batch.dead_letters))

    app.agent(raw, name="split_raw", concurrency=1)(split_raw)

    async def metrics_page(web: Any, _request: Any) -> Any:
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    app.page("/metrics")(metrics_page)
    return app


def _first_of_each_id(records: list[dict[str, Any]], dedup: Deduplicator, partition: int,
                      offset: int, now: int) -> list[dict[str, Any]]:
    """Agent usage records whose id was not seen before, here or in an earlier message."""
    kept, here = [], set()
    for record in records:
        key = Deduplicator.record_key(record["deployment"], record["id"])
        if key in here or dedup.seen_before(key, partition, offset, now):
            continue
        here.add(key)
        kept.append(record)
    return kept


def main(settings: Settings) -> None:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    topics = Topics.of(settings)
    loop.run_until_complete(ensure_topics(
        settings.kafka_bootstrap,
        [topics.raw, topics.dead_letters, *(topics.records(r) for r in ALL_ROUTES)],
    ))
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
