"""A loop of the worker's own beside Faust's agents: started with the app, started again
5 s after it fails (Kafka out of reach, most often), cancelled before the app shuts down.
Alert delivery and enforcement run this way, each in a consumer group of its own."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import faust

log = logging.getLogger(__name__)

RESTART_SECONDS = 5


def run_beside(app: faust.App, name: str, run: Callable[[], Awaitable[None]],
               after_failure: str) -> None:
    """Runs `run()` as the task `name` for as long as the app runs; when it raises, logs
    `after_failure` (why starting it again loses nothing) and starts it again."""

    async def keep_running() -> None:
        while True:
            try:
                await run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(f"{name} stopped; restarting", extra={
                    "error": repr(exc), "retry_in_s": RESTART_SECONDS, "why": after_failure})
                await asyncio.sleep(RESTART_SECONDS)

    async def start() -> None:
        task = asyncio.create_task(keep_running(), name=name)

        # mode's SignalHandlerT requires a `signal` argument typed by a name no receiver
        # can match, so every receiver fails the check (processors/app.py has the same).
        @app.on_before_shutdown.connect  # type: ignore[arg-type]
        async def stop(_: faust.App, **__: Any) -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    app.task(start)
