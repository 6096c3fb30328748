"""`meterstream worker` processes for the failure tests, with their logs printed when a test
fails, and the alerts and metrics those tests read."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support import REPO

LOGS: list[Path] = []


def start_worker(env: dict[str, str], log: Path, port: int) -> subprocess.Popen[bytes]:
    """`meterstream worker` on `port`, its output appended to `log` (printed by
    `worker_processes` when the test fails)."""
    if log not in LOGS:
        LOGS.append(log)
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "meterstream", "worker"], cwd=REPO,
                                env={**os.environ, **env, "METERSTREAM_WORKER_PORT": str(port)},
                                stdout=out, stderr=subprocess.STDOUT)


@contextmanager
def worker_processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """A list to append the test's processes to; each is stopped (SIGTERM, then SIGKILL) on
    the way out, and the workers' logs are printed if the test failed."""
    started: list[subprocess.Popen[bytes]] = []
    LOGS.clear()
    try:
        yield started
    except BaseException:
        for log in LOGS:  # what the workers did, for the failure report
            lines = log.read_text(errors="replace").splitlines()
            print(f"--- worker log ({log}) ---", *lines[-300:], sep="\n")
        raise
    finally:
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


def raw_batches(port: int) -> float:
    """The raw batches the worker on `port` has processed; 0 while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
            text = page.read().decode()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("meterstream_worker_raw_batches_total "):
            return float(line.split()[1])
    return 0.0


def quota_alert_ids(deployment: str, at_ms: int, metric: str, period: str,
                    thresholds: tuple[float, ...]) -> list[str]:
    """The ids of the alerts for crossing each threshold of a quota in the period of at_ms."""
    start = time.strftime("%Y-%m-01" if period == "month" else "%Y-%m-%d",
                          time.gmtime(at_ms / 1000))
    return [f"quota|{deployment}|{metric}|{period}|{start}|{t}" for t in thresholds]


def runaway_alert_id(deployment: str, at_ms: int) -> str:
    return f"runaway|{deployment}|{at_ms - at_ms % 60_000}"


def minute_ago() -> int:
    """Ten seconds into the previous minute: every event of a load is in that minute,
    whose function calls (above METERSTREAM_RUNAWAY_MIN_CALLS, 1000, with no history)
    make one runaway episode per deployment."""
    now = int(time.time() * 1000)
    return now - now % 60_000 - 50_000
