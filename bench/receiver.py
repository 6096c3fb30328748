"""Receiver throughput and latency beside a bare aiokafka producer, in the same run.

    .venv/bin/python -m bench.receiver [--seconds 20] [--runs 3] [--connections 16]

Both paths store the same signed 128-event Convex bodies in Kafka with
acks=all and an idempotent producer:

- raw: one AIOKafkaProducer in this process, `connections` coroutines each
  awaiting send_and_wait in a loop (what the receiver does per request);
- receiver: `meterstream receiver` as its own process, `connections` HTTP
  connections posting the bodies and waiting for the 200.

It starts a broker of its own (deploy/kafka.sh, in .meterstream-bench/)
unless METERSTREAM_KAFKA names one, and prints medians over the runs, the
raw and receiver runs alternating. `--write` appends the table to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
from aiokafka import AIOKafkaProducer

from bench.kafka import kafka
from bench.proc import cpu_seconds, with_children
from meterstream.core.config import Settings
from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.signature import HEADER, sign
from meterstream.core.topics import Topics, ensure_topics
from tests.support import free_port, receiver_ready, wait_for

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / ".meterstream-bench"
"""The data directory of the broker the benchmarks start when METERSTREAM_KAFKA names none."""

EVENTS_PER_BODY = 128
DEPLOYMENTS = 16
ADMIN_TOKEN = "bench-admin-token-0123456789"


@dataclass
class Result:
    events_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    cpu_s_per_m_events: float
    """CPU of the path's own processes (user + system) per million events acknowledged."""


def bodies() -> list[tuple[str, str, bytes]]:
    """One signed 128-event body per deployment: (deployment, secret, body)."""
    data = REPO / "tests" / "support" / "data"
    examples = json.loads((data / "convex_examples.json").read_text())
    events = examples["events"]
    out = []
    for d in range(DEPLOYMENTS):
        name, secret = f"bench-app-{d:03d}", f"bench-secret-{d:03d}-0123456789"
        batch = []
        for i in range(EVENTS_PER_BODY):
            event = json.loads(json.dumps(events[i % len(events)]))
            event["timestamp"] += i
            event["convex"]["deployment_name"] = name
            batch.append(event)
        out.append((name, secret, orjson.dumps(batch)))
    return out


def summarise(latencies: list[float], seconds: float, errors: int, cpu: float) -> Result:
    ordered = sorted(latencies)
    events = len(ordered) * EVENTS_PER_BODY
    return Result(
        events_per_s=events / seconds,
        p50_ms=1000 * ordered[len(ordered) // 2],
        p99_ms=1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        requests=len(ordered), errors=errors, cpu_s_per_m_events=cpu / events * 1e6)


async def run_raw(bootstrap: str, topic: str, payloads: list[tuple[str, str, bytes]],
                  seconds: float, connections: int) -> Result:
    producer = AIOKafkaProducer(**kafka(bootstrap).client_options(), acks="all",
                                enable_idempotence=True, linger_ms=1,
                                max_request_size=8 * 1024 * 1024)
    await producer.start()
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def sender(index: int) -> None:
        n = index
        while time.perf_counter() < deadline:
            name, _, body = payloads[n % len(payloads)]
            started = time.perf_counter()
            await producer.send_and_wait(topic, value=body, key=name.encode(),
                                         headers=[("received_at", b"0")])
            latencies.append(time.perf_counter() - started)
            n += connections

    began, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(sender(i) for i in range(connections)))
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    await producer.stop()
    return summarise(latencies, elapsed, 0, cpu)


