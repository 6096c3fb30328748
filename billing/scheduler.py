"""Automatic invoices: on day 2 of each month at 00:00 UTC, the month before is invoiced.

The task runs inside the sink, the process that holds the embedded engine. The
day of grace lets late events (METERSTREAM_LATE_GRACE, a day by default) land
first. At start it also invoices the previous month when that run is already
due, so a sink that was down at the time catches up; generation never
duplicates, so running it again is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from billing import invoices, pricebook
from billing.database import Database
from billing.metrics import LAST_RUN, NEXT_RUN, RUN_SECONDS, RUNS
from billing.periods import Period
from billing.pricebook import PriceBook
from billing.registry import owners
from ingest.registry import RegistryView
from meterstream.config import Settings
from meterstream.topics import Topics, ensure_topics
from sinks.clickhouse import connect

log = logging.getLogger("meterstream.billing")

RUN_DAY = 2
RETRY_SECONDS = 300.0
# Longest single wait, so that a changed clock is noticed within the hour.
MAX_WAIT_SECONDS = 3600.0

Clock = Callable[[], float]


def run_time(period: Period) -> int:
    """When the invoices of `period` are due: day 2 of the next month, 00:00 UTC (ms)."""
    following = period.next()
    return int(datetime(following.year, following.month, RUN_DAY, tzinfo=UTC).timestamp()
               * 1000)


def last_due(now_ms: int) -> Period:
    """The latest period whose run time has come."""
    period = Period.containing(now_ms).previous()
    return period if run_time(period) <= now_ms else period.previous()


class Schedule:
    """The running task; `stop()` ends it."""

    def __init__(self, task: asyncio.Task[None], view: RegistryView) -> None:
        self.task = task
        self.view = view

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.view.stop()


def start(settings: Settings, clock: Clock = time.time) -> Schedule:
    """Starts the schedule; stops the process at once when the price book is unusable."""
    try:
        book = pricebook.load(settings.price_book)
    except pricebook.PriceBookError as exc:
        log.error("unusable price book", extra={"error": str(exc)})
        raise SystemExit(f"meterstream: {exc}") from None
    topic = Topics.of(settings).deployments
    view = RegistryView(settings.kafka_bootstrap, topic.name)
    task = asyncio.create_task(_run(settings, book, view, clock), name="invoice-schedule")
    return Schedule(task, view)


async def _run(settings: Settings, book: PriceBook, view: RegistryView, clock: Clock) -> None:
    await ensure_topics(settings.kafka_bootstrap, [Topics.of(settings).deployments])
    view.start()
    await view.wait_loaded()
    # Its own client (clients share the process's embedded engine), kept for the process.
    db = Database.of_client(await asyncio.to_thread(connect, settings.clickhouse))
    done: Period | None = None
    while True:
        now = int(clock() * 1000)
        due = last_due(now)
        if due != done:
            if await _generate(db, book, view, due, now):
                done = due
                LAST_RUN.set(clock())
            else:
                await asyncio.sleep(RETRY_SECONDS)
                continue
        upcoming = run_time(due.next())
        NEXT_RUN.set(upcoming / 1000)
        await asyncio.sleep(min(max((upcoming - now) / 1000, 0.0), MAX_WAIT_SECONDS))


async def _generate(db: Database, book: PriceBook, view: RegistryView, period: Period,
                    now: int) -> bool:
    started = time.perf_counter()
    try:
        run = await asyncio.to_thread(invoices.generate, db, period, book, owners(view.all()),
                                      now, False)
    except Exception:
        RUNS.labels("error").inc()
        log.exception("scheduled invoice run failed; retrying",
                      extra={"period": period.label, "retry_in_s": RETRY_SECONDS})
        return False
    RUN_SECONDS.observe(time.perf_counter() - started)
    RUNS.labels("problems" if run.problems else "ok").inc()
    if run.problems:
        log.error("scheduled invoice run could not invoice some subjects",
                  extra={"period": period.label, "problems": run.problems})
    return True
