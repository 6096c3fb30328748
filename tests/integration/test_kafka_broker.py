"""`meterstream kafka start|stop|status` (deploy/kafka.sh) on its own broker instance."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from tests.support import free_port, meterstream, own_broker_env, read_topic


async def _produce(bootstrap: str, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait("broker-test", value)
    finally:
        await producer.stop()


def test_start_status_stop_and_a_second_start_reuses_jars_and_data(tmp_path: Path) -> None:
    env = own_broker_env(tmp_path)
    bootstrap = env["METERSTREAM_KAFKA"]
    try:
        assert meterstream(["kafka", "status"], env, check=False).returncode == 3
        first = meterstream(["kafka", "start"], env, timeout=600)
        assert "ready" in first.stdout
        assert meterstream(["kafka", "status"], env).stdout.startswith("kafka: running")
        asyncio.run(_produce(bootstrap, b"kept across restarts"))
        assert "stopped" in meterstream(["kafka", "stop"], env).stdout
        assert meterstream(["kafka", "status"], env, check=False).returncode == 3

        second = meterstream(["kafka", "start"], env, timeout=600)
        assert "resolving" not in second.stderr
        assert "formatting" not in second.stderr
        assert [m.value for m in read_topic(bootstrap, "broker-test")] == [
            b"kept across restarts"]
    finally:
        meterstream(["kafka", "stop"], env)


def _path_without(tmp_path: Path, *tools: str) -> str:
    """A PATH holding everything of /usr/bin and /bin except `tools`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in ("/usr/local/bin", "/usr/bin", "/bin"):
        for entry in Path(directory).iterdir():
            target = bin_dir / entry.name
            if entry.name not in tools and not target.exists():
                target.symlink_to(entry)
    return str(bin_dir)


@pytest.mark.parametrize(("missing", "named"), [("java", "Java"), ("mvn", "Maven")])
def test_a_missing_tool_is_named(tmp_path: Path, missing: str, named: str) -> None:
    env = {
        "METERSTREAM_DATA_DIR": str(tmp_path / "ms"),
        "METERSTREAM_KAFKA": f"127.0.0.1:{free_port()}",
        "PATH": _path_without(tmp_path, missing),
    }
    result = meterstream(["kafka", "start"], env, check=False)
    assert result.returncode == 1
    assert f"{named} is not installed" in result.stderr
    assert "apt-get install" in result.stderr
