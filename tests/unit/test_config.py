from __future__ import annotations

import base64
from pathlib import Path

import pytest

from meterstream.core.config import ConfigError, Settings
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


def test_every_bad_variable_is_listed_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"METERSTREAM_RECEIVER_PORT": "eighty",
                           "METERSTREAM_PARTITIONS": "0",
                           "METERSTREAM_PUBLIC_URL": "http://metering.example.com",
                           "METERSTREAM_DEDUP_RETENTION": "60"})
    names = ("METERSTREAM_RECEIVER_PORT", "METERSTREAM_PARTITIONS", "METERSTREAM_PUBLIC_URL",
             "METERSTREAM_DEDUP_RETENTION")
    assert len(caught.value.problems) == len(names)
    for name in names:
        assert any(problem.startswith(name) for problem in caught.value.problems), name
        assert name in str(caught.value)


@pytest.mark.parametrize("name", ["METERSTREAM_CONVEX_API_URL", "METERSTREAM_PUBLIC_URL",
                                  "METERSTREAM_ADMIN_URL", "METERSTREAM_ALERT_WEBHOOKS"])
@pytest.mark.parametrize("url", ["http://metering.example.com", "http://10.0.0.7:8686",
                                 "http://[2001:db8::1]:8686", "http://localhost.example.com"])
def test_credential_urls_must_be_https_unless_loopback(name: str, url: str) -> None:
    env = {"METERSTREAM_ALERT_WEBHOOK_SECRET": "s" * 32, name: url}
    with pytest.raises(ConfigError, match=f"{name} must be an https:// URL"):
        Settings.from_env(env)
    Settings.from_env({**env, name: url.replace("http://", "https://")})


@pytest.mark.parametrize("url", ["http://127.0.0.1:8686", "http://127.8.9.10:1",
                                 "http://[::1]:8686", "http://localhost:8686"])
def test_plain_http_stays_allowed_on_loopback(url: str) -> None:
    settings = Settings.from_env({
        "METERSTREAM_CONVEX_API_URL": url, "METERSTREAM_PUBLIC_URL": url,
        "METERSTREAM_ADMIN_URL": url, "METERSTREAM_ALERT_WEBHOOKS": url,
        "METERSTREAM_ALERT_WEBHOOK_SECRET": "s" * 32,
        "METERSTREAM_CLICKHOUSE": url.replace("http://", "http://u:pw@")})
    assert settings.public_url == url


def test_a_clickhouse_password_needs_https_unless_the_host_is_allowed() -> None:
    url = "http://metering:s3cret@clickhouse:8123/meterstream"
    with pytest.raises(ConfigError, match="METERSTREAM_CLICKHOUSE must be an https") as caught:
        Settings.from_env({"METERSTREAM_CLICKHOUSE": url})
    assert "s3cret" not in str(caught.value)
    # Without a password nothing secret travels; a named private host may use http://.
    Settings.from_env({"METERSTREAM_CLICKHOUSE": "http://clickhouse:8123/meterstream"})
    settings = Settings.from_env({"METERSTREAM_CLICKHOUSE": url,
                                  "METERSTREAM_INSECURE_HTTP_HOSTS": "clickhouse"})
    assert settings.insecure_http_hosts == ("clickhouse",)


def test_dedup_retention_below_the_late_grace_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"METERSTREAM_DEDUP_RETENTION": "3600",
                           "METERSTREAM_LATE_GRACE": "7200"})
    (problem,) = caught.value.problems
    assert "METERSTREAM_DEDUP_RETENTION (3600 s)" in problem
    assert "METERSTREAM_LATE_GRACE (7200 s)" in problem
    settings = Settings.from_env({"METERSTREAM_DEDUP_RETENTION": "7200",
                                  "METERSTREAM_LATE_GRACE": "7200"})
    assert settings.dedup_retention == settings.late_grace


def test_the_alert_webhook_secret_needs_32_characters() -> None:
    env = {"METERSTREAM_ALERT_WEBHOOKS": "https://hooks.example.com/a"}
    with pytest.raises(ConfigError, match="METERSTREAM_ALERT_WEBHOOK_SECRET must be set"):
        Settings.from_env(env)
    with pytest.raises(ConfigError, match="at least 32 characters"):
        Settings.from_env({**env, "METERSTREAM_ALERT_WEBHOOK_SECRET": "s" * 31})
    settings = Settings.from_env({**env, "METERSTREAM_ALERT_WEBHOOK_SECRET": "s" * 32})
    assert settings.alert_webhook_secret == "s" * 32


@pytest.mark.parametrize(("name", "value", "field"), [
    ("METERSTREAM_ADMIN_TOKEN", "admin-token-0123456789", "admin_token"),
    ("METERSTREAM_ALERT_WEBHOOK_SECRET", "a" * 40, "alert_webhook_secret"),
    ("METERSTREAM_SECRET_KEY", base64.b64encode(bytes(range(32))).decode(), "secret_key"),
])
def test_secret_variables_can_be_read_from_files(tmp_path: Path, name: str, value: str,
                                                 field: str) -> None:
    path = tmp_path / "secret"
    path.write_text(value + "\n")
    settings = Settings.from_env({f"{name}_FILE": str(path)})
    expected = bytes(range(32)) if field == "secret_key" else value
    assert getattr(settings, field) == expected
    with pytest.raises(ConfigError, match=f"set {name} or {name}_FILE, not both"):
        Settings.from_env({f"{name}_FILE": str(path), name: value})
    with pytest.raises(ConfigError, match=f"{name}_FILE: cannot read"):
        Settings.from_env({f"{name}_FILE": str(tmp_path / "missing")})


