"""What every long-running service shares: stop on SIGTERM/SIGINT, and an HTTP server
whose connections are bounded in number and in time.

aiohttp bounds a body's size but not how long a client may take to send its
headers or its body, so a client trickling one byte a second holds a
connection (and the buffer behind it) for as long as it likes. `start_site`
with `ConnectionLimits` wraps each of aiohttp's per-connection protocols in a
`_Guard` that watches the connection through three phases and closes it when
one overruns:

    idle     no request under way (after connecting, after a response): at most
             `keepalive` seconds until the next request's first byte
    headers  from that first byte until aiohttp hands the parsed request to the
             application: at most `header` seconds
    body     from then until the body has been received in full: at most `body`
             seconds; once it is in, the handler's own time is not limited here

Connections beyond `max_connections` are answered 503 and closed at once,
before aiohttp sees a byte of them. Each cut is counted in
`meterstream_http_connections_cut_total{reason}`.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from meterstream.core.config import Settings

CONNECTIONS_CUT = Counter(
    "meterstream_http_connections_cut_total",
    "Connections an HTTP server closed because a limit bit: header_timeout, body_timeout, "
    "idle_timeout, too_many_connections.",
    ["reason"],
)
CONNECTIONS_OPEN = Gauge("meterstream_http_connections_open",
                         "Connections open on this process's guarded HTTP servers (summed "
                         "over a service's live processes).", multiprocess_mode="livesum")

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
"""Set by a supervisor for processes sharing one port (meterstream/supervisor.py): each
writes its metrics to files there (prometheus_client's multiprocess mode, chosen when
it is imported) and /metrics sums them, so a scrape says the same whichever answers."""


def _raw_refusal(status: str, extra: str, message: str, reason: str) -> bytes:
    """A whole HTTP answer written to the socket before aiohttp sees the connection, in
    the JSON error shape of every other refusal (meterstream/core/openapi.py)."""
    body = b'{"error": "%s", "reason": "%s"}' % (message.encode(), reason.encode())
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}"
            f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


TOO_MANY = _raw_refusal("503 Service Unavailable", "Retry-After: 5\r\n",
                        "too many connections", "too_many_connections")
TIMED_OUT = _raw_refusal("408 Request Timeout", "", "request too slow", "header_timeout")


def stop_event() -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT, for a graceful shutdown."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def metrics_text() -> bytes:
    """This process's metrics, or, sharing a port with others (MULTIPROCESS_DIR), all of
    theirs added up."""
    if not os.environ.get(MULTIPROCESS_DIR):
        return generate_latest()
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return generate_latest(registry)


async def metrics_page(_: web.Request) -> web.Response:
    response = web.Response(body=metrics_text())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


async def healthz(_: web.Request) -> web.Response:
    """Liveness: the process runs and its event loop answers."""
    return web.json_response({"status": "ok"})


PROBES = ("/healthz", "/readyz", "/metrics")
"""What every service answers without a token: they say how it is, never what it holds."""


class Readiness:
    """Named conditions a service needs before it can do its work; `/readyz` answers 200
    when all hold, else 503, naming each (`{"ready": false, "kafka": true, ...}`), so that
    a load balancer or an orchestrator sends it work only once it can take it."""

    def __init__(self) -> None:
        self._checks: dict[str, Callable[[], bool]] = {}

    def add(self, name: str, check: Callable[[], bool]) -> None:
        """Adds a check, or replaces the one of that name (a stand-in until the part
        that knows the answer is built)."""
        self._checks[name] = check

    def state(self) -> dict[str, bool]:
        return {name: bool(check()) for name, check in self._checks.items()}

    def answer(self) -> tuple[int, dict[str, bool]]:
        """The status and body of /readyz."""
        state = self.state()
        ready = all(state.values())
        return (200 if ready else 503), {"ready": ready, **state}

    async def readyz(self, _: web.Request) -> web.Response:
        status, body = self.answer()
        return web.json_response(body, status=status)


def add_probes(app: web.Application, readiness: Readiness) -> web.Application:
    """Adds /healthz, /readyz and /metrics to `app`; returns it."""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readiness.readyz)
    app.router.add_get("/metrics", metrics_page)
    return app


@dataclass(frozen=True)
class ConnectionLimits:
    """Bounds on one server's connections (seconds, count)."""

    header: float = 10.0
    body: float = 30.0
    keepalive: float = 15.0
    max_connections: int = 1024

    @classmethod
    def of(cls, settings: Settings) -> ConnectionLimits:
        """The limits the configuration sets (METERSTREAM_HEADER_TIMEOUT, ...)."""
        return cls(header=settings.header_timeout, body=settings.body_timeout,
                   keepalive=settings.keepalive_timeout,
                   max_connections=settings.max_connections)


