"""`meterstream console`: the usage console's process around meterstream/console/.

Its own service rather than a part of the sink: the console serves people (slow pages,
logins, a browser's many requests) and must not share the sink's event loop, which
inserts and commits on a schedule. It reads ClickHouse as the sink's clients do: on a
server directly, on the embedded engine through the socket of the sink that holds it
(meterstream/core/query.py), never opening the engine itself, so it can start before
the sink, restart on its own, and never keep the engine from the sink.

It follows the registry from Kafka, asks the worker (METERSTREAM_WORKER_URL)
for live quota status, serves its pages and /healthz, /readyz and /metrics on
METERSTREAM_CONSOLE_PORT, and stops on SIGTERM or SIGINT. /readyz waits for the
registry to load and for ClickHouse to answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp

from billing import pricebook
from meterstream.console.access import Tokens
from meterstream.console.clickhouse_reader import ClickHouseReader
from meterstream.console.web import Sources, application, worker_quota
from meterstream.core.config import ConfigError, Settings
from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.registry import RegistryView
from meterstream.core.service import (
    ConnectionLimits,
    Readiness,
    add_probes,
    start_site,
    stop_event,
)
from meterstream.core.topics import Topics

log = logging.getLogger("meterstream.console")

CLICKHOUSE_CHECK_SECONDS = 2.0


async def serve(settings: Settings) -> None:
    stop = stop_event()
    try:
        book = pricebook.load(settings.price_book)
    except pricebook.PriceBookError as exc:
        raise ConfigError(f"METERSTREAM_PRICE_BOOK: {exc}") from None
    registry = RegistryView(KafkaConnection.of(settings), Topics.of(settings).deployments.name)
    registry.start()
    clickhouse = ClickHouseReader(settings.clickhouse)
    reachable = False

    async def watch_clickhouse() -> None:
        nonlocal reachable
        while True:
            reachable = await asyncio.to_thread(clickhouse.ready)
            await asyncio.sleep(CLICKHOUSE_CHECK_SECONDS)

    readiness = Readiness()
    readiness.add("registry", lambda: registry.loaded)
    readiness.add("clickhouse", lambda: reachable)
    worker_token = settings.read_token or settings.admin_token
    async with aiohttp.ClientSession() as session:
        sources = Sources(clickhouse, book, registry.all,
                          lambda name: worker_quota(session, settings.worker_url, worker_token,
                                                    name))
        app = add_probes(application(Tokens(settings.admin_token, settings.read_token),
                                     sources), readiness)
        runner = await start_site(app, settings.bind_host, settings.console_port,
                                  ConnectionLimits.of(settings))
        watcher = asyncio.create_task(watch_clickhouse(), name="console-clickhouse-check")
        log.info("console listening", extra={
            "url": f"http://{settings.bind_host}:{settings.console_port}/",
            "clickhouse": settings.clickhouse.display, "worker": settings.worker_url,
            "enabled": bool(settings.admin_token or settings.read_token)})
        try:
            await stop.wait()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await runner.cleanup()
            await registry.stop()
            clickhouse.close()
    log.info("console stopped")


def main(settings: Settings) -> None:
    asyncio.run(serve(settings))
