from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from sinks import batching
from sinks.batching import BatchBuffer

A = TopicPartition("t", 0)
B = TopicPartition("t", 3)


def test_offsets_and_token_cover_every_message() -> None:
    buffer = BatchBuffer(max_rows=100, max_seconds=60)
    buffer.add(B, 7, [{"n": 1}])
    buffer.add(A, 10, [{"n": 2}, {"n": 3}])
    buffer.add(A, 11, [])  # a message with no records still has to be committed
    buffer.add(B, 9, [{"n": 4}])
    batch = buffer.take()
    assert [r["n"] for r in batch.records] == [1, 2, 3, 4]
    assert batch.commit_offsets() == {A: 12, B: 10}
    assert batch.token() == "t:0:10-11,t:3:7-9"
    assert buffer.empty
    assert len(buffer) == 0


def test_due_by_size() -> None:
    buffer = BatchBuffer(max_rows=3, max_seconds=60)
    buffer.add(A, 0, [{}, {}])
    assert not buffer.due()
    buffer.add(A, 1, [{}])
    assert buffer.due()


def test_due_by_age(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(batching.time, "monotonic", lambda: now[0])
    buffer = BatchBuffer(max_rows=1000, max_seconds=2)
    assert not buffer.due()
    assert buffer.seconds_left() == 2
    buffer.add(A, 0, [{}])
    now[0] += 1.5
    assert not buffer.due()
    assert buffer.seconds_left() == pytest.approx(0.5)
    now[0] += 0.5
    assert buffer.due()


def test_an_empty_buffer_is_never_due() -> None:
    buffer = BatchBuffer(max_rows=1, max_seconds=0.01)
    assert not buffer.due()
