"""Dropping what Convex or a client sent twice.

Convex retries a webhook with byte-identical bodies, so a repeated body is
found by its SHA-256 per deployment; agent usage records carry their own
idempotency key, `id`. Both are remembered in a Faust table (`seen`, backed by
a changelog topic, restored after a restart) for the retention period.

An entry remembers the raw offset that first carried it. Seeing the key again
from that same offset is not a duplicate: it is the same message processed
again after a restart before its offset was committed, and it must count.

Entries expire lazily (processors/expiry.py).
"""

from __future__ import annotations

import hashlib
from typing import Any

from processors.expiry import Expiry


class Deduplicator:
    def __init__(self, table: Any, retention_ms: int) -> None:
        self.table = table  # key -> [first offset, expires at (ms), partition]
        self.retention_ms = retention_ms
        self._expiry = Expiry(table, lambda value: (value[1], value[2]))

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
        self._expiry.remember(key, partition, expires)
        return False

    def expire(self, partition: int, now_ms: int) -> int:
        """Deletes expired keys of `partition`; returns how many."""
        return self._expiry.expire(partition, now_ms)

    def forget_partitions(self, partitions: set[int]) -> None:
        self._expiry.forget_partitions(partitions)
