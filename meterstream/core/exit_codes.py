"""The exit codes of the `meterstream` command, one per kind of failure, so that a script
can tell "fix the command" from "Kafka is down" without reading the message.

docs/cli.md lists them; tests/unit/test_cli.py keeps that table equal to this enum.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    """Done."""
    FAILED = 1
    """The command ran and failed: a query ClickHouse refused, an invoice run with problems,
    a load check that found a mismatch, an admin API answer that is an error."""
    USAGE = 2
    """Bad arguments or configuration (the message names the option or variable)."""
    NOT_RUNNING = 3
    """`meterstream kafka status`: the local broker is not running."""
    KAFKA_UNREACHABLE = 4
    """Kafka (METERSTREAM_KAFKA) cannot be reached."""
    CLICKHOUSE_UNREACHABLE = 5
    """ClickHouse (METERSTREAM_CLICKHOUSE) cannot be reached, or the sink that holds the
    embedded engine does not answer queries."""
    ADMIN_API_UNREACHABLE = 6
    """The receiver's admin API (METERSTREAM_ADMIN_URL) cannot be reached."""
    INTERRUPTED = 130
    """Stopped by Ctrl-C (SIGINT)."""
