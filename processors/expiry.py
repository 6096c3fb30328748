"""Lazy expiry of Faust table entries, partition by partition.

Faust writes a table change to the changelog partition of the message being
processed, so an entry may only be deleted while a message of its own partition
is processed. Each partition keeps its keys in expiry order in memory (rebuilt
after a start or an assignment from that partition's entries only: `scan`, which
for the RocksDB store reads the partition's own database), and the agent deletes
the oldest expired ones before each message of that partition.

Used for the live usage windows (processors/state.py): tens of keys per deployment,
so the rebuild reads a few hundred thousand entries at 10k deployments. The dedup
table, millions of keys, keeps its keys in expiry order on disk instead
(processors/dedup.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

# value -> (expires at in ms, partition)
ExpiryOf = Callable[[Any], tuple[int, int]]
# partition -> its (key, value) entries
Scan = Callable[[int], Iterable[tuple[Any, Any]]]


class Expiry:
    def __init__(self, table: Any, expiry_of: ExpiryOf, scan: Scan | None = None,
                 on_forget: Callable[[], None] | None = None) -> None:
        self.table = table
        self.expiry_of = expiry_of
        self.scan: Scan = scan or (lambda _: self.table.items())
        self.on_forget = on_forget
        self._queues: dict[int, deque[tuple[int, str]]] = {}

    def remember(self, key: str, partition: int, expires_ms: int) -> None:
        """Call after storing a new entry (or moving an entry's expiry later)."""
        self._queue(partition).append((expires_ms, key))

    def expire(self, partition: int, now_ms: int, limit: int = 1000) -> int:
        """Deletes up to `limit` expired entries of `partition`; returns how many."""
        queue = self._queue(partition)
        deleted = 0
        while queue and queue[0][0] <= now_ms and deleted < limit:
            _, key = queue.popleft()
            value = self.table.get(key)
            # The entry may have been stored again since, with a later expiry (after
            # expiring, or by another worker before a rebalance): only an expired one goes.
            if value is not None and self.expiry_of(value)[0] <= now_ms:
                del self.table[key]
                deleted += 1
        return deleted

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drops the in-memory order of partitions this worker no longer holds (and
        `on_forget`: what else was kept about the table, at every rebalance)."""
        if self.on_forget is not None:
            self.on_forget()
        for partition in partitions:
            self._queues.pop(partition, None)

    def _queue(self, partition: int) -> deque[tuple[int, str]]:
        queue = self._queues.get(partition)
        if queue is None:
            # First use since start or assignment: rebuild from the (restored) table.
            entries = []
            for key, value in self.scan(partition):
                if value is not None:
                    expires, of_partition = self.expiry_of(value)
                    if of_partition == partition:
                        entries.append((expires, key))
            entries.sort()
            queue = self._queues[partition] = deque(entries)
        return queue
