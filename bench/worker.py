"""Worker throughput beside a bare aiokafka consumer of the same raw topic, in the same run.

    .venv/bin/python -m bench.worker [--events 2000000] [--deployments 100] [--runs 3]

Each run fills a fresh `<ns>.raw` topic (its own namespace, METERSTREAM_PARTITIONS
partitions) with JSON arrays of 128 Convex V2 events keyed by deployment, as the
receiver stores them, then reads the whole topic twice, each reader a process of
its own started after the topic is full:

- raw: a bare AIOKafkaConsumer (fresh group, from the earliest offset, the worker's
  fetch size per partition) that orjson-decodes every message value;
- worker: `meterstream worker`, doing all it does per body (deduplication,
  splitting, usage windows, forwarding to the per-event-type topics with acks=all).
  The bench deployments are not registered, so no quota applies to them.

Both are timed from their first processed message to their last, so start-up and
the group join are left out; the rate counts only the messages processed in
between. The worker is timed by polling its /metrics counter
`meterstream_worker_raw_batches_total` every 0.1 s: it counts a raw message once
Kafka acknowledged everything forwarded from it and is exact at once, whereas the
group's committed offsets lag by up to Faust's commit interval (2.8 s). Those
offsets are checked afterwards to reach the end of the raw topic. CPU seconds are
the process's user + system time over the same window (/proc/<pid>/stat).

It uses the broker METERSTREAM_KAFKA names, or starts one of its own like
bench/receiver.py, deletes each run's topics afterwards (unless --keep-topics) and
prints medians over the runs. `--write` puts the table in BENCHMARKS.md's
"## Worker" section.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.kafka import kafka
from bench.proc import cpu_seconds
from bench.receiver import cli, start_broker
from bench.report import machine, put_section
from meterstream.core.config import Settings
from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.topics import Topics, ensure_topics
from tests.support import convex_examples, free_port, stop_process, wait_for

REPO = Path(__file__).resolve().parent.parent

EVENTS_PER_BODY = 128
HOUR_MS = 3_600_000
# The worker's consumer_max_fetch_size (processors/app.py), so both readers fetch alike.
MAX_PARTITION_FETCH_BYTES = 16 * 1024 * 1024
POLL_SECONDS = 0.1

# Share of each kind of event in a body: mostly function executions.
EVENT_MIX: dict[str, float] = {
    "query": 0.55,
    "mutation": 0.25,
    "action": 0.08,
    "http_action": 0.04,
    "storage_api_bandwidth": 0.05,
    "log_stream_egress": 0.015,
    "current_storage_usage": 0.015,
}
FUNCTION_PATHS: dict[str, tuple[str, ...]] = {
    "query": ("messages:list", "threads:get", "users:current", "search:documents",
              "dashboard:stats", "files:list"),
    "mutation": ("messages:send", "messages:addMessages", "threads:create", "users:update",
                 "files:generateUploadUrl"),
    "action": ("ai:generateReply", "embeddings:index", "billing:syncStripe", "email:send"),
    "http_action": ("http:webhook", "http:upload"),
}
REGIONS = ("aws-us-east-1", "aws-eu-west-1")


@dataclass
class Result:
    events: int
    seconds: float
    cpu_seconds: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    @property
    def cpu_s_per_m_events(self) -> float:
        return self.cpu_seconds / self.events * 1e6


class BodyBuilder:
    """Realistic raw bodies: a deployment's 128 events, shaped like the reference examples
    (tests/support/data/convex_examples.json), with varied usage counters and, within a body,
    increasing distinct timestamps. Every function execution has its own request id, so
    no two bodies are byte-identical (the worker drops repeated bodies as duplicates)."""

    def __init__(self, deployments: int, messages: int, seed: int) -> None:
        self.rng = random.Random(seed)
        examples = convex_examples()["events"]
        self.templates: dict[str, dict[str, Any]] = {
            "query": examples[0], "mutation": examples[1], "action": examples[2],
            "http_action": examples[0], "current_storage_usage": examples[3],
            "storage_api_bandwidth": examples[4]}
        self.names = [f"bench-app-{d:03d}" for d in range(deployments)]
        self.convex = [{"deployment_name": name, "deployment_type": "prod" if d % 4 else "dev",
                        "deployment_ref": None, "project_name": f"Bench App {d}",
                        "project_slug": name, "deployment_region": REGIONS[d % len(REGIONS)]}
                       for d, name in enumerate(self.names)]
        # Busier and quieter deployments, as in real life.
        self.weights = [1 / (rank + 1) ** 0.5 for rank in range(deployments)]
        self.usages = {kind: [self._usage(kind) for _ in range(512)]
                       for kind in FUNCTION_PATHS}
        self.kinds = list(EVENT_MIX)
        self.kind_weights = list(EVENT_MIX.values())
        self.messages = messages
        # The bodies are spread over the last hour, in produce order.
        self.start_ms = int(time.time() * 1000) - HOUR_MS
        self.step_ms = max(1, HOUR_MS // max(1, messages) // EVENTS_PER_BODY)
        self.serial = 0

    def _usage(self, kind: str) -> dict[str, Any]:
        rng = self.rng
        usage: dict[str, Any] = dict.fromkeys(self.templates["query"]["usage"], 0)
        reads = rng.choice((0, 1, 3, 10, 50, 200))
        usage.update(database_read_documents=reads,
                     database_read_bytes=reads * rng.randint(200, 4000),
                     function_args_bytes=rng.randint(2, 4000),
                     function_returns_bytes=rng.randint(0, 50_000),
                     memory_used_mb=rng.choice((64, 128, 256)),
                     action_memory_used_mb=None)
        usage["database_io_read_bytes"] = usage["database_read_bytes"] * 11 // 10
        if kind in ("mutation", "action"):
            writes = rng.choice((0, 1, 2, 5, 20))
            usage.update(database_write_documents=writes,
                         database_write_bytes=writes * rng.randint(100, 3000))
            usage["database_io_write_bytes"] = usage["database_write_bytes"] * 12 // 10
        if kind in ("action", "http_action"):
            usage.update(network_egress_bytes=rng.randint(0, 200_000),
                         action_memory_used_mb=usage["memory_used_mb"],
                         file_storage_write_bytes=rng.choice((0, 0, 0, 1 << 20)))
        if rng.random() < 0.1:
            usage.update(vector_search_query_bytes=rng.randint(1000, 20_000),
                         text_search_query_bytes=rng.randint(10, 400))
        return usage

    def body(self, message: int) -> tuple[bytes, bytes]:
        """(key, body) of the message-th body."""
        rng = self.rng
        d = rng.choices(range(len(self.names)), self.weights)[0]
        convex = self.convex[d]
        first_ms = self.start_ms + message * HOUR_MS // self.messages
        events = []
        for index, kind in enumerate(rng.choices(self.kinds, self.kind_weights,
                                                 k=EVENTS_PER_BODY)):
            timestamp = first_ms + index * self.step_ms
            if kind in FUNCTION_PATHS:
                events.append(self._function_execution(kind, timestamp, convex))
            elif kind == "storage_api_bandwidth":
                events.append({**self.templates[kind], "timestamp": timestamp,
                               "storage_id": f"kg{self.serial:030x}",
                               "egress_bytes": rng.randint(1024, 8 << 20), "convex": convex})
            elif kind == "log_stream_egress":
                events.append({"timestamp": timestamp, "topic": kind,
                               "egress_bytes": rng.randint(10_000, 5_000_000),
                               "convex": convex})
            else:
                events.append({**self.templates[kind], "timestamp": timestamp,
                               "total_document_size_bytes": rng.randint(1 << 20, 1 << 32),
                               "convex": convex})
            self.serial += 1
        return self.names[d].encode(), orjson.dumps(events)

    def _function_execution(self, kind: str, timestamp: int,
                            convex: dict[str, Any]) -> dict[str, Any]:
        rng = self.rng
        template = self.templates[kind]
        failed = rng.random() < 0.02
        event = {**template, "timestamp": timestamp,
                 "function": {**template["function"], "type": kind,
                              "cached": rng.random() < 0.3 if kind == "query" else None,
                              "path": rng.choice(FUNCTION_PATHS[kind]),
                              "request_id": f"{self.serial:016x}"},
                 "execution_time_ms": rng.randint(1, 30_000 if kind == "action" else 800),
                 "status": "failure" if failed else "success",
                 "error_message": "Uncaught Error: bench" if failed else None,
                 "usage": rng.choice(self.usages[kind]), "convex": convex}
        if kind == "mutation" and not failed:
            event.update(occ_info=None, will_retry=False)
        return event


async def fill(bootstrap: str, topic: str, builder: BodyBuilder) -> int:
    """Produces builder.messages bodies with acks=all; returns their total size in bytes."""
    producer = AIOKafkaProducer(**kafka(bootstrap).client_options(), acks="all",
                                enable_idempotence=True, linger_ms=5,
                                max_batch_size=1024 * 1024,
                                max_request_size=8 * 1024 * 1024)
    await producer.start()
    total_bytes = 0
    began = time.perf_counter()
    progress = Progress(f"filling {topic}", builder.messages)
    try:
        pending: list[asyncio.Future[Any]] = []
        for message in range(builder.messages):
            key, body = builder.body(message)
            total_bytes += len(body)
            received_at = str(int(time.time() * 1000)).encode()
            pending.append(await producer.send(topic, value=body, key=key,
                                               headers=[("received_at", received_at)]))
            if len(pending) >= 500 or message == builder.messages - 1:
                await asyncio.gather(*pending)
                pending.clear()
                progress.update(message + 1, time.perf_counter() - began)
    finally:
        await producer.stop()
    progress.done()
    return total_bytes


class Progress:
    """One line on stderr, redrawn in place on a terminal, every 10% otherwise."""

    def __init__(self, what: str, total: int) -> None:
        self.what, self.total = what, total
        self.tty = sys.stderr.isatty()
        self.next_percent = 10

    def update(self, done: int, seconds: float) -> None:
        percent = 100 * done // self.total
        line = (f"{self.what}: {done:,}/{self.total:,} messages "
                f"({done * EVENTS_PER_BODY:,} events) {percent}% {seconds:.1f} s")
        if self.tty:
            print(f"\r{line}", end="", file=sys.stderr, flush=True)
        elif percent >= self.next_percent:
            print(line, file=sys.stderr, flush=True)
            self.next_percent = percent // 10 * 10 + 10

    def done(self) -> None:
        if self.tty:
            print(file=sys.stderr, flush=True)


async def consume_raw(bootstrap: str, topic: str, group: str, messages: int) -> Result:
    """The raw path: read `messages` messages and orjson-decode each value."""
    consumer = AIOKafkaConsumer(topic, **kafka(bootstrap).client_options(), group_id=group,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                max_partition_fetch_bytes=MAX_PARTITION_FETCH_BYTES)
    await consumer.start()
    try:
        seen = counted_events = 0
        started = cpu_started = 0.0
        async with asyncio.timeout(600):
            while seen < messages:
                fetched = await consumer.getmany(timeout_ms=500)
                if fetched and not started:
                    # Timed from the first fetched message, like the worker: with
                    # compressed topics one fetch can hold most of the topic.
                    started, cpu_started = time.perf_counter(), time.process_time()
                for batch in fetched.values():
                    for record in batch:
                        counted_events += len(orjson.loads(record.value))
                        seen += 1
        return Result(counted_events, time.perf_counter() - started,
                      time.process_time() - cpu_started)
    finally:
        await consumer.stop()


def run_raw(bootstrap: str, topic: str, messages: int) -> Result:
    """consume_raw in a process of its own (this script with --consume-raw)."""
    group = f"{topic}-bench-raw-{uuid.uuid4().hex[:6]}"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.worker", "--consume-raw", topic, "--raw-group", group,
         "--raw-messages", str(messages)],
        env={**os.environ, "METERSTREAM_KAFKA": bootstrap}, cwd=REPO, check=True,
        stdout=subprocess.PIPE, timeout=900)
    return Result(**json.loads(completed.stdout))


def worker_metrics(port: int) -> dict[str, float]:
    """The worker's meterstream_* counters, by sample name with labels; {} if unreachable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    samples = {}
    for line in text.splitlines():
        if line.startswith("meterstream_"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


class Observation(NamedTuple):
    """One poll of the worker: raw messages processed so far, when, its CPU time then."""

    messages: int
    at: float
    cpu_seconds: float
    samples: dict[str, float]


def run_worker(env: dict[str, str], messages: int,
               workdir: Path) -> tuple[Result, dict[str, float]]:
    """`meterstream worker` on the full topic; its Result and its counters at the end."""
    port = int(env["METERSTREAM_WORKER_PORT"])
    done_key = "meterstream_worker_raw_batches_total"
    duplicate_key = 'meterstream_worker_duplicates_total{kind="body"}'
    log = workdir / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "meterstream", "worker"], cwd=REPO,
                                  env={**os.environ, **env}, stdout=out,
                                  stderr=subprocess.STDOUT)

    def processed(at_least: int) -> Callable[[], Observation | None]:
        def check() -> Observation | None:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with {worker.returncode}:\n{tail(log)}")
            samples = worker_metrics(port)
            # A body dropped as a duplicate is done too (none is expected).
            done = samples.get(done_key, 0) + samples.get(duplicate_key, 0)
            seen = Observation(int(done), time.perf_counter(),
                               cpu_seconds(worker.pid), samples)
            return seen if seen.messages >= at_least else None
        return check

    try:
        first = wait_for(processed(1), timeout=300, what="the worker's first message",
                         interval=POLL_SECONDS)
        last = wait_for(processed(messages), timeout=1800,
                        what=f"the worker to process {messages} messages",
                        interval=POLL_SECONDS)
        wait_for(lambda: asyncio.run(group_lag(env)) == 0, timeout=60,
                 what="the worker's committed offsets to reach the end of the topic",
                 interval=0.5)
    finally:
        stop_process(worker)
    result = Result((messages - first.messages) * EVENTS_PER_BODY, last.at - first.at,
                    last.cpu_seconds - first.cpu_seconds)
    return result, last.samples


