"""`meterstream up`: receiver, workers, sink and console as child processes, in the foreground.

Each child is `meterstream <role>`, which runs meterstream/processes/<role>.py: a child
process, not a task in this one, so that a service that crashes or hangs takes no other
with it and each keeps its own event loop (Faust's worker wants its own).

`up --workers N` runs N worker processes (default `default_workers()`), all in one
Faust consumer group, so the raw topic's partitions (METERSTREAM_PARTITIONS) spread
over them and the worker stage is not capped by one Python process. Worker i (from 0)
serves its web pages (/v1/quota, forwarded by Faust to the owner of the deployment's
partition, and the probes) on METERSTREAM_WORKER_PORT + i (its probes on
METERSTREAM_WORKER_METRICS_PORT + i when METERSTREAM_METRICS_HOST is set) and keeps its
table files in a directory of its own (meterstream/processes/worker.py).

Each child runs in its own session, so a Ctrl-C in the terminal reaches only
the supervisor, which stops the children in pipeline order: the console and the
receiver first (no new input), then the workers (all at once: stopped one by one, the
last ones would take over the partitions of the first in a rebalance each), then
the sink, which flushes what the workers produced. If a child dies on its own,
the others are stopped too and `up` exits non-zero. If `up` itself is killed, the
kernel sends each child SIGTERM (PR_SET_PDEATHSIG), so no service outlives it.

`meterstream receiver` with METERSTREAM_RECEIVER_PROCESSES = N > 1 is such a supervisor
too (`run_receivers`): N receiver children bind the same ports with SO_REUSEPORT, so the
kernel spreads the connections over them and verifying and storing bodies is not capped
by one Python process. They write their Prometheus metrics to a directory of this
supervisor's (prometheus_client's multiprocess mode), so any of them answers /metrics
with the sum of all. They are stopped together, and one that dies on its own stops the
others, as in `up`: the orchestrator restarts the whole receiver, which is simpler to
reason about than a group running short of a member nobody notices.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from meterstream.core.service import MULTIPROCESS_DIR

log = logging.getLogger("meterstream.up")

STOP_ORDER = ("console", "receiver", "worker", "sink")
STOP_TIMEOUT_SECONDS = 60.0
MAX_WORKERS = 64
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when `up` dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # `up` died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def default_workers() -> int:
    """Worker processes for `up` when --workers is not given: one per core this process
    may run on, less one, and at least one.

    The worker is the stage that costs the most CPU per event (BENCHMARKS.md: about 30 CPU
    seconds per million events, several times the receiver's or the sink's), and one
    worker is one Python process: one core. The core left over is for the receiver, the
    sink and, on a one-machine setup, the broker; more workers than that would take
    CPU from the stages they wait for. Cores are counted from the CPU affinity, which
    follows `taskset` and container cpusets, not from the machine's total."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) - 1)


def worker_names(count: int) -> list[str]:
    """The children's names of `count` workers: "worker" alone, else "worker-0", ..."""
    return ["worker"] if count == 1 else [f"worker-{i}" for i in range(count)]


def worker_env(base_port: int, index: int, metrics_port: int | None = None) -> dict[str, str]:
    """What worker `index` gets besides `up`'s environment: its own web port, and its own
    probe port when the probes have a listener of their own (`metrics_port` is then the
    first worker's)."""
    env = {**os.environ, "METERSTREAM_WORKER_PORT": str(base_port + index)}
    if metrics_port is not None:
        env["METERSTREAM_WORKER_METRICS_PORT"] = str(metrics_port + index)
    return env


# In the children's environment: `up` warned about the environment's unknown METERSTREAM_*
# variables once, and its children do not repeat it (not itself a METERSTREAM_ name).
SUPERVISED = "_METERSTREAM_SUPERVISED"
SHARED_PORTS = "_METERSTREAM_SHARED_PORTS"
"""In a receiver child's environment: it binds its ports with SO_REUSEPORT, beside its
siblings, instead of being a supervisor itself."""


def _spawn(role: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "meterstream", role],
                            start_new_session=True, env={**env, SUPERVISED: "1"},
                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)


def _role(name: str) -> str:
    return name.split("-")[0]


def _stop(children: dict[str, subprocess.Popen[bytes]]) -> bool:
    """Stops the children in order, each role's children together; True when every one
    exited cleanly."""
    clean = True
    for role in STOP_ORDER:
        group = {name: child for name, child in children.items() if _role(name) == role}
        for name, child in group.items():
            if child.poll() is None:
                log.info("stopping", extra={"role": name, "pid": child.pid})
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for name, child in group.items():
            try:
                child.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("did not stop in time; killing", extra={"role": name})
                child.kill()
                child.wait()
            if child.returncode != 0:
                clean = False
                log.error("exited with an error", extra={"role": name,
                                                         "code": child.returncode})
    return clean


def run(workers: int, worker_port: int, metrics_port: int | None = None) -> int:
    """Runs the pipeline with `workers` worker processes, whose web ports start at
    `worker_port` (and their probe ports at `metrics_port`, if given), until SIGTERM or
    SIGINT or until a child exits."""
    stop = _stop_on_signals()
    children = {"sink": _spawn("sink", os.environ.copy())}
    for index, name in enumerate(worker_names(workers)):
        children[name] = _spawn("worker", worker_env(worker_port, index, metrics_port))
    children["receiver"] = _spawn("receiver", os.environ.copy())
    # The console reads through the sink and the worker: nothing waits for it.
    children["console"] = _spawn("console", os.environ.copy())
    log.info("pipeline started", extra={name: c.pid for name, c in children.items()})
    clean = _supervise(children, stop)
    log.info("pipeline stopped", extra={"clean": clean})
    return 0 if clean else 1


def run_receivers(count: int) -> int:
    """Runs `count` receiver processes on the same ports (module docstring) until SIGTERM
    or SIGINT or until one of them exits."""
    stop = _stop_on_signals()
    metrics_dir = tempfile.mkdtemp(prefix="meterstream-receiver-metrics-")
    env = {**os.environ, SHARED_PORTS: "1", MULTIPROCESS_DIR: metrics_dir}
    try:
        children = {f"receiver-{i}": _spawn("receiver", env) for i in range(count)}
        log.info("receivers started", extra={name: c.pid for name, c in children.items()})
        clean = _supervise(children, stop)
        log.info("receivers stopped", extra={"clean": clean})
        return 0 if clean else 1
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return stop


def _supervise(children: dict[str, subprocess.Popen[bytes]], stop: threading.Event) -> bool:
    """Waits for `stop` or for a child to exit, then stops them all (`_stop`); True when
    none exited on its own and every one stopped cleanly."""
    died: str | None = None
    while not stop.wait(0.2):
        died = next((r for r, c in children.items() if c.poll() is not None), None)
        if died:
            log.error("a service exited; stopping the others",
                      extra={"role": died, "code": children[died].returncode})
            break
    return _stop(children) and died is None
