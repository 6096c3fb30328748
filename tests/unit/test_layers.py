"""The packages are layered as the data flow, and no import runs upward.

    meterstream (CLI, `up`, process assembly, load generator)   top: may import anything
    ingest · processors · sinks · billing                       beside each other: the core only
    meterstream.core                                            bottom: itself only

An import inside a function counts the same as one at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import REPO

LAYERS = ("meterstream.core", "ingest", "processors", "sinks", "billing", "meterstream")
PROJECT = {"meterstream", "ingest", "processors", "sinks", "billing", "tests", "bench"}
ALLOWED = {
    "meterstream.core": {"meterstream.core"},
    "ingest": {"meterstream.core", "ingest"},
    "processors": {"meterstream.core", "processors"},
    "sinks": {"meterstream.core", "sinks"},
    "billing": {"meterstream.core", "billing"},
    "meterstream": {"meterstream.core", "meterstream", "ingest", "processors", "sinks",
                    "billing"},
}


def layer(module: str) -> str | None:
    """The layer a dotted module name belongs to (the most specific one)."""
    for name in LAYERS:
        if module == name or module.startswith(name + "."):
            return name
    top = module.split(".")[0]
    return top if top in PROJECT else None


def imported(source: str) -> list[str]:
    modules: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from meterstream import core` imports meterstream.core
            modules.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def upward_imports(files: dict[str, str]) -> list[str]:
    """Every import of a project module its layer may not use, as 'importer -> imported'.
    `files` maps a module's dotted name to its source."""
    found = []
    for importer, source in sorted(files.items()):
        own = layer(importer)
        assert own in ALLOWED, importer
        for target in imported(source):
            target_layer = layer(target)
            if target_layer is not None and target_layer not in ALLOWED[own]:
                found.append(f"{importer} -> {target}")
    return found


def library_modules() -> dict[str, str]:
    files = {}
    for package in ("meterstream", "ingest", "processors", "sinks", "billing"):
        for path in (REPO / package).rglob("*.py"):
            dotted = ".".join(path.relative_to(REPO).with_suffix("").parts)
            files[dotted.removesuffix(".__init__")] = path.read_text()
    return files


def test_no_package_imports_upward_or_sideways() -> None:
    assert upward_imports(library_modules()) == []


def test_the_check_finds_an_upward_and_a_sideways_import() -> None:
    files = {
        "meterstream.core.config": "import ingest.receiver\n",
        "sinks.sink": "def f():\n    from billing import scheduler\n",
        "processors.state": "from meterstream.core import windows\nimport faust\n",
        "meterstream.cli": "from sinks import sink\nfrom billing import cli\n",
        "billing.invoices": "from meterstream import cli\n",
    }
    assert upward_imports(files) == [
        "billing.invoices -> meterstream.cli",
        "meterstream.core.config -> ingest.receiver",
        "sinks.sink -> billing.scheduler",
    ]


def test_every_library_module_sits_in_a_layer() -> None:
    """A new top-level package would escape the check above."""
    packages = {path.parent.name for path in REPO.glob("*/__init__.py")}
    assert packages - {"tests", "bench"} == {"meterstream", "ingest", "processors", "sinks",
                                             "billing"}


def test_the_core_and_the_services_are_packages_of_their_own() -> None:
    assert all((REPO / Path(*name.split("."))).joinpath("__init__.py").is_file()
               for name in LAYERS)
