"""Sink throughput beside a bare clickhouse-connect insert_arrow of the same rows, same run.

    .venv/bin/python -m bench.sink [--events 1000000] [--deployments 100] [--runs 3] [--write]

Each run fills a fresh namespace's per-event-type topics with what the worker forwards:
raw bodies of 128 Convex events (bench/worker.py's BodyBuilder, mostly function
executions) split and normalised by processors/split.py, one message per body and event
type, keyed by deployment, on the raw body's partition: record format version 2 (an
Arrow batch of the table's rows, header `format: arrow-1`, as the worker writes now:
meterstream/core/record_format.py). Then, one after the other, each in a process of its
own with a fresh embedded engine and the same schema:

- insert_arrow: reads every message (untimed), decodes it, groups the rows by table and
  month in batches of METERSTREAM_SINK_BATCH_ROWS rows as one Arrow table per batch
  (timed apart), then inserts them with `client.insert_arrow` (timed: this is the figure
  the sink is compared with);
- sink: `meterstream sink` on the full topics, doing all it does (high-water marks,
  batching, Arrow inserts, commits), timed through its /metrics (polled every 0.1 s)
  from the first poll that shows its partitions assigned to the one where
  meterstream_sink_rows_inserted_total reaches every row;
- sink reading v1: the same bodies as version 1 messages (a JSON array of records per
  message, as workers before record format 2 wrote them) in a namespace of their own,
  and the sink again: what records still in flight during an upgrade cost.

CPU seconds are the process's user + system time over the timed span. `measure()`
returns the figures for a combined benchmark; the CLI prints them and, with --write,
puts the table in BENCHMARKS.md's "## Sink" section.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.kafka import kafka
from bench.proc import cpu_seconds
from bench.receiver import cli, start_broker
from bench.report import machine, put_section
from bench.worker import (
    EVENTS_PER_BODY,
    BodyBuilder,
    delete_namespace_topics,
    tail,
)
from meterstream.core.config import DEFAULTS, Settings
from meterstream.core.topics import Topics, ensure_topics, partition_counts
from tests.support import free_port, stop_process, wait_for

REPO = Path(__file__).resolve().parent.parent

POLL_SECONDS = 0.1


@dataclass
class ArrowResult:
    rows: int
    insert_seconds: float
    insert_cpu_seconds: float
    decode_seconds: float
    build_seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.insert_seconds


@dataclass
class SinkResult:
    rows: int
    seconds: float
    cpu_seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


@dataclass
class SinkBenchmark:
    """Medians over the runs."""

    rows: int
    sink_rows_per_s: float
    arrow_rows_per_s: float
    arrow_with_decode_rows_per_s: float
    sink_cpu_us_per_row: float
    arrow_cpu_us_per_row: float
    v1_rows_per_s: float
    v1_cpu_us_per_row: float
    runs: int

    @property
    def ratio(self) -> float:
        return self.sink_rows_per_s / self.arrow_rows_per_s


def encoded(route: str, records: list[dict[str, Any]]) -> bytes:
    """One message's records in record format version 2, as the worker writes them."""
    from meterstream.core import events, record_format

    event_type = events.BY_TOPIC.get(route, events.OTHER)
    rows = event_type.rows(records)
    return record_format.encode(event_type, [[row[name] for row in rows]
                                             for name, _ in event_type.columns])


