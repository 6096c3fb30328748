"""All of meterstream's configuration, read once from environment variables.

Every service and command takes a :class:`Settings`; nothing else reads the
environment. A bad value fails at start with a message naming the variable.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import os
import re
import ssl
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["VARIABLES", "ClickHouseTarget", "ConfigError", "KafkaSecurity", "Settings",
           "unknown_variables"]

_T = TypeVar("_T")


class ConfigError(ValueError):
    """A configuration variable has a value meterstream cannot use.

    From `Settings.from_env`, `problems` lists every bad variable found (the message
    joins them), so one start reports them all."""

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems or (message,)


@dataclass(frozen=True)
class Variable:
    name: str
    default: str
    help: str


# The documented table of variables; docs/configuration.md is generated from it.
VARIABLES: tuple[Variable, ...] = (
    Variable("METERSTREAM_KAFKA", "127.0.0.1:9092",
             "Kafka bootstrap servers, host:port[,host:port...]. `meterstream kafka start` "
             "runs a local broker on this address's port."),
    Variable("METERSTREAM_KAFKA_CONTROLLER_PORT", "9093",
             "KRaft controller port of the local broker (`meterstream kafka start` only)."),
    Variable("METERSTREAM_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT",
             "How every Kafka client connects: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL "
             "(managed Kafka services: SASL_SSL). See docs/security.md."),
    Variable("METERSTREAM_KAFKA_SASL_MECHANISM", "",
             "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; required with SASL_PLAINTEXT and "
             "SASL_SSL, refused with the other protocols."),
    Variable("METERSTREAM_KAFKA_USERNAME", "",
             "SASL user name; required with SASL_PLAINTEXT and SASL_SSL."),
    Variable("METERSTREAM_KAFKA_PASSWORD", "",
             "SASL password; required with SASL_PLAINTEXT and SASL_SSL. Or "
             "METERSTREAM_KAFKA_PASSWORD_FILE: a file holding it."),
    Variable("METERSTREAM_KAFKA_CA_FILE", "",
             "PEM file of the certificate authorities that signed the brokers' certificates "
             "(SSL, SASL_SSL); empty means the system's trusted authorities."),
    Variable("METERSTREAM_KAFKA_CERT_FILE", "",
             "PEM file of a client certificate presented to the brokers (SSL, SASL_SSL; "
             "mutual TLS); it may hold the private key too."),
    Variable("METERSTREAM_KAFKA_KEY_FILE", "",
             "PEM file of the client certificate's private key, when not in "
             "METERSTREAM_KAFKA_CERT_FILE (unencrypted)."),
    Variable("METERSTREAM_CLICKHOUSE", "chdb:///<data dir>/clickhouse",
             "chdb:///path selects the embedded ClickHouse engine at that path; "
             "http(s)://user:password@host:port/database selects a ClickHouse server (https:// "
             "unless loopback when it has a password; user and password percent-encoded; no "
             "query string). Or METERSTREAM_CLICKHOUSE_FILE. See docs/clickhouse-server.md."),
    Variable("METERSTREAM_CLICKHOUSE_CA_FILE", "",
             "PEM file of the certificate authority that signed the ClickHouse server's "
             "certificate (a private CA); empty means the system's trusted CAs. The "
             "certificate is verified either way. Only with an https:// "
             "METERSTREAM_CLICKHOUSE."),
    Variable("METERSTREAM_CLICKHOUSE_CLUSTER", "",
             "Name of a ClickHouse cluster of one shard and any number of replicas: "
             "migrations run ON CLUSTER it with Replicated*MergeTree engines, and the sink "
             "syncs its replica before loading its high-water marks. Empty: one server. "
             "Not with the embedded engine (docs/clickhouse-server.md)."),
    Variable("METERSTREAM_DATA_DIR", "./.meterstream",
             "Local state: broker jars and data, the embedded ClickHouse data."),
    Variable("METERSTREAM_NAMESPACE", "meterstream",
             "Prefix of every Kafka topic, consumer group and Faust app id, so several "
             "pipelines can share one Kafka cluster."),
    Variable("METERSTREAM_PARTITIONS", "8",
             "Partitions of the topics meterstream creates (raw and per event type)."),
    Variable("METERSTREAM_REPLICATION_FACTOR", "1",
             "Replicas of every topic meterstream creates (its own and the worker's Faust "
             "changelog and leader topics). 1 suits one local broker; use 3 on a cluster, so "
             "that a broker can fail without losing an acknowledged body. Existing topics keep "
             "theirs (a start reports one that differs)."),
    Variable("METERSTREAM_MIN_INSYNC_REPLICAS", "1",
             "min.insync.replicas of every topic meterstream creates: the replicas that must "
             "hold a message before Kafka acknowledges it (the receiver answers 200 only "
             "then). At most METERSTREAM_REPLICATION_FACTOR; use 2 with 3 replicas."),
    Variable("METERSTREAM_BIND_HOST", "127.0.0.1",
             "Address the receiver, worker and sink HTTP servers listen on; 0.0.0.0 to "
             "accept Convex's webhooks from outside."),
    Variable("METERSTREAM_RECEIVER_PORT", "8686", "Port of the webhook receiver."),
    Variable("METERSTREAM_RECEIVER_PROCESSES", "1",
             "Processes of `meterstream receiver`, all on the same ports (SO_REUSEPORT: the "
             "kernel spreads connections over them); one Python process verifies and stores "
             "bodies on one core. Their metrics are summed on /metrics whichever answers. "
             "Limits such as METERSTREAM_MAX_IN_FLIGHT apply per process."),
    Variable("METERSTREAM_WORKER_PORT", "6066",
             "Port of the Faust worker's web server: its API (GET /v1/quota/..., with a "
             "token) and, unless METERSTREAM_METRICS_HOST is set, its probes."),
    Variable("METERSTREAM_SINK_PORT", "8687",
             "Port of the sink's /metrics, /healthz and /readyz (on METERSTREAM_METRICS_HOST "
             "when that is set)."),
    Variable("METERSTREAM_CONSOLE_PORT", "8690",
             "Port of the usage console in the browser (`meterstream console`, started by "
             "`meterstream up`): its pages behind the admin or read token, and its probes "
             "(docs/console.md)."),
    Variable("METERSTREAM_METRICS_HOST", "",
             "Address of the probes (/metrics, /healthz, /readyz) of every service, on a "
             "listener of their own, e.g. an internal interface; they then leave the "
             "receiver's public port and the worker's API port. Empty: each service serves "
             "them on its own port."),
    Variable("METERSTREAM_RECEIVER_METRICS_PORT", "8689",
             "Port of the receiver's probes when METERSTREAM_METRICS_HOST is set."),
    Variable("METERSTREAM_WORKER_METRICS_PORT", "6166",
             "Port of the worker's probes when METERSTREAM_METRICS_HOST is set (worker i of "
             "`meterstream up --workers N`: this port + i)."),
    Variable("METERSTREAM_MAX_BODY_BYTES", "8388608",
             "Largest webhook body the receiver accepts (bytes); larger ones get 413."),
    Variable("METERSTREAM_MAX_IN_FLIGHT", "256",
             "Produces the receiver lets wait for Kafka at once; beyond it requests get 429 "
             "(Convex retries them) instead of growing memory."),
    Variable("METERSTREAM_ADMIN_TOKEN", "",
             "Bearer token of the admin API (/v1/deployments), which also opens the worker's "
             "read API; empty disables the admin API. "
             "Or METERSTREAM_ADMIN_TOKEN_FILE: a file holding it."),
    Variable("METERSTREAM_READ_TOKEN", "",
             "Bearer token of the worker's read API (GET /v1/quota/...), which the admin "
             "token opens too; with neither set the worker's API is off. Or "
             "METERSTREAM_READ_TOKEN_FILE: a file holding it."),
    Variable("METERSTREAM_ADMIN_HOST", "127.0.0.1",
             "Address the receiver's admin API (/v1/deployments) listens on, apart from the "
             "public webhook port; loopback by default."),
    Variable("METERSTREAM_ADMIN_PORT", "8688", "Port of the receiver's admin API."),
    Variable("METERSTREAM_ADMIN_URL", "",
             "Where `meterstream deployments` reaches the admin API; empty means "
             "http://<METERSTREAM_ADMIN_HOST>:<METERSTREAM_ADMIN_PORT>. https:// unless loopback."),
    Variable("METERSTREAM_MAX_RECORDS_PER_REQUEST", "1000",
             "Most webhook events or agent usage records one request may carry (Convex sends "
             "at most 128); more get 413."),
    Variable("METERSTREAM_MAX_PROBLEMS", "20",
             "Most problems a 400 answer lists; the answer also gives their total count."),
    Variable("METERSTREAM_HEADER_TIMEOUT", "10",
             "Seconds a client has, from its request's first byte, to send the whole request "
             "line and headers; a slower one is cut off."),
    Variable("METERSTREAM_BODY_TIMEOUT", "30",
             "Seconds a client has, after its headers, to send the whole body; a slower one "
             "is cut off."),
    Variable("METERSTREAM_KEEPALIVE_TIMEOUT", "15",
             "Seconds an idle keep-alive connection is kept open between requests."),
    Variable("METERSTREAM_MAX_CONNECTIONS", "1024",
             "Open connections the receiver's public port holds at once; beyond it a new "
             "connection gets 503 and is closed."),
    Variable("METERSTREAM_PUBLIC_URL", "",
             "This meterstream's receiver as Convex reaches it, e.g. https://metering.example.com; "
             "provisioning points log streams at <it>/v1/convex/logs. Empty means "
             "http://127.0.0.1:<METERSTREAM_RECEIVER_PORT> (local use only). https:// unless "
             "loopback."),
    Variable("METERSTREAM_CONVEX_API_URL", "https://{deployment}.convex.cloud/api/v1",
             "The Convex deployment Platform API; {deployment} is replaced by the deployment "
             "name. Set a plain URL for a self-hosted backend. https:// unless loopback (it "
             "carries deploy keys)."),
    Variable("METERSTREAM_SECRET_OVERLAP", "600",
             "Seconds the old webhook secret is still accepted after a rotation."),
    Variable("METERSTREAM_PRODUCE_TIMEOUT", "10",
             "Seconds the receiver waits for Kafka to acknowledge a body before it answers "
             "503 so that Convex retries."),
    Variable("METERSTREAM_DEDUP_RETENTION", "90000",
             "Seconds a webhook body's hash and an agent usage record's id are remembered, "
             "so that a repeat within that time is dropped (default 25 hours: the default "
             "late-event grace, for which a replayed body's events still count, plus an "
             "hour; at least METERSTREAM_LATE_GRACE)."),
    Variable("METERSTREAM_WORKER_COMMIT_INTERVAL", "2.8",
             "Seconds between the worker's offset commits; after a crash it processes again "
             "what came in since the last commit (counted once: see docs/exactly-once.md)."),
    Variable("METERSTREAM_LATE_GRACE", "86400",
             "Seconds after its window that a late event still counts there; older events go "
             "to the dead-letter topic (default 1 day)."),
    Variable("METERSTREAM_RUNAWAY_MULTIPLE", "10",
             "A deployment whose function calls in a minute exceed this multiple of its "
             "trailing hourly average per minute raises a `runaway` alert."),
    Variable("METERSTREAM_RUNAWAY_MIN_CALLS", "1000",
             "Function calls in a minute below which no runaway alert is raised, whatever the "
             "baseline (so a quiet app waking up is not a runaway)."),
    Variable("METERSTREAM_HEALTH_STORAGE_STALE", "7200",
             "Seconds without a `current_storage_usage` event (Convex sends one every 30-90 "
             "minutes) after which a deployment that sent one before is stale: a "
             "`stream_stale` alert (docs/stream-health.md)."),
    Variable("METERSTREAM_HEALTH_SILENCE_MULTIPLE", "10",
             "A deployment with a baseline is silent (a `stream_stale` alert) after no "
             "activity for this multiple of its mean gap between messages, or "
             "METERSTREAM_HEALTH_SILENCE_FLOOR if longer."),
    Variable("METERSTREAM_HEALTH_SILENCE_FLOOR", "900",
             "Seconds of silence below which no deployment is called silent, whatever its "
             "baseline."),
    Variable("METERSTREAM_HEALTH_SILENCE_MIN_MESSAGES", "20",
             "Gaps between a deployment's messages seen before its silence is judged (its "
             "baseline)."),
    Variable("METERSTREAM_HEALTH_CHECK_INTERVAL", "60",
             "Seconds between the worker's checks of its deployments' stream health."),
    Variable("METERSTREAM_HEALTH_STATUS_INTERVAL", "300",
             "Seconds between the worker's reads of its provisioned deployments' log stream "
             "status from the Convex Platform API (a `stream_failed` alert when failed, gone "
             "or pointing elsewhere)."),
    Variable("METERSTREAM_ALERT_WEBHOOKS", "",
             "Comma-separated URLs every alert is POSTed to, signed over a timestamp and the "
             "body (x-webhook-timestamp, x-webhook-signature: see docs/worker-and-quotas.md); "
             "https:// unless loopback; empty sends alerts to Kafka only."),
    Variable("METERSTREAM_ALERT_WEBHOOK_SECRET", "",
             "HMAC-SHA256 key of the alert webhooks' signature, at least 32 characters; "
             "required when METERSTREAM_ALERT_WEBHOOKS is set. Or "
             "METERSTREAM_ALERT_WEBHOOK_SECRET_FILE: a file holding it."),
    Variable("METERSTREAM_ALERT_RETRY_SECONDS", "3600",
             "How long (s) an alert webhook is retried with exponential backoff before the "
             "alert goes to the dead-letter topic."),
    Variable("METERSTREAM_ENFORCE_VARIABLE", "METERSTREAM_QUOTA_EXCEEDED",
             "The environment variable the worker sets on an opted-in Convex deployment while "
             "a hard quota is exceeded, and removes afterwards (docs/enforcement.md)."),
    Variable("METERSTREAM_ENFORCE_INTERVAL", "5",
             "Seconds between the worker's checks of enforcement at the source: a period that "
             "ended or a quota raised removes the variable within about this time."),
    Variable("METERSTREAM_SINK_BATCH_ROWS", "50000",
             "Rows of one table that make the sink insert at once (at most 1000000, so that "
             "each insert stays one atomic block)."),
    Variable("METERSTREAM_SINK_BATCH_SECONDS", "1.0",
             "Longest time (s) a row waits in the sink before it is inserted (a quarter "
             "more at most: the broker holds a fetch of under 1 MiB for a quarter of it, "
             "at most 0.5 s)."),
    Variable("METERSTREAM_PRICE_BOOK", "",
             "The price book (TOML): plans' included amounts and prices, region multipliers, "
             "token prices per provider and model. Empty means the one shipped in "
             "billing/default_price_book.toml."),
    Variable("METERSTREAM_LOG_LEVEL", "info", "debug, info, warning or error."),
    Variable("METERSTREAM_LOG_FORMAT", "auto",
             "auto, text or json: how logs are written on stderr. auto is text (one readable "
             "line each) when stderr is a terminal and JSON (one object a line) otherwise."),
    Variable("METERSTREAM_WORKER_MAX_ATTEMPTS", "3",
             "Times the worker tries a raw message whose processing raises before it sends "
             "the message to the dead-letter topic and goes on with the next."),
    Variable("METERSTREAM_WORKER_MAX_USERS", "1000",
             "End users per deployment and day (month) whose tokens the live state keeps by "
             "name; the others are counted together (ClickHouse keeps every user)."),
    Variable("METERSTREAM_WORKER_MAX_USER_ALERTS", "100",
             "Users per deployment, per-user quota and period that get their own quota alert; "
             "beyond them one `quota_users` alert per threshold gives their number."),
    Variable("METERSTREAM_SINK_MAX_ATTEMPTS", "3",
             "Times the sink tries to insert a batch ClickHouse refuses (not: cannot be "
             "reached) before it stores the batch's messages one by one and sends those "
             "refused to the dead-letter topic."),
    Variable("METERSTREAM_SECRET_KEY", "",
             "Key that encrypts webhook secrets in the registry topic (AES-256-GCM): base64 of "
             "32 random bytes (`head -c 32 /dev/urandom | base64`). Empty means the key in "
             "<data dir>/secret-key, generated (0600) by the first receiver that needs one. Or "
             "METERSTREAM_SECRET_KEY_FILE: a file holding it."),
    Variable("METERSTREAM_SECRET_OLD_KEYS", "",
             "Comma-separated earlier METERSTREAM_SECRET_KEY values, still accepted for "
             "decryption during a key rotation (`meterstream secrets reencrypt` rewrites every "
             "record under the current key). Or METERSTREAM_SECRET_OLD_KEYS_FILE."),
    Variable("METERSTREAM_INSECURE_HTTP_HOSTS", "",
             "Comma-separated host names to which URLs carrying credentials may use http:// "
             "although they are not loopback (a private network's service names, e.g. "
             "`clickhouse` in docker-compose.yml); every other such URL must be https://."),
    Variable("METERSTREAM_LAG_INTERVAL", "5",
             "How often (s) the worker and the sink measure their consumer lag per partition "
             "they own (meterstream_worker_consumer_lag, meterstream_sink_consumer_lag; "
             "docs/observability.md)."),
    Variable("METERSTREAM_READ_TOKEN_TTL", "2592000",
             "Seconds a read token of the scoped usage view (GET /v1/usage) is valid when "
             "the admin API issues it without `expires_in` (default 30 days)."),
    Variable("METERSTREAM_READ_TOKEN_MAX_TTL", "31536000",
             "Longest validity (s) a read token may be issued with (default 365 days)."),
    Variable("METERSTREAM_USAGE_CORS_ORIGINS", "",
             "Comma-separated origins (https://app.example.com) whose browser pages may call "
             "GET /v1/usage, or * for any; empty: none (no CORS headers)."),
    Variable("METERSTREAM_WORKER_URL", "",
             "Where the receiver (for GET /v1/usage) and the console ask a worker for a "
             "deployment's quota status (GET /v1/quota/..., with METERSTREAM_READ_TOKEN or "
             "else the admin token); empty means http://<METERSTREAM_BIND_HOST>:"
             "<METERSTREAM_WORKER_PORT> (the worker serves plain HTTP on that address)."),
)
DEFAULTS = {v.name: v.default for v in VARIABLES}

SECRET_VARIABLES = ("METERSTREAM_ADMIN_TOKEN", "METERSTREAM_READ_TOKEN",
                    "METERSTREAM_ALERT_WEBHOOK_SECRET",
                    "METERSTREAM_SECRET_KEY", "METERSTREAM_SECRET_OLD_KEYS",
                    "METERSTREAM_CLICKHOUSE", "METERSTREAM_KAFKA_PASSWORD")
"""Each may be given as <NAME>_FILE instead: the value is that file's content (docker and
systemd secrets), so that it appears in no process environment listing."""
SECRET_KEY_BYTES = 32
MIN_ALERT_SECRET_LENGTH = 32

# While Settings.from_env runs, validators add their problem here and return a stand-in
# value instead of raising, so that one error lists every bad variable.
_PROBLEMS: ContextVar[list[str] | None] = ContextVar("config_problems", default=None)


def _problem(message: str, stand_in: _T) -> _T:
    """Reports a bad value: raises, or records it while `from_env` collects problems."""
    problems = _PROBLEMS.get()
    if problems is None:
        raise ConfigError(message)
    problems.append(message)
    return stand_in


@contextmanager
def _collecting() -> Iterator[list[str]]:
    problems: list[str] = []
    token = _PROBLEMS.set(problems)
    try:
        yield problems
    finally:
        _PROBLEMS.reset(token)


@dataclass(frozen=True)
class ClickHouseTarget:
    """Where the counters go: the embedded engine at a path, or a server URL (with its CA
    file and cluster, if any; meterstream/core/clickhouse.py turns it into clickhouse-connect
    arguments)."""

    url: str = field(repr=False)
    chdb_path: Path | None
    ca_file: Path | None = None
    """METERSTREAM_CLICKHOUSE_CA_FILE: the CA the server's certificate is verified against."""
    cluster: str = ""
    """METERSTREAM_CLICKHOUSE_CLUSTER; empty: one server (or the embedded engine)."""

    @property
    def embedded(self) -> bool:
        return self.chdb_path is not None

    @property
    def display(self) -> str:
        """The URL without its password, for logs and errors."""
        if self.chdb_path is not None:
            return f"chdb://{self.chdb_path}"
        parts = urlsplit(self.url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        if parts.username:
            netloc = f"{parts.username}:***@{netloc}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def __repr__(self) -> str:
        extras = "".join(f", {name}={value!r}" for name, value in
                         (("ca_file", self.ca_file), ("cluster", self.cluster)) if value)
        return f"ClickHouseTarget({self.display!r}{extras})"


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_SASL_VARIABLES = ("METERSTREAM_KAFKA_SASL_MECHANISM", "METERSTREAM_KAFKA_USERNAME",
                   "METERSTREAM_KAFKA_PASSWORD")
_TLS_VARIABLES = ("METERSTREAM_KAFKA_CA_FILE", "METERSTREAM_KAFKA_CERT_FILE",
                  "METERSTREAM_KAFKA_KEY_FILE")


@dataclass(frozen=True)
class KafkaSecurity:
    """How every Kafka client encrypts and authenticates. meterstream/core/kafka_client.py
    turns it into the clients' options; nothing else reads it."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")


# The numeric settings: field -> (variable, type, smallest, largest allowed value).
NUMBERS: dict[str, tuple[str, type[int] | type[float], float, float]] = {
    "partitions": ("METERSTREAM_PARTITIONS", int, 1, 1024),
    "replication_factor": ("METERSTREAM_REPLICATION_FACTOR", int, 1, 32),
    "min_insync_replicas": ("METERSTREAM_MIN_INSYNC_REPLICAS", int, 1, 32),
    "max_body_bytes": ("METERSTREAM_MAX_BODY_BYTES", int, 1024, 1 << 30),
    "max_in_flight": ("METERSTREAM_MAX_IN_FLIGHT", int, 1, 100_000),
    "receiver_processes": ("METERSTREAM_RECEIVER_PROCESSES", int, 1, 64),
    "secret_overlap": ("METERSTREAM_SECRET_OVERLAP", float, 0.0, 7 * 24 * 3600.0),
    "produce_timeout": ("METERSTREAM_PRODUCE_TIMEOUT", float, 0.1, 300),
    "dedup_retention": ("METERSTREAM_DEDUP_RETENTION", float, 1.0, 366 * 24 * 3600.0),
    "worker_commit_interval": ("METERSTREAM_WORKER_COMMIT_INTERVAL", float, 0.1, 3600.0),
    "late_grace": ("METERSTREAM_LATE_GRACE", float, 0.0, 31 * 24 * 3600.0),
    "runaway_multiple": ("METERSTREAM_RUNAWAY_MULTIPLE", float, 1.0, 1e6),
    "runaway_min_calls": ("METERSTREAM_RUNAWAY_MIN_CALLS", int, 1, 10**12),
    "alert_retry_seconds": ("METERSTREAM_ALERT_RETRY_SECONDS", float, 0.0, 7 * 24 * 3600.0),
    "sink_batch_rows": ("METERSTREAM_SINK_BATCH_ROWS", int, 1, 1_000_000),
    "sink_batch_seconds": ("METERSTREAM_SINK_BATCH_SECONDS", float, 0.01, 3600),
    "max_records_per_request": ("METERSTREAM_MAX_RECORDS_PER_REQUEST", int, 1, 1_000_000),
    "max_problems": ("METERSTREAM_MAX_PROBLEMS", int, 1, 10_000),
    "header_timeout": ("METERSTREAM_HEADER_TIMEOUT", float, 0.05, 3600.0),
    "body_timeout": ("METERSTREAM_BODY_TIMEOUT", float, 0.05, 3600.0),
    "keepalive_timeout": ("METERSTREAM_KEEPALIVE_TIMEOUT", float, 0.05, 3600.0),
    "max_connections": ("METERSTREAM_MAX_CONNECTIONS", int, 1, 1_000_000),
    "worker_max_attempts": ("METERSTREAM_WORKER_MAX_ATTEMPTS", int, 1, 100),
    "worker_max_users": ("METERSTREAM_WORKER_MAX_USERS", int, 1, 1_000_000),
    "worker_max_user_alerts": ("METERSTREAM_WORKER_MAX_USER_ALERTS", int, 1, 1_000_000),
    "health_storage_stale": ("METERSTREAM_HEALTH_STORAGE_STALE", float, 1.0, 31 * 24 * 3600.0),
    "health_silence_multiple": ("METERSTREAM_HEALTH_SILENCE_MULTIPLE", float, 1.0, 1e6),
    "health_silence_floor": ("METERSTREAM_HEALTH_SILENCE_FLOOR", float, 1.0, 31 * 24 * 3600.0),
    "health_silence_min_messages": ("METERSTREAM_HEALTH_SILENCE_MIN_MESSAGES", int, 1,
                                    1_000_000),
    "health_check_interval": ("METERSTREAM_HEALTH_CHECK_INTERVAL", float, 0.1, 3600.0),
    "health_status_interval": ("METERSTREAM_HEALTH_STATUS_INTERVAL", float, 0.1, 86400.0),
    "sink_max_attempts": ("METERSTREAM_SINK_MAX_ATTEMPTS", int, 1, 100),
    "lag_interval": ("METERSTREAM_LAG_INTERVAL", float, 0.1, 3600.0),
    "read_token_ttl": ("METERSTREAM_READ_TOKEN_TTL", float, 1.0, 10 * 366 * 24 * 3600.0),
    "read_token_max_ttl": ("METERSTREAM_READ_TOKEN_MAX_TTL", float, 1.0,
                           10 * 366 * 24 * 3600.0),
    "enforce_interval": ("METERSTREAM_ENFORCE_INTERVAL", float, 0.05, 3600.0),
}


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str
    kafka_controller_port: int
    clickhouse: ClickHouseTarget
    data_dir: Path
    namespace: str
    partitions: int
    bind_host: str
    receiver_port: int
    worker_port: int
    sink_port: int
    max_body_bytes: int
    max_in_flight: int
    receiver_processes: int
    admin_token: str = field(repr=False)
    admin_url: str
    public_url: str
    convex_api_url: str
    secret_overlap: float
    produce_timeout: float
    dedup_retention: float
    worker_commit_interval: float
    late_grace: float
    runaway_multiple: float
    runaway_min_calls: int
    alert_webhooks: tuple[str, ...]
    alert_webhook_secret: str = field(repr=False)
    alert_retry_seconds: float
    sink_batch_rows: int
    sink_batch_seconds: float
    log_level: str
    price_book: Path | None = None
    """None: the price book shipped with meterstream."""
    admin_host: str = "127.0.0.1"
    admin_port: int = 8688
    max_records_per_request: int = 1000
    max_problems: int = 20
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 15.0
    max_connections: int = 1024
    worker_max_attempts: int = 3
    worker_max_users: int = 1000
    worker_max_user_alerts: int = 100
    health_storage_stale: float = 7200.0
    health_silence_multiple: float = 10.0
    health_silence_floor: float = 900.0
    health_silence_min_messages: int = 20
    health_check_interval: float = 60.0
    health_status_interval: float = 300.0
    sink_max_attempts: int = 3
    enforce_interval: float = 5.0
    enforce_variable: str = "METERSTREAM_QUOTA_EXCEEDED"
    replication_factor: int = 1
    min_insync_replicas: int = 1
    secret_key: bytes | None = field(default=None, repr=False)
    """METERSTREAM_SECRET_KEY; None: the data directory's key (meterstream/core/secret_box.py)."""
    secret_old_keys: tuple[bytes, ...] = field(default=(), repr=False)
    insecure_http_hosts: tuple[str, ...] = ()
    read_token: str = field(default="", repr=False)
    """METERSTREAM_READ_TOKEN: opens the worker's read API (so does the admin token)."""
    metrics_host: str = ""
    """METERSTREAM_METRICS_HOST; empty: each service serves its probes on its own port."""
    receiver_metrics_port: int = 8689
    worker_metrics_port: int = 6166
    console_port: int = 8690
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    lag_interval: float = 5.0
    """METERSTREAM_LAG_INTERVAL: seconds between two looks at the consumer lag."""
    read_token_ttl: float = 30 * 24 * 3600.0
    read_token_max_ttl: float = 365 * 24 * 3600.0
    usage_cors_origins: tuple[str, ...] = ()
    """METERSTREAM_USAGE_CORS_ORIGINS: exact origins, or ("*",)."""
    worker_url: str = "http://127.0.0.1:6066"
    log_format: str = "auto"
    """METERSTREAM_LOG_FORMAT: auto, text or json (meterstream/core/logs.py)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings, or a ConfigError listing every bad variable at once."""
        with _collecting() as problems:
            try:
                settings = cls._from_env(_with_secret_files(
                    os.environ if environ is None else environ))
            except ConfigError as exc:  # a check that does not collect
                problems.append(str(exc))
                settings = None
        if problems or settings is None:
            raise ConfigError("; ".join(problems), tuple(problems))
        return settings

    @classmethod
    def _from_env(cls, env: Mapping[str, str]) -> Settings:

        def raw(name: str) -> str:
            value = env.get(name, "").strip()
            return value if value else DEFAULTS[name]

        data_dir = Path(raw("METERSTREAM_DATA_DIR")).expanduser().resolve()
        clickhouse_raw = env.get("METERSTREAM_CLICKHOUSE", "").strip()
        clickhouse = (
            _clickhouse("METERSTREAM_CLICKHOUSE", clickhouse_raw)
            if clickhouse_raw
            else ClickHouseTarget(url=f"chdb://{data_dir / 'clickhouse'}",
                                  chdb_path=data_dir / "clickhouse")
        )
        clickhouse = replace(
            clickhouse,
            ca_file=_file("METERSTREAM_CLICKHOUSE_CA_FILE",
                          env.get("METERSTREAM_CLICKHOUSE_CA_FILE", "").strip()),
            cluster=_cluster("METERSTREAM_CLICKHOUSE_CLUSTER",
                             env.get("METERSTREAM_CLICKHOUSE_CLUSTER", "").strip()))
        metrics_host = env.get("METERSTREAM_METRICS_HOST", "").strip()
        numbers: dict[str, Any] = {field: _number(name, raw(name), kind, low, high)
                                   for field, (name, kind, low, high) in NUMBERS.items()}
        return cls(
            **numbers,
            kafka_bootstrap=_bootstrap("METERSTREAM_KAFKA", raw("METERSTREAM_KAFKA")),
            kafka_controller_port=_port("METERSTREAM_KAFKA_CONTROLLER_PORT",
                                        raw("METERSTREAM_KAFKA_CONTROLLER_PORT")),
            clickhouse=clickhouse,
            data_dir=data_dir,
            namespace=_namespace("METERSTREAM_NAMESPACE", raw("METERSTREAM_NAMESPACE")),
            bind_host=_host("METERSTREAM_BIND_HOST", raw("METERSTREAM_BIND_HOST")),
            receiver_port=_port("METERSTREAM_RECEIVER_PORT", raw("METERSTREAM_RECEIVER_PORT")),
            worker_port=_port("METERSTREAM_WORKER_PORT", raw("METERSTREAM_WORKER_PORT")),
            sink_port=_port("METERSTREAM_SINK_PORT", raw("METERSTREAM_SINK_PORT")),
            admin_token=_admin_token("METERSTREAM_ADMIN_TOKEN",
                                     env.get("METERSTREAM_ADMIN_TOKEN", "").strip()),
            read_token=_admin_token("METERSTREAM_READ_TOKEN",
                                    env.get("METERSTREAM_READ_TOKEN", "").strip()),
            metrics_host=_host("METERSTREAM_METRICS_HOST", metrics_host) if metrics_host else "",
            receiver_metrics_port=_port("METERSTREAM_RECEIVER_METRICS_PORT",
                                        raw("METERSTREAM_RECEIVER_METRICS_PORT")),
            worker_metrics_port=_port("METERSTREAM_WORKER_METRICS_PORT",
                                      raw("METERSTREAM_WORKER_METRICS_PORT")),
            console_port=_port("METERSTREAM_CONSOLE_PORT", raw("METERSTREAM_CONSOLE_PORT")),
            admin_url=_admin_url("METERSTREAM_ADMIN_URL",
                                 env.get("METERSTREAM_ADMIN_URL", "").strip(),
                                 raw("METERSTREAM_ADMIN_PORT"),
                                 _loopback(raw("METERSTREAM_ADMIN_HOST"))),
            public_url=_admin_url("METERSTREAM_PUBLIC_URL",
                                  env.get("METERSTREAM_PUBLIC_URL", "").strip(),
                                  raw("METERSTREAM_RECEIVER_PORT")),
            convex_api_url=_http_url("METERSTREAM_CONVEX_API_URL",
                                     raw("METERSTREAM_CONVEX_API_URL")),
            alert_webhooks=_urls("METERSTREAM_ALERT_WEBHOOKS",
                                 env.get("METERSTREAM_ALERT_WEBHOOKS", "").strip()),
            alert_webhook_secret=env.get("METERSTREAM_ALERT_WEBHOOK_SECRET", "").strip(),
            log_level=_choice("METERSTREAM_LOG_LEVEL", raw("METERSTREAM_LOG_LEVEL").lower(),
                              ("debug", "info", "warning", "error")),
            price_book=_file("METERSTREAM_PRICE_BOOK",
                             env.get("METERSTREAM_PRICE_BOOK", "").strip()),
            admin_host=_host("METERSTREAM_ADMIN_HOST", raw("METERSTREAM_ADMIN_HOST")),
            admin_port=_port("METERSTREAM_ADMIN_PORT", raw("METERSTREAM_ADMIN_PORT")),
            secret_key=_secret_key("METERSTREAM_SECRET_KEY",
                                   env.get("METERSTREAM_SECRET_KEY", "").strip()),
            secret_old_keys=tuple(
                key for value in env.get("METERSTREAM_SECRET_OLD_KEYS", "").split(",")
                if (key := _secret_key("METERSTREAM_SECRET_OLD_KEYS", value.strip()))),
            insecure_http_hosts=tuple(
                host.strip().lower()
                for host in env.get("METERSTREAM_INSECURE_HTTP_HOSTS", "").split(",")
                if host.strip()),
            kafka_security=_kafka_security(env),
            usage_cors_origins=_origins("METERSTREAM_USAGE_CORS_ORIGINS",
                                        env.get("METERSTREAM_USAGE_CORS_ORIGINS", "")),
            worker_url=_admin_url("METERSTREAM_WORKER_URL",
                                  env.get("METERSTREAM_WORKER_URL", "").strip(),
                                  raw("METERSTREAM_WORKER_PORT"),
                                  _loopback(raw("METERSTREAM_BIND_HOST"))),
            log_format=_choice("METERSTREAM_LOG_FORMAT", raw("METERSTREAM_LOG_FORMAT").lower(),
                               ("auto", "text", "json")),
            enforce_variable=_env_name("METERSTREAM_ENFORCE_VARIABLE",
                                       raw("METERSTREAM_ENFORCE_VARIABLE")),
        )

    def __post_init__(self) -> None:
        for message in self._combination_problems():
            _problem(message, None)

    def _combination_problems(self) -> list[str]:
        """Problems of values that are each valid but unsafe or inconsistent together."""
        problems = []
        if self.alert_webhooks and not self.alert_webhook_secret:
            problems.append("METERSTREAM_ALERT_WEBHOOK_SECRET must be set when "
                            "METERSTREAM_ALERT_WEBHOOKS is")
        if self.alert_webhook_secret and (
                len(self.alert_webhook_secret) < MIN_ALERT_SECRET_LENGTH
                or not self.alert_webhook_secret.isascii()
                or not self.alert_webhook_secret.isprintable()):
            problems.append(f"METERSTREAM_ALERT_WEBHOOK_SECRET must be printable ASCII of at "
                            f"least {MIN_ALERT_SECRET_LENGTH} characters")
        # Whoever may read usage would otherwise hold the registry's keys too.
        if self.read_token and self.read_token == self.admin_token:
            problems.append("METERSTREAM_READ_TOKEN must differ from METERSTREAM_ADMIN_TOKEN "
                            "(the admin token opens the read API too)")
        if self.metrics_host:
            # Probes moved off a port that is still that service's: they would not bind.
            for name, port, taken in (
                    ("METERSTREAM_RECEIVER_METRICS_PORT", self.receiver_metrics_port,
                     {self.receiver_port: "METERSTREAM_RECEIVER_PORT",
                      self.admin_port: "METERSTREAM_ADMIN_PORT"}),
                    ("METERSTREAM_WORKER_METRICS_PORT", self.worker_metrics_port,
                     {self.worker_port: "METERSTREAM_WORKER_PORT"})):
                if port in taken:
                    problems.append(f"{name} ({port}) must differ from {taken[port]}")
        if self.read_token_ttl > self.read_token_max_ttl:
            problems.append(f"METERSTREAM_READ_TOKEN_TTL ({self.read_token_ttl:g} s) must be at "
                            f"most METERSTREAM_READ_TOKEN_MAX_TTL ({self.read_token_max_ttl:g} s)")
        # A body replayed after its hash was forgotten but while its events still count as
        # late would be counted twice.
        if self.dedup_retention < self.late_grace:
            problems.append(
                f"METERSTREAM_DEDUP_RETENTION ({self.dedup_retention:g} s) must be at least "
                f"METERSTREAM_LATE_GRACE ({self.late_grace:g} s), or a replayed body is "
                "counted again")
        # Kafka would refuse every acks=all produce to such a topic: nothing could be stored.
        if self.min_insync_replicas > self.replication_factor:
            problems.append(
                f"METERSTREAM_MIN_INSYNC_REPLICAS ({self.min_insync_replicas}) must be at most "
                f"METERSTREAM_REPLICATION_FACTOR ({self.replication_factor}), or Kafka "
                "acknowledges no message")
        # URLs that carry deploy keys, tokens, passwords or signed alerts.
        allowed = self.insecure_http_hosts
        credentialed: list[tuple[str, str]] = [
            ("METERSTREAM_ADMIN_URL", self.admin_url),
            ("METERSTREAM_PUBLIC_URL", self.public_url),
            ("METERSTREAM_CONVEX_API_URL", self.convex_api_url),
            *(("METERSTREAM_ALERT_WEBHOOKS", url) for url in self.alert_webhooks),
        ]
        problems += _clickhouse_combination_problems(self.clickhouse)
        if not self.clickhouse.embedded and urlsplit(self.clickhouse.url).password:
            credentialed.append(("METERSTREAM_CLICKHOUSE", self.clickhouse.url))
        for name, url in credentialed:
            if not plain_http_allowed(url, allowed):
                shown = self.clickhouse.display if url == self.clickhouse.url else url
                problems.append(f"{name} must be an https:// URL (http:// only for loopback "
                                f"or METERSTREAM_INSECURE_HTTP_HOSTS), got {shown!r}")
        return problems

    @property
    def kafka_port(self) -> int:
        """Port of the local broker: that of the first METERSTREAM_KAFKA address, all of
        them loopback (a local cluster's nodes may all be listed, so that clients still
        reach it while the first node is down: deploy/kafka.sh --brokers)."""
        servers = self.kafka_bootstrap.split(",")
        if any(server.rpartition(":")[0] not in ("127.0.0.1", "localhost")
               for server in servers):
            raise ConfigError(
                "METERSTREAM_KAFKA must be 127.0.0.1:PORT addresses for a local broker "
                f"started by meterstream, not {self.kafka_bootstrap!r}"
            )
        return int(servers[0].rpartition(":")[2])

    @property
    def kafka_home(self) -> Path:
        return self.data_dir / "kafka"


# METERSTREAM_* names that are not meterstream's settings: read by deploy/compose-secrets.sh.
_NOT_SETTINGS = frozenset({"METERSTREAM_UID"})


def unknown_variables(env: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """Each METERSTREAM_* name in `env` that no setting reads, with the known name closest
    to it (None when none is close): a misspelled variable would otherwise be ignored and
    its default used without a word."""
    known = {v.name for v in VARIABLES} | {f"{name}_FILE" for name in SECRET_VARIABLES}
    found = []
    for name in sorted(env):
        if name.startswith("METERSTREAM_") and name not in known | _NOT_SETTINGS:
            # Compared without the prefix every name shares, which would make all look close.
            close = difflib.get_close_matches(name.removeprefix("METERSTREAM_"),
                                              sorted(k.removeprefix("METERSTREAM_")
                                                     for k in known), n=1, cutoff=0.6)
            found.append((name, f"METERSTREAM_{close[0]}" if close else None))
    return found


def plain_http_allowed(url: str, insecure_hosts: tuple[str, ...] = ()) -> bool:
    """True unless `url` is http:// to a host that is neither loopback (127.0.0.0/8, ::1,
    localhost) nor named in `insecure_hosts`: credentials sent there travel in clear."""
    parts = urlsplit(url.replace("{deployment}", "deployment"))
    if parts.scheme != "http":
        return True
    host = (parts.hostname or "").lower()
    if host == "localhost" or host in insecure_hosts:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _with_secret_files(env: Mapping[str, str]) -> Mapping[str, str]:
    """`env` with each secret variable given as <NAME>_FILE replaced by the file's content
    (without its trailing newline); setting both <NAME> and <NAME>_FILE is a problem."""
    resolved: dict[str, str] = dict(env)
    for name in SECRET_VARIABLES:
        path = env.get(f"{name}_FILE", "").strip()
        if not path:
            continue
        if env.get(name, "").strip():
            _problem(f"set {name} or {name}_FILE, not both", None)
            continue
        try:
            resolved[name] = Path(path).expanduser().read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            _problem(f"{name}_FILE: cannot read {path!r}: "
                     f"{exc.strerror if isinstance(exc, OSError) else exc}", None)
    return resolved


def _secret_key(name: str, value: str) -> bytes | None:
    if not value:
        return None
    try:
        key = base64.b64decode(value.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != SECRET_KEY_BYTES:
        return _problem(f"{name} must be base64 of {SECRET_KEY_BYTES} random bytes "
                        "(e.g. `head -c 32 /dev/urandom | base64`)", None)
    return key


def _kafka_security(env: Mapping[str, str]) -> KafkaSecurity:
    """The METERSTREAM_KAFKA_* security variables, each problem of which is reported (so a
    SASL protocol without its mechanism, user and password names all three at once)."""

    def value(name: str) -> str:
        return env.get(name, "").strip()

    protocol = _choice("METERSTREAM_KAFKA_SECURITY_PROTOCOL",
                       (value("METERSTREAM_KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT").upper(),
                       SECURITY_PROTOCOLS)
    mechanism = value("METERSTREAM_KAFKA_SASL_MECHANISM").upper()
    username = value("METERSTREAM_KAFKA_USERNAME")
    password = value("METERSTREAM_KAFKA_PASSWORD")
    files = {name: _pem_file(name, value(name)) for name in _TLS_VARIABLES}
    security = KafkaSecurity(protocol, mechanism, username, password,
                             *(files[name] for name in _TLS_VARIABLES))
    if security.sasl:
        if mechanism not in SASL_MECHANISMS:
            _problem(f"METERSTREAM_KAFKA_SASL_MECHANISM must be one of "
                     f"{', '.join(SASL_MECHANISMS)} with METERSTREAM_KAFKA_SECURITY_PROTOCOL="
                     f"{protocol}, got {mechanism!r}", None)
        for name, given in (("METERSTREAM_KAFKA_USERNAME", username),
                            ("METERSTREAM_KAFKA_PASSWORD", password)):
            if not given:
                _problem(f"{name} must be set with METERSTREAM_KAFKA_SECURITY_PROTOCOL="
                         f"{protocol}", None)
    else:
        # Credentials set beside a protocol that never sends them: most likely the
        # protocol was forgotten, and the clients would try to connect unauthenticated.
        if given_sasl := [name for name in _SASL_VARIABLES if value(name)]:
            _problem(f"{', '.join(given_sasl)} apply only with METERSTREAM_KAFKA_SECURITY_"
                     f"PROTOCOL SASL_PLAINTEXT or SASL_SSL, not {protocol}", None)
    if not security.tls:
        if given_tls := [name for name in _TLS_VARIABLES if value(name)]:
            _problem(f"{', '.join(given_tls)} apply only with METERSTREAM_KAFKA_SECURITY_"
                     f"PROTOCOL SSL or SASL_SSL, not {protocol}", None)
    elif security.key_file is not None and security.cert_file is None:
        _problem("METERSTREAM_KAFKA_KEY_FILE needs METERSTREAM_KAFKA_CERT_FILE (the "
                 "certificate it is the key of)", None)
    elif all(files[name] is not None for name in _TLS_VARIABLES if value(name)):
        # Only once each given file was found: a missing one is already reported.
        _tls_material_problems(security)
    return security


def _tls_material_problems(security: KafkaSecurity) -> None:
    """Loads the CA and client certificate as the clients will, so that a file that is not
    PEM, or a key that does not match its certificate, is named at start."""
    try:
        context = ssl.create_default_context(
            cafile=None if security.ca_file is None else str(security.ca_file))
    except ssl.SSLError as exc:
        _problem(f"METERSTREAM_KAFKA_CA_FILE: {str(security.ca_file)!r} holds no PEM "
                 f"certificate ({exc.reason or exc})", None)
        return
    if security.cert_file is None:
        return
    try:
        # An encrypted key would make OpenSSL prompt on the terminal; the empty password
        # makes it fail instead.
        context.load_cert_chain(str(security.cert_file),
                                None if security.key_file is None else str(security.key_file),
                                password=lambda: b"")
    except ssl.SSLError as exc:
        name = ("METERSTREAM_KAFKA_KEY_FILE" if security.key_file is not None
                else "METERSTREAM_KAFKA_CERT_FILE")
        _problem(f"{name}: cannot load the client certificate and its key "
                 f"({exc.reason or exc}); they must be PEM, the key unencrypted", None)


def _pem_file(name: str, value: str) -> Path | None:
    if not value:
        return None
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        return _problem(f"{name}: {value!r} is not a file", None)
    if not os.access(path, os.R_OK):
        return _problem(f"{name}: {value!r} is not readable", None)
    return path


_HOSTPORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


def _bootstrap(name: str, value: str) -> str:
    servers = [s.strip() for s in value.split(",")]
    for server in servers:
        match = _HOSTPORT.match(server)
        if not match or not 0 < int(match.group(2)) < 65536:
            return _problem(f"{name} must be host:port[,host:port...], got {value!r}",
                            "127.0.0.1:9092")
    return ",".join(servers)


# The database in the URL's path: one name (clickhouse-connect would ignore what follows a
# second '/'), of the characters database names are made of in practice.
_DATABASE = re.compile(r"[\w.-]{1,206}")
# A cluster name as the servers' <remote_servers> configuration spells it (an XML element
# name); it is written backquoted in `ON CLUSTER`, so no character of it needs escaping.
_CLUSTER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,205}")


def _clickhouse(name: str, value: str) -> ClickHouseTarget:
    stand_in = ClickHouseTarget(url="chdb:///invalid", chdb_path=Path("/invalid"))
    parts = urlsplit(value)
    if parts.scheme == "chdb":
        location = parts.netloc + parts.path
        if not location or location in ("memory", ":memory:"):
            return _problem(f"{name}: chdb:// needs a directory path, e.g. chdb:///var/lib/ms",
                            stand_in)
        path = Path(location).expanduser().resolve()
        return ClickHouseTarget(url=f"chdb://{path}", chdb_path=path)
    if parts.scheme not in ("http", "https"):
        return _problem(
            f"{name} must start with chdb:// (embedded engine) or http(s):// (server), "
            f"got scheme {parts.scheme or 'none'!r}", stand_in)
    # Every problem of the URL at once, never quoting the URL back: it may hold a password.
    problems = []
    if not parts.hostname:
        problems.append(f"{name}: a ClickHouse server URL needs a host")
    try:
        _ = parts.port
    except ValueError:
        problems.append(f"{name}: bad port in the ClickHouse URL")
    database = unquote(parts.path.strip("/"))
    if database and not _DATABASE.fullmatch(database):
        problems.append(f"{name}: the URL's path must be one database name (letters, digits, "
                        f"'_', '.', '-'), got {database[:100]!r}")
    # clickhouse-connect would take query parameters as client options or server settings
    # (verify=false among them); meterstream sets those itself, so none is accepted.
    if parts.query or parts.fragment:
        problems.append(f"{name}: the URL must have no query string or fragment (TLS: "
                        "https:// and METERSTREAM_CLICKHOUSE_CA_FILE)")
    if parts.password is not None and not parts.username:
        problems.append(f"{name}: a password in the URL needs a user name "
                        "(https://user:password@host:8443/database)")
    for problem in problems:
        _problem(problem, None)
    # A server stand-in, so that the server-only checks of the other variables hold.
    return (ClickHouseTarget(url="https://invalid", chdb_path=None) if problems
            else ClickHouseTarget(url=value, chdb_path=None))


def _clickhouse_combination_problems(target: ClickHouseTarget) -> list[str]:
    problems = []
    if target.embedded and target.cluster:
        problems.append("METERSTREAM_CLICKHOUSE_CLUSTER needs a ClickHouse server "
                        "(METERSTREAM_CLICKHOUSE=https://...): the embedded engine is one "
                        "process's own and has no cluster")
    if target.ca_file is not None and urlsplit(target.url).scheme != "https":
        problems.append("METERSTREAM_CLICKHOUSE_CA_FILE needs an https:// "
                        "METERSTREAM_CLICKHOUSE (it verifies the server's TLS certificate)")
    return problems


def _cluster(name: str, value: str) -> str:
    if value and not _CLUSTER.fullmatch(value):
        return _problem(f"{name} must be a cluster name of the servers' configuration "
                        f"(letters, digits, '_', '.', '-'), got {value[:100]!r}", "")
    return value


Number = TypeVar("Number", int, float)


def _number(name: str, value: str, kind: Callable[[str], Number],
            low: Number, high: Number) -> Number:
    try:
        number = kind(value)
    except ValueError:
        return _problem(f"{name} must be {'an integer' if kind is int else 'a number'}, "
                        f"got {value!r}", low)
    if not low <= number <= high:
        return _problem(f"{name} must be between {low} and {high}, got {value!r}", low)
    return number


def _port(name: str, value: str) -> int:
    return _number(name, value, int, 1, 65535)


def _namespace(name: str, value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,100}", value):
        return _problem(f"{name} may hold letters, digits, '.', '_' and '-', got {value!r}",
                        "meterstream")
    return value


def _env_name(name: str, value: str) -> str:
    # Convex's rule for a deployment's environment variable names (its `env set` refuses
    # others): a letter, then letters, digits and underscores, under 40 characters.
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,38}", value):
        return _problem(f"{name} must be a Convex environment variable name (a letter, then "
                        f"letters, digits and '_', under 40 characters), got {value!r}",
                        "METERSTREAM_QUOTA_EXCEEDED")
    return value


def _host(name: str, value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9.:-]+", value):
        return _problem(f"{name} must be a host name or address, got {value!r}", "127.0.0.1")
    return value


def _admin_token(name: str, value: str) -> str:
    if value and (len(value) < 16 or not value.isascii() or not value.isprintable()):
        return _problem(f"{name} must be printable ASCII of at least 16 characters", "")
    return value


def _admin_url(name: str, value: str, port: str, host: str = "127.0.0.1") -> str:
    if not value:
        return f"http://{host}:{port}"
    return _http_url(name, value)


_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\]"
                     r"(?::[0-9]{1,5})?$")


