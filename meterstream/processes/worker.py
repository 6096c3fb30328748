"""`meterstream worker`: the Faust worker process around processors/app.py's app."""

from __future__ import annotations

import asyncio
from pathlib import Path

import faust

from meterstream.core.config import Settings
from meterstream.core.logs import logging_config
from meterstream.core.topics import Topics, ensure_topics
from processors.app import TABLES, create_app
from processors.split import ALL_ROUTES


def worker_datadir(settings: Settings) -> Path:
    """Where this worker process keeps its Faust data (table files): a directory of its
    own, named by its web port. Several workers run side by side under `up --workers N`
    (meterstream/supervisor.py), each with its own port, and two workers must not share
    a table store; the port is also stable from one start to the next, so a worker finds
    the files it left."""
    return settings.data_dir / "worker" / str(settings.worker_port)


def main(settings: Settings) -> None:
    """Ensures the worker's topics, then runs the Faust worker until SIGTERM or SIGINT
    (Faust's own signal handling stops it)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    topics = Topics.of(settings)
    loop.run_until_complete(ensure_topics(
        settings.kafka_bootstrap,
        [topics.raw, topics.dead_letters, topics.alerts, topics.deployments,
         *(topics.changelog(table) for table in TABLES),
         *(topics.records(r) for r in ALL_ROUTES)],
    ))
    app = create_app(settings)
    datadir = worker_datadir(settings)
    datadir.mkdir(parents=True, exist_ok=True)
    app.conf.datadir = datadir
    worker = faust.Worker(
        app,
        loop=loop,
        loglevel=settings.log_level,
        logging_config=logging_config("worker", settings.log_level),
        redirect_stdouts=False,
        quiet=True,
    )
    worker.execute_from_commandline()
