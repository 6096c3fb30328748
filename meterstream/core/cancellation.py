"""A cancel that CPython 3.11's `asyncio.wait_for` lost, noticed.

When the awaited operation finishes in the same turn of the event loop as a cancel of the
task waiting for it, 3.11's `wait_for` returns (or raises) the operation's own outcome and
the `CancelledError` never comes (fixed in 3.12). A loop that waits that way and is stopped
with `task.cancel()` then goes on for ever, and whoever awaits the task hangs: a sink's
SIGTERM waited 50 minutes on its lag meter so. The request is not lost, only the
exception: `Task.cancelling()` still counts it, so such a loop calls `raise_if_cancelled`
after each wait.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelled() -> None:
    """Raises CancelledError when the current task has a cancel request pending."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
