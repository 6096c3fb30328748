"""`meterstream receiver`: the receiver process around ingest/receiver.py's Receiver."""

from __future__ import annotations

import asyncio
import logging

from ingest.producer import Producer
from ingest.receiver import CONVEX_LOGS, Receiver
from meterstream.core.config import Settings
from meterstream.core.registry import RegistryView
from meterstream.core.service import ConnectionLimits, start_site, stop_event
from meterstream.core.topics import Topics

log = logging.getLogger("meterstream.receiver")

SHUTDOWN_SECONDS = 20.0


def limits(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits(header=settings.header_timeout, body=settings.body_timeout,
                            keepalive=settings.keepalive_timeout,
                            max_connections=settings.max_connections)


async def serve(settings: Settings) -> None:
    stop = stop_event()
    topics = Topics.of(settings)
    # With Kafka away the receiver still starts, answers 503 and is not ready until the
    # producer connects.
    producer = Producer(settings, [topics.raw, topics.deployments])
    registry = RegistryView(settings.kafka_bootstrap, topics.deployments.name)
    producer.start()
    registry.start(after=producer.connected)
    receiver = Receiver(settings, producer, registry, topics)
    runner = await start_site(receiver.app(), settings.bind_host, settings.receiver_port,
                              limits(settings))
    admin_runner = await start_site(receiver.admin_app(), settings.admin_host,
                                    settings.admin_port, limits(settings))
    log.info("receiver listening", extra={
        "url": f"http://{settings.bind_host}:{settings.receiver_port}{CONVEX_LOGS}",
        "admin_url": f"http://{settings.admin_host}:{settings.admin_port}",
        "topic": topics.raw.name, "admin_api": bool(settings.admin_token)})
    try:
        await _until_first(stop, producer.refused)
        if producer.refusal is not None:
            log.error("receiver stopping: %s", producer.refusal)
        log.info("receiver stopping: finishing in-flight requests")
        # Stops accepting, then waits for the handlers still running.
        await runner.cleanup()
        await admin_runner.cleanup()
    finally:
        await registry.stop()
        try:
            # Flushes what is still queued; bounded, so a stop with Kafka gone cannot hang.
            await asyncio.wait_for(producer.stop(), SHUTDOWN_SECONDS)
        except TimeoutError:
            log.error("the Kafka producer did not close in time")
    log.info("receiver stopped")
    if producer.refusal is not None:
        raise producer.refusal


async def _until_first(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


def main(settings: Settings) -> None:
    asyncio.run(serve(settings))
