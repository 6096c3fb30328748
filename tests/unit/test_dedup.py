"""The deduplicator's logic, over a plain dict standing in for the Faust table."""

from __future__ import annotations

from processors.dedup import Deduplicator

DAY = 24 * 3600 * 1000


def test_a_repeat_from_another_message_is_a_duplicate() -> None:
    dedup = Deduplicator({}, retention_ms=DAY)
    key = Deduplicator.body_key(b"app", b"[1]")
    assert not dedup.seen_before(key, partition=0, offset=10, now_ms=1000)
    assert dedup.seen_before(key, partition=0, offset=11, now_ms=2000)


def test_the_same_message_processed_again_is_not_a_duplicate() -> None:
    table: dict = {}
    key = Deduplicator.body_key(b"app", b"[1]")
    assert not Deduplicator(table, DAY).seen_before(key, 0, 10, 1000)
    # A restart before the offset was committed: the message comes again with its offset.
    assert not Deduplicator(table, DAY).seen_before(key, 0, 10, 5000)


def test_keys_are_per_deployment_and_per_body() -> None:
    assert Deduplicator.body_key(b"a", b"[1]") != Deduplicator.body_key(b"b", b"[1]")
    assert Deduplicator.body_key(b"a", b"[1]") != Deduplicator.body_key(b"a", b"[2]")
    assert Deduplicator.record_key("a", "x") != Deduplicator.body_key(b"a", b"x")


def test_entries_expire_after_the_retention() -> None:
    table: dict = {}
    dedup = Deduplicator(table, retention_ms=100)
    dedup.seen_before("old", 0, 1, now_ms=1000)
    dedup.seen_before("new", 0, 2, now_ms=1050)
    dedup.seen_before("elsewhere", 3, 1, now_ms=1000)
    assert dedup.expire(0, now_ms=1120) == 1
    assert set(table) == {"new", "elsewhere"}
    # After expiry a repeat is new again.
    assert not dedup.seen_before("old", 0, 9, now_ms=1130)


def test_expiry_order_is_rebuilt_after_a_restart() -> None:
    table: dict = {}
    before = Deduplicator(table, retention_ms=100)
    for offset, key in enumerate(("a", "b", "c")):
        before.seen_before(key, 1, offset, now_ms=1000 + offset)
    after = Deduplicator(table, retention_ms=100)
    assert after.expire(1, now_ms=1101) == 2
    assert set(table) == {"c"}


def test_a_key_remembered_again_is_not_deleted_by_its_old_expiry() -> None:
    table: dict = {}
    dedup = Deduplicator(table, retention_ms=100)
    dedup.seen_before("k", 0, 1, now_ms=1000)
    table["k"] = [7, 5000, 0]  # renewed elsewhere (another worker before a rebalance)
    assert dedup.expire(0, now_ms=2000) == 0
    assert "k" in table
