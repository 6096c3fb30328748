"""Totals of loadgen bodies computed here, from the JSON as sent, with the standard json
module and none of meterstream's code, to hold the loadgen's expected totals against.

The result has the shape of `DeploymentTotals.to_json()` (without first/last times)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

KINDS = ("input_tokens", "non_cached_input_tokens", "cached_input_tokens",
         "cache_write_input_tokens", "output_tokens", "reasoning_tokens", "total_tokens")


def events_of(body: bytes) -> list[dict[str, Any]]:
    """A JSON array, or JSONL: one event per line."""
    if body.lstrip().startswith(b"["):
        return json.loads(body)
    return [json.loads(line) for line in body.split(b"\n")]


def tokens_of(usage: dict[str, Any]) -> dict[str, int]:
    """Token kinds of one record, from either usage shape (docs/http-api.md, agent token usage)."""
    if "promptTokens" in usage:  # the Agent component's vUsage
        output, reasoning = usage["completionTokens"], usage.get("reasoningTokens") or 0
        return {"input_tokens": usage["promptTokens"],
                "non_cached_input_tokens": usage["nonCachedInputTokens"],
                "cached_input_tokens": usage.get("cachedInputTokens") or 0,
                "cache_write_input_tokens": usage.get("cacheWriteInputTokens") or 0,
                "output_tokens": output, "reasoning_tokens": reasoning,
                "text_output_tokens": usage["textOutputTokens"],
                "total_tokens": usage["totalTokens"]}
    details = usage.get("inputTokenDetails")
    if details is None:  # an embedding: tokens in, nothing out
        count = usage["inputTokens"]
        return {"input_tokens": count, "non_cached_input_tokens": count,
                "cached_input_tokens": 0, "cache_write_input_tokens": 0, "output_tokens": 0,
                "reasoning_tokens": 0, "text_output_tokens": 0,
                "total_tokens": usage["totalTokens"]}
    output_details = usage["outputTokenDetails"]
    return {"input_tokens": usage["inputTokens"],
            "non_cached_input_tokens": details["noCacheTokens"],
            "cached_input_tokens": details["cacheReadTokens"] or 0,
            "cache_write_input_tokens": details["cacheWriteTokens"] or 0,
            "output_tokens": usage["outputTokens"],
            "reasoning_tokens": output_details["reasoningTokens"],
            "text_output_tokens": output_details["textTokens"],
            "total_tokens": usage["totalTokens"]}


class Independent:
    """Totals per deployment of the bodies added; an event older than `grace_ms` before
    its body's receipt (`received_ms`) counts only as a dead letter."""

    def __init__(self, grace_ms: int) -> None:
        self.grace_ms = grace_ms
        self.totals: dict[str, dict[str, Any]] = {}

    def _of(self, name: str) -> dict[str, Any]:
        if name not in self.totals:
            self.totals[name] = {
                "metrics": Counter(), "tables": defaultdict(Counter),
                "tokens_by_model": defaultdict(Counter),
                "tokens_by_user": defaultdict(lambda: defaultdict(Counter)),
                "storage": None, "dead_lettered": Counter()}
        return self.totals[name]

    def log_body(self, body: bytes, received_ms: int) -> None:
        for event in events_of(body):
            t = self._of(event["convex"]["deployment_name"])
            if event["timestamp"] < received_ms - self.grace_ms:
                t["dead_lettered"][event["topic"]] += 1
                continue
            m, tables = t["metrics"], t["tables"]
            if event["topic"] == "function_execution":
                u = {k: v or 0 for k, v in event["usage"].items()}
                row = tables["function_executions"]
                row["rows"] += 1
                row["execution_time_ms"] += event["execution_time_ms"]
                row["user_execution_time_ms"] += event["user_execution_time_ms"] or 0
                row["mutation_retry_count"] += event["function"]["mutation_retry_count"] or 0
                for key, value in u.items():
                    row[key] += value
                m["function_calls"] += 1
                m["database_io_read_bytes"] += u["database_io_read_bytes"]
                m["database_io_write_bytes"] += u["database_io_write_bytes"]
                m["database_io_bytes"] += u["database_io_read_bytes"] + u["database_io_write_bytes"]
                if event["function"]["type"] in ("action", "http_action"):
                    memory = u["action_memory_used_mb"] or u["memory_used_mb"]
                    m["action_compute_mb_ms"] += memory * event["execution_time_ms"]
                m["data_egress_bytes"] += u["network_egress_bytes"] + u["file_storage_read_bytes"]
                m["search_query_bytes"] += (u["text_search_query_bytes"]
                                            + u["text_search_write_query_bytes"]
                                            + u["vector_search_query_bytes"]
                                            + u["vector_search_write_query_bytes"])
            elif event["topic"] == "storage_api_bandwidth":
                tables["file_downloads"]["rows"] += 1
                tables["file_downloads"]["egress_bytes"] += event["egress_bytes"]
                m["function_calls"] += 1
                m["file_downloads"] += 1
                m["file_download_bytes"] += event["egress_bytes"]
                m["data_egress_bytes"] += event["egress_bytes"]
            elif event["topic"] == "log_stream_egress":
                tables["log_stream_egress"]["rows"] += 1
                tables["log_stream_egress"]["egress_bytes"] += event["egress_bytes"]
                m["log_stream_egress_bytes"] += event["egress_bytes"]
                m["data_egress_bytes"] += event["egress_bytes"]
            elif event["topic"] == "current_storage_usage":
                row = tables["storage_snapshots"]
                row["rows"] += 1
                for key, value in event.items():
                    if key.startswith("total_") and isinstance(value, int):
                        row[key] += value
                sizes = {
                    "database": event["total_document_size_bytes"]
                    + event["total_index_size_bytes"],
                    "file": event["total_file_storage_bytes"] + event["total_backup_storage_bytes"],
                    "search": event["total_text_storage_bytes"]
                    + event["total_vector_storage_bytes"]}
                if t["storage"] is None or event["timestamp"] > t["storage"]["at"]:
                    t["storage"] = {"at": event["timestamp"], "bytes": sizes}
            else:
                raise AssertionError(f"unexpected topic {event['topic']}")

    def agent_body(self, body: bytes, received_ms: int) -> None:
        for record in json.loads(body):
            t = self._of(record["deployment"])
            if record["timestamp"] < received_ms - self.grace_ms:
                t["dead_lettered"]["agent_usage"] += 1
                continue
            tokens = tokens_of(record["usage"])
            row = t["tables"]["agent_usage"]
            row["rows"] += 1
            for key, value in tokens.items():
                row[key] += value
            t["metrics"]["tokens"] += tokens["total_tokens"]
            model = f"{record['provider']}/{record['model']}"
            for kind in KINDS:
                t["tokens_by_model"][model][kind] += tokens[kind]
                t["tokens_by_user"][record["userId"]][model][kind] += tokens[kind]


def nonzero(value: Any) -> Any:
    """A totals document without zero counters and empty groups, for comparing documents
    that differ only in which zeros they spell out."""
    if isinstance(value, dict):
        kept = {k: nonzero(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (0, {}, None)}
    return value
