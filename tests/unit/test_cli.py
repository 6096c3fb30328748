"""The `meterstream` command as a person meets it: --version, help with examples, `sql
--format`, one-line failures with their exit codes, unknown variables, logs and tables at a
terminal, shell completion (docs/cli.md)."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib.metadata import version
from pathlib import Path

import pytest

from meterstream import cli
from meterstream.core.config import unknown_variables
from meterstream.core.exit_codes import ExitCode
from meterstream.core.logs import JsonFormatter, TextFormatter, chosen_format
from meterstream.core.query import own_format
from meterstream.core.text_table import aligned, tab_separated
from tests.support import REPO, free_port, meterstream
from tests.support.terminal import at_terminal

TOKEN = "admin-token-0123456789"


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_version_comes_from_the_package_metadata() -> None:
    result = meterstream(["--version"], {})
    assert result.stdout == f"meterstream {version('meterstream')}\n"


def test_every_command_and_option_has_help_and_an_example() -> None:
    missing = []
    for parser in _parsers(cli._parser()):
        epilog = parser.epilog or ""
        if "example" not in epilog:
            missing.append(f"{parser.prog}: no examples")
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help:
                missing.append(f"{parser.prog} {action.dest}: no help")
            exemplified = "e.g." in (action.help or "") or any(
                option in epilog for option in action.option_strings)
            if action.option_strings and action.dest != "version" and not exemplified:
                missing.append(f"{parser.prog} {action.option_strings[0]}: no example")
    assert missing == []


def test_up_help_shows_its_options() -> None:
    shown = meterstream(["up", "--help"], {}).stdout
    assert "--workers N" in shown
    assert "meterstream up --workers 3" in shown


def test_a_query_naming_its_own_format_is_found() -> None:
    assert own_format("SELECT 1 FORMAT JSONEachRow") == "JSONEachRow"
    assert own_format("select 1\nformat CSV;\n") == "CSV"
    assert own_format("SELECT 1 FORMAT Vertical SETTINGS max_threads = 1") == "Vertical"
    assert own_format("SELECT format FROM t") is None  # a column named format
    assert own_format("SELECT formatDateTime(now(), '%Y')") is None
    assert own_format("SELECT 'FORMAT CSV'") is None
    assert own_format("SELECT 1 -- FORMAT CSV") is None


def test_sql_refuses_its_own_format_clause_in_one_line_before_opening_anything(
        tmp_path: Path) -> None:
    env = {"METERSTREAM_DATA_DIR": str(tmp_path / "ms")}
    result = meterstream(["sql", "SELECT 1 FORMAT JSONEachRow"], env, check=False)
    assert result.returncode == ExitCode.USAGE
    assert result.stderr == (
        "meterstream sql: the query ends with its own FORMAT JSONEachRow; leave it out and "
        "choose with --format tsv|csv|json (and --header)\n")
    assert not (tmp_path / "ms").exists()
    header = meterstream(["sql", "--format", "json", "--header", "SELECT 1"], env, check=False)
    assert header.returncode == ExitCode.USAGE
    assert header.stderr.startswith("meterstream sql: --header applies to tsv and csv")


def test_sql_formats_and_header(tmp_path: Path) -> None:
    env = {"METERSTREAM_DATA_DIR": str(tmp_path / "ms")}
    query = "SELECT number AS n, concat('x', toString(number)) AS s FROM numbers(2)"

    def run(*options: str) -> str:
        return meterstream(["sql", *options, query], env).stdout

    assert run() == "0\tx0\n1\tx1\n"
    assert run("--header") == "n\ts\n0\tx0\n1\tx1\n"
    assert run("--format", "csv") == '"n","s"\n0,"x0"\n1,"x1"\n'
    assert run("--format", "csv", "--no-header") == '0,"x0"\n1,"x1"\n'
    lines = run("--format", "json").splitlines()
    assert [json.loads(line) for line in lines] == [{"n": 0, "s": "x0"}, {"n": 1, "s": "x1"}]


def test_clickhouse_out_of_reach_is_one_line_and_exit_5(tmp_path: Path) -> None:
    env = {"METERSTREAM_DATA_DIR": str(tmp_path / "ms"),
           "METERSTREAM_CLICKHOUSE": f"http://127.0.0.1:{free_port()}/default"}
    for command in (["sql", "SELECT 1"], ["invoices", "show", "--period", "2026-10"]):
        result = meterstream(command, env, check=False)
        assert result.returncode == ExitCode.CLICKHOUSE_UNREACHABLE, result.stderr
        name = " ".join(command[:2]) if command[0] == "invoices" else "sql"
        assert result.stderr == (f"meterstream {name}: ClickHouse at "
                                 f"{env['METERSTREAM_CLICKHOUSE']} cannot be reached: "
                                 "Connection refused\n")


def test_kafka_out_of_reach_is_one_line_and_exit_4(tmp_path: Path) -> None:
    env = {"METERSTREAM_DATA_DIR": str(tmp_path / "ms"),
           "METERSTREAM_KAFKA": f"127.0.0.1:{free_port()}"}
    for command in (["usage"], ["invoices", "generate", "--period", "2026-10"],
                    ["secrets", "status"]):
        result = meterstream(command, env, check=False)
        assert result.returncode == ExitCode.KAFKA_UNREACHABLE, result.stderr
        assert result.stderr == (f"meterstream {' '.join(command[:2])}: Kafka cannot be "
                                 f"reached at {env['METERSTREAM_KAFKA']} "
                                 "(connection refused)\n")
    assert not (tmp_path / "ms" / "clickhouse").exists()


def test_the_admin_api_out_of_reach_is_exit_6(tmp_path: Path) -> None:
    env = {"METERSTREAM_DATA_DIR": str(tmp_path / "ms"), "METERSTREAM_ADMIN_TOKEN": TOKEN,
           "METERSTREAM_ADMIN_URL": f"http://127.0.0.1:{free_port()}"}
    result = meterstream(["deployments", "list"], env, check=False)
    assert result.returncode == ExitCode.ADMIN_API_UNREACHABLE
    assert result.stderr.startswith(f"meterstream deployments: {env['METERSTREAM_ADMIN_URL']} "
                                    "unreachable: ")
    assert len(result.stderr.splitlines()) == 1


def test_read_only_billing_commands_say_there_are_no_tables_and_create_none(
        tmp_path: Path) -> None:
    env = {"METERSTREAM_DATA_DIR": str(tmp_path / "ms")}
    result = meterstream(["invoices", "show", "--period", "2026-10"], env, check=False)
    assert result.returncode == ExitCode.FAILED
    assert result.stderr == (f"meterstream invoices show: ClickHouse at chdb://{tmp_path}/ms/"
                             "clickhouse holds no meterstream tables yet; the sink creates "
                             "them at its start (`meterstream up` or `meterstream sink`)\n")
    assert not (tmp_path / "ms" / "clickhouse").exists()
    # An engine that exists but holds none of meterstream's tables: still nothing created.
    meterstream(["sql", "SELECT 1"], env)
    again = meterstream(["invoices", "mark", "inv-1", "--status", "paid"], env, check=False)
    assert again.returncode == ExitCode.FAILED
    assert "holds no meterstream tables yet" in again.stderr
    assert meterstream(["sql", "SELECT count() FROM system.tables WHERE database = "
                               "currentDatabase()"], env).stdout == "0\n"


def test_exit_codes_table_in_the_docs_is_the_enum() -> None:
    page = (REPO / "docs" / "cli.md").read_text()
    section = page.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", section, re.MULTILINE)}
    assert documented == {int(code) for code in ExitCode}


def test_unknown_variables_are_named_with_the_closest_known_one() -> None:
    assert unknown_variables({
        "METERSTREAM_KAFAK": "x", "METERSTREAM_LOG_LEVLE": "debug", "METERSTREAM_FROBNICATE": "1",
        "METERSTREAM_KAFKA": "127.0.0.1:9092", "METERSTREAM_ADMIN_TOKEN_FILE": "/t",
        "METERSTREAM_UID": "10001", "PATH": "/bin"}) == [
        ("METERSTREAM_FROBNICATE", None), ("METERSTREAM_KAFAK", "METERSTREAM_KAFKA"),
        ("METERSTREAM_LOG_LEVLE", "METERSTREAM_LOG_LEVEL")]


def test_an_unknown_variable_is_warned_about_once_at_start(tmp_path: Path) -> None:
    env = {"METERSTREAM_DATA_DIR": str(tmp_path / "ms"), "METERSTREAM_PARTITION": "3",
           "METERSTREAM_LOG_FORMAT": "json"}
    result = meterstream(["secrets", "generate-key"], env)
    (line,) = result.stderr.splitlines()
    entry = json.loads(line)
    assert entry["level"] == "warning"
    assert entry["msg"] == ("unknown variable METERSTREAM_PARTITION is ignored; did you mean "
                            "METERSTREAM_PARTITIONS?")
    assert (entry["variable"], entry["closest"]) == ("METERSTREAM_PARTITION",
                                                    "METERSTREAM_PARTITIONS")
    text = meterstream(["secrets", "generate-key"], {**env, "METERSTREAM_LOG_FORMAT": "text"})
    assert re.fullmatch(r"\d\d:\d\d:\d\d warning secrets: unknown variable "
                        r"METERSTREAM_PARTITION is ignored; did you mean "
                        r"METERSTREAM_PARTITIONS\?  variable=METERSTREAM_PARTITION "
                        r"closest=METERSTREAM_PARTITIONS\n", text.stderr)
    # `up`'s children: up warned already.
    child = meterstream(["secrets", "generate-key"], {**env, "_METERSTREAM_SUPERVISED": "1"})
    assert child.stderr == ""


def test_a_bad_log_format_is_a_configuration_error() -> None:
    result = meterstream(["secrets", "generate-key"], {"METERSTREAM_LOG_FORMAT": "xml"},
                         check=False)
    assert result.returncode == 1
    assert result.stderr == ("meterstream: configuration error: METERSTREAM_LOG_FORMAT must be "
                             "one of auto, text, json, got 'xml'\n")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_logs_are_text_at_a_terminal_and_json_otherwise() -> None:
    assert chosen_format("auto", _Terminal()) == "text"
    assert chosen_format("auto", io.StringIO()) == "json"
    assert chosen_format("json", _Terminal()) == "json"
    assert chosen_format("text", io.StringIO()) == "text"
    record = logging.LogRecord("meterstream.core.topics", logging.INFO, "", 0, "created topics",
                               None, None)
    record.topics = ["a", "b"]
    record.why = "two words"
    line = TextFormatter("sink").format(record)
    assert re.fullmatch(r"\d\d:\d\d:\d\d info sink: created topics  topics=\[\"a\",\"b\"\] "
                        r"why='two words'", line)
    assert json.loads(JsonFormatter("sink").format(record))["topics"] == ["a", "b"]


def test_tables_align_at_a_terminal_and_escape_control_characters() -> None:
    rows = [{"name": "happy-otter-123", "cost": "3.9", "calls": 12},
            {"name": "evil\x1b[2J", "cost": "123.45", "calls": Decimal("0.5")}]
    assert aligned(rows) == ("name               cost  calls\n"
                             "happy-otter-123     3.9     12\n"
                             "evil\\x1b[2J      123.45    0.5\n")
    assert tab_separated(rows) == ("name\tcost\tcalls\nhappy-otter-123\t3.9\t12\n"
                                   "evil\x1b[2J\t123.45\t0.5\n")
    assert aligned([]) == ""


@pytest.fixture
def admin_api() -> Iterator[str]:
    """A stand-in for the receiver's admin API that lists two deployments."""
    listing = {"deployments": [
        {"name": "happy-otter-123", "team": "acme", "project": "chat", "plan": "pro",
         "labels": {"env": "prod"}, "has_webhook_secret": True, "log_stream_id": "ls1",
         "quotas": [{"metric": "function_calls"}], "removed_at": None},
        {"name": "b", "team": None, "project": None, "plan": None, "labels": {},
         "has_webhook_secret": False, "log_stream_id": None, "quotas": [],
         "removed_at": 1}]}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            assert self.headers["Authorization"] == f"Bearer {TOKEN}"
            body = json.dumps(listing).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()


