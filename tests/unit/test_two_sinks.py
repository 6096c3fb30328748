"""Two sinks against one ClickHouse stay exact, because each owns the high-water marks of
the raw partitions it is assigned (sinks/high_water.py).

Two instances of the real `Sink` (sinks/sink.py: admission, batching, inserts, the marks'
loading at an assignment, the revoke's flush) write into one embedded engine, each
through its own client (its own session; chdb opens one data path per process, which two
clients may share). Kafka is an in-memory consumer group (`_Group`), so the test needs no
broker: what it replaces is only what aiokafka's consumer does (fetch, seek, pause,
commit), not what the sink decides.

1. Sink A owns raw partitions 0-3, sink B 4-7; both consume at once, including the copies
   a crashed worker publishes again (old origins at new offsets), in small batches.
2. More arrives on 0-3, sink A dies without committing anything (its commits are lost),
   and sink B takes all eight partitions: it reads 0-3 again from the start, with the
   marks it loaded through its own client from what A's client inserted.

Each phase ends with every (raw partition, raw offset, event index) stored exactly once
and the summed bytes exact.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from clickhouse_connect.driver.client import Client

from meterstream.core import migrate
from meterstream.core.clickhouse import EngineLock, connect
from meterstream.core.config import ClickHouseTarget, Settings
from sinks import metrics
from sinks.sink import Sink

PARTITIONS = 8
TOPIC = "twosinks.storage_api_bandwidth"  # <namespace>.<route> of file_downloads
# Near a month's end, so that a partition's records cross into the next month and the
# marks are exercised per (partition, month).
START = int(datetime.datetime(2026, 10, 31, 23, 59, 0, tzinfo=datetime.UTC).timestamp() * 1000)


class _Group:
    """One consumer group's view of the record topic: its messages and committed offsets."""

    def __init__(self) -> None:
        self.log: dict[int, list[ConsumerRecord[bytes, bytes]]] = {
            p: [] for p in range(PARTITIONS)}
        self.committed: dict[int, int] = {}

    def publish(self, partition: int, records: list[dict[str, Any]]) -> None:
        messages = self.log[partition]
        value = orjson.dumps(records)
        messages.append(ConsumerRecord(TOPIC, partition, len(messages), 0, 0, b"d", value,
                                       None, 1, len(value), ()))


class _Consumer:
    """What the sink uses of AIOKafkaConsumer, over a _Group."""

    def __init__(self, group: _Group, keeps_commits: bool = True) -> None:
        self.drained = asyncio.Event()
        self.group = group
        self.keeps_commits = keeps_commits
        self.assigned: set[TopicPartition] = set()
        self.paused: set[TopicPartition] = set()
        self.position: dict[TopicPartition, int] = {}

    def assign(self, partitions: list[int]) -> list[TopicPartition]:
        self.assigned = {TopicPartition(TOPIC, p) for p in partitions}
        self.position = {tp: self.group.committed.get(tp.partition, 0) for tp in self.assigned}
        self.drained = asyncio.Event()
        """Set once every assigned partition was fetched to its end."""
        return sorted(self.assigned)

    def at_end(self) -> bool:
        return all(self.position[tp] == len(self.group.log[tp.partition])
                   for tp in self.assigned)

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def getmany(self, timeout_ms: int = 0, max_records: int = 500
                      ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        await asyncio.sleep(0.001)
        fetched = {}
        for tp in sorted(self.assigned - self.paused):
            start = self.position[tp]
            messages = self.group.log[tp.partition][start:start + 3]  # small fetches
            if messages:
                fetched[tp] = messages
                self.position[tp] = start + len(messages)
        if self.at_end():
            self.drained.set()
        return fetched

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.position[tp] = offset

    def pause(self, *tps: TopicPartition) -> None:
        self.paused |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused -= set(tps)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.keeps_commits:
            for tp, offset in offsets.items():
                self.group.committed[tp.partition] = offset


class _Load:
    """Raw bodies per partition, each one message of 1-3 file downloads, and the copies a
    crashed worker sends again; `expected` is every distinct origin's record."""

    def __init__(self, group: _Group) -> None:
        self.group = group
        self.next_raw = dict.fromkeys(range(PARTITIONS), 0)
        self.bodies: dict[tuple[int, int], list[dict[str, Any]]] = {}

    def bodies_for(self, partitions: range, count: int) -> None:
        for _ in range(count):
            for p in partitions:
                raw = self.next_raw[p]
                self.next_raw[p] += 1
                records = [{"deployment": f"dep-{p}", "timestamp": START + raw * 7_000 + i,
                            "storage_id": f"s{raw}", "egress_bytes": 1000 * p + raw + i,
                            "raw_partition": p, "raw_offset": raw, "event_index": i}
                           for i in range(1 + (raw + p) % 3)]
                self.bodies[(p, raw)] = records
                self.group.publish(p, records)
                if raw % 5 == 4:  # a worker crashed and processed the last three again
                    for again in range(raw - 2, raw + 1):
                        self.group.publish(p, self.bodies[(p, again)])

    def expected(self) -> tuple[int, int]:
        records = [r for body in self.bodies.values() for r in body]
        return len(records), sum(r["egress_bytes"] for r in records)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Client, Client]]:
    path: Path = tmp_path_factory.mktemp("chdb") / "clickhouse"
    with EngineLock(path):
        target = ClickHouseTarget(url=f"chdb://{path}", chdb_path=path)
        first, second = connect(target), connect(target)
        migrate.apply(first)
        yield path, first, second
        first.close()  # so that another module can open an engine at its own path
        second.close()


