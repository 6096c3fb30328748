"""`meterstream receiver|worker|sink` run the process modules (meterstream/processes),
and the library packages keep none of the process wiring."""

from __future__ import annotations

import argparse
import ast

import pytest

from meterstream import cli
from meterstream.core.config import Settings
from meterstream.processes import receiver, sink, worker
from tests.support import REPO


@pytest.mark.parametrize(("command", "module"),
                         [("receiver", receiver), ("worker", worker), ("sink", sink)])
def test_each_service_command_runs_its_process_module(
        command: str, module: object, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.from_env({})
    ran: list[Settings] = []
    monkeypatch.setattr(module, "main", ran.append)
    assert cli._run(argparse.Namespace(command=command), settings) == 0
    assert ran == [settings]


def test_no_library_module_has_a_process_main() -> None:
    """Event loops, signals and the service's start and stop live on top; a `main` or an
    `asyncio.run` in ingest/, processors/ or sinks/ would be wiring back in a library."""
    found = []
    for package in ("ingest", "processors", "sinks"):
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (
                        node.name == "main" and node.col_offset == 0):
                    found.append(f"{path.relative_to(REPO)}: def main")
                if isinstance(node, ast.Attribute) and node.attr in (
                        "run", "new_event_loop", "add_signal_handler") and isinstance(
                        node.value, ast.Name) and node.value.id in ("asyncio", "loop"):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.attr}")
    assert found == []
