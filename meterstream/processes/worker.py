"""`meterstream worker`: the Faust worker process around processors/app.py's app.

With METERSTREAM_METRICS_HOST set, the probes (/healthz, /readyz, /metrics) are served
by a listener of their own, METERSTREAM_METRICS_HOST:METERSTREAM_WORKER_METRICS_PORT,
and not on the API port. That listener is a service the Faust worker starts before the
app and stops after it: Faust starts the app's own tasks and services only once table
recovery is over, and a liveness probe must answer while a worker restores its tables.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import faust
from aiohttp import web
from mode import Service

from meterstream.core.config import Settings
from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.lag import LagMeter
from meterstream.core.logs import logging_config
from meterstream.core.service import ConnectionLimits, Readiness, add_probes, start_site
from meterstream.core.topics import Topics, ensure_topics
from processors import metrics
from processors.app import TABLES, create_app, worker_datadir
from processors.ordered_store import mark_clean, open_local_state
from processors.split import ALL_ROUTES


def main(settings: Settings) -> None:
    """Ensures the worker's topics, then runs the Faust worker until SIGTERM or SIGINT
    (Faust's own signal handling stops it)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    topics = Topics.of(settings)
    loop.run_until_complete(ensure_topics(
        KafkaConnection.of(settings),
        [topics.raw, topics.dead_letters, topics.alerts, topics.deployments,
         topics.faust_leader,
         *(topics.changelog(table) for table in TABLES),
         *(topics.records(r) for r in ALL_ROUTES)],
    ))
    worker_datadir(settings).mkdir(parents=True, exist_ok=True)
    readiness = Readiness()
    app = create_app(settings, readiness=readiness)
    tabledir = Path(app.conf.tabledir)
    open_local_state(tabledir)
    probes = ([ProbeServer(readiness, settings.metrics_host, settings.worker_metrics_port,
                           ConnectionLimits.of(settings), loop=loop)]
              if settings.metrics_host else [])
    worker = faust_worker(app, settings, [*probes, lag_service(app, settings,
                                                                 topics.raw.name, loop)], loop)
    try:
        worker.execute_from_commandline()
    except SystemExit as stop:
        # Faust exits 0 only once it stopped cleanly, its producer flushed: the local
        # state on disk matches the changelog and may be kept for the next start.
        if stop.code in (0, None):
            mark_clean(tabledir)
        raise


class ProbeServer(Service):
    """The worker's probes on a listener of their own (METERSTREAM_METRICS_HOST)."""

    def __init__(self, readiness: Readiness, host: str, port: int, limits: ConnectionLimits,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.readiness = readiness
        self.host = host
        self.port = port
        self.limits = limits
        self._runner: web.AppRunner | None = None

    async def on_start(self) -> None:
        self._runner = await start_site(add_probes(web.Application(), self.readiness),
                                        self.host, self.port, self.limits)

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def faust_worker(app: faust.App, settings: Settings, services: list[Service],
                 loop: asyncio.AbstractEventLoop) -> faust.Worker:
    """Faust's worker, logging as every meterstream service does."""
    worker = faust.Worker(
        app,
        *services,
        loop=loop,
        loglevel=settings.log_level,
        logging_config=logging_config("worker", settings.log_level, settings.log_format),
        redirect_stdouts=False,
        quiet=True,
    )
    # No terminal spinner: at METERSTREAM_LOG_LEVEL warning or error, Faust gives the root
    # logger a spinner handler and sets it to DEBUG (faust/worker.py
    # _setup_spinner_handler), so every Faust debug line, one per record sent, was built
    # and handed to it: about 2 % of the worker's CPU under load, and a spinner drawn over
    # the service's own log lines.
    worker.spinner = None
    return worker


def lag_service(app: faust.App, settings: Settings, raw_topic: str,
                loop: asyncio.AbstractEventLoop) -> LagService:
    """The worker's consumer lag on the raw partitions it owns, followed from Faust's
    assignment signals (Faust sends the whole new assignment each time)."""
    owned: set[tuple[str, int]] = set()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def forget_lag(_: faust.App, revoked: set[Any], **__: Any) -> None:
        owned.difference_update((tp.topic, tp.partition) for tp in revoked)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def follow_lag(_: faust.App, assigned: set[Any], **__: Any) -> None:
        owned.clear()
        owned.update((tp.topic, tp.partition) for tp in assigned if tp.topic == raw_topic)

    meter = LagMeter(KafkaConnection.of(settings), settings.namespace, metrics.CONSUMER_LAG,
                     lambda: owned, client_id=f"{settings.namespace}-worker-lag")
    return LagService(meter, settings.lag_interval, loop=loop)


class LagService(Service):
    """Runs a LagMeter beside the app: a service of the Faust worker, not a timer of the
    app, so that the lag is measured during table recovery too (Faust starts the app's
    timers only after it)."""

    def __init__(self, meter: LagMeter, interval: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.meter = meter
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        self._task = asyncio.ensure_future(self.meter.run(self.interval))

    async def on_stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
