"""End to end: the highest rate `meterstream up` sustains, alert latency at that rate, and
exact totals in ClickHouse afterwards.

    .venv/bin/python -m bench.end_to_end [--start 8000] [--factor 1.25] [--step-seconds 30]

One pipeline (`meterstream up`: receiver, `--workers` workers (default: `up`'s own
default, the cores less one), sink, embedded ClickHouse) on the broker
METERSTREAM_KAFKA names (or one of its own). `meterstream loadgen` traffic (realistic
Convex v2 events from --deployments deployments, signed 128-event batches) is sent at a
target rate in steps, each step `--factor` times the last, until a step is not
sustained (when the first step is not, the next ones go down instead, two factors at
a time, until one is):

- sustained means the load generator reached 95 % of the target and, over the step's last
  third, neither the workers (raw bodies in the topic minus bodies they finished) nor the
  sink (record messages not yet committed by its group, over the record messages stored
  per second: a body makes one per event type it holds) was behind by more than
  `--max-lag` seconds of traffic at that rate;
- alert latency: during every step, probe deployments with a day quota of one batch get
  one batch each (--probes-per-second); the time from the receiver's 200 to the probe's
  first alert on `<ns>.alerts` is taken, and reported for the highest sustained step;
- after the last step the sink is given time to catch up and every step's expected
  totals (the load generator's own accounting) are compared with ClickHouse, exactly.

The load generator runs in this process, on the same 2 cores as the pipeline, so the
figures are a floor for a pipeline with a machine of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.alert_latency import tail_alerts
from bench.kafka import kafka
from bench.proc import CpuShares, command_role, with_children
from bench.receiver import broker_pid, cli, start_broker
from meterstream import supervisor
from meterstream.core.config import Settings
from meterstream.core.query import run_sql
from meterstream.core.signature import HEADER, sign
from meterstream.core.topics import Topics
from meterstream.loadgen.check import check as check_totals
from meterstream.loadgen.expected import TABLE_SUMS
from meterstream.loadgen.sender import LoadOptions, LoadResult, run_load
from tests.support import free_port, wait_for
from tests.support.load import function_load
from tests.support.pipeline import Pipeline, running_pipeline

EVENTS_PER_BODY = 128
PROBE_SECRET = "5e0d3c2b1a4f49e8a7b6c5d4e3f2a1b0"
SAMPLE_SECONDS = 1.0


@dataclass
class Step:
    rate: float
    result: LoadResult | None = None
    worker_lag: list[tuple[float, float]] = field(default_factory=list)
    """(seconds into the step, raw bodies the worker has not finished)"""
    sink_lag: list[tuple[float, float]] = field(default_factory=list)
    """(seconds into the step, record-topic messages the sink has not committed)"""
    records: list[tuple[float, float]] = field(default_factory=list)
    """(seconds into the step, record-topic messages stored so far)"""
    alert_ms: list[float] = field(default_factory=list)
    probes: int = 0
    cpu_share: dict[str, float] = field(default_factory=dict)
    """per process (group): CPU seconds per second over the step's last two thirds"""

    @property
    def achieved(self) -> float:
        return self.result.stats.events_per_second if self.result else 0.0

    def max_lag_s(self, lag: list[tuple[float, float]], seconds: float) -> float:
        """Largest lag over the step's last third, in seconds of traffic at the rate."""
        tail = [value for at, value in lag if at >= seconds * 2 / 3]
        per_second = self.rate / EVENTS_PER_BODY
        return max(tail, default=0.0) / per_second

    def max_sink_lag_s(self, seconds: float) -> float:
        """Largest sink lag over the step's last third, in seconds of the workers' output.

        A body becomes one record message per event type it holds (four or five in this
        load), so the messages behind are divided by the record messages stored per second
        over the step, not by the bodies per second as the worker's lag is."""
        tail = [value for at, value in self.sink_lag if at >= seconds * 2 / 3]
        behind = max(tail, default=0.0)
        (first_at, first), (last_at, last) = (self.records[0], self.records[-1]) \
            if self.records else ((0.0, 0.0), (0.0, 0.0))
        if last_at <= first_at or last <= first:
            return 0.0 if behind == 0 else float("inf")
        return behind / ((last - first) / (last_at - first_at))

    def cpu_s_per_m_events(self) -> dict[str, float]:
        """per process (group): CPU seconds per million events sent at the step's rate"""
        return {name: share / self.achieved * 1e6 for name, share in self.cpu_share.items()
                } if self.achieved else {}

    def sustained(self, seconds: float, max_lag: float) -> bool:
        return (self.achieved >= 0.95 * self.rate
                and self.max_lag_s(self.worker_lag, seconds) <= max_lag
                and self.max_sink_lag_s(seconds) <= max_lag)


