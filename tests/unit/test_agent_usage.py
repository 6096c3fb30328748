from __future__ import annotations

import copy
import itertools

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.agent_usage import InvalidRecords, RecordTooLarge, normalise_all, split_records
from tests.support.agent_steps import AI_SDK, TOKENS, V_USAGE

NOW = 1_755_820_900_000


def test_both_usage_shapes_normalise_to_the_same_tokens() -> None:
    ai_sdk, v_usage = normalise_all([AI_SDK, V_USAGE], NOW)
    for record in (ai_sdk, v_usage):
        assert {k: record[k] for k in TOKENS} == TOKENS
    assert ai_sdk["user_id"] == "user_2f9KqM"
    assert ai_sdk["topic"] == "agent_usage"
    assert ai_sdk["provider_metadata"] == {"openai": {"acceptedPredictionTokens": 0}}


def test_one_record_alone_is_accepted() -> None:
    (record,) = normalise_all(AI_SDK, NOW)
    assert record["id"] == "step-1"


def test_non_cached_input_is_derived_when_not_given() -> None:
    record = copy.deepcopy(AI_SDK)
    record["usage"] = {"inputTokens": 2000, "outputTokens": 500,
                       "inputTokenDetails": {"cacheReadTokens": 1500, "cacheWriteTokens": 100},
                       "outputTokenDetails": {"reasoningTokens": 200}}
    (out,) = normalise_all(record, NOW)
    assert out["non_cached_input_tokens"] == 400
    assert out["text_output_tokens"] == 300
    assert out["total_tokens"] == 2500


def test_a_0_6_era_record_with_deprecated_fields() -> None:
    record = {**AI_SDK, "usage": {"promptTokens": 100, "completionTokens": 20,
                                  "totalTokens": 120, "cachedInputTokens": 40}}
    (out,) = normalise_all(record, NOW)
    assert (out["non_cached_input_tokens"], out["cached_input_tokens"]) == (60, 40)


def test_every_bad_field_is_listed() -> None:
    bad = copy.deepcopy(AI_SDK)
    bad.update(id="", timestamp=1_755_820_800, model=None, providerMetadata=[1])
    bad["usage"]["outputTokens"] = -3
    bad["usage"]["inputTokenDetails"]["cacheReadTokens"] = "many"
    with pytest.raises(InvalidRecords) as error:
        normalise_all([AI_SDK, bad, 7], NOW)
    assert sorted((p["index"], p["field"]) for p in error.value.problems) == [
        (1, "id"), (1, "model"), (1, "providerMetadata"), (1, "timestamp"),
        (1, "usage.inputTokenDetails.cacheReadTokens"), (1, "usage.outputTokens"),
        (2, ""),
    ]


def test_an_empty_array_is_refused() -> None:
    with pytest.raises(InvalidRecords):
        normalise_all([], NOW)


def test_a_record_without_deployment_takes_the_tokens() -> None:
    unnamed = {k: v for k, v in AI_SDK.items() if k != "deployment"}
    (record,) = normalise_all(unnamed, NOW, "token-owner-1")
    assert record["deployment"] == "token-owner-1"
    (named,) = normalise_all(AI_SDK, NOW, "token-owner-1")
    assert named["deployment"] == "happy-otter-123"  # kept: the receiver refuses it (403)
    with pytest.raises(InvalidRecords):
        normalise_all(unnamed, NOW)


def test_the_problems_listed_are_bounded_and_counted() -> None:
    with pytest.raises(InvalidRecords) as error:
        normalise_all([1] * 500 + [{**AI_SDK, "model": ""}], NOW, max_problems=7)
    assert (len(error.value.problems), error.value.total) == (7, 501)
    assert [p["index"] for p in error.value.problems] == list(range(7))


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 300), min_size=1, max_size=40),
       budget=st.integers(330, 2000))
def test_split_records_keeps_every_record_in_order_within_the_budget(
        sizes: list[int], budget: int) -> None:
    records = [{"id": str(i), "pad": "x" * size} for i, size in enumerate(sizes)]
    chunks = split_records(records, budget)
    assert all(len(chunk) <= budget for chunk in chunks)
    assert [r for chunk in chunks for r in orjson.loads(chunk)] == records
    # As few as fit: no two neighbours would have fitted together.
    for left, right in itertools.pairwise(chunks):
        assert len(left) + len(right) - 1 > budget


def test_a_record_larger_than_the_budget_is_refused() -> None:
    with pytest.raises(RecordTooLarge) as error:
        split_records([{"id": "a"}, {"id": "b", "pad": "x" * 500}], 300)
    assert error.value.index == 1