def _sink(path: Path, client: Client, consumer: _Consumer, batch_rows: int) -> Sink:
    settings = Settings.from_env({"METERSTREAM_CLICKHOUSE": f"chdb://{path}",
                                  "METERSTREAM_NAMESPACE": "twosinks",
                                  "METERSTREAM_SINK_BATCH_ROWS": str(batch_rows),
                                  "METERSTREAM_SINK_BATCH_SECONDS": "0.02"})
    return Sink(settings, client, consumer, None, asyncio.Event())


async def _until_consumed(*sinks: Sink) -> None:
    """Runs the sinks' loops at once until each read its partitions to the end and stored
    what it buffered, then stops them as `consume` does (flush, commit)."""
    runs = [asyncio.create_task(sink.run()) for sink in sinks]
    try:
        async with asyncio.timeout(120):
            await asyncio.gather(*(sink.consumer.drained.wait() for sink in sinks))
    finally:
        for sink in sinks:
            sink.stop.set()
        await asyncio.gather(*runs)
    for sink in sinks:
        async with sink.lock:
            assert await sink.flush_all(asyncio.get_running_loop().time() + 30)
            await sink.committer.commit()


def _stored(client: Client) -> tuple[int, int, int, list[int]]:
    """(rows, summed bytes, origins stored more than once, partitions stored)."""
    rows, summed = client.query("SELECT count(), sum(egress_bytes) FROM file_downloads"
                                ).result_rows[0]
    twice = client.command("SELECT count() FROM (SELECT raw_partition, raw_offset, event_index "
                           "FROM file_downloads GROUP BY ALL HAVING count() > 1)")
    partitions = [row[0] for row in client.query(
        "SELECT DISTINCT raw_partition FROM file_downloads ORDER BY 1").result_rows]
    assert isinstance(twice, int)
    return int(rows), int(summed), twice, partitions


def test_two_sinks_over_split_partitions_store_every_record_once(
        engine: tuple[Path, Client, Client]) -> None:
    path, client_a, client_b = engine
    group = _Group()
    load = _Load(group)
    load.bodies_for(range(PARTITIONS), 12)
    consumer_a = _Consumer(group, keeps_commits=False)  # A's commits die with it (phase 2)
    consumer_b = _Consumer(group)
    # Batches of different sizes: what B stores again of A's partitions is never an insert
    # A made, so no insert_deduplication_token can skip it; only the marks can.
    sink_a = _sink(path, client_a, consumer_a, batch_rows=7)
    sink_b = _sink(path, client_b, consumer_b, batch_rows=11)
    skipped_before = metrics.DUPLICATES.labels("file_downloads")._value.get()

    async def phase_one() -> None:
        await sink_a.prepare()
        await sink_b.prepare()
        await sink_a.on_assigned(consumer_a.assign([0, 1, 2, 3]))
        await sink_b.on_assigned(consumer_b.assign([4, 5, 6, 7]))
        await _until_consumed(sink_a, sink_b)

    asyncio.run(phase_one())
    rows, summed, twice, partitions = _stored(client_b)
    assert (rows, summed) == load.expected()
    assert twice == 0
    assert partitions == list(range(PARTITIONS))
    # Each sink admitted only its own partitions' origins.
    assert {p for p, _ in sink_a.tables[TOPIC].high_water.marks} == {0, 1, 2, 3}
    assert {p for p, _ in sink_b.tables[TOPIC].high_water.marks} == {4, 5, 6, 7}
    # The worker's copies were there and were skipped, not stored.
    assert metrics.DUPLICATES.labels("file_downloads")._value.get() > skipped_before
    assert group.committed == {4: len(group.log[4]), 5: len(group.log[5]),
                               6: len(group.log[6]), 7: len(group.log[7])}

    # Phase 2: more on partitions 0-3; A is gone without a commit, B takes everything and
    # reads 0-3 from the start.
    load.bodies_for(range(4), 6)
    load.bodies_for(range(4, PARTITIONS), 2)
    sink_b.stop.clear()

    async def phase_two() -> None:
        await sink_b.on_revoked()
        await sink_b.on_assigned(consumer_b.assign(list(range(PARTITIONS))))
        assert all(consumer_b.position[TopicPartition(TOPIC, p)] == 0 for p in range(4))
        await _until_consumed(sink_b)

    asyncio.run(phase_two())
    rows, summed, twice, partitions = _stored(client_a)  # read back through the other session
    assert (rows, summed) == load.expected()
    assert twice == 0
    assert group.committed == {p: len(group.log[p]) for p in range(PARTITIONS)}
