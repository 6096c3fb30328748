"""`meterstream up`: receiver, worker and sink as child processes, in the foreground.

Each child is `meterstream <role>`, which runs meterstream/processes/<role>.py: a child
process, not a task in this one, so that a service that crashes or hangs takes no other
with it and each keeps its own event loop (Faust's worker wants its own).

Each child runs in its own session, so a Ctrl-C in the terminal reaches only
the supervisor, which stops the children in pipeline order: the receiver
first (no new input), then the worker, then the sink, which flushes what the
worker produced. If a child dies on its own, the others are stopped too and
`up` exits non-zero. If `up` itself is killed, the kernel sends each child
SIGTERM (PR_SET_PDEATHSIG), so no service outlives it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading

log = logging.getLogger("meterstream.up")

ROLES = ("sink", "worker", "receiver")
STOP_ORDER = ("receiver", "worker", "sink")
STOP_TIMEOUT_SECONDS = 60.0
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when `up` dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # `up` died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _spawn(role: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "meterstream", role],
                            start_new_session=True, env=os.environ.copy(),
                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)


def _stop(children: dict[str, subprocess.Popen[bytes]]) -> bool:
    """Stops the children in order; True when every one exited cleanly."""
    clean = True
    for role in STOP_ORDER:
        child = children[role]
        if child.poll() is None:
            log.info("stopping", extra={"role": role, "pid": child.pid})
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                log.error("did not stop in time; killing", extra={"role": role})
                child.kill()
                child.wait()
        if child.returncode != 0:
            clean = False
            log.error("exited with an error", extra={"role": role, "code": child.returncode})
    return clean


def run() -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    children = {role: _spawn(role) for role in ROLES}
    log.info("pipeline started", extra={role: c.pid for role, c in children.items()})
    died: str | None = None
    while not stop.wait(0.2):
        died = next((r for r, c in children.items() if c.poll() is not None), None)
        if died:
            log.error("a service exited; stopping the others",
                      extra={"role": died, "code": children[died].returncode})
            break
    clean = _stop(children)
    log.info("pipeline stopped", extra={"clean": clean and died is None})
    return 0 if clean and died is None else 1
