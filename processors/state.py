"""Live usage per deployment and window, in a Faust table, exact across restarts.

Keys (all of one deployment live in its raw partition, since raw messages are
keyed by deployment and the table's changelog follows the message's partition):

    {deployment}|{granularity}|{window start}          metrics and tokens of a window
    {deployment}|user|{day|month}|{start}|{user id}    an end user's tokens
    {deployment}|users|{day|month}|{start}             how many end users have their own key
    {deployment}|other-users|{day|month}|{start}       the tokens of the end users beyond them
    {deployment}|storage                               the latest storage snapshot

Each value remembers the raw offset that last changed it ("o"). Faust writes
table changes to the changelog before the raw offset is committed, and without
transactions a crash can leave some of a message's changes written and others
not. Reprocessing that message then skips each key that already holds it and
applies it to the others: every key counts every message exactly once.

What survives a crash is a prefix of the writes: all keys of a deployment are on
its raw partition's changelog partition, Faust sends a table's changes in the order
they are made (one producer buffer) and the producer keeps one batch in flight per
partition. So when a key holds a later message's change, every change of the
earlier messages was stored. (The storage snapshot's "d" below relies on it too.)

The table lives in RocksDB on the worker's disk too (processors/app.py), which may hold
changes its changelog never got when the worker crashed: the local copy is therefore
kept only after a clean stop and otherwise restored from the changelog
(processors/ordered_store.py), so the state a message is processed again against is
always the changelog's prefix above.

Bounded by construction. Tenants choose end user ids and model names, so:

- the token maps ("t") hold only priced models plus meterstream/core/usage.py OTHER_MODEL;
- at most `max_users` end users per deployment and day (month) window get their own
  key; the others are counted together under `other-users`. Which users get a key
  must come out the same when a message is processed again after a crash, whatever
  part of its first attempt was stored. The `users` key holds the count "n", and
  "b", the count before the message that last changed it ("o"). For message M:

    * if the count holds a later message's change, all of M's writes are stored
      (prefix, above): M's named users are those whose key was created ("c") at or
      before M; the others were folded by M;
    * otherwise the count before M is "b" if M changed it already, else "n"; the
      users M brings that have no key, or a key M itself created ("c" = M's offset),
      are taken in sorted order, the first ones up to `max_users` by name. The count
      before M and that order are the same on every attempt, so is the choice; the
      count is written first, so no user key exists whose creation the count misses.
      (A user key from before "c" was kept counts as created before any message; the
      windows open at such an upgrade may name up to `max_users` users more.)

  A value then holds a fixed set of metric names, at most (priced models + 1) x 7
  token kinds and a few offsets: its size is bounded whatever the input (a test
  checks the worst case against the producer's limit). `_put` also checks every
  value before any key of the message is written, and refuses the message
  (StateValueTooLarge) instead of letting the producer crash the worker.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import orjson

from meterstream.core.catalogue import BY_QUOTA, BYTE_MS_PER_GB_HOUR
from meterstream.core.records import StorageSnapshot
from meterstream.core.usage import (
    STORAGE_RETENTION_MS,
    MessageUsage,
    WindowDelta,
    storage_bytes,
)
from meterstream.core.windows import expires_at, split_interval
from processors import metrics
from processors.expiry import Expiry, Scan

STORAGE_GRANULARITIES = ("hour", "day", "month")


def window_key(deployment: str, granularity: str, start: int) -> str:
    return f"{deployment}|{granularity}|{start}"


def user_key(deployment: str, user: str, granularity: str, start: int) -> str:
    return f"{deployment}|user|{granularity}|{start}|{user}"


def storage_key(deployment: str) -> str:
    return f"{deployment}|storage"


def users_key(deployment: str, granularity: str, start: int) -> str:
    return f"{deployment}|users|{granularity}|{start}"


def other_users_key(deployment: str, granularity: str, start: int) -> str:
    return f"{deployment}|other-users|{granularity}|{start}"


class CachedTable:
    """The usage table with the values it decoded kept for reuse, absent keys included.

    In RocksDB every `get` decodes the key's JSON again, and a message reads tens of keys
    (its windows, its users, and for the runaway check the hour of minute windows before
    it): decoding them every time cost the worker about half again its CPU per event.
    Values are cached only while a message is processed (`populate`), when this worker
    owns the partition and every change to its keys goes through here; a rebalance
    clears the cache (`forget`, from the expiry's forget_partitions), since another
    worker may have changed the keys meanwhile. Values are shared as the memory store
    shared them: callers replace values, or change one they then store."""

    _ABSENT: Any = object()

    def __init__(self, table: Any, populate: Callable[[], bool], size: int = 65536) -> None:
        self.table = table
        self.populate = populate
        self.size = size
        self._cache: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any, default: Any = None) -> Any:
        value = self._cache.get(key, self._ABSENT)
        if value is self._ABSENT:
            value = self.table.get(key)
            if self.populate():
                self._keep(key, value)
        else:
            self._cache.move_to_end(key)
        return default if value is None else value

    def __setitem__(self, key: Any, value: Any) -> None:
        self.table[key] = value
        self._keep(key, value)

    def __delitem__(self, key: Any) -> None:
        self._cache.pop(key, None)
        del self.table[key]

    def items(self) -> Any:
        return self.table.items()

    def forget(self) -> None:
        self._cache.clear()

    def _keep(self, key: Any, value: Any) -> None:
        self._cache[key] = value
        self._cache.move_to_end(key)
        if len(self._cache) > self.size:
            self._cache.popitem(last=False)


DEFAULT_MAX_USERS = 1000
DEFAULT_MAX_VALUE_BYTES = 1 << 20


class StateValueTooLarge(ValueError):
    """A live-state value would exceed what the producer can write to the changelog (its
    size, or a counter beyond the 64 bits Faust's JSON takes)."""


Write = tuple[str, dict[str, Any], int, int | None]
"""(key, new value, partition, expires if the key is new else None)"""


class UsageState:
    def __init__(self, table: Any, grace_ms: int, max_users: int = DEFAULT_MAX_USERS,
                 max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
                 scan: Scan | None = None) -> None:
        self.table = table
        self.grace_ms = grace_ms
        self.max_users = max_users
        self.max_value_bytes = max_value_bytes
        """Largest key + JSON value written to the changelog (below the producer's limit)."""
        self.expiry = Expiry(table, lambda value: (value["x"], value["p"]), scan,
                             on_forget=getattr(table, "forget", None))

    def apply(self, deployment: str, usage: MessageUsage, partition: int, offset: int,
              received_at: int) -> None:
        """Adds one raw message's usage, unless a key already holds that message.

        Every new value is computed and checked first, then written: a refused message
        (StateValueTooLarge) writes nothing."""
        writes: list[Write] = []
        windows = dict(usage.windows)
        if usage.snapshots:
            for (granularity, start), byte_ms in self._storage(
                    deployment, usage.snapshots, partition, offset, writes).items():
                delta = windows.setdefault((granularity, start), WindowDelta())
                for category, amount in byte_ms.items():
                    delta.metrics[f"{category}_storage_byte_ms"] += amount
        for (granularity, start), delta in windows.items():
            expires = expires_at(granularity, start, self.grace_ms)
            if expires > received_at:  # else the window has left the live state
                self._merge(window_key(deployment, granularity, start), delta, partition,
                            offset, expires, writes)
        self._users(deployment, usage, partition, offset, received_at, writes)
        for key, value, _, _ in writes:
            try:
                size = len(orjson.dumps(key)) + len(orjson.dumps(value))  # as Faust sends them
            except TypeError as exc:  # Faust writes the changelog with orjson too
                metrics.STATE_TOO_LARGE.inc()
                raise StateValueTooLarge(f"live-state value {key[:200]!r} cannot be written "
                                         f"to the changelog: {exc}") from None
            if size > self.max_value_bytes:
                metrics.STATE_TOO_LARGE.inc()
                raise StateValueTooLarge(
                    f"live-state value {key[:200]!r} would be {size} bytes, over the "
                    f"{self.max_value_bytes} the changelog takes")
        for key, value, key_partition, new_expires in writes:
            if new_expires is not None:
                self.expiry.remember(key, key_partition, new_expires)
            self.table[key] = value

    def _users(self, deployment: str, usage: MessageUsage, partition: int, offset: int,
               received_at: int, writes: list[Write]) -> None:
        """End users' tokens: by name for the first `max_users` of a deployment window,
        the rest together (the module's docstring proves the choice is exactly-once)."""
        groups: dict[tuple[str, int], dict[str, WindowDelta]] = defaultdict(dict)
        for (user, granularity, start), delta in usage.users.items():
            groups[(granularity, start)][user] = delta
        for (granularity, start), members in groups.items():
            expires = expires_at(granularity, start, self.grace_ms)
            if expires <= received_at:
                continue
            named, folded = self._admit(deployment, granularity, start, sorted(members),
                                        partition, offset, expires, writes)
            for user in named:
                self._merge(user_key(deployment, user, granularity, start), members[user],
                            partition, offset, expires, writes)
            if folded:
                metrics.USERS_FOLDED.inc(len(folded))
                rest = WindowDelta()
                for user in folded:
                    rest.add(members[user])
                self._merge(other_users_key(deployment, granularity, start), rest, partition,
                            offset, expires, writes)

    def _admit(self, deployment: str, granularity: str, start: int, users: list[str],
               partition: int, offset: int, expires: int,
               writes: list[Write]) -> tuple[list[str], list[str]]:
        """(users counted by name, users folded) of one message in one window."""
        count_key = users_key(deployment, granularity, start)
        count = self.table.get(count_key)
        created = {user: self._created(user_key(deployment, user, granularity, start))
                   for user in users}
        if count is not None and count["o"] > offset:
            named = [u for u in users if (at := created[u]) is not None and at <= offset]
            taken = set(named)
            return named, [u for u in users if u not in taken]
        before = 0 if count is None else count["b"] if count["o"] == offset else count["n"]
        known = [u for u in users if (at := created[u]) is not None and at < offset]
        new = [u for u in users if created[u] is None or created[u] == offset]
        room = max(0, self.max_users - before)
        admitted, folded = new[:room], new[room:]
        if admitted:
            writes.append((count_key, {"o": offset, "b": before, "n": before + len(admitted),
                                       "x": expires, "p": partition},
                           partition, expires if count is None else None))
        return known + admitted, folded

    def _created(self, key: str) -> int | None:
        """The offset that created a user's key (-1 for keys from before "c" was kept)."""
        value = self.table.get(key)
        return None if value is None else value.get("c", -1)

    def _merge(self, key: str, delta: WindowDelta, partition: int, offset: int,
               expires: int, writes: list[Write]) -> None:
        value = self.table.get(key)
        if value is not None and value["o"] >= offset:
            return
        if value is None:
            value = {"o": offset, "c": offset, "x": expires, "p": partition, "m": {}, "t": {}}
            new_expires: int | None = expires
        else:
            # A copy: nothing is changed in the table before the message is checked.
            value = {**value, "m": dict(value["m"]),
                     "t": {model: dict(kinds) for model, kinds in value["t"].items()}}
            new_expires = None
        counters = value["m"]
        for name, amount in delta.metrics.items():
            counters[name] = counters.get(name, 0) + amount
        tokens = value["t"]
        for model, kinds in delta.tokens.items():
            mine = tokens.setdefault(model, {})
            for kind, amount in kinds.items():
                mine[kind] = mine.get(kind, 0) + amount
        value["o"] = offset
        writes.append((key, value, partition, new_expires))

    def _storage(self, deployment: str, snapshots: list[StorageSnapshot], partition: int,
                 offset: int, writes: list[Write]) -> dict[tuple[str, int], dict[str, int]]:
        """Byte-milliseconds of storage per window between consecutive snapshots.

        Each snapshot's bytes count from its time until the next snapshot's. What a
        message added is kept with the latest snapshot ("d"), so that reprocessing the
        message after a crash adds the same to windows that missed it."""
        key = storage_key(deployment)
        state = self.table.get(key)
        if state is not None and state["o"] >= offset:
            return _pieces_from_json(state["d"]) if state["o"] == offset else {}
        pieces: dict[tuple[str, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        previous = state
        for snapshot in snapshots:
            if previous is not None and snapshot["timestamp"] <= previous["ts"]:
                continue  # out of order or repeated: only a newer snapshot moves time on
            if previous is not None:
                for granularity in STORAGE_GRANULARITIES:
                    for start, span in split_interval(granularity, previous["ts"],
                                                      snapshot["timestamp"]):
                        for category, amount in previous["bytes"].items():
                            pieces[(granularity, start)][category] += amount * span
            previous = {"ts": snapshot["timestamp"], "bytes": storage_bytes(snapshot)}
        if previous is None or previous is state:
            return {}
        expires = previous["ts"] + STORAGE_RETENTION_MS
        writes.append((key, {"o": offset, "x": expires, "p": partition, "ts": previous["ts"],
                             "bytes": previous["bytes"], "d": _pieces_to_json(pieces)},
                       partition, expires if state is None else None))
        return pieces

    # Reading, for quotas and the quota API.

    def window(self, deployment: str, granularity: str, start: int) -> dict[str, Any]:
        return self.table.get(window_key(deployment, granularity, start)) or {}

    def user_window(self, deployment: str, user: str, granularity: str,
                    start: int) -> dict[str, Any]:
        return self.table.get(user_key(deployment, user, granularity, start)) or {}

    def other_users_window(self, deployment: str, granularity: str,
                           start: int) -> dict[str, Any]:
        return self.table.get(other_users_key(deployment, granularity, start)) or {}

    def named_users(self, deployment: str, granularity: str, start: int) -> int:
        return (self.table.get(users_key(deployment, granularity, start)) or {}).get("n", 0)

    def latest_storage(self, deployment: str) -> dict[str, Any]:
        return self.table.get(storage_key(deployment)) or {}


def metric_value(metric: str, window: dict[str, Any],
                 storage: dict[str, Any]) -> Fraction | int:
    """A quota metric's usage (meterstream/core/catalogue.py `quota`), exact, in the unit
    its limit is given in."""
    counted = BY_QUOTA[metric]
    if counted.name == "storage_bytes":  # a gauge: the latest snapshot's bytes
        return sum(storage.get("bytes", {}).values())
    value: int = window.get("m", {}).get(counted.name, 0)
    return value if counted.per_quota_unit == 1 else Fraction(value, counted.per_quota_unit)


def storage_gb_hours(window: dict[str, Any], category: str) -> float:
    return window.get("m", {}).get(f"{category}_storage_byte_ms", 0) / BYTE_MS_PER_GB_HOUR


def _pieces_to_json(pieces: dict[tuple[str, int], dict[str, int]]) -> list[Any]:
    return [[granularity, start, dict(byte_ms)]
            for (granularity, start), byte_ms in pieces.items()]


def _pieces_from_json(stored: list[Any]) -> dict[tuple[str, int], dict[str, int]]:
    return {(granularity, start): byte_ms for granularity, start, byte_ms in stored}
