"""Agent token usage records, as a Convex app's `usageHandler` sends them.

A record is validated at the door and normalised into one shape, whichever
usage shape it came in: the AI SDK's `LanguageModelUsage` (`inputTokens`,
`inputTokenDetails`, ...) or the Agent component's `vUsage` (`promptTokens`,
`cachedInputTokens`, ...). Input tokens include cache reads and writes; the
non-cached part is given by the record or derived, so pricing can bill each
kind once at its own price.
"""

from __future__ import annotations

from typing import Any

import orjson

TOPIC = "agent_usage"
MAX_ID_LENGTH = 200
# Records stamped before 2020 or more than a day ahead are taken for unit mistakes (s vs ms).
EARLIEST_MS = 1_577_836_800_000
FUTURE_SLACK_MS = 24 * 3600 * 1000

Problems = list[dict[str, Any]]


class InvalidRecords(ValueError):
    """Records with bad fields; `problems` lists the first of them as {index, field, problem}
    and `total` counts them all."""

    def __init__(self, problems: Problems, total: int | None = None) -> None:
        self.total = len(problems) if total is None else total
        super().__init__(f"{self.total} invalid field(s)")
        self.problems = problems


def _count(usage: dict[str, Any], path: str, problems: list[tuple[str, str]]) -> int | None:
    """A non-negative integer at a dotted path of `usage`; None when absent or null."""
    value: Any = usage
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        problems.append((f"usage.{path}", "must be a non-negative integer or null"))
        return None
    return value


def first(*values: int | None) -> int | None:
    return next((v for v in values if v is not None), None)


def normalise_usage(usage: dict[str, Any], problems: list[tuple[str, str]]) -> dict[str, int]:
    def n(path: str) -> int | None:
        return _count(usage, path, problems)

    input_tokens = first(n("inputTokens"), n("promptTokens")) or 0
    output_tokens = first(n("outputTokens"), n("completionTokens")) or 0
    cache_read = first(n("inputTokenDetails.cacheReadTokens"), n("cachedInputTokens")) or 0
    cache_write = first(n("inputTokenDetails.cacheWriteTokens"), n("cacheWriteInputTokens")) or 0
    non_cached = first(n("inputTokenDetails.noCacheTokens"), n("nonCachedInputTokens"))
    if non_cached is None:
        non_cached = max(input_tokens - cache_read - cache_write, 0)
    reasoning = first(n("outputTokenDetails.reasoningTokens"), n("reasoningTokens")) or 0
    text_output = first(n("outputTokenDetails.textTokens"), n("textOutputTokens"))
    if text_output is None:
        text_output = max(output_tokens - reasoning, 0)
    total = first(n("totalTokens")) or input_tokens + output_tokens
    return {
        "input_tokens": input_tokens,
        "non_cached_input_tokens": non_cached,
        "cached_input_tokens": cache_read,
        "cache_write_input_tokens": cache_write,
        "output_tokens": output_tokens,
        "text_output_tokens": text_output,
        "reasoning_tokens": reasoning,
        "total_tokens": total,
    }


def _text(record: dict[str, Any], key: str, required: bool,
          problems: list[tuple[str, str]], limit: int = 500) -> str | None:
    value = record.get(key)
    if value is None:
        if required:
            problems.append((key, "is required"))
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        problems.append((key, f"must be a non-empty string of at most {limit} characters"))
        return None
    return value


def normalise(record: Any, now_ms: int, default_deployment: str | None = None
              ) -> tuple[dict[str, Any] | None, list[tuple[str, str]]]:
    """The normalised record, or None with the list of (field, problem).

    A record without `deployment` takes `default_deployment` when one is given (the
    deployment whose ingest token sent it)."""
    problems: list[tuple[str, str]] = []
    if not isinstance(record, dict):
        return None, [("", "must be a JSON object")]
    record_id = _text(record, "id", True, problems, MAX_ID_LENGTH)
    timestamp = record.get("timestamp")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        problems.append(("timestamp", "must be an integer (ms since the epoch)"))
    elif not EARLIEST_MS <= timestamp <= now_ms + FUTURE_SLACK_MS:
        problems.append(("timestamp", "must be in milliseconds, after 2020 and not in the future"))
    if record.get("deployment") is None and default_deployment is not None:
        deployment: str | None = default_deployment
    else:
        deployment = _text(record, "deployment", True, problems, 128)
    user_id = _text(record, "userId", False, problems)
    thread_id = _text(record, "threadId", False, problems)
    agent_name = _text(record, "agentName", False, problems)
    model = _text(record, "model", True, problems)
    provider = _text(record, "provider", True, problems)
    usage = record.get("usage")
    tokens: dict[str, int] = {}
    if not isinstance(usage, dict):
        problems.append(("usage", "must be an object"))
    else:
        tokens = normalise_usage(usage, problems)
    metadata = record.get("providerMetadata")
    if metadata is not None and not isinstance(metadata, dict):
        problems.append(("providerMetadata", "must be an object or null"))
    if problems:
        return None, problems
    return {
        "topic": TOPIC,
        "id": record_id,
        "timestamp": timestamp,
        "deployment": deployment,
        "user_id": user_id or "",
        "thread_id": thread_id or "",
        "agent_name": agent_name or "",
        "model": model,
        "provider": provider,
        **tokens,
        "provider_metadata": metadata or {},
    }, []


def normalise_all(body: Any, now_ms: int, default_deployment: str | None = None,
                  max_problems: int | None = None) -> list[dict[str, Any]]:
    """Validates one record or an array of them; raises InvalidRecords listing the first
    `max_problems` problems (all when None) and counting every one, so the answer to a
    bad body stays small whatever the body."""
    records = body if isinstance(body, list) else [body]
    if not records:
        raise InvalidRecords([{"index": None, "field": "", "problem": "no records"}])
    normalised: list[dict[str, Any]] = []
    problems: Problems = []
    total = 0
    for index, record in enumerate(records):
        result, found = normalise(record, now_ms, default_deployment)
        if result is not None:
            normalised.append(result)
        total += len(found)
        for field_name, problem in found:
            if max_problems is None or len(problems) < max_problems:
                problems.append({"index": index, "field": field_name, "problem": problem})
    if total:
        raise InvalidRecords(problems, total)
    return normalised


class RecordTooLarge(ValueError):
    """One normalised record is larger than a raw message may be."""

    def __init__(self, index: int, size: int, budget: int) -> None:
        super().__init__(f"record {index} is {size} bytes normalised; at most {budget}")
        self.index = index


def split_records(records: list[dict[str, Any]], budget: int) -> list[bytes]:
    """The records as JSON arrays of at most `budget` bytes each, in order, as few as fit.

    The receiver stores each array as one raw message, so a request whose normalised
    records outgrow the producer's largest request is stored in several instead of
    failing for good. Raises RecordTooLarge when one record alone exceeds the budget.
    Each array's size is exactly 2 + the records' sizes + one comma between two.
    """
    chunks: list[bytes] = []
    current: list[bytes] = []
    size = 2
    for index, record in enumerate(records):
        encoded = orjson.dumps(record)
        if len(encoded) + 2 > budget:
            raise RecordTooLarge(index, len(encoded), budget)
        grown = size + len(encoded) + (1 if current else 0)
        if current and grown > budget:
            chunks.append(b"[" + b",".join(current) + b"]")
            current, grown = [], 2 + len(encoded)
        current.append(encoded)
        size = grown
    if current:
        chunks.append(b"[" + b",".join(current) + b"]")
    return chunks
