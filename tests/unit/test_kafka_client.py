"""Every Kafka client connects with the configured security, through one shared module
(meterstream/core/kafka_client.py), and a refused login stops a start in one line."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import errors

from meterstream.core.config import KafkaSecurity, Settings
from meterstream.core.kafka_client import (
    KafkaConnection,
    KafkaRefused,
    check_login,
    faust_credentials,
    refusal,
    security_options,
)
from tests.support import REPO, free_port, meterstream
from tests.support.tls import Authority

# --- Every client construction site goes through the shared options ----------------------

PACKAGES = ("ingest", "processors", "sinks", "billing", "meterstream", "bench")
CLIENTS = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient", "AIOKafkaClient",
           "create_conn"}
SHARED = {"client_options", "security_options"}
# What the shared options set: a call setting one itself would override or bypass them.
OWNED = {"bootstrap_servers", "security_protocol", "ssl_context", "sasl_mechanism",
         "sasl_plain_username", "sasl_plain_password", "sasl_oauth_token_provider"}


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def client_problems(source: str, where: str) -> list[str]:
    """Each Kafka client constructed in `source` without the shared options, each Faust app
    without the shared credentials, and each client class imported under another name."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                ("aiokafka", "faust")):
            problems += [f"{where}:{node.lineno}: {alias.name} imported as {alias.asname}"
                         for alias in node.names
                         if alias.asname and alias.name in CLIENTS | {"App"}]
        if not isinstance(node, ast.Call):
            continue
        called = _name(node.func)
        if called in CLIENTS:
            shared = [k for k in node.keywords if k.arg is None
                      and isinstance(k.value, ast.Call) and _name(k.value.func) in SHARED]
            own = sorted(k.arg for k in node.keywords if k.arg in OWNED)
            if not shared:
                problems.append(f"{where}:{node.lineno}: {called}(...) without "
                                "**<KafkaConnection>.client_options()")
            if own:
                problems.append(f"{where}:{node.lineno}: {called}(...) sets {', '.join(own)} "
                                "itself")
        elif called == "App" and isinstance(node.func, ast.Attribute) \
                and _name(node.func.value) == "faust":
            credentials = [k for k in node.keywords if k.arg == "broker_credentials"
                           and isinstance(k.value, ast.Call)
                           and _name(k.value.func) == "faust_credentials"]
            if not credentials:
                problems.append(f"{where}:{node.lineno}: faust.App(...) without "
                                "broker_credentials=faust_credentials(...)")
    return problems


def _sources() -> Iterator[tuple[str, str]]:
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            yield str(path.relative_to(REPO)), path.read_text()


def test_every_kafka_client_is_built_with_the_shared_options() -> None:
    problems = [p for where, source in _sources() for p in client_problems(source, where)]
    assert problems == []


def test_the_scan_sees_the_clients_of_every_service() -> None:
    """Not vacuous: it finds the clients where they are known to be."""
    found = set()
    for where, source in _sources():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and (_name(node.func) in CLIENTS or (
                    _name(node.func) == "App" and isinstance(node.func, ast.Attribute))):
                found.add(where)
    assert {"ingest/producer.py", "processors/app.py", "processors/alert_log.py",
            "processors/alert_webhooks.py", "processors/stall_guard.py", "sinks/sink.py",
            "billing/scheduler.py", "meterstream/core/topics.py",
            "meterstream/core/compacted.py", "meterstream/core/kafka_client.py",
            "meterstream/secrets_cli.py", "bench/worker.py"} <= found


@pytest.mark.parametrize(("source", "problem"), [
    ("AIOKafkaProducer(bootstrap_servers=b, acks='all')", "without **"),
    ("aiokafka.AIOKafkaConsumer(**options)", "without **"),
    ("AIOKafkaAdminClient(**k.client_options(), security_protocol='PLAINTEXT')",
     "sets security_protocol itself"),
    ("create_conn(host, port)", "without **"),
    ("faust.App('ns', broker='kafka://x')", "without broker_credentials"),
    ("from aiokafka import AIOKafkaProducer as Producer", "imported as Producer"),
])
def test_the_scan_names_a_client_that_bypasses_the_options(source: str, problem: str) -> None:
    found = client_problems(source, "made-up.py")
    assert [p for p in found if problem in p], found


