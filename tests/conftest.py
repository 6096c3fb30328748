"""The session's Kafka broker, and the `kafka` marker on every test under tests/integration.

METERSTREAM_KAFKA names a broker to use as it is. Otherwise, with a Docker
engine, testcontainers runs the official Apache Kafka image; without one,
`meterstream kafka start` runs the broker from its Maven Central jars, the
same path users take (deploy/kafka.sh). The jars are cached under
.meterstream-test/ across sessions; the broker's data is new each session.

The split is by folder: tests/unit runs without a broker, tests/integration is what
`-m kafka` selects (tests/unit/test_markers.py checks both directions).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import REPO, free_port, meterstream

KAFKA_IMAGE = "apache/kafka:4.1.1"
TEST_DATA_DIR = REPO / ".meterstream-test"
INTEGRATION = Path(__file__).resolve().parent / "integration"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks every test under tests/integration `kafka`, whether its file says so or not.
    First among the hooks, so that `-m` (pytest's own hook) deselects by this marker."""
    for item in items:
        if item.path.is_relative_to(INTEGRATION):
            item.add_marker(pytest.mark.kafka)


def _docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True,
                              timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _container_broker() -> Iterator[str]:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    port = free_port()
    # The image's own single-node KRaft settings, advertised on the mapped port.
    container = (
        DockerContainer(KAFKA_IMAGE)
        .with_bind_ports(9092, port)
        .with_env("CLUSTER_ID", "4L6g3nShT-eMCtK--X86sw")
        .with_env("KAFKA_NODE_ID", "1")
        .with_env("KAFKA_PROCESS_ROLES", "broker,controller")
        .with_env("KAFKA_LISTENERS", "PLAINTEXT://:9092,CONTROLLER://:9093")
        .with_env("KAFKA_ADVERTISED_LISTENERS", f"PLAINTEXT://127.0.0.1:{port}")
        .with_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
        .with_env("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
                  "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT")
        .with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
        .with_env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .with_env("KAFKA_MESSAGE_MAX_BYTES", "16777216")
    )
    with container:
        wait_for_logs(container, "Kafka Server started", timeout=120)
        yield f"127.0.0.1:{port}"


def _local_broker() -> Iterator[str]:
    env = {
        "METERSTREAM_DATA_DIR": str(TEST_DATA_DIR),
        "METERSTREAM_KAFKA": f"127.0.0.1:{free_port()}",
        "METERSTREAM_KAFKA_CONTROLLER_PORT": str(free_port()),
    }
    # A broker left over from an interrupted session would hold the data directory.
    meterstream(["kafka", "stop"], env)
    shutil.rmtree(TEST_DATA_DIR / "kafka" / "data", ignore_errors=True)
    meterstream(["kafka", "start"], env, timeout=600)
    try:
        yield env["METERSTREAM_KAFKA"]
    finally:
        meterstream(["kafka", "stop"], env)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    named = os.environ.get("METERSTREAM_KAFKA", "").strip()
    if named:
        yield named
    elif _docker_available():
        yield from _container_broker()
    else:
        yield from _local_broker()