async def run_receiver(url: str, payloads: list[tuple[str, str, bytes]], seconds: float,
                       connections: int, pids: list[int]) -> Result:
    """`pids`: the receiver's processes, whose CPU the run counts."""
    signed = [(body, {HEADER: sign(body, secret), "Content-Type": "application/json"})
              for _, secret, body in payloads]
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def sender(index: int) -> None:
            nonlocal errors
            n = index
            while time.perf_counter() < deadline:
                body, headers = signed[n % len(signed)]
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status == 200:
                        latencies.append(time.perf_counter() - started)
                    else:
                        errors += 1
                n += connections

        began, cpu = time.perf_counter(), sum(map(cpu_seconds, pids))
        await asyncio.gather(*(sender(i) for i in range(connections)))
        elapsed, cpu = time.perf_counter() - began, sum(map(cpu_seconds, pids)) - cpu
    return summarise(latencies, elapsed, errors, cpu)


def start_broker() -> tuple[dict[str, str], bool]:
    if os.environ.get("METERSTREAM_KAFKA"):
        return {"METERSTREAM_KAFKA": os.environ["METERSTREAM_KAFKA"]}, False
    env = {"METERSTREAM_DATA_DIR": str(BENCH_DIR),
           "METERSTREAM_KAFKA": f"127.0.0.1:{free_port()}",
           "METERSTREAM_KAFKA_CONTROLLER_PORT": str(free_port())}
    cli(["kafka", "stop"], env)
    # Every benchmark writes to namespaces of its own, so the broker's logs hold nothing
    # a later run reads; kept, they grew by every run's traffic (32 GB were found).
    shutil.rmtree(BENCH_DIR / "kafka" / "data", ignore_errors=True)
    cli(["kafka", "start"], env)
    return env, True


def broker_pid(env: dict[str, str]) -> int | None:
    """The process of the broker start_broker started (None: a broker of the caller's)."""
    if "METERSTREAM_DATA_DIR" not in env:
        return None
    try:
        return int((Path(env["METERSTREAM_DATA_DIR"]) / "kafka" / "kafka.pid").read_text())
    except (OSError, ValueError):
        return None


