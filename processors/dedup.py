"""Dropping what Convex or a client sent twice.

Convex retries a webhook with byte-identical bodies, so a repeated body is
found by its SHA-256 per deployment; agent usage records carry their own
idempotency key, `id`. Both are remembered in a Faust table (`seen`, backed by
a changelog topic, restored after a restart) for the retention period.

An entry remembers the raw offset that first carried it. Seeing the key again
from that same offset is not a duplicate: it is the same message processed
again after a restart before its offset was committed, and it must count.

Entries expire lazily: each partition keeps its keys in expiry order in
memory (rebuilt from the table after a restart) and the oldest ones are
deleted while a message of that partition is processed, because Faust writes
a table change to the changelog partition of the message being processed.
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Any


class Deduplicator:
    def __init__(self, table: Any, retention_ms: int) -> None:
        self.table = table  # key -> [first offset, expires at (ms), partition]
        self.retention_ms = retention_ms
        self._expiry: dict[int, deque[tuple[int, str]]] = {}

    @staticmethod
    def body_key(deployment: bytes | None, body: bytes) -> str:
        name = (deployment or b"").decode(errors="replace")
        return f"{name}|body|{hashlib.sha256(body).hexdigest()}"

    @staticmethod
    def record_key(deployment: str, record_id: str) -> str:
        return f"{deployment}|id|{record_id}"

    def seen_before(self, key: str, partition: int, offset: int, now_ms: int) -> bool:
        """True when `key` was first carried by another message; else remembers it."""
        entry = self.table.get(key)
        if entry is not None and entry[1] > now_ms:
            return entry[0] != offset
        expires = now_ms + self.retention_ms
        self.table[key] = [offset, expires, partition]
        self._queue(partition).append((expires, key))
        return False

    def expire(self, partition: int, now_ms: int, limit: int = 1000) -> int:
        """Deletes up to `limit` expired keys of `partition`; returns how many."""
        queue = self._queue(partition)
        deleted = 0
        while queue and queue[0][0] <= now_ms and deleted < limit:
            _, key = queue.popleft()
            entry = self.table.get(key)
            # The key may have been remembered again since (after expiring, or on another
            # worker before a rebalance): only an entry that is itself expired goes.
            if entry is not None and entry[1] <= now_ms:
                del self.table[key]
                deleted += 1
        return deleted

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drops the in-memory expiry order of partitions this worker no longer holds."""
        for partition in partitions:
            self._expiry.pop(partition, None)

    def _queue(self, partition: int) -> deque[tuple[int, str]]:
        queue = self._expiry.get(partition)
        if queue is None:
            # First use since start or assignment: rebuild from the (restored) table.
            entries = sorted((value[1], key) for key, value in self.table.items()
                             if value is not None and value[2] == partition)
            queue = self._expiry[partition] = deque(entries)
        return queue
