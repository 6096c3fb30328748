"""CPU time of benchmarked processes, from /proc (Linux)."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    # utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the command name.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def with_children(pid: int) -> list[int]:
    """The process and its children (a supervisor and the processes it started)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(child) for child in children)]
