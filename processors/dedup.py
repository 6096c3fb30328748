"""Dropping what Convex or a client sent twice.

Convex retries a webhook with byte-identical bodies, so a repeated body is
found by its SHA-256 per deployment; agent usage records carry their own
idempotency key, `id`. Both are remembered in a Faust table (`seen`, in RocksDB
on disk and in a changelog topic) for the retention period: at least the
late-event grace (meterstream/core/config.py refuses less), because a captured
body replayed while its events still count must be dropped too.

Keys are small and in expiry order. A body or an id is a 16-byte digest
(BLAKE2b of the deployment and the body's SHA-256, or of the deployment and the
id, with a different personalisation for each, so that a body and an id never
share a digest). It is stored under `VERSION + time bucket (4 bytes, big-endian)
+ digest`, the bucket being when it was first seen (`bucket_ms`, a quarter of the
retention); the value is the raw offset that first carried it (8 bytes). So in
each partition's database the entries are sorted oldest first: expiry deletes
from the start of the database until the first live bucket, without keeping
anything in memory and without reading the whole table after a restart; a lookup
reads the live buckets (5 or 6 keys, one RocksDB multi-get, bloom filters
answering for the absent ones). An entry is kept at least the retention and at
most a bucket longer (25 % more entries on disk than the retention needs; with 16
buckets, a lookup of 17 absent keys cost about three times as much).

An entry remembers the raw offset that first carried it. Seeing the key again
from that same offset is not a duplicate: it is the same message processed
again after a restart before its offset was committed, and it must count. That
holds across buckets: the lookup reads every live bucket, and an entry is only
written when none holds the key.

Upgrading from string keys (`{deployment}|body|{sha256 hex}`, value `[offset,
expires, partition]` in JSON): the digest is computed from those same parts, so
the first message of a partition after the upgrade migrates its old entries to
the new form (bucket: the current one at the latest, so the entry lives at least
until the old expiry or the new retention, whichever is sooner) and the dedup window
carries on across the upgrade.
"""

from __future__ import annotations

import hashlib
import struct

import orjson

from processors.ordered_store import PartitionedStore

VERSION = b"\x01"
"""First byte of every key of this format; old JSON string keys start with '"'."""
BUCKETS_PER_RETENTION = 4
_OFFSET = struct.Struct(">q")
_BODY = b"ms-dedup-body"
_ID = b"ms-dedup-id"


def _digest(person: bytes, deployment: str, rest: str) -> bytes:
    # The deployment name is length-prefixed: no name/rest split can make two inputs equal.
    name = deployment.encode()
    digest = hashlib.blake2b(digest_size=16, person=person)
    digest.update(len(name).to_bytes(4, "big"))
    digest.update(name)
    digest.update(rest.encode())
    return digest.digest()


class Deduplicator:
    def __init__(self, store: PartitionedStore, retention_ms: int) -> None:
        self.store = store
        self.retention_ms = retention_ms
        self.bucket_ms = max(1000, retention_ms // BUCKETS_PER_RETENTION)
        # Per partition: the oldest live bucket at the last expiry that found nothing
        # older left, and the key it stopped at (so the next pass skips the tombstones).
        self._clean: dict[int, int] = {}
        self._resume: dict[int, bytes] = {}
        self._migrated: set[int] = set()

    @staticmethod
    def body_key(deployment: bytes | None, body: bytes) -> bytes:
        name = (deployment or b"").decode(errors="replace")
        return _digest(_BODY, name, hashlib.sha256(body).hexdigest())

    @staticmethod
    def record_key(deployment: str, record_id: str) -> bytes:
        return _digest(_ID, deployment, record_id)

    def _bucket(self, now_ms: int) -> int:
        return now_ms // self.bucket_ms

    def _oldest_live(self, now_ms: int) -> int:
        return max(0, self._bucket(now_ms - self.retention_ms))

    def stored_key(self, bucket: int, key: bytes) -> bytes:
        return VERSION + bucket.to_bytes(4, "big") + key

    def seen_before(self, key: bytes, partition: int, offset: int, now_ms: int) -> bool:
        """True when `key` was first carried by another message; else remembers it."""
        if partition not in self._migrated:
            self._migrate(partition, now_ms)
        current = self._bucket(now_ms)
        stored = [self.stored_key(bucket, key)
                  for bucket in range(self._oldest_live(now_ms), current + 1)]
        for value in self.store.get_many(partition, stored):
            if value is not None:
                return bool(_OFFSET.unpack(value)[0] != offset)
        self.store.put(partition, stored[-1], _OFFSET.pack(offset))
        return False

    def expire(self, partition: int, now_ms: int, limit: int = 256) -> int:
        """Deletes up to `limit` expired keys of `partition`, oldest first; returns how
        many. Reads the database only when a bucket has expired since the last pass.
        A whole bucket expires at once: the limit spreads its deletions (each one a
        changelog tombstone) over the next messages instead of stalling one."""
        oldest = self._oldest_live(now_ms)
        if self._clean.get(partition) == oldest:
            return 0
        if partition not in self._migrated:
            self._migrate(partition, now_ms)
        first_live = self.stored_key(oldest, b"")
        expired: list[bytes] = []
        for key, _ in self.store.items_from(partition, self._resume.get(partition, VERSION)):
            if key >= first_live or len(expired) == limit:
                break
            expired.append(key)
        for key in expired:
            self.store.delete(partition, key)
        if len(expired) < limit:
            self._clean[partition] = oldest
            self._resume.pop(partition, None)
        else:
            self._resume[partition] = expired[-1]
        return len(expired)

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drops what is kept in memory about partitions this worker no longer holds."""
        for partition in partitions:
            self._clean.pop(partition, None)
            self._resume.pop(partition, None)
            self._migrated.discard(partition)

    def _migrate(self, partition: int, now_ms: int) -> None:
        """Rewrites the old string-keyed entries of `partition` (see the docstring)."""
        self._migrated.add(partition)
        current = self._bucket(now_ms)
        old = list(self.store.items_from(partition, bytes([VERSION[0] + 1])))
        for raw_key, raw_value in old:
            self.store.delete(partition, raw_key)
            try:
                name, kind, rest = orjson.loads(raw_key).split("|", 2)
                first_offset, expires = orjson.loads(raw_value)[:2]
            except (ValueError, TypeError, AttributeError):
                continue  # not an entry of the old format: nothing to keep
            if kind not in ("body", "id") or expires <= now_ms:
                continue
            digest = _digest(_BODY if kind == "body" else _ID, name, rest)
            bucket = min(current, self._bucket(expires - self.retention_ms))
            self.store.put(partition, self.stored_key(bucket, digest), _OFFSET.pack(first_offset))
