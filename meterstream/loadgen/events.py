"""Convex log-stream V2 events and Convex Agent usage records, shaped exactly as sent.

Keys come in the order Convex serialises them (the shared reference, sections 3 and
6): event fields first, then the `convex` object; `null` where Convex sends null
(an HTTP action's args and returns, a failure's returns, a query's action memory).
Bodies are compact JSON, an array (format "json") or one event per line without a
trailing newline (format "jsonl").
"""

from __future__ import annotations

from typing import Any

import orjson

Event = dict[str, Any]


def usage(*, database_read_bytes: int = 0, database_write_bytes: int = 0,
          database_io_read_bytes: int = 0, database_io_write_bytes: int = 0,
          database_read_documents: int = 0, database_write_documents: int = 0,
          file_storage_read_bytes: int = 0, file_storage_write_bytes: int = 0,
          text_search_query_bytes: int = 0, text_search_write_query_bytes: int = 0,
          vector_search_query_bytes: int = 0, vector_search_write_query_bytes: int = 0,
          network_egress_bytes: int = 0, memory_used_mb: int = 64,
          action_memory_used_mb: int | None = None,
          function_args_bytes: int | None = None,
          function_returns_bytes: int | None = None) -> Event:
    """A `function_execution` event's `usage` object; every key present, in Convex's order.
    The legacy vector storage and audit-log counters are always 0 here."""
    return {
        "database_read_bytes": database_read_bytes,
        "database_write_bytes": database_write_bytes,
        "database_io_read_bytes": database_io_read_bytes,
        "database_io_write_bytes": database_io_write_bytes,
        "database_read_documents": database_read_documents,
        "database_write_documents": database_write_documents,
        "file_storage_read_bytes": file_storage_read_bytes,
        "file_storage_write_bytes": file_storage_write_bytes,
        "vector_storage_read_bytes": 0,
        "vector_storage_write_bytes": 0,
        "text_search_query_bytes": text_search_query_bytes,
        "text_search_write_query_bytes": text_search_write_query_bytes,
        "vector_search_query_bytes": vector_search_query_bytes,
        "vector_search_write_query_bytes": vector_search_write_query_bytes,
        "network_egress_bytes": network_egress_bytes,
        "memory_used_mb": memory_used_mb,
        "action_memory_used_mb": action_memory_used_mb,
        "audit_log_egress_bytes": 0,
        "function_args_bytes": function_args_bytes,
        "function_returns_bytes": function_returns_bytes,
    }


def function_execution(*, timestamp: int, path: str, function_type: str,
                       cached: bool | None, request_id: str,
                       mutation_queue_length: int | None, mutation_retry_count: int | None,
                       component_path: str | None, execution_time_ms: int,
                       user_execution_time_ms: int | None, status: str,
                       error_message: str | None, occ_info: Event | None, will_retry: bool,
                       scheduler_job_id: str | None, run_reason: str, usage: Event,
                       convex: Event) -> Event:
    function: Event = {
        "path": path,
        "type": function_type,
        "cached": cached,
        "request_id": request_id,
        "mutation_queue_length": mutation_queue_length,
        "mutation_retry_count": mutation_retry_count,
    }
    if component_path is not None:  # present only for functions in a component
        function["component_path"] = component_path
    return {
        "timestamp": timestamp,
        "topic": "function_execution",
        "function": function,
        "execution_time_ms": execution_time_ms,
        "user_execution_time_ms": user_execution_time_ms,
        "status": status,
        "error_message": error_message,
        "occ_info": occ_info,
        "will_retry": will_retry,
        "scheduler_info": None if scheduler_job_id is None else {"job_id": scheduler_job_id},
        "run_reason": run_reason,
        "usage": usage,
        "convex": convex,
    }


def occ_info(table: str, document_id: str, write_source: str, component_path: str | None,
             retry_count: int) -> Event:
    return {"table_name": table, "document_id": document_id, "write_source": write_source,
            "component_path": component_path, "retry_count": retry_count}