def cli(args: list[str], env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "meterstream", *args], env={**os.environ, **env},
                   check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def register(base: str, payloads: list[tuple[str, str, bytes]]) -> None:
    import urllib.request

    for name, secret, _ in payloads:
        request = urllib.request.Request(
            f"{base}/v1/deployments/{name}", method="PUT",
            data=json.dumps({"webhook_secret": secret}).encode(),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        urllib.request.urlopen(request, timeout=30).read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--processes", type=int, default=1,
                        help="receiver processes on the port (METERSTREAM_RECEIVER_PROCESSES)")
    parser.add_argument("--write", action="store_true", help="append the results to BENCHMARKS.md")
    parser.add_argument("--json", type=Path,
                        help="also write the medians to this file (bench/run.py)")
    args = parser.parse_args()

    broker_env, own_broker = start_broker()
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    port = free_port()
    admin_port = free_port()
    env = {**broker_env, "METERSTREAM_NAMESPACE": namespace,
           "METERSTREAM_RECEIVER_PORT": str(port), "METERSTREAM_ADMIN_TOKEN": ADMIN_TOKEN,
           "METERSTREAM_ADMIN_PORT": str(admin_port),
           "METERSTREAM_LOG_LEVEL": "warning",
           "METERSTREAM_RECEIVER_PROCESSES": str(args.processes),
           "METERSTREAM_MAX_IN_FLIGHT": str(max(256, args.connections * 4))}
    settings = Settings.from_env({**os.environ, **env})
    raw_topic = Topics.of(settings).raw.name
    asyncio.run(ensure_topics(KafkaConnection.of(settings), [Topics.of(settings).raw]))
    payloads = bodies()
    receiver = subprocess.Popen([sys.executable, "-m", "meterstream", "receiver"], cwd=REPO,
                                env={**os.environ, **env})
    base = f"http://127.0.0.1:{port}"
    raw_results: list[Result] = []
    receiver_results: list[Result] = []
    try:
        wait_for(lambda: all(receiver_ready(base) for _ in range(4 * args.processes)),
                 timeout=60, what="the receiver('s processes) to be ready")
        pids = with_children(receiver.pid)
        register(f"http://127.0.0.1:{admin_port}", payloads)
        # Warm both paths (connections, JIT-free but page cache and topic leaders).
        asyncio.run(run_raw(settings.kafka_bootstrap, raw_topic, payloads, 2, args.connections))
        asyncio.run(run_receiver(base + "/v1/convex/logs", payloads, 2, args.connections,
                                 pids))
        for run in range(args.runs):
            raw = asyncio.run(run_raw(settings.kafka_bootstrap, raw_topic, payloads,
                                      args.seconds, args.connections))
            rec = asyncio.run(run_receiver(base + "/v1/convex/logs", payloads, args.seconds,
                                           args.connections, pids))
            raw_results.append(raw)
            receiver_results.append(rec)
            print(f"run {run + 1}: raw {raw.events_per_s:,.0f} ev/s p99 {raw.p99_ms:.1f} ms "
                  f"{raw.cpu_s_per_m_events:.1f} CPU s/M | "
                  f"receiver {rec.events_per_s:,.0f} ev/s p99 {rec.p99_ms:.1f} ms "
                  f"{rec.cpu_s_per_m_events:.1f} CPU s/M ({rec.errors} non-200)", flush=True)
    finally:
        receiver.terminate()
        receiver.wait(60)
        if own_broker:
            cli(["kafka", "stop"], broker_env)

    def median(results: list[Result], field: str) -> float:
        return statistics.median(getattr(r, field) for r in results)

    raw_eps, rec_eps = median(raw_results, "events_per_s"), median(receiver_results, "events_per_s")
    body_kb = statistics.mean(len(b) for _, _, b in payloads) / 1024
    command = (f".venv/bin/python -m bench.receiver --seconds {args.seconds:g} "
               f"--runs {args.runs} --connections {args.connections} "
               f"--processes {args.processes}")
    processes = f"{args.processes} process{'es' if args.processes > 1 else ''}"
    table = "\n".join([
        f"### Receiver vs bare aiokafka producer ({time.strftime('%Y-%m-%d', time.gmtime())})",
        "",
        f"Command: `{command}`  ",
        f"Machine: {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.machine()}; broker on the same machine.  ",
        f"Load: signed {EVENTS_PER_BODY}-event bodies of {body_kb:.0f} KiB from "
        f"{DEPLOYMENTS} deployments, {args.connections} concurrent senders, acks=all, "
        f"idempotent; medians of {args.runs} runs of {args.seconds:g} s.",
        "",
        "| path | events/s | p50 ms | p99 ms | ratio | CPU s per M events |",
        "|---|---:|---:|---:|---:|---:|",
        f"| bare aiokafka producer (1 process) | {raw_eps:,.0f} | "
        f"{median(raw_results, 'p50_ms'):.1f} | {median(raw_results, 'p99_ms'):.1f} | 1.00 | "
        f"{median(raw_results, 'cpu_s_per_m_events'):.1f} |",
        f"| meterstream receiver ({processes}) | {rec_eps:,.0f} | "
        f"{median(receiver_results, 'p50_ms'):.1f} | {median(receiver_results, 'p99_ms'):.1f} | "
        f"{rec_eps / raw_eps:.2f} | {median(receiver_results, 'cpu_s_per_m_events'):.1f} |",
        "",
    ])
    print()
    print(table)
    if args.json:
        args.json.write_text(json.dumps({
            "raw_events_per_s": raw_eps, "raw_p50_ms": median(raw_results, "p50_ms"),
            "raw_p99_ms": median(raw_results, "p99_ms"), "events_per_s": rec_eps,
            "p50_ms": median(receiver_results, "p50_ms"),
            "p99_ms": median(receiver_results, "p99_ms"), "command": command,
            "processes": args.processes,
            "raw_cpu_s_per_m": median(raw_results, "cpu_s_per_m_events"),
            "cpu_s_per_m": median(receiver_results, "cpu_s_per_m_events")}))
    if args.write:
        with (REPO / "BENCHMARKS.md").open("a") as out:
            out.write("\n" + table)


if __name__ == "__main__":
    main()