def test_old_secret_keys_are_a_comma_separated_list(tmp_path: Path) -> None:
    keys = [bytes([n]) * 32 for n in (1, 2)]
    path = tmp_path / "old"
    path.write_text(",".join(base64.b64encode(k).decode() for k in keys))
    assert Settings.from_env({"METERSTREAM_SECRET_OLD_KEYS_FILE": str(path)}).secret_old_keys \
        == tuple(keys)


@pytest.mark.parametrize("value", ["short", base64.b64encode(b"x" * 31).decode(), "!" * 44])
def test_a_secret_key_must_be_32_bytes_of_base64(value: str) -> None:
    with pytest.raises(ConfigError, match="METERSTREAM_SECRET_KEY must be base64 of 32"):
        Settings.from_env({"METERSTREAM_SECRET_KEY": value})


def test_the_command_lists_every_bad_variable() -> None:
    result = meterstream(["receiver"], {"METERSTREAM_RECEIVER_PORT": "eighty",
                                        "METERSTREAM_CONVEX_API_URL": "http://convex.example"},
                         check=False)
    assert result.returncode == 1
    assert "configuration errors:" in result.stderr
    assert "  - METERSTREAM_RECEIVER_PORT must be an integer" in result.stderr
    assert "  - METERSTREAM_CONVEX_API_URL must be an https:// URL" in result.stderr


READ_TOKEN = "read-token-0123456789abcdef"


def test_the_read_token_is_validated_like_the_admin_token(tmp_path: Path) -> None:
    assert Settings.from_env({}).read_token == ""
    assert Settings.from_env({"METERSTREAM_READ_TOKEN": READ_TOKEN}).read_token == READ_TOKEN
    for bad in ("short", "ünïcödé-token-0123456789", "tab\ttoken-0123456789"):
        with pytest.raises(ConfigError, match="METERSTREAM_READ_TOKEN must be printable"):
            Settings.from_env({"METERSTREAM_READ_TOKEN": bad})
    # A secret: kept out of repr, and given as a file (docker and systemd secrets).
    assert READ_TOKEN not in repr(Settings.from_env({"METERSTREAM_READ_TOKEN": READ_TOKEN}))
    token_file = tmp_path / "read-token"
    token_file.write_text(READ_TOKEN + "\n")
    settings = Settings.from_env({"METERSTREAM_READ_TOKEN_FILE": str(token_file)})
    assert settings.read_token == READ_TOKEN
    with pytest.raises(ConfigError, match="METERSTREAM_READ_TOKEN or METERSTREAM_READ_TOKEN_FILE"):
        Settings.from_env({"METERSTREAM_READ_TOKEN_FILE": str(token_file),
                           "METERSTREAM_READ_TOKEN": READ_TOKEN})


def test_the_read_token_must_not_be_the_admin_token() -> None:
    with pytest.raises(ConfigError, match="METERSTREAM_READ_TOKEN must differ"):
        Settings.from_env({"METERSTREAM_READ_TOKEN": READ_TOKEN,
                           "METERSTREAM_ADMIN_TOKEN": READ_TOKEN})


def test_the_probes_stay_on_the_service_ports_unless_a_metrics_host_is_set() -> None:
    settings = Settings.from_env({})
    assert (settings.metrics_host, settings.receiver_metrics_port,
            settings.worker_metrics_port) == ("", 8689, 6166)
    settings = Settings.from_env({"METERSTREAM_METRICS_HOST": "10.0.0.5",
                                  "METERSTREAM_RECEIVER_METRICS_PORT": "9100",
                                  "METERSTREAM_WORKER_METRICS_PORT": "9200"})
    assert (settings.metrics_host, settings.receiver_metrics_port,
            settings.worker_metrics_port) == ("10.0.0.5", 9100, 9200)
    with pytest.raises(ConfigError, match="METERSTREAM_METRICS_HOST must be a host"):
        Settings.from_env({"METERSTREAM_METRICS_HOST": "10.0.0.5/24"})


@pytest.mark.parametrize(("env", "problem"), [
    ({"METERSTREAM_RECEIVER_METRICS_PORT": "8686"},
     "METERSTREAM_RECEIVER_METRICS_PORT (8686) must differ from METERSTREAM_RECEIVER_PORT"),
    ({"METERSTREAM_RECEIVER_METRICS_PORT": "8688"},
     "METERSTREAM_RECEIVER_METRICS_PORT (8688) must differ from METERSTREAM_ADMIN_PORT"),
    ({"METERSTREAM_WORKER_METRICS_PORT": "6066"},
     "METERSTREAM_WORKER_METRICS_PORT (6066) must differ from METERSTREAM_WORKER_PORT"),
])
def test_a_probe_port_cannot_be_its_services_own(env: dict[str, str], problem: str) -> None:
    # Without a metrics host the probe ports are not used, so nothing clashes.
    Settings.from_env(env)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"METERSTREAM_METRICS_HOST": "127.0.0.1", **env})
    assert caught.value.problems == (problem,)
