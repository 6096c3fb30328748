"""The usage table's cache of decoded values (processors/state.py CachedTable)."""

from __future__ import annotations

from typing import Any

from processors.state import CachedTable, UsageState


class CountingTable(dict[Any, Any]):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def get(self, key: Any, default: Any = None) -> Any:
        self.reads += 1
        return super().get(key, default)


def test_values_and_absent_keys_are_read_once_while_processing() -> None:
    table = CountingTable()
    table["a"] = {"n": 1}
    cached = CachedTable(table, populate=lambda: True)
    assert cached.get("a") == {"n": 1}
    assert cached.get("a") == {"n": 1}
    assert cached.get("b") is None
    assert cached.get("b", {}) == {}
    assert table.reads == 2
    cached["b"] = {"n": 2}
    del cached["a"]
    assert (cached.get("a"), cached.get("b")) == (None, {"n": 2})
    assert "a" not in table
    assert table["b"] == {"n": 2}


def test_reads_outside_processing_keep_nothing() -> None:
    table = CountingTable()
    cached = CachedTable(table, populate=lambda: False)
    cached.get("a")
    table["a"] = {"n": 1}  # e.g. restored from the changelog for a standby partition
    assert cached.get("a") == {"n": 1}


def test_a_rebalance_forgets_what_was_kept() -> None:
    table = CountingTable()
    state = UsageState(CachedTable(table, populate=lambda: True), grace_ms=0)
    assert state.window("app", "hour", 0) == {}
    table["app|hour|0"] = {"m": {"function_calls": 3}}  # another worker held the partition
    assert state.window("app", "hour", 0) == {}
    state.expiry.forget_partitions(set())
    assert state.window("app", "hour", 0) == {"m": {"function_calls": 3}}


def test_the_cache_is_bounded() -> None:
    table = CountingTable()
    cached = CachedTable(table, populate=lambda: True, size=2)
    for key in "abc":
        cached.get(key)
    cached.get("a")
    assert table.reads == 4  # "a" was the least recently used, and dropped