async def fill(bootstrap: str, namespace: str, partitions: int, builder: BodyBuilder,
               arrow: bool = True) -> int:
    """Produces the split records of builder.messages raw bodies, in record format version 2
    (`arrow`) or 1; returns the row count."""
    from aiokafka import AIOKafkaProducer

    from meterstream.core import record_format
    from processors.split import split_body

    producer = AIOKafkaProducer(**kafka(bootstrap).client_options(), acks="all",
                                enable_idempotence=True, linger_ms=5,
                                max_batch_size=1024 * 1024, max_request_size=8 * 1024 * 1024)
    await producer.start()
    rows = 0
    try:
        pending: list[asyncio.Future[Any]] = []
        for message in range(builder.messages):
            key, body = builder.body(message)
            partition = message % partitions
            split = split_body(body, partition, message // partitions)
            for route, records in split.routed.items():
                rows += len(records)
                if arrow:
                    value = encoded(route, records)
                    headers = [(record_format.FORMAT_HEADER, record_format.ARROW)]
                else:
                    value, headers = orjson.dumps(records), []
                pending.append(await producer.send(f"{namespace}.{route}", value, key=key,
                                                   partition=partition, headers=headers))
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return rows


async def read_messages(bootstrap: str, namespace: str
                        ) -> list[tuple[str, int, int, bytes, bool]]:
    """(topic, partition, offset, value, version 2?) of every message of the sink's
    topics."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from meterstream.core import record_format
    from meterstream.core.tables import SPECS
    from sinks.sink import topic_of

    settings = Settings.from_env({**os.environ, "METERSTREAM_NAMESPACE": namespace})
    topics = [topic_of(Topics.of(settings), spec) for spec in SPECS]
    consumer = AIOKafkaConsumer(**kafka(bootstrap).client_options(), enable_auto_commit=False,
                                auto_offset_reset="earliest",
                                max_partition_fetch_bytes=16 * 1024 * 1024)
    await consumer.start()
    try:
        counts = await partition_counts(kafka(bootstrap), topics)
        partitions = [TopicPartition(t, p) for t in topics for p in range(counts[t])]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        out: list[tuple[str, int, int, bytes, bool]] = []
        while any([await consumer.position(tp) < end for tp, end in ends.items()]):
            for tp, batch in (await consumer.getmany(timeout_ms=500)).items():
                out.extend((tp.topic, tp.partition, m.offset, m.value,
                            record_format.is_arrow(m.headers)) for m in batch)
        return out
    finally:
        await consumer.stop()


def _arrow_type(clickhouse_type: str) -> Any:
    import pyarrow as pa

    plain = re.sub(r"^LowCardinality\((.*)\)$", r"\1", clickhouse_type)
    return {"String": pa.string(), "Bool": pa.bool_(), "UInt32": pa.uint32(),
            "UInt64": pa.uint64(), "DateTime64(3, 'UTC')": pa.timestamp("ms", tz="UTC"),
            "Map(String, UInt64)": pa.map_(pa.string(), pa.uint64())}[plain]


def arrow_path(bootstrap: str, namespace: str, workdir: str, batch_rows: int) -> ArrowResult:
    """The bare path, in this process: decode, build Arrow tables, insert_arrow them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from meterstream.core import migrate, record_format
    from meterstream.core.clickhouse import connect
    from meterstream.core.config import ClickHouseTarget
    from meterstream.core.tables import SPECS, month_of
    from sinks.writer import TableWriter

    path = Path(workdir) / "arrow-clickhouse"
    client = connect(ClickHouseTarget(url=f"chdb://{path}", chdb_path=path))
    migrate.apply(client)
    messages = asyncio.run(read_messages(bootstrap, namespace))
    specs = {}
    for spec in SPECS:
        settings = Settings.from_env({**os.environ, "METERSTREAM_NAMESPACE": namespace})
        from sinks.sink import topic_of
        specs[topic_of(Topics.of(settings), spec)] = spec

    started = time.perf_counter()
    grouped: dict[tuple[str, int], list[Any]] = {}
    by_name = {spec.table: spec for spec in SPECS}
    for topic, partition, offset, value, arrow in messages:
        spec = specs[topic]
        if arrow and spec.event_type is not None:
            batch = record_format.decode(spec.event_type, value)
            times = batch.column(spec.time_field).view(pa.int64())
            month = month_of(pc.min(times).as_py())
            if month_of(pc.max(times).as_py()) != month:
                raise RuntimeError("the benchmark's bodies do not straddle months")
            grouped.setdefault((spec.table, month), []).append(batch)
            continue
        for record in spec.decode(value, partition, offset):
            grouped.setdefault((spec.table, month_of(record[spec.time_field])), []).append(
                record)
    decode_seconds = time.perf_counter() - started

    started = time.perf_counter()
    tables: list[tuple[str, pa.Table]] = []
    for (table, _), parts in grouped.items():
        spec = by_name[table]
        if isinstance(parts[0], pa.RecordBatch):
            # One contiguous chunk per table, as the earlier bare path built them.
            whole = pa.Table.from_batches(parts, schema=spec.schema).combine_chunks()
            tables.extend((table, whole.slice(start, batch_rows))
                          for start in range(0, whole.num_rows, batch_rows))
            continue
        types = [_arrow_type(t) for t in TableWriter(client, spec).column_types()]  # as sent
        for start in range(0, len(parts), batch_rows):
            chunk = parts[start:start + batch_rows]
            arrays = []
            for name, arrow_type in zip(spec.columns, types, strict=True):
                column = [record[name] for record in chunk]
                if pa.types.is_map(arrow_type):
                    column = [list(value.items()) for value in column]
                arrays.append(pa.array(column, type=arrow_type))
            tables.append((table, pa.Table.from_arrays(arrays, names=list(spec.columns))))
    build_seconds = time.perf_counter() - started

    rows = sum(t.num_rows for _, t in tables)
    started, cpu_started = time.perf_counter(), time.process_time()
    for table, arrow_table in tables:
        client.insert_arrow(table, arrow_table)
    insert_seconds = time.perf_counter() - started
    insert_cpu = time.process_time() - cpu_started
    stored = 0
    for table in by_name:
        count = client.command(f"SELECT count() FROM {table}")
        assert isinstance(count, int), count
        stored += count
    if stored != rows:
        raise RuntimeError(f"insert_arrow stored {stored} rows of {rows}")
    return ArrowResult(rows, insert_seconds, insert_cpu, decode_seconds, build_seconds)


def run_arrow(bootstrap: str, namespace: str, batch_rows: int) -> ArrowResult:
    with tempfile.TemporaryDirectory(prefix="meterstream-bench-arrow-") as workdir:
        completed = subprocess.run(
            [sys.executable, "-m", "bench.sink", "--arrow-path", namespace, "--arrow-dir", workdir,
             "--batch-rows", str(batch_rows)],
            env={**os.environ, "METERSTREAM_KAFKA": bootstrap}, cwd=REPO, check=True,
            stdout=subprocess.PIPE, timeout=1800)
    return ArrowResult(**json.loads(completed.stdout))


def sink_progress(port: str) -> tuple[float, float]:
    """(partitions assigned, rows stored) from the sink's /metrics; (0, 0) if unreachable."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as page:
            text = page.read().decode()
    except OSError:
        return 0.0, 0.0
    assigned = rows = 0.0
    for line in text.splitlines():
        if line.startswith("meterstream_sink_rows_inserted_total{"):
            rows += float(line.rsplit(" ", 1)[1])
        elif line.startswith("meterstream_sink_assigned_partitions "):
            assigned = float(line.rsplit(" ", 1)[1])
    return assigned, rows


def run_sink(env: dict[str, str], rows: int, workdir: Path) -> SinkResult:
    port = env["METERSTREAM_SINK_PORT"]
    log = workdir / "sink.log"
    with log.open("wb") as out:
        sink = subprocess.Popen([sys.executable, "-m", "meterstream", "sink"], cwd=REPO,
                                env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT)

    def polled(condition: Any) -> Any:
        def check() -> tuple[float, float, float] | None:
            if sink.poll() is not None:
                raise RuntimeError(f"the sink exited with {sink.returncode}:\n{tail(log)}")
            assigned, done = sink_progress(port)
            seen = (done, time.perf_counter(), cpu_seconds(sink.pid))
            return seen if condition(assigned, done) else None
        return check

    try:
        # Timed from the poll that first sees the partitions assigned (the rows stored by
        # then count too), so start-up and the group join are left out.
        first = wait_for(polled(lambda assigned, _: assigned > 0), timeout=300,
                         what="the sink's partitions assigned", interval=POLL_SECONDS)
        last = wait_for(polled(lambda _, done: done >= rows), timeout=1800,
                        what=f"the sink to store {rows} rows", interval=POLL_SECONDS)
    finally:
        stop_process(sink)
    if last[0] != rows:
        raise RuntimeError(f"the sink stored {last[0]:.0f} rows of {rows}")
    return SinkResult(rows, last[1] - first[1], last[2] - first[2])


def measure(bootstrap: str, events: int = 1_000_000, deployments: int = 100, runs: int = 3,
            partitions: int = 8, batch_rows: int = int(DEFAULTS["METERSTREAM_SINK_BATCH_ROWS"]),
            keep_topics: bool = False, report: Any = print) -> SinkBenchmark:
    """Runs the benchmark against the broker at `bootstrap`; medians over `runs`."""
    messages = -(-events // EVENTS_PER_BODY)
    sinks: list[SinkResult] = []
    v1_sinks: list[SinkResult] = []
    arrows: list[ArrowResult] = []
    rows = 0
    for run in range(runs):
        arrow: ArrowResult | None = None
        for version in (2, 1):
            namespace = f"benchs{uuid.uuid4().hex[:8]}"
            with tempfile.TemporaryDirectory(prefix="meterstream-bench-sink-") as workdir:
                env = {"METERSTREAM_KAFKA": bootstrap, "METERSTREAM_NAMESPACE": namespace,
                       "METERSTREAM_DATA_DIR": workdir,
                       "METERSTREAM_PARTITIONS": str(partitions),
                       "METERSTREAM_SINK_PORT": str(free_port()),
                       "METERSTREAM_SINK_BATCH_ROWS": str(batch_rows),
                       "METERSTREAM_LOG_LEVEL": "warning"}
                settings = Settings.from_env({**os.environ, **env})
                topics = Topics.of(settings)
                try:
                    from processors.split import ALL_ROUTES

                    asyncio.run(ensure_topics(kafka(bootstrap), [
                        topics.raw, topics.alerts, topics.dead_letters,
                        *(topics.records(route) for route in ALL_ROUTES)]))
                    rows = asyncio.run(fill(bootstrap, namespace, partitions,
                                            BodyBuilder(deployments, messages, seed=run),
                                            arrow=version == 2))
                    if version == 2:
                        arrow = run_arrow(bootstrap, namespace, batch_rows)
                    sink = run_sink(env, rows, Path(workdir))
                finally:
                    if not keep_topics:
                        asyncio.run(delete_namespace_topics(bootstrap, namespace))
            (sinks if version == 2 else v1_sinks).append(sink)
        assert arrow is not None
        arrows.append(arrow)
        report(f"run {run + 1}: {rows:,} rows | insert_arrow {arrow.rows_per_s:,.0f} rows/s "
               f"(decode {arrow.decode_seconds:.2f} s, build {arrow.build_seconds:.2f} s, "
               f"insert {arrow.insert_seconds:.2f} s) | sink {sinks[-1].rows_per_s:,.0f} rows/s "
               f"({sinks[-1].rows_per_s / arrow.rows_per_s:.2f}, "
               f"{sinks[-1].cpu_seconds / rows * 1e6:.1f} CPU µs/row) | sink reading v1 "
               f"{v1_sinks[-1].rows_per_s:,.0f} rows/s "
               f"({v1_sinks[-1].rows_per_s / arrow.rows_per_s:.2f}, "
               f"{v1_sinks[-1].cpu_seconds / rows * 1e6:.1f} CPU µs/row)")
    return SinkBenchmark(
        rows=rows,
        sink_rows_per_s=statistics.median(s.rows_per_s for s in sinks),
        arrow_rows_per_s=statistics.median(a.rows_per_s for a in arrows),
        arrow_with_decode_rows_per_s=statistics.median(
            a.rows / (a.decode_seconds + a.build_seconds + a.insert_seconds) for a in arrows),
        sink_cpu_us_per_row=statistics.median(s.cpu_seconds / s.rows * 1e6 for s in sinks),
        arrow_cpu_us_per_row=statistics.median(
            a.insert_cpu_seconds / a.rows * 1e6 for a in arrows),
        v1_rows_per_s=statistics.median(s.rows_per_s for s in v1_sinks),
        v1_cpu_us_per_row=statistics.median(s.cpu_seconds / s.rows * 1e6 for s in v1_sinks),
        runs=runs)


def table(result: SinkBenchmark, command: str, partitions: int, batch_rows: int) -> str:
    median = "medians of " if result.runs > 1 else ""
    return "\n".join([
        f"### Sink vs bare insert_arrow ({time.strftime('%Y-%m-%d', time.gmtime())})",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}; broker on the same machine; embedded ClickHouse (chdb).  ",
        f"Load: {result.rows:,} rows of every record type (mostly function executions, "
        f"44 columns) as the worker forwards them (record format 2: one Arrow batch per "
        f"body and type; v1: the same as JSON), {partitions} partitions per topic; "
        f"batches of {batch_rows:,} rows; each path its own process and engine; "
        f"{median}{result.runs} run{'s' if result.runs > 1 else ''}.",
        "",
        "| path | rows/s | ratio | CPU µs per row |",
        "|---|---:|---:|---:|",
        f"| bare `insert_arrow` of prebuilt Arrow tables (insert timed alone) | "
        f"{result.arrow_rows_per_s:,.0f} | 1.00 | {result.arrow_cpu_us_per_row:.1f} |",
        f"| bare path from the same messages: decode + build Arrow + `insert_arrow` | "
        f"{result.arrow_with_decode_rows_per_s:,.0f} | "
        f"{result.arrow_with_decode_rows_per_s / result.arrow_rows_per_s:.2f} | |",
        f"| meterstream sink (1 process, from Kafka, committed) | "
        f"{result.sink_rows_per_s:,.0f} | {result.ratio:.2f} | "
        f"{result.sink_cpu_us_per_row:.1f} |",
        f"| meterstream sink reading v1 JSON (records in flight during an upgrade) | "
        f"{result.v1_rows_per_s:,.0f} | {result.v1_rows_per_s / result.arrow_rows_per_s:.2f} | "
        f"{result.v1_cpu_us_per_row:.1f} |",
    ]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000,
                        help="events per run, rounded up to whole 128-event bodies")
    parser.add_argument("--deployments", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-rows", type=int,
                        default=int(DEFAULTS["METERSTREAM_SINK_BATCH_ROWS"]))
    parser.add_argument("--keep-topics", action="store_true")
    parser.add_argument("--write", action="store_true",
                        help="put the results in BENCHMARKS.md's Sink section")
    parser.add_argument("--json", type=Path,
                        help="also write the medians to this file (bench/run.py)")
    parser.add_argument("--arrow-path", metavar="NAMESPACE", help=argparse.SUPPRESS)
    parser.add_argument("--arrow-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.arrow_path:
        arrow = arrow_path(os.environ["METERSTREAM_KAFKA"], args.arrow_path, args.arrow_dir,
                           args.batch_rows)
        print(json.dumps(asdict(arrow)))
        return

    broker_env, own_broker = start_broker()
    partitions = Settings.from_env({**os.environ, **broker_env}).partitions
    try:
        result = measure(broker_env["METERSTREAM_KAFKA"], args.events, args.deployments,
                         args.runs, partitions, args.batch_rows, args.keep_topics)
    finally:
        if own_broker:
            cli(["kafka", "stop"], broker_env)
    command = (f".venv/bin/python -m bench.sink --events {args.events} "
               f"--deployments {args.deployments} --runs {args.runs}")
    text = table(result, command, partitions, args.batch_rows)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({
            "rows_per_s": result.sink_rows_per_s,
            "raw_rows_per_s": result.arrow_rows_per_s,
            "cpu_s_per_m": result.sink_cpu_us_per_row,  # µs per row = s per M rows
            "raw_cpu_s_per_m": result.arrow_cpu_us_per_row,
            "v1_rows_per_s": result.v1_rows_per_s,
            "v1_cpu_s_per_m": result.v1_cpu_us_per_row,
            "command": command}))
    if args.write:
        put_section("Sink", text)


if __name__ == "__main__":
    main()
