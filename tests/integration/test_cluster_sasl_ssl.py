"""Secured and replicated together: a local three-broker cluster whose clients and brokers
speak SASL_SSL with SCRAM-SHA-512 (`meterstream kafka start --brokers 3 --sasl-ssl`), with
replication factor 3 and min.insync.replicas 2. Every node refuses a client in clear; a
broker killed with SIGKILL in the middle of a load loses and repeats nothing (the test of
the cluster in clear, over SASL_SSL); a start in the other mode is refused."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from meterstream.core.kafka_client import KafkaConnection, KafkaRefused, check_login
from tests.support import meterstream, own_broker_env
from tests.support.cluster import BROKERS, Cluster, broker_killed_mid_load, local_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with local_cluster(tmp_path_factory.mktemp("sasl-cluster"), sasl_ssl=True) as cluster:
        yield cluster


def test_every_node_refuses_a_client_in_clear(cluster: Cluster) -> None:
    """So that the load below cannot have passed by reaching a node in clear; the brokers
    replicate among themselves over SASL_SSL too (no other listener is there to use)."""
    for server in cluster.bootstrap.split(","):
        with pytest.raises(KafkaRefused, match="closed the connection during the PLAINTEXT"):
            asyncio.run(check_login(KafkaConnection(server)))
    asyncio.run(check_login(cluster.connection))  # the printed settings log in
    # `status` needs no --sasl-ssl: the cluster's mode is recorded; it probes over TLS.
    status = cluster.kafka("status").stdout.splitlines()
    assert [line.split(" (pid")[0] for line in status] == [
        f"kafka: node {k} running" for k in range(1, BROKERS + 1)], status
    for k in range(1, BROKERS + 1):
        # As Java reads a properties file: the last value of a key wins.
        properties = dict(line.split("=", 1) for line in (
            Path(cluster.env["METERSTREAM_DATA_DIR"]) / "kafka" / f"node-{k}"
            / "server.properties").read_text().splitlines() if "=" in line
            and not line.startswith("#"))
        assert properties["listeners"].split(",")[0].startswith("SASL_SSL://127.0.0.1:")
        assert properties["listener.security.protocol.map"] == (
            "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT")
        assert properties["inter.broker.listener.name"] == "SASL_SSL"


def test_a_broker_killed_mid_load_loses_and_repeats_nothing(cluster: Cluster,
                                                           tmp_path: Path) -> None:
    broker_killed_mid_load(cluster, tmp_path)


def test_a_start_in_the_other_mode_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    """A SASL_SSL cluster started without --sasl-ssl, and a cluster made in clear started
    with it: both refused before any node starts."""
    plain = meterstream(["kafka", "start", "--node", "1"], cluster.env, check=False)
    assert plain.returncode == 1
    assert plain.stderr.strip().endswith("was made with SASL_SSL: start it with --sasl-ssl")

    env = own_broker_env(tmp_path)
    home = Path(env["METERSTREAM_DATA_DIR"]) / "kafka"
    home.mkdir(parents=True, exist_ok=True)
    (home / "cluster").write_text("3\n")  # what a cluster made in clear leaves
    secured = meterstream(["kafka", "start", "--brokers", "3", "--sasl-ssl"], env, check=False)
    assert secured.returncode == 1
    assert "was made without SASL_SSL: stop it and remove" in secured.stderr
    assert not (home / "sasl").exists()
    assert not (home / "node-1").exists()
