"""The running services against deploy/'s dashboards and rules: every meterstream metric
they name is on the receiver's, the worker's or the sink's /metrics, and the worker's and
the sink's consumer lag has a series per partition they own that comes back to 0 once
the traffic is through; the sink's lag rises while a table refuses its inserts and returns
to 0 once they succeed (tests/integration/test_consumer_lag.py: the meter itself)."""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from meterstream.core.tables import SPECS
from tests.support import free_port, meterstream, read_topic, recent_events, wait_for
from tests.support.function_totals import stored_rows
from tests.support.observability import exposed_names, metrics_named
from tests.support.pipeline import Pipeline, running_pipeline
from tests.support.sink_load import sink_ready, start_sink
from tests.support.workers import worker_processes

PARTITIONS = 2


def _page(port: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        text: str = page.read().decode()
        return text


def _lag(pipeline: Pipeline, port_variable: str, name: str) -> dict[tuple[str, str], float]:
    """The lag gauge's samples on a service: (topic, partition) -> messages."""
    return {(sample.labels["topic"], sample.labels["partition"]): sample.value
            for family in text_string_to_metric_families(_page(pipeline.env[port_variable]))
            if family.name == name for sample in family.samples}


def _settled(pipeline: Pipeline, port_variable: str, name: str,
             partitions: set[tuple[str, str]]) -> dict[tuple[str, str], float] | None:
    """The lag gauge once it has a series for exactly `partitions`, each 0; else None."""
    lag = _lag(pipeline, port_variable, name)
    return lag if set(lag) == partitions and not any(lag.values()) else None


def test_the_services_expose_every_metric_of_the_dashboards_and_rules_and_their_lag(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    with running_pipeline(kafka_bootstrap, tmp_path, command="up --workers 1", extra_env={
            "METERSTREAM_PARTITIONS": str(PARTITIONS),
            "METERSTREAM_LAG_INTERVAL": "0.5"}) as pipeline:
        namespace = pipeline.namespace
        pipeline.register("happy-otter-123")  # the example events' deployment
        events = recent_events()
        status, answer = pipeline.post(orjson.dumps(events))
        assert status == 200, answer
        functions = sum(1 for event in events if event["topic"] == "function_execution")
        wait_for(lambda: stored_rows(pipeline.sql) >= functions, timeout=120,
                 what=f"{functions} rows in function_executions")
        assert read_topic(kafka_bootstrap, f"{namespace}.raw"), "nothing to lag behind"

        # Once the traffic is through and committed, every owned partition's lag is 0;
        # a wrong group would leave the partitions that got messages above 0.
        raw = {(f"{namespace}.raw", str(p)) for p in range(PARTITIONS)}
        worker = wait_for(lambda: _settled(pipeline, "METERSTREAM_WORKER_PORT",
                                           "meterstream_worker_consumer_lag", raw),
                          timeout=60, what="the worker's lag on every raw partition to be 0")
        assert set(worker) == raw
        sink_topics = {f"{namespace}.alerts" if spec.route == "alerts"
                       else f"{namespace}.{spec.route}" for spec in SPECS}
        owned = {(topic, str(p)) for topic in sink_topics for p in range(PARTITIONS)}
        sink = wait_for(lambda: _settled(pipeline, "METERSTREAM_SINK_PORT",
                                         "meterstream_sink_consumer_lag", owned),
                        timeout=60, what="the sink's lag on every partition it owns to be 0")
        assert set(sink) == owned

        exposed: set[str] = set()
        for variable in ("METERSTREAM_RECEIVER_PORT", "METERSTREAM_WORKER_PORT",
                         "METERSTREAM_SINK_PORT"):
            exposed |= exposed_names(list(text_string_to_metric_families(
                _page(pipeline.env[variable]))))
        named = metrics_named()
        assert len(named) > 40
        assert {name: where for name, where in named.items() if name not in exposed} == {}


async def _produce_downloads(bootstrap: str, topic: str, count: int) -> None:
    """`count` messages of one file download record each, on partition 0."""
    now_ms = int(time.time() * 1000)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for n in range(count):
            record = {"deployment": "lagging-otter-1", "timestamp": now_ms + n,
                      "storage_id": f"kg{n}", "egress_bytes": 100 + n, "raw_partition": 0,
                      "raw_offset": n, "event_index": 0}
            await producer.send_and_wait(topic, orjson.dumps([record]),
                                         key=b"lagging-otter-1", partition=0)
    finally:
        await producer.stop()


def test_the_sinks_lag_rises_while_a_table_refuses_inserts_and_returns_to_zero(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    namespace = f"t{uuid.uuid4().hex[:10]}"
    env = {"METERSTREAM_KAFKA": kafka_bootstrap, "METERSTREAM_NAMESPACE": namespace,
           "METERSTREAM_PARTITIONS": str(PARTITIONS), "METERSTREAM_DATA_DIR": str(tmp_path / "ms"),
           "METERSTREAM_SINK_PORT": str(free_port()), "METERSTREAM_SINK_BATCH_SECONDS": "0.1",
           "METERSTREAM_LAG_INTERVAL": "0.2"}
    topic = f"{namespace}.storage_api_bandwidth"
    with worker_processes() as processes:
        processes.append(start_sink(env, tmp_path / "sink.log"))
        port = env["METERSTREAM_SINK_PORT"]
        wait_for(lambda: sink_ready(port), timeout=90, what="the sink to answer /readyz")
        pipeline = Pipeline(env, processes[0], tmp_path / "sink.log")
        wait_for(lambda: _lag(pipeline, "METERSTREAM_SINK_PORT",
                              "meterstream_sink_consumer_lag").get((topic, "0")) == 0,
                 timeout=30, what=f"a lag of 0 on {topic} 0")
        # ClickHouse refuses the table's inserts: the sink holds the messages uncommitted.
        meterstream(["sql", "--write", "RENAME TABLE file_downloads TO file_downloads_away"], env)
        asyncio.run(_produce_downloads(kafka_bootstrap, topic, 5))
        wait_for(lambda: _lag(pipeline, "METERSTREAM_SINK_PORT",
                              "meterstream_sink_consumer_lag").get((topic, "0")) == 5,
                 timeout=60, what=f"a lag of 5 on {topic} 0")

        meterstream(["sql", "--write", "RENAME TABLE file_downloads_away TO file_downloads"], env)
        wait_for(lambda: _lag(pipeline, "METERSTREAM_SINK_PORT",
                              "meterstream_sink_consumer_lag").get((topic, "0")) == 0,
                 timeout=90, what=f"the lag on {topic} 0 back at 0")
        assert meterstream(["sql", "SELECT count() FROM file_downloads"], env).stdout == "5\n"