class _Guard(asyncio.Protocol):
    """One connection: delegates everything to aiohttp's protocol and keeps a deadline.

    Exactly one timer is pending while the connection is open: the deadline of
    the phase it is in (see the module docstring). A request entering the
    application moves it to `body`; its handler returning moves it to `idle`; a
    byte arriving while `idle` moves it to `headers`. The timer firing closes
    the connection unless the phase has no limit left (body fully received).
    """

    def __init__(self, watchdog: _Watchdog) -> None:
        self.watchdog = watchdog
        self.inner: Any = None
        self.transport: asyncio.Transport | None = None
        self.phase = "idle"
        self.timer: asyncio.TimerHandle | None = None
        self.request: web.BaseRequest | None = None
        self.refused = False

    # asyncio.Protocol, delegated

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        watchdog = self.watchdog
        if len(watchdog.guards) >= watchdog.limits.max_connections:
            self.refused = True
            CONNECTIONS_CUT.labels("too_many_connections").inc()
            transport.write(TOO_MANY)
            transport.close()
            return
        CONNECTIONS_OPEN.inc()
        self.inner = watchdog.server()
        watchdog.guards[self.inner] = self
        self.inner.connection_made(transport)
        self._enter("idle")

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if self.phase == "idle":
            self._enter("headers")
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self.refused:
            return None
        return bool(self.inner.eof_received())

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        if self.refused:
            return
        CONNECTIONS_OPEN.dec()
        self.watchdog.guards.pop(self.inner, None)
        self.request = None
        self.inner.connection_lost(exc)

    # phases

    def request_started(self, request: web.BaseRequest) -> None:
        self.request = request
        self._enter("body")

    def request_finished(self) -> None:
        self.request = None
        if self.transport is not None and not self.transport.is_closing():
            self._enter("idle")

    def _enter(self, phase: str) -> None:
        self._cancel()
        self.phase = phase
        limits = self.watchdog.limits
        seconds = {"idle": limits.keepalive, "headers": limits.header, "body": limits.body}[phase]
        self.timer = asyncio.get_running_loop().call_later(seconds, self._expired)

    def _cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.phase == "body":
            request = self.request
            if request is None or request.content.is_eof():
                return  # the body is in; the handler's time is its own business
            CONNECTIONS_CUT.labels("body_timeout").inc()
            transport.abort()
            return
        if self.phase == "headers":
            CONNECTIONS_CUT.labels("header_timeout").inc()
            transport.write(TIMED_OUT)
            transport.close()
            return
        CONNECTIONS_CUT.labels("idle_timeout").inc()
        transport.close()


class _Watchdog:
    """The protocol factory handed to the event loop instead of aiohttp's own."""

    def __init__(self, server: Callable[[], Any], limits: ConnectionLimits) -> None:
        self.server = server
        self.limits = limits
        self.guards: dict[Any, _Guard] = {}
        """aiohttp's protocol of each open connection -> its guard (their number is the
        number of open connections)."""

    def __call__(self) -> _Guard:
        return _Guard(self)

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        guard = self.guards.get(request.protocol)
        if guard is None:
            return await handler(request)
        guard.request_started(request)
        try:
            return await handler(request)
        finally:
            guard.request_finished()


class _GuardedSite(web.BaseSite):
    """A TCP site whose connections pass through a `_Watchdog`."""

    def __init__(self, runner: web.AppRunner, host: str, port: int,
                 watchdog: _Watchdog, reuse_port: bool) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._watchdog = watchdog
        self._reuse_port = reuse_port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._watchdog, self._host, self._port,
                                                reuse_address=True,
                                                reuse_port=self._reuse_port)


async def start_site(app: web.Application, host: str, port: int,
                     limits: ConnectionLimits | None = None,
                     reuse_port: bool = False) -> web.AppRunner:
    """Starts serving `app` on host:port; `await runner.cleanup()` stops it gracefully.

    `reuse_port`: for processes that share the port on purpose (SO_REUSEPORT); off, a
    second process started on a port in use fails instead of silently sharing it.

    With `limits`, every connection is bounded as the module docstring says. Bodies are
    never inflated (no service takes a compressed one: the receiver refuses a
    Content-Encoding with 415): aiohttp would otherwise inflate them before any handler
    runs, and refuse an encoding it cannot inflate with a plain-text 400 of its own."""
    if limits is None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               auto_decompress=False)
        await runner.setup()
        await web.TCPSite(runner, host, port, reuse_address=True,
                          reuse_port=reuse_port).start()
        return runner
    watchdog = _Watchdog(lambda: None, limits)
    app.middlewares.insert(0, watchdog.middleware)
    # aiohttp's own keep-alive timer stays at its (long) default: the watchdog's fires
    # first and counts the cut.
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           auto_decompress=False)
    await runner.setup()
    server = runner.server
    assert server is not None
    watchdog.server = server
    await _GuardedSite(runner, host, port, watchdog, reuse_port).start()
    return runner
