"""Every Kafka client's connection options, from the configuration, in one place.

Each aiokafka client meterstream makes (producer, consumer, admin) is built with
`**kafka.client_options()` of a `KafkaConnection`, and the Faust app with
`broker_credentials=faust_credentials(...)`: the bootstrap servers, the security protocol,
the SASL mechanism and login, and the TLS context (CA, optional client certificate) come
from here and nowhere else. tests/unit/test_kafka_client.py scans the packages and fails on
a client constructed any other way, so that a new client cannot connect in clear by
forgetting them.

`check_login` opens one connection the way the clients will, before a service starts, so
that a wrong password or CA fails the start at once with one line naming the setting
(`KafkaRefused`), instead of each client retrying in the background for ever.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka import errors
from aiokafka.conn import create_conn
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest

from meterstream.core.config import KafkaSecurity, Settings

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

__all__ = ["KafkaConnection", "KafkaRefused", "check_login", "faust_credentials",
           "security_options"]

log = logging.getLogger("meterstream.kafka")

LOGIN_SECONDS = 10.0
"""How long `check_login` gives a reachable broker to complete TLS and the SASL login."""


@dataclass(frozen=True)
class KafkaConnection:
    """Where Kafka is and how to log in: what every client needs to connect."""

    bootstrap: str
    security: KafkaSecurity = field(default_factory=KafkaSecurity)

    @classmethod
    def of(cls, settings: Settings) -> KafkaConnection:
        return cls(settings.kafka_bootstrap, settings.kafka_security)

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments of AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient:
        bootstrap_servers and the security options."""
        return {"bootstrap_servers": self.bootstrap, **security_options(self.security)}

    @property
    def servers(self) -> list[tuple[str, int]]:
        """The bootstrap servers as (host, port), an IPv6 host without its brackets."""
        found = []
        for server in self.bootstrap.split(","):
            host, _, port = server.strip().rpartition(":")
            found.append((host.strip("[]"), int(port)))
        return found


def security_options(security: KafkaSecurity) -> dict[str, Any]:
    """The security keyword arguments of an aiokafka client (or connection)."""
    options: dict[str, Any] = {"security_protocol": security.protocol}
    if security.tls:
        options["ssl_context"] = ssl_context(security)
    if security.sasl:
        options.update(sasl_mechanism=security.sasl_mechanism,
                       sasl_plain_username=security.username,
                       sasl_plain_password=security.password)
    return options


@functools.cache
def ssl_context(security: KafkaSecurity) -> ssl.SSLContext:
    """The TLS context of every client of a process: made once (clients are made per look
    in places), verifying the brokers' certificates and host names against the CA file, or
    the system's authorities when none is set."""
    return create_ssl_context(
        cafile=None if security.ca_file is None else str(security.ca_file),
        certfile=None if security.cert_file is None else str(security.cert_file),
        keyfile=None if security.key_file is None else str(security.key_file),
        # Settings refused encrypted keys; an empty password keeps OpenSSL from prompting.
        password="" if security.cert_file is not None else None,
    )


def faust_credentials(security: KafkaSecurity) -> CredentialsT | None:
    """The same options for faust.App(broker_credentials=...): None for PLAINTEXT."""
    import faust  # the worker's dependency only: other commands do not pay for it

    if security.sasl:
        # With an SSL context Faust's SASL credentials speak SASL_SSL, without one
        # SASL_PLAINTEXT.
        return faust.SASLCredentials(
            username=security.username, password=security.password,
            mechanism=security.sasl_mechanism,
            ssl_context=ssl_context(security) if security.tls else None)
    if security.tls:
        return faust.SSLCredentials(ssl_context(security))
    return None


class KafkaRefused(Exception):
    """Kafka refused this configuration's TLS or SASL login; the message is one line that
    names the setting to check."""


class KafkaUnreachable(Exception):
    """No bootstrap server could be reached (`check_login` with `required`); the message is
    one line naming them."""