async def group_lag(env: dict[str, str]) -> int:
    """Messages of the raw topic not yet committed by the worker's group (the namespace)."""
    settings = Settings.from_env({**os.environ, **env})
    topic = Topics.of(settings).raw.name
    admin = AIOKafkaAdminClient(**KafkaConnection.of(settings).client_options())
    consumer = AIOKafkaConsumer(**KafkaConnection.of(settings).client_options())
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(settings.namespace)
        partitions = [TopicPartition(topic, p) for p in range(settings.partitions)]
        ends = await consumer.end_offsets(partitions)
        return sum(end - (committed[tp].offset if tp in committed else 0)
                   for tp, end in ends.items())
    finally:
        await consumer.stop()
        await admin.close()


async def delete_namespace_topics(bootstrap: str, namespace: str) -> None:
    """Deletes the run's topics: `<ns>.*` and Faust's `<ns>-*` (changelog, assignor)."""
    admin = AIOKafkaAdminClient(**kafka(bootstrap).client_options())
    await admin.start()
    try:
        ours = [t for t in await admin.list_topics()
                if t.startswith((f"{namespace}.", f"{namespace}-"))]
        if ours:
            await admin.delete_topics(ours)
    finally:
        await admin.close()


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2_000_000,
                        help="events per run, rounded up to whole 128-event messages")
    parser.add_argument("--deployments", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep-topics", action="store_true",
                        help="leave each run's topics on the broker")
    parser.add_argument("--write", action="store_true",
                        help="put the results in BENCHMARKS.md's Worker section")
    parser.add_argument("--json", type=Path,
                        help="also write the medians to this file (bench/run.py)")
    # The raw path's own process.
    parser.add_argument("--consume-raw", metavar="TOPIC", help=argparse.SUPPRESS)
    parser.add_argument("--raw-group", help=argparse.SUPPRESS)
    parser.add_argument("--raw-messages", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.consume_raw:
        result = asyncio.run(consume_raw(os.environ["METERSTREAM_KAFKA"], args.consume_raw,
                                         args.raw_group, args.raw_messages))
        print(json.dumps(result.__dict__))
        return

    messages = -(-args.events // EVENTS_PER_BODY)
    broker_env, own_broker = start_broker()
    raw_results: list[Result] = []
    worker_results: list[Result] = []
    body_bytes = 0
    try:
        for run in range(args.runs):
            namespace = f"benchw{uuid.uuid4().hex[:8]}"
            with tempfile.TemporaryDirectory(prefix="meterstream-bench-worker-") as workdir:
                env = {**broker_env, "METERSTREAM_NAMESPACE": namespace,
                       "METERSTREAM_DATA_DIR": workdir,
                       "METERSTREAM_WORKER_PORT": str(free_port()),
                       "METERSTREAM_LOG_LEVEL": "warning"}
                settings = Settings.from_env({**os.environ, **env})
                raw_topic = Topics.of(settings).raw
                try:
                    asyncio.run(ensure_topics(KafkaConnection.of(settings), [raw_topic]))
                    builder = BodyBuilder(args.deployments, messages, seed=run)
                    body_bytes = asyncio.run(fill(settings.kafka_bootstrap, raw_topic.name,
                                                  builder))
                    raw = run_raw(settings.kafka_bootstrap, raw_topic.name, messages)
                    worker, samples = run_worker(env, messages, Path(workdir))
                finally:
                    if not args.keep_topics:
                        asyncio.run(delete_namespace_topics(settings.kafka_bootstrap,
                                                            namespace))
            raw_results.append(raw)
            worker_results.append(worker)
            routed = {re.sub(r'.*route="([^"]+)".*', r"\1", name): int(value)
                      for name, value in samples.items()
                      if name.startswith("meterstream_worker_events_total{")}
            duplicates = sum(v for k, v in samples.items()
                             if k.startswith("meterstream_worker_duplicates_total{"))
            print(f"run {run + 1}: raw {raw.events_per_s:,.0f} ev/s "
                  f"{raw.cpu_s_per_m_events:.1f} CPU s/M | worker "
                  f"{worker.events_per_s:,.0f} ev/s {worker.cpu_s_per_m_events:.1f} CPU s/M "
                  f"({worker.events_per_s / raw.events_per_s:.2f}); routed {routed}, "
                  f"{duplicates:.0f} duplicates", flush=True)
    finally:
        if own_broker:
            cli(["kafka", "stop"], broker_env)

    def median(results: list[Result], field: str) -> float:
        return statistics.median(getattr(r, field) for r in results)

    raw_eps = median(raw_results, "events_per_s")
    worker_eps = median(worker_results, "events_per_s")
    partitions = Settings.from_env({**os.environ, **broker_env}).partitions
    command = (f".venv/bin/python -m bench.worker --events {args.events} "
               f"--deployments {args.deployments} --runs {args.runs}")
    table = "\n".join([
        f"### Worker vs bare aiokafka consumer ({time.strftime('%Y-%m-%d', time.gmtime())})",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}; broker on the same machine.  ",
        f"Load: a fresh raw topic of {partitions} partitions per run, {messages:,} messages "
        f"of {EVENTS_PER_BODY} events ({body_bytes / messages / 1024:.0f} KiB on average) "
        f"from {args.deployments} deployments; each reader its own process, timed from its "
        f"first message to its last; "
        f"{'medians of ' if args.runs > 1 else ''}{args.runs} run{'s' if args.runs > 1 else ''}.",
        "",
        "| path | events/s | ratio | CPU s per M events |",
        "|---|---:|---:|---:|",
        f"| bare aiokafka consumer + orjson (1 process) | {raw_eps:,.0f} | 1.00 | "
        f"{median(raw_results, 'cpu_s_per_m_events'):.1f} |",
        f"| meterstream worker (1 process) | {worker_eps:,.0f} | "
        f"{worker_eps / raw_eps:.2f} | {median(worker_results, 'cpu_s_per_m_events'):.1f} |",
        "",
    ])
    print()
    print(table)
    if args.json:
        args.json.write_text(json.dumps({
            "raw_events_per_s": raw_eps,
            "raw_cpu_s_per_m": median(raw_results, "cpu_s_per_m_events"),
            "events_per_s": worker_eps,
            "cpu_s_per_m": median(worker_results, "cpu_s_per_m_events"), "command": command}))
    if args.write:
        put_section("Worker", table)


if __name__ == "__main__":
    main()
