"""Alert webhooks: every alert on `<ns>.alerts` is POSTed to each configured URL.

A request carries the alert's exact JSON bytes, `x-meterstream-alert-id: <the alert's
id>`, and a signature over a timestamp and the body:

    x-webhook-timestamp: <unix seconds when this attempt was sent>
    x-webhook-signature: sha256=<hex HMAC-SHA256 keyed by the secret's ASCII bytes,
                                 of "<timestamp>." followed by the body>

so a receiver that refuses timestamps older than a few minutes (`verify`, the snippet in
docs/worker-and-quotas.md) cannot be fed a captured request again later. Each attempt is
signed anew, so a retry an hour later still carries a fresh timestamp. A URL is retried
with exponential backoff on connection errors, timeouts, 408, 429 and 5xx until it
answers 2xx or METERSTREAM_ALERT_RETRY_SECONDS have passed; any other answer is final.
For each URL that did not take the alert, a dead letter with the reason is stored.

Delivery is at least once: an alert's offset is committed only after every URL took it
or its dead letter is stored, so a crash or restart in between delivers it again, and a
retried request may have reached the receiver already. The receiver should deduplicate
by `x-meterstream-alert-id`, which is the same for every delivery of one alert.

Delivery runs in the worker process but in its own consumer group
(`<ns>-alert-delivery`), outside Faust: a slow or failing endpoint delays the alerts
after the one in flight (they are delivered in order, one at a time, so an offset is
committed only once everything before it was delivered), but never holds the worker's
rebalances, its shutdown or its processing of usage.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import faust
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from meterstream.core import signature
from meterstream.core.config import Settings
from meterstream.core.kafka_client import KafkaConnection
from processors import metrics
from processors.background import run_beside

log = logging.getLogger(__name__)

ALERT_ID_HEADER = "x-meterstream-alert-id"
TIMESTAMP_HEADER = "x-webhook-timestamp"
SIGNATURE_HEADER = signature.HEADER  # x-webhook-signature
SIGNATURE_TOLERANCE = 300
"""Seconds a receiver should accept a timestamp away from its clock (`verify`'s default)."""
REQUEST_TIMEOUT = 10.0
DELIVERED = "delivered"
_RETRIED_STATUSES = frozenset({408, 429})
# Caps the backoff's exponent so that a long retry never overflows a float.
_MAX_DOUBLINGS = 60


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """`sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`."""
    digest = hmac.new(secret.encode("ascii"), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def verify(secret: str, body: bytes, timestamp: str, signature_header: str, now: float,
           tolerance: float = SIGNATURE_TOLERANCE) -> bool:
    """What an alert receiver checks: the timestamp is an integer within `tolerance`
    seconds of `now`, and the signature is that of the timestamp and the body."""
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        return False
    if abs(now - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, body, int(timestamp)), signature_header)


def redact(url: str) -> str:
    """The URL without credentials, query and fragment: for logs and dead letters."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass(frozen=True)
class _Answer:
    """One attempt's result; `outcome` is the attempts metric's label."""

    outcome: str  # "ok", "retry" or "refused"
    detail: str
    status: int | None = None
    retry_after: float | None = None


@dataclass(frozen=True)
class _Alert:
    body: bytes
    id: str
    deployment: str

    @classmethod
    def of(cls, body: bytes) -> _Alert:
        try:
            fields = orjson.loads(body)
        except orjson.JSONDecodeError:
            fields = None
        if not isinstance(fields, dict):
            fields = {}
        # A stable id even for a malformed alert, so that the receiver can still deduplicate.
        alert_id = fields.get("id") or "sha256:" + hashlib.sha256(body).hexdigest()
        return cls(body, str(alert_id), str(fields.get("deployment") or ""))


class AlertDelivery:
    """POSTs alerts to webhook URLs, signed, retrying each URL with backoff."""

    def __init__(self, urls: Iterable[str], secret: str, retry_seconds: float, *,
                 first_backoff: float = 0.5, max_backoff: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.urls = tuple(dict.fromkeys(urls))
        self._secret = secret
        self._clock = clock
        self.retry_seconds = retry_seconds
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
            self._session = aiohttp.ClientSession(timeout=timeout)

    async def stop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> AlertDelivery:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def deliver(self, alert: bytes) -> dict[str, str]:
        """Delivers `alert` to every URL at once; returns url -> "delivered",
        "refused <status>" or "gave up after N attempts: <last error>"."""
        parsed = _Alert.of(alert)
        headers = {"Content-Type": "application/json", ALERT_ID_HEADER: parsed.id}
        outcomes = await asyncio.gather(*(self._deliver_to(url, parsed, headers)
                                          for url in self.urls))
        return dict(zip(self.urls, outcomes, strict=True))

    async def _deliver_to(self, url: str, alert: _Alert, headers: dict[str, str]) -> str:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.retry_seconds
        fields = {"url": redact(url), "alert_id": alert.id, "deployment": alert.deployment}
        attempts, last_try = 0, False
        while True:
            attempts += 1
            answer = await self._post(url, alert.body, headers)
            metrics.ALERT_WEBHOOK_ATTEMPTS.labels(answer.outcome).inc()
            if answer.outcome == "ok":
                return _delivered(loop.time() - started, attempts, fields)
            if answer.outcome == "refused":
                return _refused(answer, fields)
            remaining = deadline - loop.time()
            if last_try or remaining <= 0:
                return _gave_up(attempts, answer, fields)
            delay = self._backoff(attempts, answer.retry_after)
            if delay >= remaining:
                # One more attempt right at the deadline rather than none.
                delay, last_try = remaining, True
            log.warning("alert webhook failed; retrying", extra={
                **fields, "attempt": attempts, "error": answer.detail,
                "retry_in": round(delay, 3)})
            await asyncio.sleep(delay)

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> _Answer:
        if self._session is None:
            raise RuntimeError("AlertDelivery.start() must be awaited before deliver()")
        timestamp = int(self._clock())
        signed = {**headers, TIMESTAMP_HEADER: str(timestamp),
                  SIGNATURE_HEADER: sign(self._secret, body, timestamp)}
        try:
            async with self._session.post(url, data=body, headers=signed,
                                          allow_redirects=False) as response:
                status = response.status
                retry_after = _seconds(response.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return _Answer("retry", _describe(exc, url))
        if 200 <= status < 300:
            return _Answer("ok", f"status {status}", status)
        if status in _RETRIED_STATUSES or status >= 500:
            return _Answer("retry", f"status {status}", status, retry_after)
        return _Answer("refused", f"status {status}", status)

    def _backoff(self, attempts: int, retry_after: float | None) -> float:
        base = self.first_backoff * 2.0 ** min(attempts - 1, _MAX_DOUBLINGS)
        # Up to 10% less, so that alerts failing together do not retry in lockstep.
        delay = min(self.max_backoff, base) * random.uniform(0.9, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff))
        return delay


def _delivered(seconds: float, attempts: int, fields: dict[str, Any]) -> str:
    metrics.ALERT_WEBHOOK_DELIVERIES.labels("delivered").inc()
    metrics.ALERT_WEBHOOK_SECONDS.observe(seconds)
    log.info("alert delivered", extra={**fields, "attempts": attempts,
                                       "seconds": round(seconds, 3)})
    return DELIVERED


def _refused(answer: _Answer, fields: dict[str, Any]) -> str:
    metrics.ALERT_WEBHOOK_DELIVERIES.labels("refused").inc()
    log.error("alert webhook refused the alert", extra={**fields, "status": answer.status})
    return f"refused {answer.status}"


def _gave_up(attempts: int, answer: _Answer, fields: dict[str, Any]) -> str:
    metrics.ALERT_WEBHOOK_DELIVERIES.labels("gave_up").inc()
    log.error("alert webhook gave up", extra={**fields, "attempts": attempts,
                                             "error": answer.detail})
    return f"gave up after {attempts} attempt{'s' if attempts != 1 else ''}: {answer.detail}"


def _seconds(retry_after: str | None) -> float | None:
    """A numeric Retry-After in seconds; None for none or an HTTP date."""
    if retry_after is None:
        return None
    try:
        seconds = float(retry_after)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _describe(exc: BaseException, url: str) -> str:
    text = str(exc)
    described = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return described.replace(url, redact(url))


class DeadLetters(Protocol):
    async def send(self, *, key: bytes | None, value: bytes) -> Awaitable[Any]: ...


async def handle_alert(delivery: AlertDelivery, alert: bytes,
                       dead_letters: DeadLetters) -> dict[str, str]:
    """Delivers one alert and stores a dead letter for each URL that did not take it;
    returns once Kafka acknowledged them, so the alert's offset may be committed."""
    outcomes = await delivery.deliver(alert)
    key = _Alert.of(alert).deployment.encode() or None
    sent = [await dead_letters.send(key=key, value=dead_letter(url, outcome, alert))
            for url, outcome in outcomes.items() if outcome != DELIVERED]
    for future in sent:
        await future
    return outcomes


def dead_letter(url: str, outcome: str, alert: bytes) -> bytes:
    try:
        orjson.loads(alert)
        embedded: Any = orjson.Fragment(alert)  # the alert's exact bytes
    except orjson.JSONDecodeError:
        embedded = alert.decode(errors="replace")
    return orjson.dumps({"reason": f"alert webhook {redact(url)}: {outcome}",
                         "alert": embedded})


class _DeadLetterProducer:
    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    async def send(self, *, key: bytes | None, value: bytes) -> Awaitable[Any]:
        return await self.producer.send(self.topic, value, key=key)


async def deliver_alerts(settings: Settings, alerts_topic: str, dead_letters_topic: str,
                         group: str) -> None:
    """Delivers every alert of `alerts_topic` until cancelled, committing each after it
    was delivered or dead-lettered; what was not committed is delivered again later."""
    kafka = KafkaConnection.of(settings)
    consumer = AIOKafkaConsumer(alerts_topic, **kafka.client_options(),
                                group_id=group, enable_auto_commit=False,
                                auto_offset_reset="earliest", client_id="alert-delivery")
    producer = AIOKafkaProducer(**kafka.client_options(), acks="all",
                                enable_idempotence=True, client_id="alert-delivery")
    delivery = AlertDelivery(settings.alert_webhooks, settings.alert_webhook_secret,
                             settings.alert_retry_seconds)
    await producer.start()
    await consumer.start()
    await delivery.start()
    dead_letters = _DeadLetterProducer(producer, dead_letters_topic)
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=1000)
            for tp, messages in batches.items():
                for message in messages:
                    await handle_alert(delivery, message.value or b"", dead_letters)
                    await consumer.commit({tp: message.offset + 1})
    finally:
        await delivery.stop()
        await consumer.stop()
        await producer.stop()


def attach_alert_delivery(app: faust.App, settings: Settings, alerts_topic: str,
                          dead_letters_topic: str) -> None:
    """Runs alert delivery beside the worker's agents when alert webhooks are configured."""
    if not settings.alert_webhooks:
        return

    run_beside(app, "alert delivery",
               lambda: deliver_alerts(settings, alerts_topic, dead_letters_topic,
                                      f"{settings.namespace}-alert-delivery"),
               "what was not committed is delivered again")
