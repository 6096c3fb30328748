"""The deduplicator's logic, over dicts standing in for the partitions' databases."""

from __future__ import annotations

import hashlib

import orjson

from processors.dedup import VERSION, Deduplicator
from processors.ordered_store import MemoryPartitions

DAY = 24 * 3600 * 1000
HOUR = 3600 * 1000


def dedup_on(retention_ms: int = DAY) -> tuple[Deduplicator,
                                                                     MemoryPartitions]:
    store = MemoryPartitions()
    return Deduplicator(store, retention_ms), store


def test_a_repeat_from_another_message_is_a_duplicate() -> None:
    dedup, _ = dedup_on()
    key = Deduplicator.body_key(b"app", b"[1]")
    assert not dedup.seen_before(key, partition=0, offset=10, now_ms=1000)
    assert dedup.seen_before(key, partition=0, offset=11, now_ms=2000)


def test_the_same_message_processed_again_is_not_a_duplicate() -> None:
    dedup, store = dedup_on()
    key = Deduplicator.body_key(b"app", b"[1]")
    assert not dedup.seen_before(key, 0, 10, 1000)
    # A restart before the offset was committed: the message comes again with its offset,
    # even in a later time bucket.
    assert not Deduplicator(store, DAY).seen_before(key, 0, 10, 1000 + 5 * HOUR)
    assert len(store.data[0]) == 1


def test_keys_are_16_byte_digests_per_deployment_and_per_body() -> None:
    key = Deduplicator.body_key(b"a", b"[1]")
    assert isinstance(key, bytes)
    assert len(key) == 16
    assert key != Deduplicator.body_key(b"b", b"[1]")
    assert key != Deduplicator.body_key(b"a", b"[2]")
    assert Deduplicator.record_key("a", "x") != Deduplicator.record_key("b", "x")
    # A body and an id never share a digest, even when the id is the body's hash.
    body_hash = hashlib.sha256(b"x").hexdigest()
    assert Deduplicator.record_key("a", body_hash) != Deduplicator.body_key(b"a", b"x")
    # The name is length-prefixed: moving characters between name and id changes the key.
    assert Deduplicator.record_key("ab", "c") != Deduplicator.record_key("a", "bc")


def test_stored_keys_are_version_bucket_digest_with_the_offset_as_value() -> None:
    dedup, store = dedup_on()
    key = Deduplicator.body_key(b"app", b"[1]")
    now = 1_800_000_000_000
    dedup.seen_before(key, 0, 42, now)
    [(stored, value)] = store.data[0].items()
    assert stored == VERSION + (now // dedup.bucket_ms).to_bytes(4, "big") + key
    assert len(stored) == 21
    assert value == (42).to_bytes(8, "big")
    assert dedup.bucket_ms == DAY // 4


def test_a_repeat_is_found_in_any_live_bucket() -> None:
    dedup, _ = dedup_on()
    key = Deduplicator.record_key("app", "id-1")
    start = 1_800_000_000_000
    assert not dedup.seen_before(key, 0, 1, start)
    # Up to the retention later (in the 5th bucket) it is still found.
    for later in (dedup.bucket_ms, 3 * dedup.bucket_ms, DAY - 1):
        assert dedup.seen_before(key, 0, 2, start + later)


def test_entries_expire_after_the_retention_oldest_first() -> None:
    dedup, store = dedup_on(retention_ms=4_000)  # buckets of one second
    start = 1_800_000_000_000
    for second, name in enumerate((b"a", b"b", b"c")):
        dedup.seen_before(Deduplicator.body_key(name, b"[]"), 0, second, start + 1000 * second)
    dedup.seen_before(Deduplicator.body_key(b"other", b"[]"), 3, 1, start)
    # 4 s after the first: "a" of partition 0 is past the retention, the others are not.
    assert dedup.expire(0, start + 5_000) == 1
    assert len(store.data[0]) == 2
    assert len(store.data[3]) == 1
    # Nothing else expired since: the next pass reads nothing.
    assert dedup.expire(0, start + 5_500) == 0
    assert dedup.expire(0, start + 7_000) == 2
    assert store.data[0] == {}
    # After expiry a repeat is new again.
    assert not dedup.seen_before(Deduplicator.body_key(b"a", b"[]"), 0, 9, start + 7_000)


def test_expiry_deletes_in_steps_of_its_limit_and_resumes() -> None:
    dedup, store = dedup_on(retention_ms=16_000)
    start = 1_800_000_000_000
    for n in range(25):
        dedup.seen_before(Deduplicator.record_key("app", str(n)), 0, n, start + n)
    assert dedup.expire(0, start + 60_000, limit=10) == 10
    assert dedup.expire(0, start + 60_000, limit=10) == 10
    assert dedup.expire(0, start + 60_000, limit=10) == 5
    assert store.data[0] == {}


def test_expiry_after_a_restart_needs_nothing_in_memory() -> None:
    before, store = dedup_on(retention_ms=4_000)
    start = 1_800_000_000_000
    for n in range(3):
        before.seen_before(Deduplicator.record_key("app", str(n)), 0, n, start + 1000 * n)
    after = Deduplicator(store, 4_000)
    assert after.expire(0, start + 6_000) == 2
    assert len(store.data[0]) == 1


def test_old_string_keyed_entries_are_migrated_so_repeats_stay_dropped() -> None:
    """An upgrade from the JSON string keys (`{deployment}|body|{sha256 hex}`)."""
    store = MemoryPartitions()
    now = 1_800_000_000_000
    body = b'[{"topic": "verification"}]'
    old_body = f"app|body|{hashlib.sha256(body).hexdigest()}"
    old = {old_body: [5, now + HOUR, 0], "app|id|u-1": [6, now + 7 * DAY, 0],
           "app|id|gone": [7, now - 1, 0]}
    store.data[0] = {orjson.dumps(k): orjson.dumps(v) for k, v in old.items()}
    dedup = Deduplicator(store, DAY)
    assert dedup.seen_before(Deduplicator.body_key(b"app", body), 0, 99, now)
    assert dedup.seen_before(Deduplicator.record_key("app", "u-1"), 0, 99, now)
    # The same message processed again after the upgrade is still not a duplicate.
    assert not dedup.seen_before(Deduplicator.body_key(b"app", body), 0, 5, now)
    # The expired one is gone; no old key is left.
    assert not dedup.seen_before(Deduplicator.record_key("app", "gone"), 0, 99, now)
    assert all(key.startswith(VERSION) for key in store.data[0])
    # An entry kept 7 days by the old retention lives the new retention at most.
    assert not dedup.seen_before(Deduplicator.record_key("app", "u-1"), 0, 100,
                                 now + DAY + dedup.bucket_ms + 1)


def test_an_unreadable_old_entry_is_dropped() -> None:
    store = MemoryPartitions()
    store.data[0] = {b'"no-separators"': b"[1, 2, 0]", b"\xff": b"?"}
    dedup = Deduplicator(store, DAY)
    assert dedup.expire(0, 1_800_000_000_000) == 0
    assert store.data[0] == {}


def test_forgotten_partitions_are_checked_again_when_assigned_again() -> None:
    dedup, _store = dedup_on(retention_ms=16_000)
    start = 1_800_000_000_000
    dedup.seen_before(Deduplicator.record_key("app", "x"), 0, 1, start)
    assert dedup.expire(0, start + 1000) == 0
    dedup.forget_partitions({0})
    # Meanwhile another worker held the partition and the entry is now past the retention.
    assert dedup.expire(0, start + 20_000) == 1
