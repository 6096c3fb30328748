"""Worker state at volume: RSS and restart-to-processing with a day of traffic remembered.

    .venv/bin/python -m bench.state [--bodies 6750000] [--deployments 10000] [--on-disk]
                                    [--tree /work/main --format old] [--json FILE]

A day at 10k events/s in 128-event bodies is 6.75M bodies. This writes that many dedup
entries and the live usage of `--deployments` deployments (25 hourly, 2 daily and 1
monthly windows, 3 end users a day and a month with their count key, a storage
snapshot: 38 keys each) straight into the worker tables' changelog topics, in the
format of the tree measured (`--format new`: this tree's 21-byte keys; `--format old`:
the string keys and JSON values of the memory-store worker before issue 14, to measure
`--tree` = a checkout of that version). Then, three times: start `meterstream worker`
(that tree's), produce one new raw body, and time from the process start until the
worker's metrics count it processed ("restart-to-processing"), and its RSS then
(VmRSS); stop it with SIGTERM. The first start restores from the changelog; the later
ones start from what the previous left on disk (RocksDB) or restore again (memory).
With `--on-disk` the entries are also written into the worker's RocksDB databases as a
clean stop leaves them (with Faust's changelog offsets and the clean-stop mark), so that
every start is a restart: restoring millions of entries from the changelog goes through
Faust's recovery at a few hundred to a thousand entries per second on this machine.

It uses the broker METERSTREAM_KAFKA names, or starts one of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.stores.rocksdb import RocksDBOptions
from rocksdict import WriteBatch

from bench.kafka import kafka
from bench.receiver import cli, start_broker
from bench.worker import BodyBuilder, delete_namespace_topics, fill, worker_metrics
from meterstream.core.config import Settings
from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.topics import Topics, ensure_topics
from processors.app import worker_datadir
from processors.ordered_store import CLEAN_MARK, rocksdb_options
from tests.support import free_port

REPO = Path(__file__).resolve().parent.parent
HOUR_MS = 3600_000
DAY_MS = 24 * HOUR_MS
OFFSET_KEY = b"__faust\0offset__"  # faust.stores.rocksdb.Store.offset_key


def seen_entries(bodies: int, partitions: int, fmt: str, now_ms: int, retention_ms: int,
                 rng: random.Random) -> Any:
    """(partition, key, value) of `bodies` dedup entries first seen over the last day."""
    bucket_ms = max(1000, retention_ms // 16)
    for n in range(bodies):
        first_seen = now_ms - DAY_MS + n * DAY_MS // bodies
        partition = n % partitions
        if fmt == "new":
            key = (b"\x01" + (first_seen // bucket_ms).to_bytes(4, "big")
                   + rng.randbytes(16))
            yield partition, key, n.to_bytes(8, "big")
        else:
            name = f"bench-app-{n % 10_000:05d}"
            key = orjson.dumps(f"{name}|body|{rng.randbytes(32).hex()}")
            yield partition, key, orjson.dumps([n, first_seen + retention_ms, partition])


def usage_entries(deployments: int, partitions: int, now_ms: int) -> Any:
    """(partition, key, value) of the live usage of `deployments` deployments."""
    hour = now_ms - now_ms % HOUR_MS
    day = now_ms - now_ms % DAY_MS
    month = int(time.mktime(time.strptime(time.strftime("%Y-%m-01", time.gmtime(now_ms / 1000)),
                                          "%Y-%m-%d")) * 1000)
    metrics = {"function_calls": 12345, "action_compute_mb_ms": 987654321,
               "database_io_bytes": 123456789, "data_egress_bytes": 23456789}
    tokens = {"openai/gpt-4o": {"input": 1234, "output": 567}}
    for d in range(deployments):
        name = f"bench-app-{d:05d}"
        partition = d % partitions

        def value(expires: int, offset: int = d, partition: int = partition,
                  **extra: Any) -> bytes:
            return orjson.dumps({"o": offset, "c": offset, "x": expires, "p": partition,
                                 **extra})

        windows = [("hour", hour - h * HOUR_MS) for h in range(25)]
        windows += [("day", day), ("day", day - DAY_MS), ("month", month)]
        for granularity, start in windows:
            yield partition, orjson.dumps(f"{name}|{granularity}|{start}"), value(
                now_ms + 2 * DAY_MS, m=metrics, t=tokens)
        for granularity, start in (("day", day), ("month", month)):
            for user in range(3):
                yield partition, orjson.dumps(f"{name}|user|{granularity}|{start}|u{user}"), \
                    value(now_ms + 2 * DAY_MS, m={}, t=tokens)
            yield partition, orjson.dumps(f"{name}|users|{granularity}|{start}"), value(
                now_ms + 2 * DAY_MS, b=2, n=3)
        yield partition, orjson.dumps(f"{name}|storage"), value(
            now_ms + 2 * DAY_MS, ts=now_ms, bytes={"database": 10 ** 9}, d=[])


async def produce(bootstrap: str, topic: str, entries: Any,
                  disk: DiskTables | None = None) -> int:
    """Writes (partition, key, value) entries in whole batches (one `send` per message
    would take minutes for millions), and to `disk` too if given."""
    producer = AIOKafkaProducer(**kafka(bootstrap).client_options(), acks=1,
                                max_batch_size=1024 * 1024, max_request_size=8 << 20,
                                compression_type="lz4")
    await producer.start()
    count = 0
    try:
        batches: dict[int, Any] = {}
        pending: list[asyncio.Future[Any]] = []
        for partition, key, value in entries:
            if disk is not None:
                disk.put(partition, key, value)
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                pending.append(await producer.send_batch(batch, topic, partition=partition))
                batch = batches[partition] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
            count += 1
            if len(pending) >= 16:
                await asyncio.gather(*pending)
                pending.clear()
        for partition, batch in batches.items():
            if batch.record_count():
                pending.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return count


class DiskTables:
    """One table's RocksDB databases as a worker that stopped cleanly leaves them: every
    changelog entry in its partition's database, with Faust's persisted changelog offset
    (`--on-disk`: measures the restart without first restoring the changelog once)."""

    def __init__(self, tabledir: Path, table: str, partitions: int) -> None:
        options = rocksdb_options(partitions)
        self.dbs = {}
        for partition in range(partitions):
            db_options = RocksDBOptions(**options, use_rocksdict=True)
            self.dbs[partition] = db_options.open(tabledir / f"{table}-{partition}.db")
        self.batches: dict[int, Any] = {}

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        batch = self.batches.get(partition)
        if batch is None:
            batch = self.batches[partition] = WriteBatch(raw_mode=True)
        batch.put(key, value)
        if len(batch) >= 10_000:
            self.dbs[partition].write(batch)
            self.batches[partition] = WriteBatch(raw_mode=True)

    def close(self, ends: dict[int, int]) -> None:
        for partition, batch in self.batches.items():
            self.dbs[partition].write(batch)
        for partition, db in self.dbs.items():
            if ends.get(partition, 0) > 0:
                db.put(OFFSET_KEY, str(ends[partition] - 1).encode())
            db.close()


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(**kafka(bootstrap).client_options())
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: end for tp, end in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def start_once(env: dict[str, str], tree: Path, python: str, log: Path,
               raw_topic: str, seed: int) -> dict[str, float]:
    """Starts the worker, sends it one raw body; seconds until it is processed, RSS then."""
    port = int(env["METERSTREAM_WORKER_PORT"])
    began = time.perf_counter()
    with log.open("ab") as out:
        worker = subprocess.Popen([python, "-m", "meterstream", "worker"], cwd=tree,
                                  env={**os.environ, **env}, stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        asyncio.run(fill(env["METERSTREAM_KAFKA"], raw_topic,
                         BodyBuilder(1, 1, seed=seed)))
        peak = 0
        while True:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with {worker.returncode}, see {log}")
            peak = max(peak, rss_bytes(worker.pid))
            done = worker_metrics(port).get("meterstream_worker_raw_batches_total", 0)
            if done >= 1:
                seconds = time.perf_counter() - began
                break
            if time.perf_counter() - began > 3600:
                raise RuntimeError("the worker processed nothing within an hour")
            time.sleep(0.2)
        rss = rss_bytes(worker.pid)
        return {"seconds": seconds, "rss": rss, "peak_rss": max(peak, rss)}
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(120)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bodies", type=int, default=6_750_000)
    parser.add_argument("--deployments", type=int, default=10_000)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--tree", type=Path, default=REPO,
                        help="the checkout whose worker is measured (its .venv)")
    parser.add_argument("--format", choices=("new", "old"), default="new")
    parser.add_argument("--on-disk", action="store_true",
                        help="also write the entries into the worker's RocksDB databases, "
                             "as a clean stop leaves them (the first start is then a "
                             "restart; --format new only)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    tree = args.tree.resolve()
    python = str(tree / ".venv" / "bin" / "python")

    broker_env, own_broker = start_broker()
    namespace = f"benchs{uuid.uuid4().hex[:8]}"
    results: list[dict[str, float]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="meterstream-bench-state-") as workdir:
            env = {**broker_env, "METERSTREAM_NAMESPACE": namespace,
                   "METERSTREAM_DATA_DIR": workdir,
                   "METERSTREAM_WORKER_PORT": str(free_port()),
                   "METERSTREAM_LOG_LEVEL": "warning"}
            settings = Settings.from_env({**os.environ, **env})
            topics = Topics.of(settings)
            try:
                asyncio.run(ensure_topics(KafkaConnection.of(settings), [
                    topics.raw, topics.changelog("seen"), topics.changelog("usage")]))
                now = int(time.time() * 1000)
                rng = random.Random(hashlib.sha256(namespace.encode()).digest())
                began = time.perf_counter()
                retention_ms = int(settings.dedup_retention * 1000)
                # Faust's table directory in the worker's data directory.
                tabledir = worker_datadir(settings) / "v1" / "tables"
                counts = {}
                for table, entries in (
                        ("seen", seen_entries(args.bodies, settings.partitions, args.format,
                                              now, retention_ms, rng)),
                        ("usage", usage_entries(args.deployments, settings.partitions,
                                                now))):
                    tabledir.mkdir(parents=True, exist_ok=True)
                    disk = (DiskTables(tabledir, table, settings.partitions)
                            if args.on_disk else None)
                    topic = topics.changelog(table).name
                    counts[table] = asyncio.run(produce(settings.kafka_bootstrap, topic,
                                                        entries, disk))
                    if disk is not None:
                        disk.close(asyncio.run(end_offsets(settings.kafka_bootstrap, topic,
                                                           settings.partitions)))
                if args.on_disk:
                    (tabledir / CLEAN_MARK).touch()
                seen, usage = counts["seen"], counts["usage"]
                print(f"wrote {seen:,} dedup and {usage:,} usage entries in "
                      f"{time.perf_counter() - began:.0f} s", flush=True)
                for start in range(args.starts):
                    result = start_once(env, tree, python, Path(workdir) / "worker.log",
                                        topics.raw.name, seed=start)
                    results.append(result)
                    print(f"start {start + 1}: processing after {result['seconds']:.1f} s, "
                          f"RSS {result['rss'] / 2**20:,.0f} MiB (peak "
                          f"{result['peak_rss'] / 2**20:,.0f} MiB), "
                          f"{result['rss'] / args.bodies:.0f} B per remembered body",
                          flush=True)
            finally:
                asyncio.run(delete_namespace_topics(settings.kafka_bootstrap, namespace))
    finally:
        if own_broker:
            cli(["kafka", "stop"], broker_env)
    command = (f".venv/bin/python -m bench.state --bodies {args.bodies} --deployments "
               f"{args.deployments} --starts {args.starts}"
               + (" --on-disk" if args.on_disk else "")
               + (f" --tree {tree} --format {args.format}" if tree != REPO else ""))
    summary = {"command": command, "on_disk": args.on_disk, "bodies": args.bodies,
               "deployments": args.deployments,
               "format": args.format, "tree": str(tree), "starts": results,
               "first_start_s": results[0]["seconds"],
               "restart_s": min(r["seconds"] for r in results[1:]) if len(results) > 1
               else results[0]["seconds"],
               "rss_bytes": max(r["rss"] for r in results),
               "peak_rss_bytes": max(r["peak_rss"] for r in results),
               "rss_bytes_per_body": max(r["rss"] for r in results) / args.bodies}
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
