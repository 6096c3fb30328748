"""Alert latency: from the receiver's 200 for a batch that crosses a quota to the alert on
`<ns>.alerts`, with `meterstream up` (receiver, worker, sink) on a broker.

Each of N deployments gets a day quota on function_calls equal to one batch, so its
batch crosses both default thresholds (0.8 and 1.0): two alerts. Batches are sent at
`--rate` per second by up to `--senders` threads; a consumer tails the alerts topic in
this process and notes when each deployment's first alert arrives.

    METERSTREAM_KAFKA=127.0.0.1:9092 .venv/bin/python -m bench.alert_latency --deployments 200
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from bench.kafka import kafka
from meterstream.core.topics import partition_counts
from tests.support.load import function_load
from tests.support.pipeline import running_pipeline

SECRET = "3f1c2b7e9a0d4c5e8b6a7f0e1d2c3b4a"


async def tail_alerts(bootstrap: str, topic: str, seen: dict[str, float],
                      ready: Callable[[], object], stopped: Callable[[], bool],
                      offset_reset: str = "earliest") -> None:
    """Notes in `seen` when each deployment's first alert arrives; calls `ready` once the
    consumer is assigned and fetching, and runs until `stopped()` (or is cancelled)."""
    # Subscribing to a topic that does not exist yet would have the broker create it with
    # one partition (auto-creation), before the pipeline creates it partitioned like raw.
    # The broker has no event to await for that: ask until the topic is there.
    while not (await partition_counts(kafka(bootstrap), [topic]))[topic]:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    consumer = AIOKafkaConsumer(topic, **kafka(bootstrap).client_options(), group_id=None,
                                auto_offset_reset=offset_reset, fetch_max_wait_ms=5)
    await consumer.start()
    try:
        await consumer.getmany(timeout_ms=500)  # assigned and fetching
        ready()
        while not stopped():
            batches = await consumer.getmany(timeout_ms=50)
            now = time.time()
            for messages in batches.values():
                for message in messages:
                    seen.setdefault(orjson.loads(message.value)["deployment"], now)
    finally:
        await consumer.stop()


def metric_seen(pipeline: Any) -> bool:
    """True once the worker has processed a raw message."""
    port = pipeline.env["METERSTREAM_WORKER_PORT"]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
            return "meterstream_worker_raw_batches_total 0.0" not in page.read().decode()
    except OSError:
        return False


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=200)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--rate", type=float, default=50.0,
                        help="batches (128 events) sent per second")
    args = parser.parse_args()
    bootstrap = os.environ.get("METERSTREAM_KAFKA", "127.0.0.1:9092")
    names = [f"latency-app-{n:04d}" for n in range(args.deployments)]
    now = int(time.time() * 1000)
    loads = {name: function_load(name, bodies=1, events_per_body=128, at_ms=now - 5000)
             for name in names}
    with running_pipeline(bootstrap, Path(tempfile.mkdtemp())) as pipeline:
        for name in names:
            pipeline.register(name, webhook_secret=SECRET)
            pipeline.admin("PUT", f"/v1/deployments/{name}/quotas", {"quotas": [
                {"metric": "function_calls", "period": "day",
                 "limit": loads[name].totals["function_calls"]}]})
        seen: dict[str, float] = {}
        ready, stop = threading.Event(), threading.Event()
        tail = threading.Thread(target=asyncio.run, args=(tail_alerts(
            bootstrap, f"{pipeline.namespace}.alerts", seen, ready.set, stop.is_set),))
        tail.start()
        ready.wait(60)
        # One batch first, so the worker has joined its group and loaded its state.
        warm = "latency-warmup"
        pipeline.register(warm, webhook_secret=SECRET)
        warmup = function_load(warm, bodies=1, events_per_body=1, at_ms=now - 5000)
        pipeline.post(warmup.bodies[0], SECRET)
        deadline = time.time() + 120
        while not metric_seen(pipeline) and time.time() < deadline:
            time.sleep(0.1)
        acked: dict[str, float] = {}

        def send(name: str) -> None:
            status, answer = pipeline.post(loads[name].bodies[0], SECRET)
            if status != 200:
                raise RuntimeError(f"{name}: {status} {answer!r}")
            acked[name] = time.time()

        started = time.time()
        with ThreadPoolExecutor(args.senders) as pool:
            futures = []
            for n, name in enumerate(names):
                delay = started + n / args.rate - time.time()
                if delay > 0:
                    time.sleep(delay)
                futures.append(pool.submit(send, name))
            for future in futures:
                future.result()
        deadline = time.time() + 60
        while len(seen) < len(names) and time.time() < deadline:
            time.sleep(0.05)
        stop.set()
        tail.join()
        elapsed = time.time() - started
    latencies = [(seen[name] - acked[name]) * 1000 for name in names if name in seen]
    print(f"alerts {len(latencies)}/{len(names)} deployments in {elapsed:.1f} s; "
          f"acknowledged -> alert on the topic: p50 {statistics.median(latencies):.1f} ms, "
          f"p99 {percentile(latencies, 0.99):.1f} ms, max {max(latencies):.1f} ms")


if __name__ == "__main__":
    main()
