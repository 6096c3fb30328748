"""Live usage per deployment and window, in a Faust table, exact across restarts.

Keys (all of one deployment live in its raw partition, since raw messages are
keyed by deployment and the table's changelog follows the message's partition):

    {deployment}|{granularity}|{window start}          metrics and tokens of a window
    {deployment}|user|{day|month}|{start}|{user id}    an end user's tokens
    {deployment}|storage                               the latest storage snapshot

Each value remembers the raw offset that last changed it ("o"). Faust writes
table changes to the changelog before the raw offset is committed, and without
transactions a crash can leave some of a message's changes written and others
not. Reprocessing that message then skips each key that already holds it and
applies it to the others: every key counts every message exactly once.
"""

from __future__ import annotations

from collections import defaultdict
from fractions import Fraction
from typing import Any

from processors.expiry import Expiry
from processors.records import Record
from processors.usage import (
    BYTE_MS_PER_GB_HOUR,
    MB_MS_PER_GB_HOUR,
    MessageUsage,
    WindowDelta,
    storage_bytes,
)
from processors.windows import DAY_MS, expires_at, split_interval

STORAGE_GRANULARITIES = ("hour", "day", "month")
# A deployment that sent no snapshot for this long is forgotten by the live state.
STORAGE_RETENTION_MS = 40 * DAY_MS


def window_key(deployment: str, granularity: str, start: int) -> str:
    return f"{deployment}|{granularity}|{start}"


def user_key(deployment: str, user: str, granularity: str, start: int) -> str:
    return f"{deployment}|user|{granularity}|{start}|{user}"


def storage_key(deployment: str) -> str:
    return f"{deployment}|storage"


class UsageState:
    def __init__(self, table: Any, grace_ms: int) -> None:
        self.table = table
        self.grace_ms = grace_ms
        self.expiry = Expiry(table, lambda value: (value["x"], value["p"]))

    def apply(self, deployment: str, usage: MessageUsage, partition: int, offset: int,
              received_at: int) -> None:
        """Adds one raw message's usage, unless a key already holds that message."""
        windows = dict(usage.windows)
        if usage.snapshots:
            for (granularity, start), byte_ms in self._storage(
                    deployment, usage.snapshots, partition, offset).items():
                delta = windows.setdefault((granularity, start), WindowDelta())
                for category, amount in byte_ms.items():
                    delta.metrics[f"{category}_storage_byte_ms"] += amount
        for (granularity, start), delta in windows.items():
            expires = expires_at(granularity, start, self.grace_ms)
            if expires > received_at:  # else the window has left the live state
                self._merge(window_key(deployment, granularity, start), delta, partition,
                            offset, expires)
        for (user, granularity, start), delta in usage.users.items():
            expires = expires_at(granularity, start, self.grace_ms)
            if expires > received_at:
                self._merge(user_key(deployment, user, granularity, start), delta, partition,
                            offset, expires)

    def _merge(self, key: str, delta: WindowDelta, partition: int, offset: int,
               expires: int) -> None:
        value = self.table.get(key)
        if value is not None and value["o"] >= offset:
            return
        if value is None:
            value = {"o": offset, "x": expires, "p": partition, "m": {}, "t": {}}
            self.expiry.remember(key, partition, expires)
        metrics = value["m"]
        for name, amount in delta.metrics.items():
            metrics[name] = metrics.get(name, 0) + amount
        tokens = value["t"]
        for model, kinds in delta.tokens.items():
            mine = tokens.setdefault(model, {})
            for kind, amount in kinds.items():
                mine[kind] = mine.get(kind, 0) + amount
        value["o"] = offset
        self.table[key] = value

    def _storage(self, deployment: str, snapshots: list[Record], partition: int,
                 offset: int) -> dict[tuple[str, int], dict[str, int]]:
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
        if state is None:
            self.expiry.remember(key, partition, expires)
        self.table[key] = {"o": offset, "x": expires, "p": partition, "ts": previous["ts"],
                           "bytes": previous["bytes"], "d": _pieces_to_json(pieces)}
        return pieces

    # Reading, for quotas and the quota API.

    def window(self, deployment: str, granularity: str, start: int) -> dict[str, Any]:
        return self.table.get(window_key(deployment, granularity, start)) or {}

    def user_window(self, deployment: str, user: str, granularity: str,
                    start: int) -> dict[str, Any]:
        return self.table.get(user_key(deployment, user, granularity, start)) or {}

    def latest_storage(self, deployment: str) -> dict[str, Any]:
        return self.table.get(storage_key(deployment)) or {}


def metric_value(metric: str, window: dict[str, Any],
                 storage: dict[str, Any]) -> Fraction | int:
    """A quota metric's usage, exact, in the unit its limit is given in."""
    counters = window.get("m", {})
    if metric == "action_compute_gb_hours":
        return Fraction(counters.get("action_compute_mb_ms", 0), MB_MS_PER_GB_HOUR)
    if metric == "storage_bytes":
        return sum(storage.get("bytes", {}).values())
    return counters.get(metric, 0)


def storage_gb_hours(window: dict[str, Any], category: str) -> float:
    return window.get("m", {}).get(f"{category}_storage_byte_ms", 0) / BYTE_MS_PER_GB_HOUR


def _pieces_to_json(pieces: dict[tuple[str, int], dict[str, int]]) -> list[Any]:
    return [[granularity, start, dict(byte_ms)]
            for (granularity, start), byte_ms in pieces.items()]


def _pieces_from_json(stored: list[Any]) -> dict[tuple[str, int], dict[str, int]]:
    return {(granularity, start): byte_ms for granularity, start, byte_ms in stored}
