"""A record message ClickHouse refuses for its data cannot stop the sink: after
METERSTREAM_SINK_MAX_ATTEMPTS refusals it is dead-lettered and skipped, the rest of its
batch and the next messages of its partition are stored exactly once. On the real broker
and the embedded engine; a table that is away still pauses and loses nothing
(tests/integration/test_sink_failures.py)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pyarrow as pa
from aiokafka import AIOKafkaProducer
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from meterstream.core import events, record_format
from sinks.batching import Columns
from sinks.sink import about_the_data
from tests.support import free_port, meterstream, read_topic, wait_for
from tests.support.sink_load import sink_metric, sink_ready, start_sink
from tests.support.workers import worker_processes

DEPLOYMENT = "direct-otter-1"


def test_only_refusals_about_the_rows_count_as_the_messages_fault() -> None:
    assert about_the_data(DatabaseError("Code: 469. DB::Exception: Constraint `p` is "
                                        "violated at row 2. (VIOLATED_CONSTRAINT)"))
    assert about_the_data(TypeError("'str' object cannot be interpreted as an integer"))
    assert not about_the_data(DatabaseError("Code: 60. DB::Exception: Table default.x does "
                                            "not exist. (UNKNOWN_TABLE)"))
    assert not about_the_data(DatabaseError("Code: 241. (MEMORY_LIMIT_EXCEEDED)"))
    assert not about_the_data(OperationalError("connection refused"))
    assert not about_the_data(RuntimeError("anything else"))


def test_a_batch_splits_into_its_origin_messages_in_order() -> None:
    names = ("raw_partition", "raw_offset", "event_index", "x")
    columns = Columns(names, pa.schema([(name, pa.uint64()) for name in names]))
    columns.add([{"raw_partition": p, "raw_offset": o, "event_index": i, "x": n}
                 for n, (p, o, i) in enumerate([(0, 1, 0), (0, 1, 1), (1, 1, 0), (0, 2, 0)])])
    ranges = columns.messages(("raw_partition", "raw_offset"))
    assert ranges == [(0, 2), (2, 3), (3, 4)]
    assert columns.slice(0, 2).records() == columns.records()[:2]


def _download(offset: int, egress: int, storage_id: str = "kg", index: int = 0) -> dict:
    return {"deployment": DEPLOYMENT, "timestamp": int(time.time() * 1000),
            "storage_id": storage_id, "egress_bytes": egress, "raw_partition": 0,
            "raw_offset": offset, "event_index": index}


def _arrow(records: list[dict]) -> bytes:
    """The records in record format version 2, as the worker writes them."""
    event_type = events.STORAGE_API_BANDWIDTH
    return record_format.encode(event_type, [[r[name] for r in records]
                                             for name, _ in event_type.columns])


ARROW_HEADERS = [(record_format.FORMAT_HEADER, record_format.ARROW)]


def _produce(bootstrap: str, topic: str, messages: list[list[dict] | bytes]) -> None:
    """Sends each message: a list of records as version 1 JSON, bytes as a version 2
    message (with the format header)."""
    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for message in messages:
                if isinstance(message, bytes):
                    await producer.send_and_wait(topic, message, key=DEPLOYMENT.encode(),
                                                 partition=0, headers=ARROW_HEADERS)
                    continue
                await producer.send_and_wait(topic, orjson.dumps(message),
                                             key=DEPLOYMENT.encode(), partition=0)
        finally:
            await producer.stop()

    asyncio.run(run())


def _sink_env(bootstrap: str, tmp_path: Path,
              max_attempts: int) -> tuple[dict[str, str], Callable[..., str]]:
    """A sink's environment in a namespace of its own, and `sql(query, write=False)` on its
    engine."""
    env = {"METERSTREAM_KAFKA": bootstrap,
           "METERSTREAM_NAMESPACE": f"t{int(time.time() * 1000) % 10**9}",
           "METERSTREAM_PARTITIONS": "4", "METERSTREAM_DATA_DIR": str(tmp_path / "ms"),
           "METERSTREAM_SINK_PORT": str(free_port()),
           "METERSTREAM_SINK_BATCH_SECONDS": "0.5",
           "METERSTREAM_SINK_MAX_ATTEMPTS": str(max_attempts)}

    def sql(query: str, write: bool = False) -> str:
        return meterstream(["sql", *(["--write"] if write else []), query], env).stdout.strip()

    return env, sql


def test_a_message_clickhouse_refuses_is_dead_lettered_and_its_partition_goes_on(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """A CHECK constraint makes ClickHouse refuse the rows with storage_id 'poison' (checks
    the sink itself does not know): the batch holding them is refused 3 times, then
    stored message by message; the poison message's two records are dead letters and the
    good ones before and after it, in the same batch and later, are stored once each."""
    env, sql = _sink_env(kafka_bootstrap, tmp_path, max_attempts=3)
    namespace, port = env["METERSTREAM_NAMESPACE"], env["METERSTREAM_SINK_PORT"]
    topic = f"{namespace}.storage_api_bandwidth"
    with worker_processes() as processes:
        processes.append(start_sink(env, tmp_path / "sink.log"))
        wait_for(lambda: sink_ready(port), timeout=60, what="the sink to answer /readyz")
        sql("ALTER TABLE file_downloads ADD CONSTRAINT no_poison CHECK storage_id != 'poison'",
            write=True)
        _produce(kafka_bootstrap, topic, [
            [_download(1, 10)],
            [_download(2, 1000, "poison"), _download(2, 2000, "kg", 1)],
            [_download(3, 100)],
        ])
        wait_for(lambda: sink_metric(port, "meterstream_sink_poison_messages_total",
                                     'table="file_downloads"') == 1,
                 timeout=60, what="the refused message dead-lettered")
        _produce(kafka_bootstrap, topic, [[_download(4, 5)]])
        wait_for(lambda: sql("SELECT count(), sum(egress_bytes) FROM file_downloads")
                 == "3\t115", timeout=60, what="the good messages stored once each")
        assert sink_metric(port, "meterstream_sink_paused", 'table="file_downloads"') == 0
        assert sink_metric(port, "meterstream_sink_insert_failures_total",
                           'table="file_downloads"') >= 3
        wait_for(lambda: sink_metric(port, "meterstream_sink_dead_letters_total",
                                     'table="file_downloads"') == 2,
                 timeout=30, what="two dead letters")
        assert sql("SELECT count() FROM file_downloads WHERE raw_offset = 2") == "0"
    letters = [orjson.loads(m.value) for m in read_topic(kafka_bootstrap,
                                                         f"{namespace}.deadletter")]
    assert sorted((x["raw_offset"], x["event_index"]) for x in letters) == [(2, 0), (2, 1)]
    assert all("VIOLATED_CONSTRAINT" in x["reason"] for x in letters)
    assert all(x["reason"].startswith("sink: ClickHouse refused this message's records 3 times")
               for x in letters)


def test_every_way_a_message_of_either_format_fails_is_dead_lettered_with_its_reason(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """On one partition: an Arrow message that is not Arrow, one holding the rows of two raw
    bodies, a JSON message with a record of a bad field, and an Arrow message ClickHouse
    refuses (a CHECK constraint) go to the dead letters with their reasons; the good rows of
    both formats around them are stored once each."""
    env, sql = _sink_env(kafka_bootstrap, tmp_path, max_attempts=2)
    namespace, port = env["METERSTREAM_NAMESPACE"], env["METERSTREAM_SINK_PORT"]
    topic = f"{namespace}.storage_api_bandwidth"
    with worker_processes() as processes:
        processes.append(start_sink(env, tmp_path / "sink.log"))
        wait_for(lambda: sink_ready(port), timeout=60, what="the sink to answer /readyz")
        sql("ALTER TABLE file_downloads ADD CONSTRAINT no_poison CHECK storage_id != 'poison'",
            write=True)
        _produce(kafka_bootstrap, topic, [
            _arrow([_download(1, 10)]),
            b"not an arrow stream",
            _arrow([_download(3, 1), _download(33, 1)]),
            [{**_download(4, 1), "egress_bytes": "lots"}, _download(4, 20, index=1)],
            _arrow([_download(5, 1000, "poison"), _download(5, 2000, index=1)]),
            [_download(6, 100)],
            _arrow([_download(7, 5)]),
        ])
        wait_for(lambda: sql("SELECT count(), sum(egress_bytes) FROM file_downloads")
                 == "4\t135", timeout=90, what="the good rows stored once each")
        wait_for(lambda: sink_metric(port, "meterstream_sink_dead_letters_total",
                                     'table="file_downloads"') == 5,
                 timeout=30, what="five dead letters")
        assert sink_metric(port, "meterstream_sink_poison_messages_total",
                           'table="file_downloads"') == 1
        assert sink_metric(port, "meterstream_sink_paused", 'table="file_downloads"') == 0
    letters = [orjson.loads(m.value) for m in read_topic(kafka_bootstrap,
                                                         f"{namespace}.deadletter")]
    whole = {letter["offset"]: letter for letter in letters if "value_base64" in letter}
    assert sorted(whole) == [1, 2]
    assert "not an Arrow IPC stream" in whole[1]["reason"]
    assert base64.b64decode(whole[1]["value_base64"]) == b"not an arrow stream"
    assert "holds the rows of one raw body" in whole[2]["reason"]
    records = sorted(((x["raw_offset"], x["event_index"]), x["reason"]) for x in letters
                     if "value_base64" not in x)
    assert [where for where, _ in records] == [(4, 0), (5, 0), (5, 1)]
    assert "field egress_bytes must be u64" in records[0][1]
    assert all("VIOLATED_CONSTRAINT" in reason for _, reason in records[1:])
