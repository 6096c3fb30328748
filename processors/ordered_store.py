"""The worker's state on disk: Faust tables in RocksDB, read per partition in key order.

Faust keeps each partition of a `rocksdb://` table in its own RocksDB database
(`<datadir>/.../tables/<table>-<partition>.db`) and remembers in it the changelog offset
it holds, so a restart reads only the changelog written after that offset. Two things
the worker needs are not in Faust's table API, and this module is the one place that
reaches into the store for them (`table.data`, its `_db_for_partition`):

- several keys of one partition looked up in one call (the dedup's live time buckets);
- one partition's keys in key order from a given key (expiry walks the oldest first),
  without deserialising the other partitions.

Writes and deletes still go through the table (`table[key] = value`, `del table[key]`):
that is what sends them to the changelog, on the partition of the message being processed.

`MemoryPartitions` is the same interface over dicts, for unit tests.

A local database is only as good as the changelog behind it. Faust writes a change to
RocksDB before Kafka has acknowledged its changelog message; after a crash (kill -9) the
database may hold changes the changelog never got, and a message processed again would
then skip them (its keys already hold its offset), so they would never reach the
changelog and another worker restoring it would miss them. So the local state is kept
only after a clean stop: `open_local_state` deletes it unless the previous run left the
`clean` mark that `mark_clean` writes after Faust stopped (its producer flushed).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

CLEAN_MARK = "clean-stop"


class PartitionedStore(Protocol):
    def get_many(self, partition: int, keys: list[bytes]) -> list[bytes | None]: ...

    def items_from(self, partition: int, start: bytes) -> Iterator[tuple[bytes, bytes]]:
        """The partition's (key, value) pairs in key order, from the first key >= start."""
        ...

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        """Stores in `partition`, which must be that of the message being processed
        (Faust writes there and to that changelog partition)."""
        ...

    def delete(self, partition: int, key: bytes) -> None: ...


class FaustPartitions:
    """A Faust table with `rocksdb://` store, raw key and value serializers."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def _db(self, partition: int) -> Any:
        return self.table.data._db_for_partition(partition)

    def get_many(self, partition: int, keys: list[bytes]) -> list[bytes | None]:
        return list(self._db(partition).get(keys))

    def items_from(self, partition: int, start: bytes) -> Iterator[tuple[bytes, bytes]]:
        offset_key = self.table.data.offset_key  # Faust's own entry in each database
        for key, value in self._db(partition).items(from_key=start):
            if key != offset_key:
                yield key, value

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        self.table[key] = value

    def delete(self, partition: int, key: bytes) -> None:
        # Faust deletes a key it has not indexed from every open database (a tombstone
        # in each); the index entry makes it delete from its own partition's only.
        self.table.data._key_index[key] = partition
        del self.table[key]


class MemoryPartitions:
    """The same over dicts."""

    def __init__(self) -> None:
        self.data: dict[int, dict[bytes, bytes]] = {}

    def get_many(self, partition: int, keys: list[bytes]) -> list[bytes | None]:
        db = self.data.get(partition, {})
        return [db.get(key) for key in keys]

    def items_from(self, partition: int, start: bytes) -> Iterator[tuple[bytes, bytes]]:
        db = self.data.get(partition, {})
        for key in sorted(k for k in db if k >= start):
            if key in db:
                yield key, db[key]

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        self.data.setdefault(partition, {})[key] = value

    def delete(self, partition: int, key: bytes) -> None:
        self.data.get(partition, {}).pop(key, None)


def rocksdb_options(partitions: int) -> dict[str, int]:
    """RocksDB options per partition database, so that memory stays bounded.

    Faust's defaults are per database: a 2 GiB block cache and up to 3 x 64 MiB write
    buffers, times every partition of every table (8 partitions x 2 tables: 32 GiB of
    cache allowed). Here all databases of a worker together stay within 512 MiB up to 64
    partitions per worker (beyond, each keeps a floor of 3 MiB); ten bits per key of
    bloom filter make a lookup of an absent key (every new body, in each live bucket)
    read no block."""
    databases = 2 * max(1, partitions)
    budget = 512 << 20
    write_buffer = max(1 << 20, min(16 << 20, budget // (4 * databases)))
    return {
        "write_buffer_size": write_buffer,
        "max_write_buffer_number": 2,
        "block_cache_size": max(1 << 20, min(64 << 20, budget // (2 * databases))),
        "bloom_filter_size": 10,
    }


def open_local_state(tabledir: Path) -> bool:
    """Keeps the tables' databases from a clean stop, deletes them after a crash (the
    module's docstring says why); returns whether they were kept. Call before Faust
    opens them; the mark is removed, so that a crash of this run is noticed next time."""
    mark = tabledir / CLEAN_MARK
    kept = mark.exists()
    if kept:
        mark.unlink()
    elif tabledir.exists() and any(tabledir.iterdir()):
        log.warning("the worker did not stop cleanly last time: its local state in %s is "
                    "restored from the changelog topics instead", tabledir)
        shutil.rmtree(tabledir)
    tabledir.mkdir(parents=True, exist_ok=True)
    return kept


def mark_clean(tabledir: Path) -> None:
    """After Faust stopped cleanly (every change acknowledged by the changelog)."""
    if tabledir.exists():
        (tabledir / CLEAN_MARK).touch()
