"""Every test that needs the broker carries the `kafka` marker, so that
`pytest -m "not kafka"` runs without one."""

from __future__ import annotations

import subprocess
import sys

from tests.support import REPO
from tests.support.kafka_marker_probe import PREFIX


def test_no_test_left_by_not_kafka_needs_the_broker() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not kafka",
         "-p", "tests.support.kafka_marker_probe", "tests"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    unmarked = [line.removeprefix(PREFIX) for line in result.stdout.splitlines()
                if line.startswith(PREFIX)]
    assert unmarked == [], "add pytest.mark.kafka to these tests"
    assert "deselected" in result.stdout  # the marked ones were there and left out


def test_the_probe_finds_a_test_that_needs_the_broker() -> None:
    """The check above could fail: unfiltered, the probe names the broker tests."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q",
         "-p", "tests.support.kafka_marker_probe", "tests/integration/test_quota_alerts.py",
         "tests/integration/test_sink_failures.py"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    named = {line.removeprefix(PREFIX).split("::")[0] for line in result.stdout.splitlines()
             if line.startswith(PREFIX)}
    assert named == {"tests/integration/test_quota_alerts.py",
                     "tests/integration/test_sink_failures.py"}
