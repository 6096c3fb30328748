"""Several receiver processes on one port (METERSTREAM_RECEIVER_PROCESSES), on the real
broker: every body answered 200 is in the raw topic exactly once, /metrics gives the
sum of all the processes whichever answers, and they stop together."""

from __future__ import annotations

import copy
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.support import convex_examples, metric_sample, read_topic, receiver_ready, wait_for
from tests.support.pipeline import Pipeline, running_pipeline

SECRET = "secret-of-the-shared-port-test-0123"
PROCESSES = 2
BODIES = 40


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def _listening_inodes(port: int) -> set[str]:
    """Inodes of the sockets listening on 127.0.0.1:port (state 0A in /proc/net/tcp)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
            inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


@pytest.fixture
def receivers(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Pipeline]:
    with running_pipeline(kafka_bootstrap, tmp_path, command="receiver",
                          extra_env={"METERSTREAM_RECEIVER_PROCESSES": str(PROCESSES)}
                          ) as pipeline:
        base = f"http://127.0.0.1:{pipeline.env['METERSTREAM_RECEIVER_PORT']}"
        # Each request is a new connection, which the kernel gives to either process:
        # all of them ready is every answer of a run being 200.
        wait_for(lambda: all(receiver_ready(base) for _ in range(20)), timeout=60,
                 what="every receiver process to be ready")
        yield pipeline


def _body(index: int) -> bytes:
    events = copy.deepcopy(convex_examples()["events"])
    for event in events:
        event["convex"]["deployment_name"] = "shared-port-1"
        event["timestamp"] = event["timestamp"] + index  # every body its own bytes
    return orjson.dumps(events)


def test_every_acknowledged_body_is_stored_once_and_metrics_are_summed(
        receivers: Pipeline, kafka_bootstrap: str) -> None:
    supervisor = receivers.process.pid
    children = _children(supervisor)
    assert len(children) == PROCESSES
    port = int(receivers.env["METERSTREAM_RECEIVER_PORT"])
    listening = _listening_inodes(port)
    # One listening socket per process on the same port: the kernel spreads connections.
    assert len(listening) == PROCESSES
    assert all(_socket_inodes(child) & listening for child in children)

    receivers.register("shared-port-1", webhook_secret=SECRET)
    # The process that answered the PUT has the record at once, the other one as soon as
    # it reads it from the registry's topic.
    wait_for(lambda: all(receivers.post(_body(-1 - i), SECRET)[0] == 200 for i in range(20)),
             timeout=30, what="both processes to know the deployment")
    before = len(read_topic(kafka_bootstrap, f"{receivers.namespace}.raw"))
    counted = _accepted(port)

    answers = [receivers.post(_body(index), SECRET) for index in range(BODIES)]
    assert [status for status, _ in answers] == [200] * BODIES

    stored = [m.value for m in read_topic(kafka_bootstrap, f"{receivers.namespace}.raw")]
    assert len(stored) == before + BODIES
    assert sorted(stored[before:]) == sorted(_body(index) for index in range(BODIES))

    assert _accepted(port) - counted == len(convex_examples()["events"]) * BODIES


def _accepted(port: int) -> float:
    """The events accepted, as /metrics says; whichever process answers a scrape, it
    reports the sum over all of them, so ten scrapes (ten connections) agree."""
    samples = {metric_sample(str(port), "meterstream_receiver_events_accepted_total")
               for _ in range(10)}
    assert len(samples) == 1, samples
    return samples.pop()


def _gone(pid: int) -> bool:
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def test_sigterm_stops_every_process(receivers: Pipeline) -> None:
    children = _children(receivers.process.pid)
    assert receivers.stop() == 0
    assert all(_gone(child) for child in children)
    assert "receivers stopped" in receivers.log_tail(200)


def test_one_process_dying_stops_the_others(receivers: Pipeline) -> None:
    children = _children(receivers.process.pid)
    os.kill(children[0], signal.SIGKILL)
    assert receivers.process.wait(60) == 1
    assert all(_gone(child) for child in children)
    assert "a service exited; stopping the others" in receivers.log_tail(200)
