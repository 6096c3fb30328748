"""A ClickHouse server from the configuration: the exact clickhouse-connect arguments a URL,
a CA file and a cluster become, what clickhouse-connect itself makes of them, and every
problem of those variables at once, with the password in no message, log or repr.

No server is reached: clickhouse-connect's HTTP client is replaced by a recorder, so the
test goes through get_client's own parsing of the arguments (which is where a DSN's TLS
was decided by the port) up to the client's constructor.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import pytest

from meterstream.core.clickhouse import client_arguments, connect
from meterstream.core.config import ClickHouseTarget, ConfigError, Settings
from tests.support import meterstream

PASSWORD = "s3cret-Pa55"

# METERSTREAM_CLICKHOUSE -> the get_client arguments, exactly. CA marks the rows given
# METERSTREAM_CLICKHOUSE_CA_FILE.
CA = "<ca file>"
SERVER_URLS: list[tuple[str, bool, dict[str, Any]]] = [
    (f"https://metering:{PASSWORD}@ch.example:8443/usage", False,
     {"interface": "https", "secure": True, "host": "ch.example", "port": 8443,
      "username": "metering", "password": PASSWORD, "database": "usage", "verify": True}),
    # A private CA; and a TLS port that is not 8443 (get_client's dsn parsing would have
    # made this plain HTTP, the password in clear).
    (f"https://metering:{PASSWORD}@ch-1.internal:9440/usage", True,
     {"interface": "https", "secure": True, "host": "ch-1.internal", "port": 9440,
      "username": "metering", "password": PASSWORD, "database": "usage", "verify": True,
      "ca_cert": CA}),
    # No port, user or database: the HTTPS default port, the server's default user and
    # that user's default database.
    ("https://ch.example", False,
     {"interface": "https", "secure": True, "host": "ch.example", "port": 8443,
      "username": None, "password": "", "database": None, "verify": True}),
    ("https://ch.example/", False,
     {"interface": "https", "secure": True, "host": "ch.example", "port": 8443,
      "username": None, "password": "", "database": None, "verify": True}),
    # Plain HTTP stays plain even on port 8443 (get_client would turn TLS on by the port).
    ("http://127.0.0.1:8443/meterstream", False,
     {"interface": "http", "secure": False, "host": "127.0.0.1", "port": 8443,
      "username": None, "password": "", "database": "meterstream"}),
    ("http://localhost/meterstream", False,
     {"interface": "http", "secure": False, "host": "localhost", "port": 8123,
      "username": None, "password": "", "database": "meterstream"}),
    ("https://metering@ch.example:8443/metering-prod.eu", False,
     {"interface": "https", "secure": True, "host": "ch.example", "port": 8443,
      "username": "metering", "password": "", "database": "metering-prod.eu", "verify": True}),
    # Percent-encoded user and password, an IPv6 address.
    ("https://me%40corp:p%3Ass%2Fw%40rd@[::1]:8443/db_1", False,
     {"interface": "https", "secure": True, "host": "::1", "port": 8443,
      "username": "me@corp", "password": "p:ss/w@rd", "database": "db_1", "verify": True}),
]


def _target(url: str, ca: bool, tmp_path: Path) -> tuple[ClickHouseTarget, dict[str, Any]]:
    env = {"METERSTREAM_CLICKHOUSE": url}
    ca_file = tmp_path / "ca.pem"
    if ca:
        ca_file.write_text("-----BEGIN CERTIFICATE-----\n")
        env["METERSTREAM_CLICKHOUSE_CA_FILE"] = str(ca_file)
    return Settings.from_env(env).clickhouse, {"ca_file": str(ca_file)}


@pytest.mark.parametrize(("url", "ca", "expected"), SERVER_URLS)
def test_a_server_url_becomes_exactly_these_client_arguments(
        url: str, ca: bool, expected: dict[str, Any], tmp_path: Path) -> None:
    target, files = _target(url, ca, tmp_path)
    want = {name: files["ca_file"] if value == CA else value for name, value in expected.items()}
    assert dict(client_arguments(target)) == want


class _Recorder:
    """Stands in for clickhouse-connect's HttpClient: records what get_client built."""

    made: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, interface: str, host: str, port: int, username: str, password: str,
                 database: str | None, access_token: str | None = None,
                 **kwargs: Any) -> None:
        _Recorder.made.append({"interface": interface, "host": host, "port": port,
                               "username": username, "password": password,
                               "database": database, **kwargs})


