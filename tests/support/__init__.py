"""Helpers shared by the tests: free ports, waiting for conditions, running the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def schema_pending(stderr: str) -> bool:
    """Whether a billing command refused because the sink has not applied the schema yet
    (billing/cli.py says so in one line; ClickHouse's own UNKNOWN_TABLE from a server)."""
    return any(sign in stderr for sign in ("UNKNOWN_TABLE", "holds no meterstream tables yet",
                                           "start the sink, which migrates it"))


def wait_for(condition: Callable[[], T | None], timeout: float, what: str,
             interval: float = 0.1) -> T:
    """Polls until `condition()` is truthy and returns it; fails naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last = condition()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)
        last = condition()
    return last


def receiver_ready(base_url: str) -> bool:
    """Whether the receiver at base_url answers /readyz with 200."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{base_url}/readyz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def stop_process(process: subprocess.Popen[Any], timeout: float = 60) -> None:
    """SIGTERM (graceful shutdown) if it still runs; SIGKILL when it does not stop in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def meterstream(args: list[str], env: Mapping[str, str], timeout: float = 120,
                check: bool = True) -> subprocess.CompletedProcess[str]:
    """Runs the `meterstream` command of this checkout with `env` over os.environ."""
    result = subprocess.run([sys.executable, "-m", "meterstream", *args],
                            env={**os.environ, **env}, capture_output=True, text=True,
                            timeout=timeout, cwd=REPO, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"meterstream {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def convex_examples() -> dict[str, Any]:
    """The example events of the shared reference (section 6), as stored in tests/support/data."""
    return json.loads((DATA / "convex_examples.json").read_text())


def recent_events(topic: str | None = None) -> list[dict[str, Any]]:
    """The reference's example events (of one topic, if given), moved in time so that the
    earliest is ten minutes ago: the worker sends events older than its late-event grace
    (a day) to the dead-letter topic, and the reference's are from 2025."""
    events = [e for e in convex_examples()["events"] if topic is None or e["topic"] == topic]
    shift = int(time.time() * 1000) - 600_000 - min(e["timestamp"] for e in events)
    for event in events:
        event["timestamp"] += shift
    return events


async def _read_topic(bootstrap: str, topic: str) -> list[Any]:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
    assert partitions, f"topic {topic} has no partitions: {described}"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign(partitions)
        # Positions first (they start at the earliest offset), then the ends to read up to.
        for tp in partitions:
            await consumer.position(tp)
        ends = await consumer.end_offsets(partitions)
        messages: list[Any] = []
        async with asyncio.timeout(60):
            while any([await consumer.position(tp) < end for tp, end in ends.items()]):
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    messages.extend(batch)
        return messages
    finally:
        await consumer.stop()


def read_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every message now in `topic` (all partitions), read from the real broker."""
    return asyncio.run(_read_topic(bootstrap, topic))


def own_broker_env(workdir: Path) -> dict[str, str]:
    """Settings for a broker of a test's own (to stop and start at will), on free ports,
    reusing the jars the session broker resolved so that no Maven run is needed."""
    env = {
        "METERSTREAM_DATA_DIR": str(workdir / "ms"),
        "METERSTREAM_KAFKA": f"127.0.0.1:{free_port()}",
        "METERSTREAM_KAFKA_CONTROLLER_PORT": str(free_port()),
    }
    libs = REPO / ".meterstream-test" / "kafka" / "libs"
    if libs.is_dir():
        (workdir / "ms" / "kafka").mkdir(parents=True)
        (workdir / "ms" / "kafka" / "libs").symlink_to(libs)
    return env


def metric_sample(port: str, name: str, labels: str = "") -> float:
    """A sample of the /metrics of the service on `port` (summed over the label sets
    matching `labels`); -1 when the service does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
            text = page.read().decode()
    except OSError:
        return -1.0
    total = 0.0
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def until(condition: Callable[[], object], what: str) -> None:
    """Lets the event loop run until `condition()` holds; fails naming `what` after 1000
    turns (for tests of asyncio code with no I/O, where a condition follows in a few turns)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never: {what}")