def test_the_shared_construction_passes_the_scan() -> None:
    assert client_problems("AIOKafkaConsumer('t', **kafka.client_options(), group_id=None)\n"
                           "faust.App('ns', broker_credentials=faust_credentials(s))",
                           "ok.py") == []


# --- Options from the configuration ------------------------------------------------------


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority(tmp_path_factory.mktemp("ca"))


def sasl_ssl(ca: Path, **more: str) -> Settings:
    return Settings.from_env({
        "METERSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "METERSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "METERSTREAM_KAFKA_USERNAME": "metering",
        "METERSTREAM_KAFKA_PASSWORD": "pa55-word",
        "METERSTREAM_KAFKA_CA_FILE": str(ca), **more})


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    kafka = KafkaConnection.of(Settings.from_env({"METERSTREAM_KAFKA": "k1:9092,k2:9092"}))
    assert kafka.client_options() == {"bootstrap_servers": "k1:9092,k2:9092",
                                      "security_protocol": "PLAINTEXT"}
    assert faust_credentials(kafka.security) is None


def test_sasl_ssl_gives_the_login_and_a_verifying_tls_context(authority: Authority) -> None:
    options = KafkaConnection.of(sasl_ssl(authority.pem)).client_options()
    context = options.pop("ssl_context")
    assert options == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "SASL_SSL",
                       "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "metering",
                       "sasl_plain_password": "pa55-word"}
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "test-ca"),),)]


def test_faust_gets_the_same_options_as_the_aiokafka_clients(authority: Authority) -> None:
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    client = authority.issue("client")
    for settings in (sasl_ssl(authority.pem),
                     Settings.from_env({"METERSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
                                        "METERSTREAM_KAFKA_CA_FILE": str(authority.pem),
                                        "METERSTREAM_KAFKA_CERT_FILE": str(client.cert),
                                        "METERSTREAM_KAFKA_KEY_FILE": str(client.key)}),
                     Settings.from_env({"METERSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                                        "METERSTREAM_KAFKA_SASL_MECHANISM": "PLAIN",
                                        "METERSTREAM_KAFKA_USERNAME": "u",
                                        "METERSTREAM_KAFKA_PASSWORD": "p"})):
        security = settings.kafka_security
        faust_options = dict(credentials_to_aiokafka_auth(faust_credentials(security)))
        if faust_options.get("ssl_context") is None:
            faust_options.pop("ssl_context", None)
        assert faust_options == security_options(security), security.protocol


def test_a_client_certificate_is_loaded_into_the_context(authority: Authority) -> None:
    client = authority.issue("client")
    settings = Settings.from_env({"METERSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
                                  "METERSTREAM_KAFKA_CA_FILE": str(authority.pem),
                                  "METERSTREAM_KAFKA_CERT_FILE": str(client.cert),
                                  "METERSTREAM_KAFKA_KEY_FILE": str(client.key)})
    options = security_options(settings.kafka_security)
    assert options["security_protocol"] == "SSL"
    assert "sasl_mechanism" not in options
    # The same context for every client of the process: made once.
    assert security_options(settings.kafka_security)["ssl_context"] is options["ssl_context"]


# --- A refused login: one line naming the setting ----------------------------------------


def test_a_refused_sasl_login_names_the_user_and_the_password_setting() -> None:
    security = KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", "metering", "wrong-one")
    message = refusal("kafka:9093", security, errors.SaslAuthenticationFailed("invalid"))
    assert message == ("Kafka at kafka:9093 refused the SASL login of "
                       "METERSTREAM_KAFKA_USERNAME=metering (SCRAM-SHA-512): check "
                       "METERSTREAM_KAFKA_PASSWORD (and METERSTREAM_KAFKA_SASL_MECHANISM)")
    assert "wrong-one" not in message