@pytest.mark.parametrize(("url", "ca", "expected"), SERVER_URLS)
def test_clickhouse_connect_makes_that_client_of_them(
        url: str, ca: bool, expected: dict[str, Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Through get_client's own resolution: the scheme decides TLS, never the port, and
    verification is on with the CA file as the trust root when one is given."""
    monkeypatch.setattr("clickhouse_connect.driver.HttpClient", _Recorder)
    _Recorder.made = []
    target, files = _target(url, ca, tmp_path)
    connect(target)
    (made,) = _Recorder.made
    assert made["interface"] == expected["interface"]
    assert (made["host"], made["port"], made["database"]) == (
        expected["host"], expected["port"], expected["database"])
    # No user: clickhouse-connect sends none, and the server takes its `default` user.
    assert made["username"] == (expected["username"] or "")
    assert made["password"] == expected["password"]
    if expected["secure"]:
        assert made["verify"] is True
        assert made.get("ca_cert") == (files["ca_file"] if ca else None)


def test_the_arguments_never_show_the_password(caplog: pytest.LogCaptureFixture,
                                               tmp_path: Path) -> None:
    target, _ = _target(SERVER_URLS[1][0], True, tmp_path)
    arguments = client_arguments(target)
    assert arguments["password"] == PASSWORD
    logging.getLogger("test").warning("connecting %s %r", arguments, arguments)
    for shown in (repr(arguments), str(arguments), f"{arguments}", caplog.text,
                  repr(target), target.display, repr(Settings.from_env(
                      {"METERSTREAM_CLICKHOUSE": SERVER_URLS[1][0]}))):
        assert PASSWORD not in shown
    assert "'password': '***'" in repr(arguments)


def test_the_embedded_engine_keeps_its_dsn(tmp_path: Path) -> None:
    target = Settings.from_env({"METERSTREAM_CLICKHOUSE": f"chdb://{tmp_path}/ch"}).clickhouse
    assert dict(client_arguments(target)) == {"dsn": f"chdb://{tmp_path}/ch"}


def test_ca_file_and_cluster_are_read(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    target = Settings.from_env({
        "METERSTREAM_CLICKHOUSE": f"https://metering:{PASSWORD}@ch-1:8443/usage",
        "METERSTREAM_CLICKHOUSE_CA_FILE": str(ca),
        "METERSTREAM_CLICKHOUSE_CLUSTER": "metering-prod"}).clickhouse
    assert (target.ca_file, target.cluster) == (ca, "metering-prod")
    assert repr(target) == ("ClickHouseTarget('https://metering:***@ch-1:8443/usage', "
                            f"ca_file={ca!r}, cluster='metering-prod')")
    # Unset: the system's CAs and one server.
    plain = Settings.from_env({"METERSTREAM_CLICKHOUSE": "https://ch-1:8443/usage"}).clickhouse
    assert (plain.ca_file, plain.cluster) == (None, "")


def _problems(env: dict[str, str]) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    for problem in caught.value.problems:
        assert PASSWORD not in problem
    assert PASSWORD not in str(caught.value)
    return caught.value.problems


def test_every_problem_of_a_server_url_is_listed_at_once() -> None:
    problems = _problems({
        "METERSTREAM_CLICKHOUSE": f"https://:{PASSWORD}@ch.example:8443/usage/more?verify=false"})
    assert len(problems) == 3, problems
    assert any("one database name" in p for p in problems)
    assert any("no query string" in p for p in problems)
    assert any("needs a user name" in p for p in problems)
    assert all(p.startswith("METERSTREAM_CLICKHOUSE:") for p in problems)


def test_the_embedded_engine_refuses_a_cluster_and_a_ca_file(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    problems = _problems({"METERSTREAM_CLICKHOUSE": f"chdb://{tmp_path}/ch",
                          "METERSTREAM_CLICKHOUSE_CLUSTER": "prod",
                          "METERSTREAM_CLICKHOUSE_CA_FILE": str(ca)})
    assert len(problems) == 2, problems
    assert any(p.startswith("METERSTREAM_CLICKHOUSE_CLUSTER needs a ClickHouse server")
               and "embedded engine" in p for p in problems)
    assert any(p.startswith("METERSTREAM_CLICKHOUSE_CA_FILE needs an https://")
               for p in problems)
    # The default (no METERSTREAM_CLICKHOUSE) is the embedded engine too.
    (problem,) = _problems({"METERSTREAM_DATA_DIR": str(tmp_path),
                            "METERSTREAM_CLICKHOUSE_CLUSTER": "prod"})
    assert problem.startswith("METERSTREAM_CLICKHOUSE_CLUSTER needs a ClickHouse server")


def test_bad_cluster_names_and_ca_files_are_listed_with_the_rest(tmp_path: Path) -> None:
    problems = _problems({"METERSTREAM_CLICKHOUSE": f"http://u:{PASSWORD}@ch.example/x",
                          "METERSTREAM_CLICKHOUSE_CLUSTER": "prod`; DROP",
                          "METERSTREAM_CLICKHOUSE_CA_FILE": str(tmp_path / "missing.pem")})
    assert sorted(p.split(" ")[0].rstrip(":") for p in problems) == [
        "METERSTREAM_CLICKHOUSE", "METERSTREAM_CLICKHOUSE_CA_FILE",
        "METERSTREAM_CLICKHOUSE_CLUSTER"], problems
    assert any("must be an https:// URL" in p for p in problems)  # a password over http://


@pytest.mark.parametrize("name", ["prod", "metering_prod", "ch-cluster.eu-1", "_x"])
def test_cluster_names_of_a_server_configuration_are_taken(name: str) -> None:
    settings = Settings.from_env({"METERSTREAM_CLICKHOUSE": "https://ch:8443/db",
                                  "METERSTREAM_CLICKHOUSE_CLUSTER": name})
    assert settings.clickhouse.cluster == name


def test_a_ca_file_needs_https(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    (problem,) = _problems({"METERSTREAM_CLICKHOUSE": "http://127.0.0.1:8123/db",
                            "METERSTREAM_CLICKHOUSE_CA_FILE": str(ca)})
    assert problem.startswith("METERSTREAM_CLICKHOUSE_CA_FILE needs an https://")


def test_the_sink_refuses_a_cluster_on_the_embedded_engine_at_start(tmp_path: Path) -> None:
    result = meterstream(["sink"], {"METERSTREAM_DATA_DIR": str(tmp_path),
                                    "METERSTREAM_CLICKHOUSE": "",
                                    "METERSTREAM_CLICKHOUSE_CLUSTER": "prod"}, check=False)
    assert result.returncode == 1
    assert "METERSTREAM_CLICKHOUSE_CLUSTER needs a ClickHouse server" in result.stderr
    assert not (tmp_path / "clickhouse").exists()  # refused before the engine was opened