async def until(condition: Callable[[], bool], seconds: float) -> bool:
    """Polls `condition` until it holds or `seconds` passed; whether it held."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def until_async(condition: Callable[[], Awaitable[bool]], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not await condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.5)
    return True


async def caught_up(meter: LagMeter) -> bool:
    return not await meter.worker() and not await meter.sink()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class LagMeter:
    """How far the worker and the sink are behind the raw and the record topics."""

    def __init__(self, pipeline: Pipeline, workers: int) -> None:
        self.bootstrap = pipeline.env["METERSTREAM_KAFKA"]
        self.namespace = pipeline.namespace
        base = int(pipeline.env["METERSTREAM_WORKER_PORT"])
        self.worker_ports = [base + i for i in range(workers)]
        self.topics = Topics.of(Settings.from_env({**os.environ, **pipeline.env}))
        self.consumer = AIOKafkaConsumer(**kafka(self.bootstrap).client_options())
        self.admin = AIOKafkaAdminClient(**kafka(self.bootstrap).client_options())

    async def start(self) -> None:
        await self.consumer.start()
        await self.admin.start()

    async def stop(self) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def _ends(self, topic: str) -> dict[TopicPartition, int]:
        partitions = [TopicPartition(topic, p) for p in range(self.topics.partitions)]
        return await self.consumer.end_offsets(partitions)

    async def worker(self) -> float:
        """Raw bodies stored minus raw bodies the worker finished (its own counter, exact
        at once, where committed offsets trail by the commit interval)."""
        ends = await self._ends(self.topics.raw.name)
        return max(0.0, sum(ends.values()) - await self._worker_done())

    async def _worker_done(self) -> float:
        """Bodies finished, summed over the workers."""
        text = ""
        async with aiohttp.ClientSession() as session:
            for port in self.worker_ports:
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    text += await response.text() + "\n"
        done = 0.0
        for line in text.splitlines():
            if line.startswith(("meterstream_worker_raw_batches_total ",
                                'meterstream_worker_duplicates_total{kind="body"} ')):
                done += float(line.rsplit(" ", 1)[1])
        return done

    async def sink(self) -> tuple[float, float]:
        """Record-topic messages not yet committed by the sink's consumer group(s), and
        record-topic messages stored in all (of the partitions the group committed)."""
        behind = stored = 0.0
        groups = [group for group, *_ in await self.admin.list_consumer_groups()
                  if group.startswith(f"{self.namespace}-sink")]
        for group in groups:
            committed = await self.admin.list_consumer_group_offsets(group)
            if not committed:
                continue
            ends = await self.consumer.end_offsets(list(committed))
            behind += sum(max(0, ends[tp] - meta.offset) for tp, meta in committed.items())
            stored += sum(ends.values())
        return behind, stored


def process_groups(pipeline: Pipeline, broker: int | None) -> dict[str, list[int]]:
    """The processes whose CPU a step measures, by what they are: the pipeline's services
    (all workers together; a receiver with the processes it supervises), `meterstream up`
    itself, the broker when this benchmark started it, and this process (the load
    generator, the probes and the lag sampling)."""
    groups: dict[str, list[int]] = {}
    if broker is not None:
        groups["broker"] = [broker]
    up = pipeline.process.pid
    for pid in with_children(up)[1:]:
        role = command_role(pid) or "other"
        groups.setdefault(role, []).extend(with_children(pid))
    groups["up"] = [up]
    groups["load generator"] = [os.getpid()]
    return groups


async def probe(receiver: str, names: list[str], per_second: float, seconds: float,
                seen: dict[str, float], step: Step) -> None:
    """One quota-crossing batch per probe deployment, spread over the step."""
    bodies = {name: function_load(name, bodies=1, events_per_body=EVENTS_PER_BODY,
                                  at_ms=int(time.time() * 1000) - 1000).bodies[0]
              for name in names}
    acked: dict[str, float] = {}
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        for n, name in enumerate(names):
            if n / per_second > seconds:
                break
            await asyncio.sleep(max(0.0, started + n / per_second - time.monotonic()))
            body = bodies[name]
            async with session.post(f"{receiver}/v1/convex/logs", data=body, headers={
                    "Content-Type": "application/json",
                    HEADER: sign(body, PROBE_SECRET)}) as response:
                if response.status == 200:
                    acked[name] = time.time()
        step.probes = len(acked)
        await until(lambda: all(name in seen for name in acked), 30)
    step.alert_ms = [(seen[name] - at) * 1000 for name, at in acked.items() if name in seen]


def register_probes(pipeline: Pipeline, names: list[str]) -> None:
    for name in names:
        pipeline.register(name, webhook_secret=PROBE_SECRET)
        status, answer = pipeline.admin("PUT", f"/v1/deployments/{name}/quotas", {"quotas": [
            {"metric": "function_calls", "period": "day", "limit": EVENTS_PER_BODY}]})
        assert status == 200, answer


async def run_step(pipeline: Pipeline, settings: Settings, step: Step, args: argparse.Namespace,
                   probes: list[str], seen: dict[str, float], index: int) -> None:
    meter = LagMeter(pipeline, args.workers)
    await meter.start()
    began = time.monotonic()
    stop_sampling = asyncio.Event()

    async def sample() -> None:
        while not stop_sampling.is_set():
            at = time.monotonic() - began
            step.worker_lag.append((at, await meter.worker()))
            behind, stored = await meter.sink()
            step.sink_lag.append((at, behind))
            step.records.append((at, stored))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_sampling.wait(), SAMPLE_SECONDS)

    options = LoadOptions(deployments=args.deployments, users=args.users, seed=index,
                          prefix=f"e2e{index}", rate=step.rate, duration=args.step_seconds,
                          connections=args.connections, progress=False)
    cpu = CpuShares(process_groups(pipeline, args.broker_pid))

    async def measure_cpu() -> None:
        # The first third warms up (the lag limits skip it too); the window ends with
        # the load.
        await asyncio.sleep(args.step_seconds / 3)
        cpu.start()

    sampler = asyncio.ensure_future(sample())
    cpu_window = asyncio.ensure_future(measure_cpu())
    prober = asyncio.ensure_future(probe(
        f"http://127.0.0.1:{pipeline.env['METERSTREAM_RECEIVER_PORT']}", probes,
        args.probes_per_second, args.step_seconds * 0.9, seen, step))
    try:
        step.result = await run_load(options, settings)
        if cpu_window.done():
            cpu.stop()
            step.cpu_share = cpu.share()
        await prober
    finally:
        cpu_window.cancel()
        stop_sampling.set()
        await sampler
        await meter.stop()


async def run_steps(pipeline: Pipeline, args: argparse.Namespace) -> list[Step]:
    settings = Settings.from_env({**os.environ, **pipeline.env})
    bootstrap = pipeline.env["METERSTREAM_KAFKA"]
    seen: dict[str, float] = {}
    ready = asyncio.Event()
    tail = asyncio.ensure_future(tail_alerts(bootstrap, f"{pipeline.namespace}.alerts", seen,
                                             ready.set, lambda: False, "latest"))
    await asyncio.wait_for(ready.wait(), 60)
    steps: list[Step] = []
    rate = args.start
    try:
        for index in range(args.max_steps):
            probes = [f"e2e-probe-{index}-{n:03d}"
                      for n in range(int(args.probes_per_second * args.step_seconds) + 1)]
            register_probes(pipeline, probes)
            step = Step(rate)
            await run_step(pipeline, settings, step, args, probes, seen, index)
            steps.append(step)
            print(report_line(step, args), flush=True)
            sustained = step.sustained(args.step_seconds, args.max_lag)
            if not sustained and any(s.sustained(args.step_seconds, args.max_lag)
                                     for s in steps):
                break
            if not sustained and rate / args.factor ** 2 < args.floor:
                break
            # Let the pipeline catch up before the next step, so steps do not add up.
            meter = LagMeter(pipeline, args.workers)
            await meter.start()
            try:
                await until_async(functools.partial(caught_up, meter), 300)
            finally:
                await meter.stop()
            # Up while the pipeline keeps up; down (two steps at a time) until it first does.
            rate = rate * args.factor if sustained else rate / args.factor ** 2
    finally:
        tail.cancel()
        await asyncio.gather(tail, return_exceptions=True)
    return steps


def report_line(step: Step, args: argparse.Namespace) -> str:
    stats = step.result.stats if step.result else None
    alerts = (f"alert p50 {statistics.median(step.alert_ms):.0f} ms "
              f"p99 {percentile(step.alert_ms, 0.99):.0f} ms ({len(step.alert_ms)}/{step.probes})"
              if step.alert_ms else "no alerts")
    cpu = ", ".join(f"{name} {share * 100:.0f}" for name, share in sorted(
        step.cpu_share.items(), key=lambda item: -item[1]) if share >= 0.005)
    cpu = (f"; CPU % of a core: {cpu} (all: {sum(step.cpu_share.values()) * 100:.0f} "
           f"of {(os.cpu_count() or 1) * 100})") if cpu else ""
    return (f"target {step.rate:,.0f} ev/s: sent {step.achieved:,.0f} ev/s, "
            f"receiver p50 {stats.latency_ms(0.5) if stats else 0:.0f} ms "
            f"p99 {stats.latency_ms(0.99) if stats else 0:.0f} ms; "
            f"max lag worker {step.max_lag_s(step.worker_lag, args.step_seconds):.1f} s "
            f"sink {step.max_sink_lag_s(args.step_seconds):.1f} s; {alerts}; "
            + ("sustained" if step.sustained(args.step_seconds, args.max_lag)
               else "NOT sustained") + cpu)


def check_all(pipeline: Pipeline, steps: list[Step], wait: float) -> tuple[int, int]:
    """(values compared, values that differ) over every step, once the sink caught up."""
    settings = Settings.from_env({**os.environ, **pipeline.env})
    tables = tuple(TABLE_SUMS)
    outcome: tuple[int, int] = (0, 0)

    def matches() -> bool:
        nonlocal outcome
        compared = differing = 0
        for step in steps:
            assert step.result is not None
            count, found = check_totals(step.result.expected,
                                        lambda sql: run_sql(settings.clickhouse, sql), tables)
            compared, differing = compared + count, differing + len(found)
        outcome = (compared, differing)
        return differing == 0

    with contextlib.suppress(AssertionError, TimeoutError):
        wait_for(matches, timeout=wait, what="ClickHouse to hold the expected totals",
                 interval=2.0)
    return outcome


@dataclass
class EndToEnd:
    sustained: Step | None
    steps: list[Step]
    compared: int
    differing: int
    workers: int


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports."""
    while True:
        base = free_port()
        try:
            for port in range(base + 1, base + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base


def measure(bootstrap: str, args: argparse.Namespace) -> EndToEnd:
    workdir = Path(tempfile.mkdtemp(prefix="meterstream-e2e-"))
    with running_pipeline(bootstrap, workdir, command=f"up --workers {args.workers}",
                          extra_env={"METERSTREAM_SINK_BATCH_SECONDS": "1.0",
                                     "METERSTREAM_WORKER_PORT": str(free_ports(args.workers))}
                          ) as pipeline:
        steps = asyncio.run(run_steps(pipeline, args))
        compared, differing = check_all(pipeline, steps, args.check_seconds)
    good = [s for s in steps if s.sustained(args.step_seconds, args.max_lag)]
    return EndToEnd(good[-1] if good else None, steps, compared, differing, args.workers)


def parser() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--start", type=float, default=8000, help="first target, events/s")
    options.add_argument("--factor", type=float, default=1.25)
    options.add_argument("--max-steps", type=int, default=10)
    options.add_argument("--floor", type=float, default=500,
                         help="lowest target tried when the first steps are not sustained")
    options.add_argument("--step-seconds", type=float, default=30)
    options.add_argument("--max-lag", type=float, default=5.0,
                         help="seconds of traffic a stage may be behind and still keep up")
    options.add_argument("--deployments", type=int, default=50)
    options.add_argument("--users", type=int, default=20)
    options.add_argument("--connections", type=int, default=16)
    options.add_argument("--workers", type=int, default=supervisor.default_workers(),
                         help="worker processes of `meterstream up` (default: its own, "
                              f"{supervisor.default_workers()} here)")
    options.add_argument("--probes-per-second", type=float, default=2.0)
    options.add_argument("--check-seconds", type=float, default=300)
    options.add_argument("--json", type=Path, help="also write the summary to this file")
    return options


def summary(outcome: EndToEnd) -> dict[str, Any]:
    best = outcome.sustained
    return {
        "steps": [{"target": s.rate, "achieved": round(s.achieved),
                   "alerts": len(s.alert_ms)} for s in outcome.steps],
        "sustained_events_per_s": round(best.achieved) if best else 0,
        "alert_p50_ms": round(statistics.median(best.alert_ms), 1)
        if best and best.alert_ms else None,
        "alert_p99_ms": round(percentile(best.alert_ms, 0.99), 1)
        if best and best.alert_ms else None,
        "workers": outcome.workers,
        "cpu_share": {name: round(share, 3) for name, share in best.cpu_share.items()}
        if best else {},
        "cpu_s_per_m_events": {name: round(value, 1)
                               for name, value in best.cpu_s_per_m_events().items()}
        if best else {},
        "totals_compared": outcome.compared,
        "totals_differing": outcome.differing,
    }


def command(args: argparse.Namespace) -> str:
    return (f".venv/bin/python -m bench.end_to_end --start {args.start:g} "
            f"--factor {args.factor:g} --step-seconds {args.step_seconds:g} "
            f"--deployments {args.deployments} --workers {args.workers}")


def main() -> None:
    args = parser().parse_args()
    # SIGTERM as an exception, so that the pipeline and a broker of this run are stopped
    # on the way out (killed plainly, `meterstream up` was left running).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    env, own_broker = start_broker()
    args.broker_pid = broker_pid({**os.environ, **env})
    try:
        outcome = measure(env["METERSTREAM_KAFKA"], args)
    finally:
        if own_broker:
            cli(["kafka", "stop"], env)
    result = {**summary(outcome), "command": command(args)}
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    if args.json:
        args.json.write_bytes(orjson.dumps(result))


if __name__ == "__main__":
    main()
