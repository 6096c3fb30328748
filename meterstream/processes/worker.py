"""`meterstream worker`: the Faust worker process around processors/app.py's app."""

from __future__ import annotations

import asyncio
from pathlib import Path

import faust

from meterstream.core.config import Settings
from meterstream.core.logs import logging_config
from meterstream.core.topics import Topics, ensure_topics
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
        settings.kafka_bootstrap,
        [topics.raw, topics.dead_letters, topics.alerts, topics.deployments,
         topics.faust_leader,
         *(topics.changelog(table) for table in TABLES),
         *(topics.records(r) for r in ALL_ROUTES)],
    ))
    worker_datadir(settings).mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    tabledir = Path(app.conf.tabledir)
    open_local_state(tabledir)
    worker = faust.Worker(
        app,
        loop=loop,
        loglevel=settings.log_level,
        logging_config=logging_config("worker", settings.log_level),
        redirect_stdouts=False,
        quiet=True,
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as stop:
        # Faust exits 0 only once it stopped cleanly, its producer flushed: the local
        # state on disk matches the changelog and may be kept for the next start.
        if stop.code in (0, None):
            mark_clean(tabledir)
        raise