def _origins(name: str, value: str) -> tuple[str, ...]:
    """Browser origins as they send them (scheme://host[:port], no path), or ("*",)."""
    origins = tuple(origin.strip().lower() for origin in value.split(",") if origin.strip())
    if origins == ("*",):
        return origins
    bad = [origin for origin in origins if origin == "*" or not _ORIGIN.match(origin)]
    if bad:
        return _problem(f"{name} takes * alone or origins like https://app.example.com "
                        f"(scheme://host[:port], no path), got {', '.join(bad)}", ())
    return origins


def _loopback(host: str) -> str:
    """The address a local client dials for a server listening on `host`."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _http_url(name: str, value: str) -> str:
    parts = urlsplit(value.replace("{deployment}", "deployment"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return _problem(f"{name} must be an http(s):// URL, got {value!r}", "https://invalid")
    return value.rstrip("/")


def _urls(name: str, value: str) -> tuple[str, ...]:
    return tuple(_http_url(name, url.strip()) for url in value.split(",") if url.strip())


def _file(name: str, value: str) -> Path | None:
    if not value:
        return None
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        return _problem(f"{name} must name a file, got {value!r}", None)
    return path


def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        return _problem(f"{name} must be one of {', '.join(choices)}, got {value!r}",
                        choices[0])
    return value
