"""Every table counted exactly once when the sink or the worker is killed, when Convex
repeats bodies, when Kafka goes away between an insert and its offset commit, and
while ClickHouse refuses a table: on the real broker and the embedded engine."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import orjson

from meterstream.core.clickhouse import EngineLock
from meterstream.core.config import Settings
from meterstream.core.kafka_client import KafkaConnection
from tests.support import free_port, meterstream, own_broker_env, read_topic, wait_for
from tests.support.clock import settled
from tests.support.pipeline import Pipeline, running_pipeline
from tests.support.sink_load import (
    MixedLoad,
    agent_raw_body,
    mixed_load,
    probe,
    produce_split,
    sink_metric,
    sink_ready,
    start_sink,
    stored,
    stored_or_none,
)
from tests.support.workers import (
    minute_ago,
    quota_alert_ids,
    raw_batches,
    runaway_alert_id,
    start_worker,
    worker_processes,
)

SECRET = "3f1c2b7e9a0d4c5e8b6a7f0e1d2c3b4a"
TOKEN = "ingest-token-0123456789abcdef"
DAY_MS = 86_400_000


def _register(receiver: Pipeline, deployment: str, load: MixedLoad) -> list[str]:
    """Registers the deployment with a quota crossed by the load; returns the alert ids due."""
    receiver.register(deployment, webhook_secret=SECRET, ingest_token=TOKEN)
    status, _ = receiver.admin("PUT", f"/v1/deployments/{deployment}/quotas", {"quotas": [
        {"metric": "function_calls", "period": "month", "limit": load.function_calls // 2,
         "thresholds": [0.5, 1.0]}]})
    assert status == 200
    return []


def _send(receiver: Pipeline, load: MixedLoad, statuses: list[int]) -> threading.Thread:
    """Posts every body, every fourth one twice byte for byte (as Convex retries), and the
    agent usage requests, the first one twice."""
    def run() -> None:
        for index, body in enumerate(load.bodies):
            for _ in range(2 if index % 4 == 0 else 1):
                statuses.append(receiver.post(body, SECRET)[0])
        for index, records in enumerate(load.agent):
            for _ in range(2 if index == 0 else 1):
                statuses.append(receiver.request(
                    "POST", "/v1/agent/usage", orjson.dumps(records),
                    {"Authorization": f"Bearer {TOKEN}"})[0])

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _expected_posts(load: MixedLoad) -> int:
    return len(load.bodies) + (len(load.bodies) + 3) // 4 + len(load.agent) + 1


def _stored_alert_ids(receiver: Pipeline) -> list[str]:
    return sorted(receiver.sql("SELECT id FROM alerts").split())


def _sink_env(receiver: Pipeline, **extra: str) -> dict[str, str]:
    return {**receiver.env, "METERSTREAM_SINK_PORT": str(free_port()),
            "METERSTREAM_SINK_BATCH_SECONDS": "0.1", **extra}


def _wait_stored(sql, load: MixedLoad, timeout: float = 180) -> None:
    wait_for(lambda: stored_or_none(sql) == load.expected, timeout=timeout,
             what=f"ClickHouse to hold {load.expected}")


def test_kill_9_of_the_sink_mid_load_stores_every_record_once(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    at_ms = minute_ago()
    deployment = "sinky-otter-1"
    load = mixed_load(deployment, bodies=200, events_per_body=50, at_ms=at_ms,
                      agent_requests=10)
    with running_pipeline(kafka_bootstrap, tmp_path, command="receiver") as receiver, \
            worker_processes() as processes:
        _register(receiver, deployment, load)
        processes.append(start_worker(receiver.env, tmp_path / "worker.log", free_port()))
        env = _sink_env(receiver, METERSTREAM_SINK_BATCH_ROWS="500")
        processes.append(start_sink(env, tmp_path / "sink.log"))
        statuses: list[int] = []
        sender = _send(receiver, load, statuses)
        wait_for(lambda: sink_metric(env["METERSTREAM_SINK_PORT"],
                                     "meterstream_sink_rows_inserted_total") >= 1000,
                 timeout=120, what="the sink to store 1000 rows")
        processes[1].send_signal(signal.SIGKILL)
        processes[1].wait(30)
        env = {**env, "METERSTREAM_SINK_PORT": str(free_port())}
        processes.append(start_sink(env, tmp_path / "sink.log"))
        wait_for(lambda: sink_metric(env["METERSTREAM_SINK_PORT"],
                                     "meterstream_sink_buffered_rows") >= 0,
                 timeout=60, what="the restarted sink to hold the engine")
        sender.join(300)
        assert statuses == [200] * _expected_posts(load)

        _wait_stored(receiver.sql, load)
        assert _stored_alert_ids(receiver) == sorted([
            *quota_alert_ids(deployment, at_ms, "function_calls", "month", (0.5, 1.0)),
            runaway_alert_id(deployment, at_ms)])
        # Nothing more arrives later: the sums stay exact once the sink is idle.
        wait_for(lambda: sink_metric(env["METERSTREAM_SINK_PORT"],
                                     "meterstream_sink_buffered_rows") == 0,
                 timeout=30, what="an idle sink")
        assert stored(receiver.sql) == load.expected


def test_kill_9_of_the_worker_with_nothing_committed_keeps_clickhouse_exact(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """The restarted worker processes every raw message again and forwards its records a
    second time, at new offsets of the record topics: the sink skips them by origin."""
    at_ms = minute_ago()
    deployment = "replay-otter-1"
    load = mixed_load(deployment, bodies=150, events_per_body=50, at_ms=at_ms,
                      agent_requests=6)
    env = {"METERSTREAM_WORKER_COMMIT_INTERVAL": "600"}
    with running_pipeline(kafka_bootstrap, tmp_path, command="receiver",
                          extra_env=env) as receiver, worker_processes() as processes:
        _register(receiver, deployment, load)
        port = free_port()
        processes.append(start_worker(receiver.env, tmp_path / "worker.log", port))
        sink_env = _sink_env(receiver)
        processes.append(start_sink(sink_env, tmp_path / "sink.log"))
        statuses: list[int] = []
        sender = _send(receiver, load, statuses)
        wait_for(lambda: raw_batches(port) >= 60, timeout=120, what="60 bodies processed")
        processes[0].send_signal(signal.SIGKILL)
        processes[0].wait(30)
        port = free_port()
        processes.append(start_worker(receiver.env, tmp_path / "worker.log", port))
        sender.join(300)
        assert statuses == [200] * _expected_posts(load)

        _wait_stored(receiver.sql, load)
        # Every raw message was processed again, so at least the records of the first 60
        # bodies came a second time, and were skipped.
        assert raw_batches(port) == len(load.bodies) + len(load.agent)
        skipped = sink_metric(sink_env["METERSTREAM_SINK_PORT"],
                              "meterstream_sink_duplicates_skipped_total")
        assert skipped >= 60 * 50
        assert _stored_alert_ids(receiver) == sorted([
            *quota_alert_ids(deployment, at_ms, "function_calls", "month", (0.5, 1.0)),
            runaway_alert_id(deployment, at_ms)])
        assert stored(receiver.sql) == load.expected


# mixed_load stamps its events at at_ms + n % 5000 and agent records at at_ms + k (k < 3).
LOAD_SPAN_MS = 5_000


def direct_load_times(now_ms: int) -> tuple[int, int]:
    """The recent and the old times of `_direct_load`: the recent events all in one UTC
    month (so that two months are stored, whatever day it is), the old ones 40 days
    before them, in another."""
    at_ms = settled(now_ms, LOAD_SPAN_MS, "month")
    return at_ms, at_ms - 40 * DAY_MS


def _direct_load(now_ms: int) -> tuple[MixedLoad, list[tuple[bytes, bytes]], list[dict]]:
    """Two deployments' bodies (a third of the events 40 days older: another month) and
    agent usage, as raw (key, body) pairs to split straight into the record topics, and
    three alerts."""
    bodies: list[tuple[bytes, bytes]] = []
    expected = MixedLoad()
    at_ms, old_at_ms = direct_load_times(now_ms)
    for deployment in ("direct-otter-1", "direct-otter-2"):
        load = mixed_load(deployment, bodies=40, events_per_body=64, at_ms=at_ms,
                          agent_requests=5, old_at_ms=old_at_ms)
        bodies += [(deployment.encode(), body) for body in load.bodies]
        bodies += [(deployment.encode(), agent_raw_body(records, now_ms))
                   for records in load.agent]
        for table, (rows, total) in load.expected.items():
            expected.count(table, rows, total)
    alerts = [{"id": f"quota|direct-otter-1|tokens|day|x|{n}", "kind": "quota",
               "deployment": "direct-otter-1", "metric": "tokens",
               "at": now_ms - n * 40 * DAY_MS, "threshold": n} for n in range(3)]
    return expected, bodies, alerts


def _sql(env: dict[str, str]):
    return lambda query: meterstream(["sql", query], env).stdout


def test_a_batch_stored_but_not_committed_is_not_stored_again(tmp_path: Path) -> None:
    """Kafka goes away after the sink fetched a batch: the sink inserts it and cannot
    commit its offsets; killed then, and started again with Kafka back, it reads the
    whole batch again (in other boundaries) and stores none of it twice."""
    broker = own_broker_env(tmp_path)
    meterstream(["kafka", "start"], broker, timeout=600)
    try:
        namespace = f"t{int(time.time() * 1000) % 10**9}"
        env = {**broker, "METERSTREAM_NAMESPACE": namespace, "METERSTREAM_PARTITIONS": "4",
               "METERSTREAM_SINK_PORT": str(free_port()),
               "METERSTREAM_SINK_BATCH_SECONDS": "10"}
        now_ms = int(time.time() * 1000)
        load, bodies, alerts = _direct_load(now_ms)
        rows = sum(rows for rows, _ in load.expected.values()) + len(alerts)
        with worker_processes() as processes:
            processes.append(start_sink(env, tmp_path / "sink.log"))
            port = env["METERSTREAM_SINK_PORT"]
            wait_for(lambda: sink_ready(port), timeout=60, what="the sink to answer /readyz")
            produce_split(broker["METERSTREAM_KAFKA"], namespace, bodies, 4, alerts)
            wait_for(lambda: sink_metric(port, "meterstream_sink_buffered_rows") == rows,
                     timeout=60, what=f"{rows} rows buffered")
            assert sink_metric(port, "meterstream_sink_rows_inserted_total") == 0
            meterstream(["kafka", "stop"], broker)
            # Due after 10 s: inserted (ClickHouse is there), but no commit can be made.
            wait_for(lambda: sink_metric(port, "meterstream_sink_rows_inserted_total") == rows,
                     timeout=60, what="the batch inserted with Kafka away")
            assert _sql(env)("SELECT count() FROM alerts") == "3\n"
            processes[0].send_signal(signal.SIGKILL)
            processes[0].wait(30)
            assert stored(_sql(env)) == load.expected

            meterstream(["kafka", "start"], broker, timeout=600)
            env["METERSTREAM_SINK_PORT"] = port = str(free_port())
            processes.append(start_sink({**env, "METERSTREAM_SINK_BATCH_SECONDS": "0.1"},
                                        tmp_path / "sink.log"))
            wait_for(lambda: sink_metric(port, "meterstream_sink_duplicates_skipped_total")
                     == rows, timeout=120, what=f"all {rows} rows read again and skipped")
            assert sink_metric(port, "meterstream_sink_rows_inserted_total") == 0
            assert stored(_sql(env)) == load.expected
            assert _sql(env)("SELECT count(), uniqExact(id) FROM alerts") == "3\t3\n"
            months = _sql(env)("SELECT count(DISTINCT toYYYYMM(timestamp)) "
                               "FROM function_executions")
            assert months == "2\n"
    finally:
        meterstream(["kafka", "stop"], broker)


def test_a_refusing_table_pauses_its_partitions_and_loses_nothing(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """ClickHouse refuses inserts into file_downloads (the table is renamed away through
    the sink's SQL socket): the sink pauses that topic, retries with backoff, keeps storing
    the other tables, and stores everything once the table is back. Records it can never
    store go to the dead-letter topic; the rest of their message is stored."""
    namespace = f"t{int(time.time() * 1000) % 10**9}"
    env = {"METERSTREAM_KAFKA": kafka_bootstrap, "METERSTREAM_NAMESPACE": namespace,
           "METERSTREAM_PARTITIONS": "4", "METERSTREAM_DATA_DIR": str(tmp_path / "ms"),
           "METERSTREAM_SINK_PORT": str(free_port()),
           "METERSTREAM_SINK_BATCH_SECONDS": "0.1"}
    port = env["METERSTREAM_SINK_PORT"]
    sql = _sql(env)
    now_ms = int(time.time() * 1000)
    load, bodies, alerts = _direct_load(now_ms)
    half = len(bodies) // 2
    with worker_processes() as processes:
        processes.append(start_sink(env, tmp_path / "sink.log"))
        wait_for(lambda: sink_ready(port), timeout=60, what="the sink to answer /readyz")
        produce_split(kafka_bootstrap, namespace, bodies[:half], 4)
        wait_for(lambda: (stored_or_none(sql) or {}).get("file_downloads", (0, 0))[0] > 0,
                 timeout=60, what="file downloads stored")
        meterstream(["sql", "--write", "RENAME TABLE file_downloads TO file_downloads_away"], env)
        produce_split(kafka_bootstrap, namespace, bodies[half:], 4, alerts, first=half)
        _produce_bad_records(kafka_bootstrap, namespace)
        wait_for(lambda: sink_metric(port, "meterstream_sink_insert_failures_total",
                                     'table="file_downloads"') >= 3,
                 timeout=60, what="three failed inserts into file_downloads")
        assert sink_metric(port, "meterstream_sink_paused", 'table="file_downloads"') == 1
        assert sink_metric(port, "meterstream_sink_paused", 'table="function_executions"') == 0
        # The other tables go on.
        expected_functions = load.expected["function_executions"]
        wait_for(lambda: sql("SELECT count(), toUInt64(sum(database_io_read_bytes + "
                             "execution_time_ms + network_egress_bytes)) "
                             "FROM function_executions")
                 == f"{expected_functions[0]}\t{expected_functions[1]}\n",
                 timeout=60, what="every function execution stored meanwhile")
        meterstream(["sql", "--write", "RENAME TABLE file_downloads_away TO file_downloads"], env)
        wait_for(lambda: sink_metric(port, "meterstream_sink_paused",
                                     'table="file_downloads"') == 0,
                 timeout=60, what="file_downloads resumed")
        expected = dict(load.expected)
        rows, total = expected["file_downloads"]
        expected["file_downloads"] = (rows + 1, total + 77)  # the good half of the bad message
        wait_for(lambda: stored_or_none(sql) == expected, timeout=60,
                 what=f"ClickHouse to hold {expected}")
        assert sql("SELECT count() FROM alerts") == "3\n"
        wait_for(lambda: sink_metric(port, "meterstream_sink_dead_letters_total") == 2,
                 timeout=30, what="two dead letters")
    letters = [orjson.loads(m.value) for m in read_topic(kafka_bootstrap,
                                                         f"{namespace}.deadletter")]
    assert sorted(letter["reason"] for letter in letters) == [
        "sink: file_downloads: field egress_bytes must be u64, got -5",
        "sink: undecodable message: a record message must be a JSON array of records",
    ]


def _produce_bad_records(bootstrap: str, namespace: str) -> None:
    """A file_downloads message with one good and one bad record, and one that is not an
    array at all, on partition 0 with raw offsets far beyond the load's."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    now_ms = int(time.time() * 1000)
    good = {"deployment": "direct-otter-1", "timestamp": now_ms, "storage_id": "kg1",
            "egress_bytes": 77, "raw_partition": 0, "raw_offset": 10_000, "event_index": 0}
    bad = {**good, "egress_bytes": -5, "event_index": 1}

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            topic = f"{namespace}.storage_api_bandwidth"
            await producer.send_and_wait(topic, orjson.dumps([good, bad]), key=b"direct-otter-1",
                                         partition=0)
            await producer.send_and_wait(topic, b'{"not": "an array"}', key=b"direct-otter-1",
                                         partition=0)
        finally:
            await producer.stop()

    asyncio.run(produce())


def test_the_sink_refuses_record_topics_partitioned_unlike_the_raw_topic(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """The high-water marks rely on raw partition p's records being on partition p of each
    record topic; with other partition counts the sink stops at once, naming the topic and
    the setting (meterstream/core/topics.py refuses it before sinks/sink.py's own check)."""
    import asyncio

    from meterstream.core.topics import TopicSpec, ensure_topics

    namespace = f"t{int(time.time() * 1000) % 10**9}"
    asyncio.run(ensure_topics(KafkaConnection(kafka_bootstrap), [
        TopicSpec(f"{namespace}.raw", 4), TopicSpec(f"{namespace}.storage_api_bandwidth", 2)]))
    env = {"METERSTREAM_KAFKA": kafka_bootstrap, "METERSTREAM_NAMESPACE": namespace,
           "METERSTREAM_PARTITIONS": "4", "METERSTREAM_DATA_DIR": str(tmp_path / "ms"),
           "METERSTREAM_SINK_PORT": str(free_port())}
    sink = start_sink(env, tmp_path / "sink.log")
    assert sink.wait(120) == 1
    assert (f"topic {namespace}.storage_api_bandwidth has 2 partitions but "
            "METERSTREAM_PARTITIONS is 4" in (tmp_path / "sink.log").read_text())


def test_the_sink_answers_its_probes_while_it_waits_for_the_engine(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """A `meterstream sql` (this test, holding the lock) has the embedded engine when the
    sink starts: the sink's /healthz answers and /readyz says 503 (schema) while it waits,
    and it becomes ready once the lock is released."""
    env = {"METERSTREAM_KAFKA": kafka_bootstrap, "METERSTREAM_DATA_DIR": str(tmp_path / "ms"),
           "METERSTREAM_NAMESPACE": f"t{int(time.time() * 1000) % 10**9}",
           "METERSTREAM_SINK_PORT": str(free_port())}
    chdb_path = Settings.from_env(env).clickhouse.chdb_path
    assert chdb_path is not None
    chdb_path.parent.mkdir(parents=True, exist_ok=True)
    port = env["METERSTREAM_SINK_PORT"]
    with worker_processes() as processes:
        lock = EngineLock(chdb_path)
        lock.acquire()
        try:
            processes.append(start_sink(env, tmp_path / "sink.log"))
            wait_for(lambda: probe(port, "/healthz") == (200, '{"status": "ok"}'), timeout=60,
                     what="the waiting sink to answer /healthz")
            readiness = probe(port, "/readyz")
            assert readiness is not None
            assert readiness[0] == 503
            assert "schema" in readiness[1]
        finally:
            lock.release()
        wait_for(lambda: sink_ready(port), timeout=120, what="the sink ready after the lock")
