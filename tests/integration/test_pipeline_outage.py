"""The broker stops while the receiver, the worker and the sink run, and starts again:
every body answered 200 is in ClickHouse exactly once afterwards (exact totals), on a
broker of the test's own."""

from __future__ import annotations

import copy
import threading
import time
from collections import Counter
from pathlib import Path

import orjson

from tests.support import convex_examples, free_port, meterstream, own_broker_env, wait_for
from tests.support.clock import settled
from tests.support.function_totals import rows_per_sequence
from tests.support.pipeline import Pipeline, running_pipeline
from tests.support.sink_load import sink_metric, start_sink
from tests.support.workers import start_worker, worker_processes

SECRET = "outage-secret-0123456789"
DEPLOYMENT = "outage-otter-1"
EVENTS_PER_BODY = 2


class Sender(threading.Thread):
    """Posts numbered bodies one after another until stopped, noting each answer. Body n
    holds EVENTS_PER_BODY function executions whose database_io_read_bytes is n + 1, so
    ClickHouse tells which bodies it holds and how often."""

    def __init__(self, pipeline: Pipeline, at_ms: int) -> None:
        super().__init__(daemon=True)
        self.pipeline = pipeline
        self.at_ms = at_ms
        self.answers: list[tuple[int, int]] = []  # (sequence number, status)
        self.halt = threading.Event()
        template = next(e for e in convex_examples()["events"]
                        if e["topic"] == "function_execution")
        template["convex"]["deployment_name"] = DEPLOYMENT
        self.template = template

    def body(self, sequence: int) -> bytes:
        events = []
        for index in range(EVENTS_PER_BODY):
            event = copy.deepcopy(self.template)
            event["timestamp"] = self.at_ms + index
            event["usage"]["database_io_read_bytes"] = sequence + 1
            events.append(event)
        return orjson.dumps(events)

    def run(self) -> None:
        sequence = 0
        while not self.halt.is_set():
            status, _ = self.pipeline.post(self.body(sequence), SECRET)
            self.answers.append((sequence, status))
            sequence += 1

    def count(self, status: int) -> int:
        return sum(1 for _, s in list(self.answers) if s == status)


def test_a_broker_outage_under_load_loses_and_repeats_nothing_in_clickhouse(
        tmp_path: Path) -> None:
    broker = own_broker_env(tmp_path)
    meterstream(["kafka", "start"], broker, timeout=600)
    at_ms = settled(int(time.time() * 1000), EVENTS_PER_BODY, "day")
    try:
        with running_pipeline(broker["METERSTREAM_KAFKA"], tmp_path, command="receiver",
                              extra_env={"METERSTREAM_PRODUCE_TIMEOUT": "2"}) as receiver, \
                worker_processes() as processes:
            receiver.register(DEPLOYMENT, webhook_secret=SECRET)
            worker_port = free_port()
            processes.append(start_worker(receiver.env, tmp_path / "worker.log", worker_port))
            sink_env = {**receiver.env, "METERSTREAM_SINK_PORT": str(free_port()),
                        "METERSTREAM_SINK_BATCH_SECONDS": "0.2"}
            processes.append(start_sink(sink_env, tmp_path / "sink.log"))
            sender = Sender(receiver, at_ms)
            sender.start()
            try:
                wait_for(lambda: sender.count(200) >= 100, timeout=120, what="100 acknowledged")
                # Stored by the sink before the outage: the worker and the sink are working.
                wait_for(lambda: sink_metric(sink_env["METERSTREAM_SINK_PORT"],
                                             "meterstream_sink_rows_inserted_total") > 0,
                         timeout=120, what="rows stored before the outage")
                meterstream(["kafka", "stop"], broker)
                wait_for(lambda: sender.count(503) >= 3, timeout=60, what="503s in the outage")
                acknowledged_in_outage = sender.count(200)
                meterstream(["kafka", "start"], broker, timeout=600)
                wait_for(lambda: sender.count(200) >= acknowledged_in_outage + 100,
                         timeout=180, what="ingestion to resume by itself")
            finally:
                sender.halt.set()
                sender.join(60)
            statuses = Counter(status for _, status in sender.answers)
            assert set(statuses) <= {200, 503, 429}, statuses
            assert statuses[503] >= 3
            acknowledged = {seq for seq, status in sender.answers if status == 200}

            def all_stored() -> Counter[int] | None:
                rows = rows_per_sequence(receiver.env)
                return rows if rows is not None and acknowledged <= set(rows) else None

            wait_for(all_stored, timeout=300, what="every acknowledged body stored")
            # The sink is idle: nothing more is on its way.
            wait_for(lambda: sink_metric(sink_env["METERSTREAM_SINK_PORT"],
                                         "meterstream_sink_buffered_rows") == 0,
                     timeout=60, what="an idle sink")
            rows = rows_per_sequence(receiver.env)
            assert rows is not None
            assert [p.poll() for p in processes] == [None, None], "worker or sink stopped"
            # Every acknowledged body exactly once; a body answered 503 may have reached
            # Kafka all the same (at most once), and nothing else is there.
            assert {seq: rows[seq] for seq in acknowledged} == dict.fromkeys(
                acknowledged, EVENTS_PER_BODY)
            assert set(rows) <= {seq for seq, _ in sender.answers}
            assert set(rows.values()) == {EVENTS_PER_BODY}
            totals = meterstream(["sql", "SELECT count(), sum(database_io_read_bytes) FROM "
                                  "function_executions"], receiver.env).stdout.split()
            expected = [EVENTS_PER_BODY * seq + EVENTS_PER_BODY for seq in rows]
            assert [int(v) for v in totals] == [EVENTS_PER_BODY * len(rows), sum(expected)]
            assert len(rows) >= len(acknowledged) == statuses[200]
    finally:
        meterstream(["kafka", "stop"], broker)
