"""bench/proc.py: the CPU a benchmark attributes to each process of the pipeline.

bench.end_to_end names the process that limits a step from these figures, so a
process must be named by what it runs, and one that exits within the window must
neither raise nor subtract from its group."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from bench.proc import CpuShares, command_role, cpu_seconds
from tests.support import wait_for

SPIN = "while True: pass"
IDLE = "import time; time.sleep(60)"


@contextmanager
def child(code: str, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", code, *args])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def test_a_process_is_named_by_its_meterstream_command() -> None:
    with child(IDLE, "meterstream", "worker") as worker, child(IDLE) as other:
        assert wait_for(lambda: command_role(worker.pid), 10, "the child's command line") \
            == "worker"
        assert command_role(other.pid) is None
    assert command_role(worker.pid) is None  # gone


def test_shares_count_each_group_and_leave_out_a_process_that_exits() -> None:
    with child(SPIN) as busy, child(IDLE) as idle, child(IDLE) as leaving:
        shares = CpuShares({"busy": [busy.pid], "idle": [idle.pid],
                            "leaving": [leaving.pid]})
        shares.start()
        before = cpu_seconds(busy.pid)
        leaving.kill()
        leaving.wait()
        wait_for(lambda: cpu_seconds(busy.pid) - before >= 0.2, 30, "the spinner to use CPU")
        shares.stop()
    assert shares.seconds["busy"] >= 0.2
    assert shares.seconds["leaving"] == 0.0
    assert shares.seconds["idle"] < shares.seconds["busy"]
    share = shares.share()
    assert 0.0 < share["busy"] <= 1.05  # one thread: at most one core (ticks round up)
