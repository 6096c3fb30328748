"""The hostile-input reproductions on the real broker, with `meterstream up` and the
embedded ClickHouse: one tenant's bodies cannot stop metering for the others, and a raw
message that makes processing fail is dead-lettered while its partition goes on."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from meterstream.core.usage import OTHER_MODEL
from tests.support import metric_sample, read_topic, recent_events, wait_for
from tests.support.agent_steps import AI_SDK
from tests.support.function_totals import stored_totals, totals
from tests.support.pipeline import Pipeline, running_pipeline, worker_page

SECRET = "3f1c2b7e9a0d4c5e8b6a7f0e1d2c3b4a"
VICTIM = "happy-otter-123"  # the deployment of tests/support/data's webhook events
HOSTILE = "hostile-fox-456"
TOKEN = "ingest-token-0123456789abcdef"
# The receiver may cap records per request below 5,000 (issue 12, item 1); the
# reproduction needs its 5,000, so the cap is raised (a variable it does not know is
# ignored).
ENV = {"METERSTREAM_MAX_RECORDS_PER_REQUEST": "100000"}


def _metric(pipeline: Pipeline, name: str) -> float:
    return metric_sample(pipeline.env["METERSTREAM_WORKER_PORT"], name)


def _quota_report(pipeline: Pipeline, deployment: str) -> dict | None:
    port = pipeline.env["METERSTREAM_WORKER_PORT"]
    try:
        return orjson.loads(worker_page(port, f"/v1/quota/{deployment}"))
    except OSError:
        return None


def _hostile_body(batch: int, now: int) -> bytes:
    """5,000 records, each with its own 500-character model name: about 5.6 MB."""
    records = [{**AI_SDK, "id": f"b{batch}-{n}", "deployment": HOSTILE, "timestamp": now,
                "userId": f"user-{n % 50}",
                "model": f"{batch}-{n}-".ljust(500, "m"), "provider": "openai.chat",
                "agentName": "a" * 150}
               for n in range(5000)]
    return orjson.dumps(records)


def _victim_events(now: int) -> list[dict]:
    events = [e for e in recent_events() if e["topic"] == "function_execution"]
    for n, event in enumerate(events):
        event["timestamp"] = now + n
    return events


def _stored(pipeline: Pipeline, query: str) -> str:
    try:
        return pipeline.sql(query).strip()
    except AssertionError as error:
        if "UNKNOWN_TABLE" in str(error):
            return ""
        raise


def test_two_huge_agent_bodies_with_5000_models_each_do_not_stop_metering(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """The finding: two 5.6 MB POST /v1/agent/usage bodies, with the tenant's own valid
    token, each with 5,000 distinct 500-character model names, grew a usage window's
    changelog record to 11.6 MB; the producer refused it, the worker crashed (on the same
    message after every restart) and `meterstream up` stopped the whole pipeline."""
    now = int(time.time() * 1000)
    bodies = [_hostile_body(batch, now) for batch in (1, 2)]
    assert all(5_400_000 < len(body) < 5_900_000 for body in bodies), [len(b) for b in bodies]
    victim = _victim_events(now)
    with running_pipeline(kafka_bootstrap, tmp_path, extra_env=ENV) as pipeline:
        pipeline.register(HOSTILE, ingest_token=TOKEN)
        pipeline.register(VICTIM, webhook_secret=SECRET)
        for body in bodies:
            status, answer = pipeline.request("POST", "/v1/agent/usage", body,
                                              {"Authorization": f"Bearer {TOKEN}"})
            assert status == 200, answer[:500]
        status, answer = pipeline.post(orjson.dumps(victim), SECRET)
        assert status == 200, answer

        wait_for(lambda: _stored(pipeline, "SELECT count() FROM function_executions")
                 == str(len(victim)), timeout=180, what="the other tenant's rows stored")
        assert stored_totals(pipeline.sql) == (len(victim), totals(victim))
        # ClickHouse keeps every record with its model name as sent.
        wait_for(lambda: _stored(pipeline, f"SELECT count(), uniqExact(model) FROM agent_usage "
                                           f"WHERE deployment = '{HOSTILE}'")
                 == "10000\t10000", timeout=180, what="the hostile records stored")
        # The live state folded the unpriced names into one bucket and stayed small.
        report = _quota_report(pipeline, HOSTILE)
        assert report is not None
        month = report["periods"]["month"]["usage"]
        assert set(month["tokens_by_model"]) == {OTHER_MODEL}
        assert month["tokens"] == 10000 * AI_SDK["usage"]["totalTokens"]
        assert _metric(pipeline, "meterstream_worker_models_folded_total") == 10000
        assert _metric(pipeline, "meterstream_worker_poison_messages_total") == 0
        assert pipeline.process.poll() is None, pipeline.log_tail()


def _produce_raw(bootstrap: str, topic: str, key: bytes,
                 messages: list[tuple[bytes, list[tuple[str, bytes]]]]) -> None:
    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for value, headers in messages:
                await producer.send_and_wait(topic, value, key=key, headers=headers)
        finally:
            await producer.stop()

    asyncio.run(run())


def _usage_record(record_id: str, tokens: int, now: int) -> dict:
    """An agent usage record as the receiver writes it to the raw topic."""
    return {"topic": "agent_usage", "id": record_id, "deployment": HOSTILE, "timestamp": now,
            "user_id": "u", "thread_id": "t", "agent_name": "a", "model": "gpt-4o",
            "provider": "openai", "input_tokens": tokens, "non_cached_input_tokens": tokens,
            "cached_input_tokens": 0, "cache_write_input_tokens": 0, "output_tokens": 0,
            "text_output_tokens": 0, "reasoning_tokens": 0, "total_tokens": tokens,
            "provider_metadata": {}}


def test_a_poison_raw_message_is_dead_lettered_and_its_partition_goes_on(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """A message no receiver writes (two records of 2**63 tokens: their sum is over the 64
    bits Faust's JSON takes, so the live window could not be written), straight to the raw
    topic between two good ones of the same deployment (same partition): tried 3 times,
    dead-lettered with its partition, offset and key, and the next message counts. The
    origin header is checked on the way: agent usage in a webhook-origin message is a dead
    letter, and a message without the header (an older receiver) counts."""
    now = int(time.time() * 1000)
    stamp = [("received_at", str(now).encode())]
    agent, webhook = [*stamp, ("origin", b"agent")], [*stamp, ("origin", b"webhook")]
    messages = [
        (orjson.dumps([_usage_record("good-1", 100, now)]), agent),
        (orjson.dumps([_usage_record("huge-1", 2**63, now), _usage_record("huge-2", 2**63, now)]),
         agent),
        (orjson.dumps([_usage_record("good-2", 20, now)]), agent),
        (orjson.dumps([_usage_record("smuggled", 5000, now)]), webhook),
        (orjson.dumps([_usage_record("older-receiver", 3, now)]), stamp),
    ]
    victim = _victim_events(now)
    with running_pipeline(kafka_bootstrap, tmp_path, extra_env={
            "METERSTREAM_WORKER_MAX_ATTEMPTS": "3"}) as pipeline:
        pipeline.register(HOSTILE, ingest_token=TOKEN)
        pipeline.register(VICTIM, webhook_secret=SECRET)
        _produce_raw(kafka_bootstrap, f"{pipeline.namespace}.raw", HOSTILE.encode(), messages)
        status, answer = pipeline.post(orjson.dumps(victim), SECRET)
        assert status == 200, answer

        wait_for(lambda: _stored(pipeline, f"SELECT count(), sum(total_tokens) FROM agent_usage "
                                           f"WHERE deployment = '{HOSTILE}'") == "3\t123",
                 timeout=180, what="the good usage records stored, and only them")
        wait_for(lambda: _stored(pipeline, "SELECT count() FROM function_executions")
                 == str(len(victim)), timeout=180, what="the other tenant's rows stored")
        assert stored_totals(pipeline.sql) == (len(victim), totals(victim))
        assert _metric(pipeline, "meterstream_worker_poison_messages_total") == 1
        assert _metric(pipeline, "meterstream_worker_message_failures_total") == 3
        assert _metric(pipeline, "meterstream_worker_wrong_origin_total") == 1
        report = _quota_report(pipeline, HOSTILE)
        assert report is not None
        assert report["periods"]["day"]["usage"]["tokens"] == 123
        letters = [orjson.loads(m.value) for m in
                   read_topic(kafka_bootstrap, f"{pipeline.namespace}.deadletter")]
        poison = [x for x in letters if "raw_offset" in x and "error_type" in x]
        assert len(poison) == 1, letters
        assert poison[0]["error_type"] == "StateValueTooLarge"
        assert poison[0]["attempts"] == 3
        assert poison[0]["key"] == HOSTILE
        assert "64-bit" in poison[0]["reason"]
        raw = read_topic(kafka_bootstrap, f"{pipeline.namespace}.raw")
        huge = next(m for m in raw if b"huge-1" in m.value)
        assert (poison[0]["raw_partition"], poison[0]["raw_offset"]) == (huge.partition,
                                                                         huge.offset)
        smuggled = [x for x in letters
                    if isinstance(x.get("event"), dict) and x["event"].get("id") == "smuggled"]
        assert len(smuggled) == 1
        assert "may come only through /v1/agent/usage" in smuggled[0]["reason"]
        assert pipeline.process.poll() is None, pipeline.log_tail()
