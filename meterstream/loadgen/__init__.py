"""`meterstream loadgen`: simulated Convex deployments sending realistic log-stream and
agent-usage traffic, with the exact totals the pipeline must arrive at.

    catalogue.py   the simulated apps: their functions, end users and LLM models
    events.py      Convex V2 log-stream events and agent usage records, as sent
    traffic.py     the traffic model: which deployment sends what, when, late or twice
    expected.py    the totals a run must produce, per deployment, metric and table
    sender.py      signed 128-event batches over HTTP at a rate, with Convex's retries
    register.py    the deployments' registration through the admin API
    check.py       the expected totals against ClickHouse
    report.py      what a run and a check print
    cli.py         the command line

`run_load` is the entry point for other code (the combined benchmark):

    from meterstream.loadgen import LoadOptions, run_load
    result = await run_load(LoadOptions(deployments=100, rate=20_000, duration=60), settings)
    result.stats, result.expected   # what was sent; the totals the pipeline must reach
"""

from __future__ import annotations

from typing import Any

__all__ = ["LoadOptions", "LoadResult", "run_load"]


def __getattr__(name: str) -> Any:
    # Lazily, so that building the CLI's parser does not import the sender's dependencies.
    if name in __all__:
        from meterstream.loadgen import sender

        return getattr(sender, name)
    raise AttributeError(name)
