"""The one module that reads Faust's RocksDB store directly, and the local-state mark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faust
from faust.types import TP

from processors.ordered_store import (
    CLEAN_MARK,
    FaustPartitions,
    mark_clean,
    open_local_state,
    rocksdb_options,
)


def rocks_table(tmp_path: Path) -> Any:
    app = faust.App("ordered-store-test", store="rocksdb://", datadir=str(tmp_path),
                    autodiscover=False)
    return app.Table("seen", default=None, partitions=4, key_type=bytes, value_type=bytes,
                     options=rocksdb_options(4))


def test_a_partitions_keys_come_in_key_order_without_fausts_offset(tmp_path: Path) -> None:
    table = rocks_table(tmp_path)
    store: Any = table.data  # faust.stores.rocksdb.Store
    db = store._db_for_partition(2)
    for key in (b"\x01c", b"\x01a", b'"old"', b"\x01b"):
        db.put(key, key + b"!")
    store._db_for_partition(3).put(b"\x01a", b"elsewhere")
    store.set_persisted_offset(TP("changelog", 2), 17)
    partitions = FaustPartitions(table)
    assert [k for k, _ in partitions.items_from(2, b"\x01")] == [b"\x01a", b"\x01b", b"\x01c",
                                                                 b'"old"']
    assert next(iter(partitions.items_from(2, b"\x01b"))) == (b"\x01b", b"\x01b!")
    assert store.offset_key not in dict(partitions.items_from(2, b""))
    assert partitions.get_many(2, [b"\x01a", b"\x01z", b"\x01c"]) == [b"\x01a!", None,
                                                                       b"\x01c!"]
    assert partitions.get_many(3, [b"\x01a"]) == [b"elsewhere"]


def test_memory_per_database_is_bounded_whatever_the_partitions() -> None:
    for partitions in (1, 8, 64, 1024):
        options = rocksdb_options(partitions)
        per_database = (options["write_buffer_size"] * options["max_write_buffer_number"]
                        + options["block_cache_size"])
        # Up to 64 partitions per worker, all databases together stay within 512 MiB;
        # beyond, each keeps a floor of 3 MiB.
        assert per_database * 2 * partitions <= max(512 << 20, 2 * partitions * (3 << 20))
        assert options["bloom_filter_size"] == 10


def test_local_state_is_kept_only_after_a_clean_stop(tmp_path: Path) -> None:
    tables = tmp_path / "tables"
    assert not open_local_state(tables)  # first start: nothing to keep
    (tables / "seen-0.db").mkdir()
    mark_clean(tables)
    assert (tables / CLEAN_MARK).exists()
    assert open_local_state(tables)
    assert (tables / "seen-0.db").exists()
    # The mark is gone while running: a crash (no mark_clean) loses the local copy.
    assert not (tables / CLEAN_MARK).exists()
    assert not open_local_state(tables)
    assert list(tables.iterdir()) == []