def test_a_mechanism_the_broker_lacks_names_the_mechanism_setting() -> None:
    security = KafkaSecurity("SASL_SSL", "PLAIN", "u", "p")
    exc = errors.UnsupportedSaslMechanismError(
        "Kafka broker does not support PLAIN sasl mechanism. Enabled mechanisms are: "
        "['SCRAM-SHA-512']")
    message = refusal("kafka:9093", security, exc)
    assert message.startswith("Kafka at kafka:9093 does not offer "
                              "METERSTREAM_KAFKA_SASL_MECHANISM=PLAIN")
    assert "SCRAM-SHA-512" in message


@contextlib.contextmanager
def fake_broker(tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """A server on a free port that accepts connections and hangs up on each (after the
    TLS handshake, with `tls`): what a broker of another protocol does."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError), conn:
                conn.settimeout(5)
                if tls is not None:
                    with tls.wrap_socket(conn, server_side=True) as wrapped:
                        wrapped.recv(1)
                else:
                    conn.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        server.close()


def test_kafka_out_of_reach_is_not_a_refusal() -> None:
    # The receiver starts without Kafka and answers 503 until it is back.
    asyncio.run(check_login(KafkaConnection(f"127.0.0.1:{free_port()}"), seconds=2))


def test_a_broker_hanging_up_in_the_handshake_names_the_protocol_setting() -> None:
    with fake_broker() as bootstrap, pytest.raises(KafkaRefused) as refused:
        asyncio.run(check_login(KafkaConnection(bootstrap), seconds=5))
    assert str(refused.value) == (
        f"Kafka at {bootstrap} closed the connection during the PLAINTEXT handshake: check "
        "METERSTREAM_KAFKA_SECURITY_PROTOCOL=PLAINTEXT is the protocol of that listener")


def test_a_certificate_of_another_authority_names_the_ca_setting(
        authority: Authority, tmp_path: Path) -> None:
    stranger = Authority(tmp_path, "stranger-ca").issue("broker")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(stranger.cert, stranger.key)
    security = Settings.from_env({"METERSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
                                  "METERSTREAM_KAFKA_CA_FILE": str(authority.pem)}
                                 ).kafka_security
    with fake_broker(server) as bootstrap, pytest.raises(KafkaRefused) as refused:
        asyncio.run(check_login(KafkaConnection(bootstrap, security), seconds=5))
    assert str(refused.value).startswith(f"Kafka at {bootstrap} presented a certificate that "
                                         "does not verify (")
    assert str(refused.value).endswith(f"): check METERSTREAM_KAFKA_CA_FILE={authority.pem}")


@pytest.mark.parametrize("command", [["receiver"], ["up", "--workers", "1"],
                                     ["secrets", "status"]])
def test_a_refused_start_exits_in_seconds_with_one_line(
        command: list[str], authority: Authority, tmp_path: Path) -> None:
    stranger = Authority(tmp_path, "stranger-ca").issue("broker")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(stranger.cert, stranger.key)
    with fake_broker(server) as bootstrap:
        started = time.monotonic()
        result = meterstream(command, {
            "METERSTREAM_KAFKA": bootstrap, "METERSTREAM_DATA_DIR": str(tmp_path / "ms"),
            "METERSTREAM_SECRET_KEY": "", "METERSTREAM_SECRET_KEY_FILE": "",
            "METERSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "METERSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "METERSTREAM_KAFKA_USERNAME": "metering",
            "METERSTREAM_KAFKA_PASSWORD": "pa55-word",
            "METERSTREAM_KAFKA_CA_FILE": str(authority.pem)}, timeout=60, check=False)
        elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert elapsed < 15
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"meterstream: Kafka at {bootstrap} presented a certificate")
    assert last.endswith(f"check METERSTREAM_KAFKA_CA_FILE={authority.pem}")
