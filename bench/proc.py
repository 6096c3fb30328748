"""CPU time of benchmarked processes, from /proc (Linux)."""

from __future__ import annotations

import contextlib
import os
import time
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


def command_role(pid: int) -> str | None:
    """`worker` for `python -m meterstream worker` and the like; None for another
    command line (or a process gone)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    words = [word.decode(errors="replace") for word in argv if word]
    if "meterstream" in words[:-1]:
        return words[words.index("meterstream") + 1]
    return None


class CpuShares:
    """CPU seconds of named groups of processes between `start` and `stop`, as shares of
    one core and per million of some count."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._before: dict[int, float] = {}
        self._began = 0.0
        self.seconds: dict[str, float] = {}
        """CPU seconds per group over the window"""
        self.wall = 0.0

    def _now(self) -> dict[int, float]:
        times = {}
        for pids in self.groups.values():
            for pid in pids:
                with contextlib.suppress(OSError):  # gone: see stop
                    times[pid] = cpu_seconds(pid)
        return times

    def start(self) -> None:
        self._before, self._began = self._now(), time.monotonic()

    def stop(self) -> None:
        """A process that came or went within the window is left out of its group."""
        after = self._now()
        self.wall = time.monotonic() - self._began
        self.seconds = {
            name: sum(after[pid] - self._before[pid] for pid in pids
                      if pid in after and pid in self._before)
            for name, pids in self.groups.items()}

    def share(self) -> dict[str, float]:
        """Per group: CPU seconds per second (1.0 = one core busy)."""
        return {name: used / self.wall for name, used in self.seconds.items()} \
            if self.wall > 0 else {}