def test_deployments_list_is_a_table_at_a_terminal_and_json_when_piped(
        admin_api: str, tmp_path: Path) -> None:
    env = {"METERSTREAM_DATA_DIR": str(tmp_path / "ms"), "METERSTREAM_ADMIN_TOKEN": TOKEN,
           "METERSTREAM_ADMIN_URL": admin_api}
    code, shown = at_terminal(["deployments", "list"], env)
    assert code == 0
    assert shown == (
        "name             team  project  plan  labels    secret  log_stream  quotas  removed\n"
        "happy-otter-123  acme  chat     pro   env=prod  yes     ls1              1\n"
        "b                                               no                       0  yes\n")
    piped = json.loads(meterstream(["deployments", "list"], env).stdout)
    assert [d["name"] for d in piped["deployments"]] == ["happy-otter-123", "b"]
    code, forced = at_terminal(["deployments", "list", "--format", "json"], env)
    assert json.loads(forced) == piped


def test_completion_comes_from_the_parser(tmp_path: Path) -> None:
    out = tmp_path / "completions"

    def complete(line: str) -> list[str]:
        subprocess.run([sys.executable, "-m", "meterstream"], cwd=REPO, check=True, env={
            **os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
            "_ARGCOMPLETE_STDOUT_FILENAME": str(out)}, timeout=60)
        return sorted(word.strip() for word in out.read_text().split("\x0b"))

    assert complete("meterstream sq") == ["sql"]
    assert complete("meterstream sql --for") == ["--format"]
    assert complete("meterstream invoices show --format ") == ["csv", "json", "table"]
