"""`meterstream receiver`: the Convex webhook endpoint.

A body is answered 200 only after Kafka acknowledged it with acks=all; what
Kafka has not stored gets 503 with Retry-After, which Convex retries.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from ingest import metrics
from ingest.batch import BatchError, inspect_batch
from meterstream.config import Settings
from meterstream.service import healthz, metrics_page, start_site, stop_event
from meterstream.topics import Topics, ensure_topics

log = logging.getLogger("meterstream.receiver")

CONVEX_LOGS = "/v1/convex/logs"
RETRY_AFTER_SECONDS = "5"
SHUTDOWN_SECONDS = 20.0


def _error(status: int, reason: str, message: str, where: str | None = None,
           headers: dict[str, str] | None = None) -> web.Response:
    metrics.REQUESTS.labels(CONVEX_LOGS, str(status), reason).inc()
    body: dict[str, str] = {"error": message, "reason": reason}
    if where:
        body["where"] = where
    return web.json_response(body, status=status, headers=headers)


class Receiver:
    def __init__(self, settings: Settings, producer: AIOKafkaProducer, raw_topic: str) -> None:
        self.settings = settings
        self.producer = producer
        self.raw_topic = raw_topic

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body_bytes)
        app.router.add_post(CONVEX_LOGS, self.convex_logs)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/metrics", metrics_page)
        return app

    async def convex_logs(self, request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "too_large",
                          f"body exceeds {self.settings.max_body_bytes} bytes")
        try:
            batch = inspect_batch(body)
        except BatchError as exc:
            return _error(400, "malformed", exc.message, exc.where)
        if len(batch.deployments) != 1:
            if not batch.deployments:
                return _error(400, "no_deployment",
                              "no event names its deployment (convex.deployment_name)")
            return _error(400, "several_deployments",
                          "a batch must come from one deployment, this one names "
                          f"{len(batch.deployments)}")
        (deployment,) = batch.deployments
        received_at = int(time.time() * 1000)
        started = time.perf_counter()
        metrics.IN_FLIGHT.inc()
        try:
            await asyncio.wait_for(
                self.producer.send_and_wait(
                    self.raw_topic, value=body, key=deployment.encode(),
                    headers=[("received_at", str(received_at).encode())],
                ),
                timeout=self.settings.produce_timeout,
            )
        except (KafkaError, TimeoutError) as exc:
            log.warning("kafka did not store a batch",
                        extra={"deployment": deployment, "error": repr(exc)})
            return _error(503, "kafka_unavailable", "the batch could not be stored; retry",
                          headers={"Retry-After": RETRY_AFTER_SECONDS})
        finally:
            metrics.IN_FLIGHT.dec()
        metrics.PRODUCE_SECONDS.observe(time.perf_counter() - started)
        metrics.REQUESTS.labels(CONVEX_LOGS, "200", "accepted").inc()
        for topic, count in batch.topics.items():
            metrics.EVENTS_ACCEPTED.labels(topic).inc(count)
        metrics.BYTES_ACCEPTED.labels(self.raw_topic).inc(len(body))
        return web.json_response({"accepted": batch.events})


def producer_for(settings: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=f"{settings.namespace}-receiver",
        acks="all",
        enable_idempotence=True,
        linger_ms=1,
        max_request_size=settings.max_body_bytes + 65536,
        request_timeout_ms=int(settings.produce_timeout * 1000),
    )


async def serve(settings: Settings) -> None:
    stop = stop_event()
    topics = Topics.of(settings)
    await ensure_topics(settings.kafka_bootstrap, [topics.raw])
    producer = producer_for(settings)
    await producer.start()
    try:
        runner = await start_site(Receiver(settings, producer, topics.raw.name).app(),
                                  settings.bind_host, settings.receiver_port)
        log.info("receiver listening", extra={
            "url": f"http://{settings.bind_host}:{settings.receiver_port}{CONVEX_LOGS}",
            "topic": topics.raw.name})
        await stop.wait()
        log.info("receiver stopping: finishing in-flight requests")
        # Stops accepting, then waits for the handlers still running.
        await runner.cleanup()
    finally:
        try:
            # Flushes what is still queued; bounded, so a stop with Kafka gone cannot hang.
            await asyncio.wait_for(producer.stop(), SHUTDOWN_SECONDS)
        except TimeoutError:
            log.error("the Kafka producer did not close in time")
    log.info("receiver stopped")


def main(settings: Settings) -> None:
    asyncio.run(serve(settings))
