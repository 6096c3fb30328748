"""`meterstream deployments health [NAME]` (meterstream/health_cli.py): its refusals and
the worker paths it asks; its answers from a real worker are in
tests/integration/test_stream_health.py."""

from __future__ import annotations

import argparse

import pytest

from meterstream import health_cli
from meterstream.core.config import Settings
from tests.support import free_port


def test_the_command_needs_a_token_and_says_when_the_worker_is_not_there(
        capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(name="happy-otter-123")
    assert health_cli.run(args, Settings.from_env({})) == 2
    assert "METERSTREAM_READ_TOKEN" in capsys.readouterr().err
    nobody = Settings.from_env({"METERSTREAM_READ_TOKEN": "read-token-0123456789abcdef",
                                "METERSTREAM_WORKER_PORT": str(free_port())})
    assert health_cli.run(args, nobody) == 1
    assert "unreachable" in capsys.readouterr().err
    assert health_cli.path_of(None) == "/v1/health/fleet"
    assert health_cli.path_of("a/b") == "/v1/deployments/a%2Fb/health"
