"""`meterstream receiver`: the receiver process around ingest/receiver.py's Receiver.

It also serves the scoped usage view (billing/usage_view.py, `GET /v1/usage`) on the
public port: the receiver follows the read tokens' topic, reads ClickHouse without ever
holding the embedded engine (through the sink's socket, or a server;
meterstream/core/query.py `reader`) and asks a worker for quota status.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from billing import pricebook
from billing.quota_source import QuotaSource
from billing.usage_view import UsageView
from ingest.producer import Producer
from ingest.receiver import CONVEX_LOGS, Receiver
from meterstream.core.config import Settings
from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.query import reader
from meterstream.core.read_tokens import ReadTokenView
from meterstream.core.registry import RegistryView
from meterstream.core.service import ConnectionLimits, start_site, stop_event
from meterstream.core.topics import Topics
from meterstream.supervisor import SHARED_PORTS, run_receivers

log = logging.getLogger("meterstream.receiver")

SHUTDOWN_SECONDS = 20.0


def limits(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits.of(settings)


async def serve(settings: Settings, shared_ports: bool = False) -> None:
    """`shared_ports`: one of several receiver processes on the same ports
    (meterstream/supervisor.py `run_receivers`)."""
    stop = stop_event()
    topics = Topics.of(settings)
    # With Kafka away the receiver still starts, answers 503 and is not ready until the
    # producer connects.
    producer = Producer(settings, [topics.raw, topics.deployments, topics.read_tokens])
    registry = RegistryView(KafkaConnection.of(settings), topics.deployments.name)
    tokens = ReadTokenView(KafkaConnection.of(settings), topics.read_tokens.name)
    producer.start()
    registry.start(after=producer.connected)
    tokens.start(after=producer.connected)
    receiver = Receiver(settings, producer, registry, topics, tokens)
    public = receiver.app(usage_view(settings, tokens, registry).add_routes)
    runner = await start_site(public, settings.bind_host, settings.receiver_port,
                              limits(settings), reuse_port=shared_ports)
    admin_runner = await start_site(receiver.admin_app(), settings.admin_host,
                                    settings.admin_port, limits(settings),
                                    reuse_port=shared_ports)
    runners = [runner, admin_runner]
    probes = f"http://{settings.bind_host}:{settings.receiver_port}"
    if settings.metrics_host:
        # The probes on an interface of their own, off the public port.
        runners.append(await start_site(receiver.probe_app(), settings.metrics_host,
                                        settings.receiver_metrics_port, limits(settings),
                                        reuse_port=shared_ports))
        probes = f"http://{settings.metrics_host}:{settings.receiver_metrics_port}"
    log.info("receiver listening", extra={
        "url": f"http://{settings.bind_host}:{settings.receiver_port}{CONVEX_LOGS}",
        "admin_url": f"http://{settings.admin_host}:{settings.admin_port}",
        "probes_url": probes,
        "topic": topics.raw.name, "admin_api": bool(settings.admin_token)})
    try:
        await _until_first(stop, producer.refused)
        if producer.refusal is not None:
            log.error("receiver stopping: %s", producer.refusal)
        log.info("receiver stopping: finishing in-flight requests")
        # Stops accepting, then waits for the handlers still running.
        for each in runners:
            await each.cleanup()
    finally:
        await registry.stop()
        await tokens.stop()
        try:
            # Flushes what is still queued; bounded, so a stop with Kafka gone cannot hang.
            await asyncio.wait_for(producer.stop(), SHUTDOWN_SECONDS)
        except TimeoutError:
            log.error("the Kafka producer did not close in time")
    log.info("receiver stopped")
    if producer.refusal is not None:
        raise producer.refusal


def usage_view(settings: Settings, tokens: ReadTokenView, registry: RegistryView) -> UsageView:
    try:
        book = pricebook.load(settings.price_book)
    except pricebook.PriceBookError as exc:
        # Webhooks matter more than the usage view: the receiver starts, the view says 503.
        log.error("the usage view is off: the price book could not be loaded: %s", exc)
        book = None
    quotas = QuotaSource(settings.worker_url, settings.read_token or settings.admin_token)
    return UsageView(tokens, registry, book, reader(settings.clickhouse), quotas,
                     settings.usage_cors_origins)


async def _until_first(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


def main(settings: Settings) -> None:
    shared_ports = bool(os.environ.get(SHARED_PORTS))
    if settings.receiver_processes > 1 and not shared_ports:
        sys.exit(run_receivers(settings.receiver_processes))
    asyncio.run(serve(settings, shared_ports))
