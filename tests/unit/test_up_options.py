"""`meterstream up --workers N`: how many workers, their ports, and what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from meterstream import supervisor
from tests.support import meterstream


@pytest.mark.parametrize(("cores", "workers"), [(1, 1), (2, 1), (4, 3), (16, 15)])
def test_the_default_is_the_cores_less_one(monkeypatch: pytest.MonkeyPatch, cores: int,
                                           workers: int) -> None:
    monkeypatch.setattr(supervisor.os, "sched_getaffinity", lambda _: set(range(cores)))
    assert supervisor.default_workers() == workers


def test_each_worker_gets_the_next_port() -> None:
    assert supervisor.worker_names(1) == ["worker"]
    assert supervisor.worker_names(3) == ["worker-0", "worker-1", "worker-2"]
    assert [supervisor.worker_env(6066, i)["METERSTREAM_WORKER_PORT"] for i in range(3)] == \
        ["6066", "6067", "6068"]


def test_each_worker_gets_the_next_probe_port_when_the_probes_have_their_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METERSTREAM_WORKER_METRICS_PORT", raising=False)
    assert [supervisor.worker_env(6066, i, 6166)["METERSTREAM_WORKER_METRICS_PORT"]
            for i in range(3)] == ["6166", "6167", "6168"]
    # Without METERSTREAM_METRICS_HOST the probes are on the web port: nothing to set.
    assert "METERSTREAM_WORKER_METRICS_PORT" not in supervisor.worker_env(6066, 1)


@pytest.mark.parametrize(("args", "env", "error"), [
    (["--workers", "0"], {}, "argument --workers: 0: from 1 to 64"),
    (["--workers", "65"], {}, "argument --workers: 65: from 1 to 64"),
    (["--workers", "two"], {}, "argument --workers: not a number: 'two'"),
    (["--workers", "2"], {"METERSTREAM_WORKER_PORT": "65535"},
     "2 workers need ports 65535 to 65536: past 65535"),
    (["--workers", "3"], {"METERSTREAM_METRICS_HOST": "127.0.0.1",
                          "METERSTREAM_WORKER_METRICS_PORT": "6068"},
     "the workers' probe ports 6068 to 6070 overlap their API ports 6066 to 6068"),
    (["--workers", "2"], {"METERSTREAM_METRICS_HOST": "127.0.0.1",
                          "METERSTREAM_WORKER_METRICS_PORT": "65535"},
     "2 workers need probe ports 65535 to 65536: past 65535"),
])
def test_workers_that_cannot_run_are_refused(tmp_path: Path, args: list[str],
                                             env: dict[str, str], error: str) -> None:
    result = meterstream(["up", *args], {"METERSTREAM_DATA_DIR": str(tmp_path), **env},
                         check=False, timeout=60)
    assert result.returncode == 2
    assert error in result.stderr