async def check_login(kafka: KafkaConnection, seconds: float = LOGIN_SECONDS,
                      required: bool = False) -> None:
    """Connects to the bootstrap servers as every client will (TLS, SASL login, one
    metadata request) and returns once one server let it in.

    With `required` (a command that does one job and exits, rather than a service that
    waits), no server reached raises KafkaUnreachable instead of being logged.

    Raises KafkaRefused when a server that answers refuses the login, the certificate or
    the protocol. A server that cannot be reached at all, or does not finish the handshake
    within `seconds` (a broker still starting), is not a login problem: it is logged and
    each service waits for Kafka its own way (the receiver answers 503 meanwhile)."""
    refused: KafkaRefused | None = None
    unreachable: list[str] = []
    for host, port in kafka.servers:
        server = f"{host}:{port}"
        try:
            async with asyncio.timeout(seconds):
                _, writer = await asyncio.open_connection(host, port)
            writer.close()
        except (OSError, TimeoutError) as exc:
            unreachable.append(f"{server} ({_why_unreachable(exc)})")
            if not required:
                log.warning("Kafka at %s cannot be reached before the start: %s", server, exc)
            continue
        try:
            async with asyncio.timeout(seconds):
                await _log_in(host, port, kafka.security, int(seconds * 1000))
            return
        except TimeoutError:
            log.warning("Kafka at %s did not finish the %s handshake within %gs", server,
                        kafka.security.protocol, seconds)
        except (OSError, errors.KafkaError) as exc:
            refused = KafkaRefused(refusal(server, kafka.security, exc))
    if refused is not None:
        raise refused
    if required and len(unreachable) == len(kafka.servers):
        raise KafkaUnreachable(f"Kafka cannot be reached at {', '.join(unreachable)}")


def _why_unreachable(exc: OSError | TimeoutError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or str(exc) or type(exc).__name__


async def _log_in(host: str, port: int, security: KafkaSecurity, request_ms: int) -> None:
    conn = await create_conn(host, port, client_id="meterstream-login-check",
                             request_timeout_ms=request_ms,
                             **security_options(security))
    try:
        # TLS and the SASL login happened in create_conn. A request only an authenticated
        # client may make catches an SSL client at a SASL_SSL listener (ApiVersions, all
        # that create_conn sends then, is answered before any login).
        await conn.send(MetadataRequest([]))
    finally:
        conn.close()


def refusal(server: str, security: KafkaSecurity, exc: BaseException) -> str:
    """One line saying which setting made Kafka at `server` refuse this client."""
    protocol = f"METERSTREAM_KAFKA_SECURITY_PROTOCOL={security.protocol}"
    if isinstance(exc, errors.SaslAuthenticationFailed):
        return (f"Kafka at {server} refused the SASL login of METERSTREAM_KAFKA_USERNAME="
                f"{security.username} ({security.sasl_mechanism}): check "
                "METERSTREAM_KAFKA_PASSWORD (and METERSTREAM_KAFKA_SASL_MECHANISM)")
    if isinstance(exc, errors.UnsupportedSaslMechanismError):
        return (f"Kafka at {server} does not offer METERSTREAM_KAFKA_SASL_MECHANISM="
                f"{security.sasl_mechanism}: {_first_line(exc)}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        ca = security.ca_file or "(the system's authorities)"
        return (f"Kafka at {server} presented a certificate that does not verify "
                f"({exc.verify_message}): check METERSTREAM_KAFKA_CA_FILE={ca}")
    if isinstance(exc, ssl.SSLError):
        return (f"TLS with Kafka at {server} failed ({exc.reason or _first_line(exc)}): "
                f"check {protocol} is the protocol of that listener, and "
                "METERSTREAM_KAFKA_CERT_FILE if it asks for a client certificate")
    if isinstance(exc, errors.KafkaError) and not isinstance(
            exc, errors.KafkaConnectionError):
        return (f"Kafka at {server} refused the connection ({type(exc).__name__}: "
                f"{_first_line(exc)}): check {protocol} and the SASL settings")
    # The broker hung up in the middle of the handshake: it speaks another protocol
    # (PLAINTEXT to a TLS listener, SSL to a plain one, no SASL to a SASL one).
    return (f"Kafka at {server} closed the connection during the {security.protocol} "
            f"handshake: check {protocol} is the protocol of that listener")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
