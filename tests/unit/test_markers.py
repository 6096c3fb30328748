"""The split by folder holds both ways: no test under tests/unit needs the broker or carries
the `kafka` marker, so `pytest tests/unit` (or `-m "not kafka"`) runs without one; every test
under tests/integration carries the marker (tests/conftest.py adds it), and every file there
has a test that needs the broker (a file without one belongs in tests/unit)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest

from tests.support import REPO
from tests.support.kafka_marker_probe import MARKED, NEEDS


@dataclass(frozen=True)
class Collected:
    tests: set[str]  # node ids
    needs_broker: set[str]
    marked: set[str]


def collect(*args: str) -> Collected:
    """The tests pytest collects with `args`, as the probe sees them."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-p", "tests.support.kafka_marker_probe", *args],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    return Collected(
        tests={line for line in lines if line.startswith("tests/") and "::" in line},
        needs_broker={line.removeprefix(NEEDS) for line in lines if line.startswith(NEEDS)},
        marked={line.removeprefix(MARKED) for line in lines if line.startswith(MARKED)})


@pytest.fixture(scope="module")
def integration() -> Collected:
    return collect("tests/integration")


def test_no_unit_test_needs_the_broker_or_carries_its_marker() -> None:
    unit = collect("tests/unit")
    assert len(unit.tests) > 100
    assert unit.needs_broker == set(), "these need the broker: move them to tests/integration"
    assert unit.marked == set(), "the kafka marker belongs to tests/integration only"


def test_every_integration_test_carries_the_marker(integration: Collected) -> None:
    assert integration.tests
    assert integration.marked == integration.tests


def test_every_integration_file_has_a_test_that_needs_the_broker(
        integration: Collected) -> None:
    """Also shows that the probe finds such tests: the check above could fail."""
    def files(ids: set[str]) -> set[str]:
        return {node.split("::")[0] for node in ids}

    assert files(integration.tests) - files(integration.needs_broker) == set(), \
        "no test in these files needs the broker: move them to tests/unit"
    assert "tests/integration/test_quota_alerts.py" in files(integration.needs_broker)
