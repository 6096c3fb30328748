"""Agent usage steps as the Convex agent component reports them, in both usage shapes, and
the tokens both normalise to (ingest/agent_usage.py); the unit tests of the normaliser and
the receiver's tests on the real broker send the same steps."""

from __future__ import annotations

from typing import Any

AI_SDK: dict[str, Any] = {
    "id": "step-1", "timestamp": 1_755_820_800_000, "deployment": "happy-otter-123",
    "userId": "user_2f9KqM", "threadId": "m57a1b2c3d4e5f6g7h8j9k0l1m2n3p4q",
    "agentName": "Support Agent", "model": "gpt-4o-mini", "provider": "openai.chat",
    "usage": {
        "inputTokens": 1850,
        "inputTokenDetails": {"noCacheTokens": 826, "cacheReadTokens": 1024,
                              "cacheWriteTokens": None},
        "outputTokens": 312,
        "outputTokenDetails": {"textTokens": 312, "reasoningTokens": 0},
        "totalTokens": 2162,
    },
    "providerMetadata": {"openai": {"acceptedPredictionTokens": 0}},
}

V_USAGE: dict[str, Any] = {**AI_SDK, "id": "step-2", "usage": {
    "promptTokens": 1850, "completionTokens": 312, "totalTokens": 2162, "reasoningTokens": 0,
    "cachedInputTokens": 1024, "nonCachedInputTokens": 826, "textOutputTokens": 312}}

TOKENS: dict[str, int] = {
    "input_tokens": 1850, "non_cached_input_tokens": 826, "cached_input_tokens": 1024,
    "cache_write_input_tokens": 0, "output_tokens": 312, "text_output_tokens": 312,
    "reasoning_tokens": 0, "total_tokens": 2162}
