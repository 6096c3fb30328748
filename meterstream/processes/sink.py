"""`meterstream sink`: the sink process around sinks/sink.py's Sink.

Around the consumption it holds the embedded ClickHouse's lock (a `meterstream sql`
started meanwhile asks this process over its socket instead, meterstream/core/query.py),
applies the schema migrations, serves /healthz, /readyz and /metrics on
METERSTREAM_SINK_PORT (on METERSTREAM_METRICS_HOST when set, else METERSTREAM_BIND_HOST),
ensures the topics, runs the invoice scheduler (billing/scheduler.py) and stops on
SIGTERM or SIGINT after storing and committing what is buffered.

The probes listen from the start, before the embedded engine's lock is taken (a
`meterstream sql` may hold it for up to ENGINE_WAIT_SECONDS) and before the migrations
(which can take a while on a server): /healthz answers at once, /readyz says 503 until the
schema is applied and the sink owns its partitions with their high-water marks loaded.
"""

from __future__ import annotations

import asyncio
import gc
import logging

from aiohttp import web

from billing import scheduler as invoice_schedule
from meterstream.core import migrate
from meterstream.core.clickhouse import EngineLock, connect
from meterstream.core.config import Settings
from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.query import serve_queries
from meterstream.core.service import (
    ConnectionLimits,
    Readiness,
    add_probes,
    start_site,
    stop_event,
)
from meterstream.core.tables import SPECS
from meterstream.core.topics import Topics, ensure_topics
from sinks.high_water import PartitionMismatch
from sinks.sink import consume

log = logging.getLogger("meterstream.sink")

# How long a starting sink waits for a `meterstream sql` that holds the embedded engine.
ENGINE_WAIT_SECONDS = 30.0


async def serve(settings: Settings) -> None:
    stop = stop_event()
    topics = Topics.of(settings)
    target = settings.clickhouse
    runners: list[web.AppRunner] = []
    readiness = Readiness()
    schema_ready = False
    readiness.add("schema", lambda: schema_ready)
    readiness.add("partitions", lambda: False)  # consume() puts the sink's own check here
    lock = EngineLock(target.chdb_path) if target.chdb_path is not None else None
    locked = False
    try:
        runners.append(await start_site(add_probes(web.Application(), readiness),
                                        settings.metrics_host or settings.bind_host,
                                        settings.sink_port, ConnectionLimits.of(settings)))
        if lock is not None:
            # After the probes: while a `meterstream sql` holds the engine, /healthz
            # answers and /readyz says why the sink is not ready (the schema).
            await asyncio.to_thread(lock.acquire, ENGINE_WAIT_SECONDS)
            locked = True
        # One client for inserts and one for user queries: each is used by one thread at a time.
        insert_client = connect(target)
        if target.chdb_path is not None:
            runners.append(await serve_queries(connect(target), target.chdb_path))
        applied = await asyncio.to_thread(migrate.apply, insert_client, target.cluster)
        schema_ready = True
        log.info("schema ready", extra={"clickhouse": target.display, "applied": applied,
                                        "cluster": target.cluster or None})
        await ensure_topics(KafkaConnection.of(settings), [
            topics.raw, topics.dead_letters, topics.alerts,
            *(topics.records(spec.route) for spec in SPECS if spec.route != "alerts")])
        # Invoices a month once its late grace passed and the worker and this sink caught
        # up past it (billing/scheduler.py).
        schedule = invoice_schedule.start(settings)
        # The batches are many small acyclic objects; collecting them generation by
        # generation costs a quarter of the sink's time at the default thresholds.
        gc.set_threshold(50_000, 20, 100)
        try:
            await consume(settings, insert_client, stop, readiness)
        finally:
            await schedule.stop()
    finally:
        for runner in runners:
            await runner.cleanup()
        if lock is not None and locked:
            lock.release()
    log.info("sink stopped")


def main(settings: Settings) -> None:
    try:
        asyncio.run(serve(settings))
    except (PartitionMismatch, migrate.ClusterError) as exc:
        log.error("sink stopped: %s", exc)
        raise SystemExit(1) from None
