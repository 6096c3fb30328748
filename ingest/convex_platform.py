"""A client of the Convex deployment Platform API for webhook log streams.

    POST {base}/create_log_stream            -> {"logStreamType", "id", "hmacSecret"}
    GET  {base}/list_log_streams             -> [LogStreamConfig]
    GET  {base}/get_log_stream/{id}          -> LogStreamConfig
    POST {base}/update_log_stream/{id}       -> 200, empty
    POST {base}/delete_log_stream/{id}       -> 200, empty
    POST {base}/rotate_webhook_secret/{id}   -> {"logStreamType", "hmacSecret"}

`base` is `https://<deployment>.convex.cloud/api/v1` by default (a template
with `{deployment}`, configurable for self-hosted backends). Requests carry
`Authorization: Convex <deploy key>`. Convex's errors `{"code", "message"}`
become ConvexApiError subclasses that keep the code; 5xx, 429 and transport
failures are retried with backoff. The deploy key appears in no error and no log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from dataclasses import dataclass
from typing import Any

import aiohttp

from meterstream.core.events import SUBSCRIBED

log = logging.getLogger("meterstream.convex_platform")

# The topics a meter needs; everything else (console lines above all) costs egress for nothing.
# (meterstream/core/events.py says which).
METERING_TOPICS: tuple[str, ...] = SUBSCRIBED
FORMATS = ("json", "jsonl")
RETRIES = 4


class ConvexApiError(RuntimeError):
    """Convex answered with an error; `code` is Convex's short code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"Convex {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class LogStreamAlreadyExists(ConvexApiError):
    pass


class LogStreamingNotEnabled(ConvexApiError):
    pass


class LogStreamDoesntExist(ConvexApiError):
    pass


class ConvexUnavailable(ConvexApiError):
    """No answer after the retries (transport errors, timeouts, 5xx, 429)."""


_BY_CODE: dict[str, type[ConvexApiError]] = {
    "LogStreamAlreadyExists": LogStreamAlreadyExists,
    "LogStreamingNotEnabled": LogStreamingNotEnabled,
    "LogStreamDoesntExist": LogStreamDoesntExist,
}


@dataclass(frozen=True)
class WebhookLogStream:
    id: str
    url: str
    format: str
    topics: list[str] | None
    status: str
    hmac_secret: str | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> WebhookLogStream:
        status = config.get("status") or {}
        return cls(id=str(config.get("id")), url=str(config.get("url")),
                   format=str(config.get("format")), topics=config.get("topics"),
                   status=str(status.get("type", "unknown")) if isinstance(status, dict)
                   else str(status),
                   hmac_secret=config.get("hmacSecret"))


class ConvexPlatform:
    """One deployment's log-stream API, authorised by its deploy key."""

    def __init__(self, session: aiohttp.ClientSession, url_template: str, deployment: str,
                 deploy_key: str, timeout: float = 15.0, backoff: float = 0.5) -> None:
        self.session = session
        self.base = url_template.replace("{deployment}", deployment).rstrip("/")
        self.deploy_key = deploy_key
        """Kept (sealed) with the deployment by provisioning, for the stream status check."""
        self._authorization = f"Convex {deploy_key}"
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.backoff = backoff

    def __repr__(self) -> str:
        return f"ConvexPlatform({self.base!r})"

    async def create_webhook_log_stream(self, url: str, format: str,
                                        topics: list[str] | None) -> tuple[str, str]:
        """Returns (log stream id, HMAC secret)."""
        answer = await self._call("POST", "/create_log_stream", {
            "logStreamType": "webhook", "url": url, "format": format, "topics": topics})
        return str(answer["id"]), str(answer["hmacSecret"])

    async def list_log_streams(self) -> list[WebhookLogStream]:
        answer = await self._call("GET", "/list_log_streams")
        return [WebhookLogStream.from_config(c) for c in answer or []
                if isinstance(c, dict) and c.get("logStreamType") == "webhook"]

    async def webhook_log_stream(self) -> WebhookLogStream | None:
        """The deployment's live webhook stream (Convex allows one), if any."""
        streams = [s for s in await self.list_log_streams() if s.status != "deleting"]
        return streams[0] if streams else None

    async def get_log_stream(self, stream_id: str) -> WebhookLogStream:
        return WebhookLogStream.from_config(
            await self._call("GET", f"/get_log_stream/{stream_id}"))

    async def update_log_stream(self, stream_id: str, **changes: Any) -> None:
        """`url`, `format`, `topics` (None = all topics); omitted ones keep their value."""
        await self._call("POST", f"/update_log_stream/{stream_id}",
                         {"logStreamType": "webhook", **changes})

    async def delete_log_stream(self, stream_id: str) -> None:
        await self._call("POST", f"/delete_log_stream/{stream_id}")

    async def rotate_webhook_secret(self, stream_id: str) -> str:
        answer = await self._call("POST", f"/rotate_webhook_secret/{stream_id}")
        return str(answer["hmacSecret"])

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Authorization": self._authorization}
        if body is not None:
            headers["Content-Type"] = "application/json"
        last = "no attempt"
        for attempt in range(RETRIES):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1) * (0.5 + random.random()))
            try:
                async with self.session.request(method, self.base + path, json=body,
                                                headers=headers,
                                                timeout=self.timeout) as response:
                    text = await response.text()
                    if response.status < 400:
                        return json.loads(text) if text.strip() else None
                    error = _error(response.status, text)
                    if response.status < 500 and response.status != 429:
                        raise error
                    last = str(error)
            except (aiohttp.ClientError, TimeoutError) as exc:
                # aiohttp's exceptions can carry the request headers: keep only their kind.
                last = f"{type(exc).__name__} reaching {self.base}"
            log.warning("Convex API call failed; retrying",
                        extra={"path": path, "attempt": attempt + 1, "error": last})
        raise ConvexUnavailable(503, "Unavailable", f"{method} {path}: {last}")


def _error(status: int, text: str) -> ConvexApiError:
    try:
        body = json.loads(text)
        code, message = str(body.get("code")), str(body.get("message"))
    except (ValueError, AttributeError):
        code, message = "Unknown", text[:300]
    return _BY_CODE.get(code, ConvexApiError)(status, code, message)