def occ_error(table: str) -> str:
    return (f'Documents read from or written to the "{table}" table changed while this '
            "mutation was being run and on every subsequent retry. Another call to this "
            "mutation changed the document with ID "
            '"..."; see https://docs.convex.dev/error#1')


def storage_usage(*, timestamp: int, document_bytes: int, index_bytes: int,
                  vector_bytes: int, text_bytes: int, file_bytes: int, backup_bytes: int,
                  scheduled_functions_bytes: int, storage_table_bytes: int,
                  convex: Event) -> Event:
    return {
        "timestamp": timestamp,
        "topic": "current_storage_usage",
        "total_document_size_bytes": document_bytes,
        "total_index_size_bytes": index_bytes,
        "total_vector_storage_bytes": vector_bytes,
        "total_text_storage_bytes": text_bytes,
        "total_file_storage_bytes": file_bytes,
        "total_backup_storage_bytes": backup_bytes,
        "total_system_table_document_size_bytes": {
            "_scheduled_functions": scheduled_functions_bytes,
            "_storage": storage_table_bytes,
        },
        "convex": convex,
    }


def storage_api_bandwidth(*, timestamp: int, storage_id: str, egress_bytes: int,
                          convex: Event) -> Event:
    return {"timestamp": timestamp, "topic": "storage_api_bandwidth",
            "storage_id": storage_id, "egress_bytes": egress_bytes, "convex": convex}


def log_stream_egress(*, timestamp: int, egress_bytes: int, convex: Event) -> Event:
    return {"timestamp": timestamp, "topic": "log_stream_egress",
            "egress_bytes": egress_bytes, "convex": convex}


def log_stream_body(events: list[Event], jsonl: bool) -> bytes:
    """One webhook POST body as Convex's webhook sink serialises it."""
    if jsonl:
        return b"\n".join(orjson.dumps(event) for event in events)
    return orjson.dumps(events)


def ai_sdk_usage(*, non_cached: int, cache_read: int, cache_write: int | None, output: int,
                 reasoning: int) -> Event:
    """The AI SDK's `LanguageModelUsage` as a usageHandler receives it (agent 0.7, AI SDK 7):
    `inputTokens` includes the cache reads and writes."""
    input_tokens = non_cached + cache_read + (cache_write or 0)
    return {
        "inputTokens": input_tokens,
        "inputTokenDetails": {"noCacheTokens": non_cached, "cacheReadTokens": cache_read,
                              "cacheWriteTokens": cache_write},
        "outputTokens": output,
        "outputTokenDetails": {"textTokens": output - reasoning, "reasoningTokens": reasoning},
        "totalTokens": input_tokens + output,
    }


def v_usage(*, non_cached: int, cache_read: int, cache_write: int | None, output: int,
            reasoning: int) -> Event:
    """The Agent component's stored `vUsage` shape, for forwarders that send that."""
    input_tokens = non_cached + cache_read + (cache_write or 0)
    shaped: Event = {
        "promptTokens": input_tokens,
        "completionTokens": output,
        "totalTokens": input_tokens + output,
        "reasoningTokens": reasoning,
        "cachedInputTokens": cache_read,
        "nonCachedInputTokens": non_cached,
        "textOutputTokens": output - reasoning,
    }
    if cache_write is not None:
        shaped["cacheWriteInputTokens"] = cache_write
    return shaped


def embedding_usage(tokens: int) -> Event:
    """What the Agent reports for an `embedMany` call: tokens in, nothing out."""
    return {"inputTokens": tokens, "outputTokens": 0, "totalTokens": tokens}


def agent_usage(*, record_id: str, timestamp: int, deployment: str, user_id: str,
                thread_id: str, agent_name: str, model: str, provider: str, usage: Event,
                provider_metadata: Event | None) -> Event:
    """One record as the usageHandler in docs/http-api.md sends it to POST /v1/agent/usage."""
    return {
        "id": record_id,
        "timestamp": timestamp,
        "deployment": deployment,
        "userId": user_id,
        "threadId": thread_id,
        "agentName": agent_name,
        "model": model,
        "provider": provider,
        "usage": usage,
        "providerMetadata": provider_metadata,
    }
