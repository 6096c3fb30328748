"""`meterstream kafka start|stop|status`: the local broker, run by deploy/kafka.sh."""

from __future__ import annotations

import subprocess
from pathlib import Path

from meterstream.core.config import Settings

SCRIPT_NAME = "kafka.sh"


def script_path() -> Path:
    """deploy/kafka.sh of the source tree this package runs from."""
    here = Path(__file__).resolve().parent.parent / "deploy" / SCRIPT_NAME
    if not here.is_file():
        raise FileNotFoundError(
            f"{here} not found: `meterstream kafka` runs from a source checkout "
            "(pip install -e .), where deploy/ sits beside the packages"
        )
    return here


def run(action: str, settings: Settings, sasl_ssl: bool = False, brokers: int | None = None,
        node: int | None = None) -> int:
    """Run the broker script for `action`; returns its exit code (its output goes to ours).
    `sasl_ssl`: the client listener speaks SASL_SSL with SCRAM-SHA-512 (deploy/kafka.sh
    prints the settings to connect with); `brokers`: a local cluster of that many nodes;
    `node`: one node of the cluster (start or kill it alone)."""
    command = [
        "bash", str(script_path()), action,
        "--home", str(settings.kafka_home),
        "--port", str(settings.kafka_port),
        "--controller-port", str(settings.kafka_controller_port),
        *(["--sasl-ssl"] if sasl_ssl else []),
    ]
    if brokers is not None:
        command += ["--brokers", str(brokers)]
    if node is not None:
        command += ["--node", str(node)]
    return subprocess.run(command, check=False).returncode
