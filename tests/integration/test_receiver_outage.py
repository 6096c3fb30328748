"""Kafka stops in the middle of a load: every body answered 200 is in Kafka afterwards."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import orjson

from tests.support import convex_examples, meterstream, own_broker_env, read_topic, wait_for
from tests.support.pipeline import running_pipeline

SECRET = "outage-secret-0123456789"


class Sender(threading.Thread):
    """Posts numbered batches one after another until stopped, noting each answer."""

    def __init__(self, pipeline) -> None:
        super().__init__(daemon=True)
        self.pipeline = pipeline
        self.answers: list[tuple[int, int]] = []  # (sequence number, status)
        self.halt = threading.Event()

    def run(self) -> None:
        events = convex_examples()["events"]
        sequence = 0
        while not self.halt.is_set():
            marked = [dict(events[0], sequence=sequence), *events[1:]]
            status, _ = self.pipeline.post(orjson.dumps(marked), SECRET)
            self.answers.append((sequence, status))
            sequence += 1

    def count(self, status: int) -> int:
        return sum(1 for _, s in list(self.answers) if s == status)


def test_every_acknowledged_body_survives_a_broker_outage(tmp_path: Path) -> None:
    broker = own_broker_env(tmp_path)
    meterstream(["kafka", "start"], broker, timeout=600)
    try:
        with running_pipeline(broker["METERSTREAM_KAFKA"], tmp_path, command="receiver",
                              extra_env={"METERSTREAM_PRODUCE_TIMEOUT": "2"}) as receiver:
            receiver.register("happy-otter-123", webhook_secret=SECRET)
            sender = Sender(receiver)
            sender.start()
            try:
                wait_for(lambda: sender.count(200) >= 50, timeout=60, what="50 acknowledged")
                meterstream(["kafka", "stop"], broker)
                wait_for(lambda: sender.count(503) >= 3, timeout=60, what="503s in the outage")
                acked_before_restart = sender.count(200)
                meterstream(["kafka", "start"], broker, timeout=600)
                wait_for(lambda: sender.count(200) >= acked_before_restart + 50, timeout=120,
                         what="ingestion to resume by itself")
            finally:
                sender.halt.set()
                sender.join(60)
            acknowledged = {seq for seq, status in sender.answers if status == 200}
            statuses = Counter(status for _, status in sender.answers)
            assert set(statuses) <= {200, 503, 429}, statuses

            stored: Counter[int] = Counter()
            for message in read_topic(broker["METERSTREAM_KAFKA"], f"{receiver.namespace}.raw"):
                stored[orjson.loads(message.value)[0]["sequence"]] += 1
            assert acknowledged <= set(stored)
            assert len(acknowledged & set(stored)) == len(acknowledged) == statuses[200]
    finally:
        meterstream(["kafka", "stop"], broker)
