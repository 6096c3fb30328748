"""The pipeline on a Kafka that only speaks SASL_SSL with SCRAM-SHA-512 (as managed Kafka
services do): `meterstream kafka start --sasl-ssl` on a broker of this module's own."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from meterstream.core.config import Settings
from meterstream.core.kafka_client import KafkaConnection, KafkaRefused, check_login
from tests.support import meterstream, own_broker_env, recent_events, wait_for
from tests.support.function_totals import stored_rows, stored_totals, totals
from tests.support.pipeline import running_pipeline

SECRET = "3f1c2b7e9a0d4c5e8b6a7f0e1d2c3b4a"


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A SASL_SSL broker on free ports with its own home, and the settings it printed to
    connect with (the password as METERSTREAM_KAFKA_PASSWORD_FILE)."""
    env = own_broker_env(tmp_path_factory.mktemp("sasl-broker"))
    try:
        started = meterstream(["kafka", "start", "--sasl-ssl"], env, timeout=600)
        printed = dict(line.strip().split("=", 1) for line in started.stdout.splitlines()
                       if line.startswith("  METERSTREAM_"))
        assert set(printed) == {
            "METERSTREAM_KAFKA", "METERSTREAM_KAFKA_SECURITY_PROTOCOL",
            "METERSTREAM_KAFKA_SASL_MECHANISM", "METERSTREAM_KAFKA_USERNAME",
            "METERSTREAM_KAFKA_PASSWORD_FILE", "METERSTREAM_KAFKA_CA_FILE"}, started.stdout
        assert printed["METERSTREAM_KAFKA"] == env["METERSTREAM_KAFKA"]
        assert printed["METERSTREAM_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert printed["METERSTREAM_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
        yield printed
    finally:
        meterstream(["kafka", "stop"], env)


def test_the_listener_refuses_a_client_without_tls_and_sasl(
        sasl_broker: dict[str, str]) -> None:
    """So that the pipeline below cannot have passed by reaching Kafka in clear."""
    bootstrap = sasl_broker["METERSTREAM_KAFKA"]
    # `status` probes the SASL_SSL listener over TLS, verified against the printed CA.
    home = {"METERSTREAM_KAFKA": bootstrap,
            "METERSTREAM_DATA_DIR": str(Path(sasl_broker["METERSTREAM_KAFKA_CA_FILE"]).parents[2])}
    assert meterstream(["kafka", "status"], home).stdout.startswith("kafka: running")
    with pytest.raises(KafkaRefused, match="closed the connection during the PLAINTEXT"):
        asyncio.run(check_login(KafkaConnection(bootstrap)))
    secured = KafkaConnection.of(Settings.from_env(sasl_broker))
    asyncio.run(check_login(secured))  # the printed settings log in


def test_the_pipeline_counts_exactly_over_sasl_ssl(sasl_broker: dict[str, str],
                                                   tmp_path: Path) -> None:
    events = recent_events()
    functions = [e for e in events if e["topic"] == "function_execution"]
    bodies = [orjson.dumps([{**e, "timestamp": e["timestamp"] + shift} for e in events])
              for shift in (0, 60_000)]
    # The first body twice, as Convex retries: the worker drops it by its hash, kept in its
    # table and changelog (Faust's clients, over SASL_SSL as well).
    sent = [bodies[0], bodies[0], bodies[1]]
    with running_pipeline(sasl_broker["METERSTREAM_KAFKA"], tmp_path, command="up --workers 1",
                          extra_env=sasl_broker) as pipeline:
        pipeline.register("happy-otter-123", webhook_secret=SECRET)
        for body in sent:
            status, answer = pipeline.post(body, SECRET)
            assert status == 200, answer
        expected_rows, expected_totals = 2 * len(functions), totals(functions * 2)
        wait_for(lambda: stored_rows(pipeline.sql) >= expected_rows, timeout=90,
                 what=f"{expected_rows} rows in function_executions")
        assert stored_totals(pipeline.sql) == (expected_rows, expected_totals)
        assert pipeline.stop() == 0, pipeline.log_tail()


@pytest.mark.parametrize("command", [["up", "--workers", "1"], ["worker"]])
def test_a_wrong_password_stops_the_start_in_seconds_naming_the_setting(
        sasl_broker: dict[str, str], tmp_path: Path, command: list[str]) -> None:
    env = {**sasl_broker, "METERSTREAM_KAFKA_PASSWORD_FILE": "",
           "METERSTREAM_KAFKA_PASSWORD": "not-the-password",
           "METERSTREAM_DATA_DIR": str(tmp_path / "ms")}
    started = time.monotonic()
    result = meterstream(command, env, timeout=60, check=False)
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert elapsed < 20, elapsed
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"meterstream: Kafka at {sasl_broker['METERSTREAM_KAFKA']} refused the SASL login of "
        "METERSTREAM_KAFKA_USERNAME=meterstream (SCRAM-SHA-512): check "
        "METERSTREAM_KAFKA_PASSWORD (and METERSTREAM_KAFKA_SASL_MECHANISM)")
    assert "not-the-password" not in result.stderr + result.stdout


def test_a_start_in_the_other_mode_of_the_running_broker_is_refused(
        sasl_broker: dict[str, str]) -> None:
    home = {"METERSTREAM_KAFKA": sasl_broker["METERSTREAM_KAFKA"],
            "METERSTREAM_DATA_DIR": str(Path(sasl_broker["METERSTREAM_KAFKA_CA_FILE"]).parents[2])}
    plain = meterstream(["kafka", "start"], home, check=False)
    assert plain.returncode == 1
    assert plain.stderr.strip().endswith("runs with SASL_SSL: start it with --sasl-ssl, or "
                                         "stop it first")


def test_sasl_ssl_refuses_a_broker_running_without_it_or_storage_without_its_user(
        tmp_path: Path) -> None:
    """Neither starts a broker: the refusals come before Java runs one."""
    env = own_broker_env(tmp_path)
    kafka_home = Path(env["METERSTREAM_DATA_DIR"]) / "kafka"
    kafka_home.mkdir(parents=True, exist_ok=True)
    # A broker of this home running in clear (this test's own process stands in for it).
    (kafka_home / "kafka.pid").write_text(f"{os.getpid()}\n")
    running = meterstream(["kafka", "start", "--sasl-ssl"], env, check=False)
    assert running.returncode == 1
    assert running.stderr.strip().endswith("runs without SASL_SSL: stop it first")

    # Storage formatted by a start without --sasl-ssl has no SCRAM user.
    (kafka_home / "kafka.pid").unlink()
    (kafka_home / "data").mkdir()
    (kafka_home / "data" / "meta.properties").write_text("version=1\n")
    formatted = meterstream(["kafka", "start", "--sasl-ssl"], env, check=False)
    assert formatted.returncode == 1
    assert "formatted without the SCRAM user that --sasl-ssl needs" in formatted.stderr
    assert (kafka_home / "data" / "meta.properties").read_text() == "version=1\n"
