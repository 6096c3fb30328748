from __future__ import annotations

from pathlib import Path

import pytest

from meterstream.config import ConfigError, Settings
from tests.support import meterstream


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({})
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.kafka_port == 9092
    assert settings.data_dir == tmp_path / ".meterstream"
    assert settings.clickhouse.chdb_path == tmp_path / ".meterstream" / "clickhouse"
    assert settings.clickhouse.embedded
    assert settings.receiver_port == 8686
    assert settings.worker_port == 6066
    assert settings.namespace == "meterstream"


def test_clickhouse_server_url_keeps_its_password_out_of_logs() -> None:
    settings = Settings.from_env(
        {"METERSTREAM_CLICKHOUSE": "https://metering:s3cret@ch.example:8443/usage"})
    assert not settings.clickhouse.embedded
    assert settings.clickhouse.display == "https://metering:***@ch.example:8443/usage"
    assert "s3cret" not in repr(settings)


def test_chdb_path_is_resolved(tmp_path: Path) -> None:
    settings = Settings.from_env({"METERSTREAM_CLICKHOUSE": f"chdb://{tmp_path}/ch"})
    assert settings.clickhouse.chdb_path == tmp_path / "ch"


@pytest.mark.parametrize(("name", "value"), [
    ("METERSTREAM_KAFKA", "localhost"),
    ("METERSTREAM_KAFKA", "a:1,b"),
    ("METERSTREAM_KAFKA", "host:70000"),
    ("METERSTREAM_CLICKHOUSE", "postgres://x"),
    ("METERSTREAM_CLICKHOUSE", "chdb://memory"),
    ("METERSTREAM_CLICKHOUSE", "http://"),
    ("METERSTREAM_RECEIVER_PORT", "eighty"),
    ("METERSTREAM_RECEIVER_PORT", "0"),
    ("METERSTREAM_WORKER_PORT", "65536"),
    ("METERSTREAM_PARTITIONS", "0"),
    ("METERSTREAM_NAMESPACE", "has space"),
    ("METERSTREAM_SINK_BATCH_SECONDS", "soon"),
    ("METERSTREAM_LOG_LEVEL", "loud"),
])
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_local_broker_needs_one_loopback_address() -> None:
    with pytest.raises(ConfigError, match="METERSTREAM_KAFKA"):
        _ = Settings.from_env({"METERSTREAM_KAFKA": "kafka-1:9092,kafka-2:9092"}).kafka_port


def test_a_bad_value_stops_the_command_at_start() -> None:
    result = meterstream(["receiver"], {"METERSTREAM_RECEIVER_PORT": "eighty"}, check=False)
    assert result.returncode == 1
    assert "METERSTREAM_RECEIVER_PORT" in result.stderr
