"""What every long-running service shares: stop on SIGTERM/SIGINT, and an HTTP server."""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


def stop_event() -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT, for a graceful shutdown."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def metrics_page(_: web.Request) -> web.Response:
    response = web.Response(body=generate_latest())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def start_site(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Starts serving `app` on host:port; `await runner.cleanup()` stops it gracefully."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    return runner
