"""Raw messages whose processing fails: retried a few times, then dead-lettered.

A tenant controls what is in its raw messages, so a message that trips a bug (or
a limit) must not stop the worker: it would crash on the same uncommitted message
after every restart and every other tenant's metering would stop with it. So an
attempt that raises is repeated up to `max_attempts` times (a failure that depends
on the moment passes), then the message goes to the dead-letter topic with the
reason and its partition, offset and key, and is acked like any other: its offset
is committed and the partition moves on.

What a failed attempt may have written stays exactly-once: its live-state changes
are each stamped with the message's offset (processors/state.py), so another attempt
skips them; its deduplication entries carry the same offset, so another attempt is
not a duplicate of itself; forwarded records carry their raw offset, which the sink
stores once; alerts are published once by id. A dead-lettered message keeps what
its last attempt did (the letter's `stage`): up to "split" nothing was counted,
from "state" its usage may be in the live windows (quotas) and, from "forward", some
of its records may reach ClickHouse. The checks that refuse a message on purpose
run before anything is written (raw_processor.ForwardTooLarge before "state";
processors/state.py StateValueTooLarge checks every value before the first write),
so a message they refuse is counted nowhere.

Kafka's own failures are not the message's fault: they are raised (the worker
stops and processes the message again after its restart, as before), never
dead-lettered, or a broker outage would discard good messages.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordTooLargeError

from processors import metrics

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_MAX_ATTEMPTS = 3


class Poison(Exception):
    """Every attempt at a message raised; `letter` is its dead letter."""

    def __init__(self, letter: dict[str, Any]) -> None:
        super().__init__(letter["reason"])
        self.letter = letter


def not_the_message(exc: BaseException) -> bool:
    """Failures of the infrastructure, which retrying later (after a restart) cures. (A
    record too large for Kafka is the message's own.)"""
    if isinstance(exc, MessageSizeTooLargeError | RecordTooLargeError):
        return False
    return isinstance(exc, KafkaError | ConnectionError | TimeoutError) or not isinstance(
        exc, Exception)


async def with_retries(attempt: Callable[[], Awaitable[T]], max_attempts: int,
                       where: dict[str, Any], stage: Callable[[], str]) -> T:
    """`attempt()`'s result; raises Poison after `max_attempts` failures of the message's
    own making, and re-raises the others at once."""
    for number in range(1, max_attempts + 1):
        try:
            return await attempt()
        except BaseException as exc:
            if not_the_message(exc):
                raise
            metrics.MESSAGE_FAILURES.inc()
            log.warning("processing a raw message failed", exc_info=number == 1, extra={
                **where, "attempt": number, "of": max_attempts, "error": repr(exc)[:500]})
            if number == max_attempts:
                raise Poison({
                    "reason": f"worker: processing raised {type(exc).__name__}: {exc}"[:2000],
                    "error_type": type(exc).__name__, "attempts": number, "stage": stage(),
                    **where}) from exc
    raise AssertionError("max_attempts must be at least 1")
