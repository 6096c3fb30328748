"""`meterstream loadgen` and `meterstream loadgen check`."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meterstream.core.config import Settings

if TYPE_CHECKING:
    from meterstream.loadgen.expected import ExpectedTotals
    from meterstream.loadgen.sender import LoadOptions, LoadResult

EXPECTED_KIND = "meterstream-loadgen-expected"
# The ClickHouse tables a run is checked against (expected.TABLES, which imports more).
TABLES = ("function_executions", "file_downloads", "log_stream_egress", "agent_usage",
          "storage_snapshots")


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be a fraction from 0 to 1")
    return value


def _tables(text: str) -> tuple[str, ...]:
    tables = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = set(tables) - set(TABLES)
    if unknown or not tables:
        raise argparse.ArgumentTypeError(f"tables are among {', '.join(TABLES)}")
    return tables


EXAMPLES = """\
examples:
  meterstream loadgen --deployments 100 --users 50 --duration 60 --expected-out expected.json
  meterstream loadgen --events 100000 --rate 5000 --connections 16 --batch-size 64 \\
      --seed 7 --prefix bench --check --check-tables function_executions,agent_usage
  meterstream loadgen --duration 30 --duplicates 0.05 --late 0.01 --too-late 0.001 \\
      --storage-interval 600 --egress-interval 30 --no-progress
  meterstream loadgen check --expected expected.json --tables function_executions --wait 60"""

CHECK_EXAMPLES = """\
examples:
  meterstream loadgen check --expected expected.json
  meterstream loadgen check --expected expected.json --tables function_executions,agent_usage \\
      --wait 60"""


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "loadgen", help="simulated Convex deployments sending realistic traffic, with the "
                        "exact totals to expect",
        description="Registers N simulated deployments through the admin API and sends them "
                    "signed Convex log-stream batches and agent usage records at "
                    "METERSTREAM_PUBLIC_URL (default: the local receiver); prints the "
                    "exact totals the pipeline must arrive at.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deployments", type=int, default=10, metavar="N",
                        help="simulated deployments to register and send for (default 10)")
    parser.add_argument("--users", type=int, default=20, metavar="M",
                        help="end users of each deployment's agent (default 20)")
    parser.add_argument("--seed", type=int, default=0,
                        help="fixes deployments, users and the sequence of events (default 0)")
    parser.add_argument("--prefix", help="deployment names are PREFIX-0001, ... "
                                         "(default: loadgen-<random>, new ones each run)")
    parser.add_argument("--rate", type=float, default=0.0, metavar="EVENTS_PER_S",
                        help="log-stream events per second; 0 (default): as fast as possible")
    limit = parser.add_mutually_exclusive_group()
    limit.add_argument("--duration", type=float, metavar="SECONDS",
                       help="send for this long (default 10 s)")
    limit.add_argument("--events", type=int, metavar="N",
                       help="send this many log-stream events (agent usage records on top)")
    parser.add_argument("--connections", type=int, default=8,
                        help="concurrent senders (default 8)")
    parser.add_argument("--batch-size", type=int, default=128,
                        help="events per log-stream body, at most 128 (default 128)")
    parser.add_argument("--duplicates", type=_fraction, default=0.0, metavar="FRACTION",
                        help="bodies delivered a second time, byte for byte (counted once)")
    parser.add_argument("--late", type=_fraction, default=0.0, metavar="FRACTION",
                        help="events late but within METERSTREAM_LATE_GRACE (counted)")
    parser.add_argument("--too-late", type=_fraction, default=0.0, metavar="FRACTION",
                        help="events older than the grace (dead-lettered, not counted)")
    parser.add_argument("--storage-interval", type=float, default=3600.0, metavar="SECONDS",
                        help="mean time between a deployment's storage snapshots (default 3600)")
    parser.add_argument("--egress-interval", type=float, default=60.0, metavar="SECONDS",
                        help="time between a deployment's log_stream_egress events (default 60)")
    parser.add_argument("--expected-out", type=Path, metavar="FILE",
                        help="write the expected totals (and the run's figures) as JSON")
    parser.add_argument("--check", action="store_true",
                        help="afterwards, check the totals against ClickHouse (as `check`)")
    parser.add_argument("--check-tables", type=_tables, default=TABLES, metavar="T1,T2",
                        help=f"tables --check compares (default all: {','.join(TABLES)})")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="a progress bar on stderr (default: when it is a terminal)")
    actions = parser.add_subparsers(dest="loadgen_action", metavar="[check]")
    check = actions.add_parser(
        "check", help="compare a run's expected totals with ClickHouse; exit 1 on a mismatch",
        epilog=CHECK_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("--expected", type=Path, required=True, metavar="FILE",
                       help="the JSON written by --expected-out")
    check.add_argument("--tables", type=_tables, default=TABLES, metavar="T1,T2",
                       help=f"tables to compare (default all: {','.join(TABLES)})")
    check.add_argument("--wait", type=float, default=30.0, metavar="SECONDS",
                       help="keep comparing until the values match or this time has passed, "
                            "while the sink catches up (default 30)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from meterstream.loadgen.expected import ExpectedTotals
    from meterstream.loadgen.register import RegistrationError
    from meterstream.loadgen.sender import LoadOptions

    if args.loadgen_action == "check":
        try:
            document = json.loads(args.expected.read_text())
            if document.get("kind") != EXPECTED_KIND:
                raise ValueError(f"not a loadgen expected-totals document ({EXPECTED_KIND})")
            expected = ExpectedTotals.from_json(document)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"meterstream loadgen check: cannot read {args.expected}: {exc}",
                  file=sys.stderr)
            return 2
        return check(expected, args.tables, args.wait, settings)
    try:
        options = LoadOptions(
            deployments=args.deployments, users=args.users, seed=args.seed, prefix=args.prefix,
            rate=args.rate, duration=args.duration, events=args.events,
            connections=args.connections, batch_size=args.batch_size,
            duplicates=args.duplicates, late=args.late, too_late=args.too_late,
            storage_interval=args.storage_interval, egress_interval=args.egress_interval,
            progress=args.progress)
        options.traffic(int(settings.late_grace * 1000))  # validates the traffic options
    except ValueError as exc:
        print(f"meterstream loadgen: {exc}", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(_run_until_signalled(options, settings))
    except RegistrationError as exc:
        print(f"meterstream loadgen: {exc}", file=sys.stderr)
        return 1
    from meterstream.loadgen import report

    report.summary(result, sys.stdout)
    report.totals_table(result.expected, sys.stdout)
    if args.expected_out is not None:
        args.expected_out.write_text(json.dumps(result.to_json(), indent=1) + "\n")
        print(f"expected totals written to {args.expected_out}")
    code = 0 if result.stats.rejected == 0 and result.expected.exact else 1
    if args.check:
        sys.stdout.flush()
        code = max(code, check(result.expected, args.check_tables, 60.0, settings))
    return code


async def _run_until_signalled(options: LoadOptions, settings: Settings) -> LoadResult:
    """The load; the first SIGINT or SIGTERM ends it early with what was acknowledged
    (a second SIGINT interrupts at once)."""
    from meterstream.loadgen.sender import run_load

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stopping(signum: int) -> None:
        print(f"\nmeterstream loadgen: {signal.Signals(signum).name}: finishing the bodies "
              "in flight", file=sys.stderr)
        stop.set()
        loop.remove_signal_handler(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping, signum)
    return await run_load(options, settings, stop)


def check(expected: ExpectedTotals, tables: tuple[str, ...], wait: float,
          settings: Settings) -> int:
    """Compares until every value matches or `wait` seconds have passed; 0 when they match,
    1 on a mismatch, 2 when ClickHouse cannot be asked."""
    from meterstream.core.clickhouse import EngineBusy
    from meterstream.core.query import QueryError, run_sql
    from meterstream.loadgen import report
    from meterstream.loadgen.check import check as compare_with

    deadline = time.monotonic() + wait
    while True:
        try:
            compared, found = compare_with(expected, lambda sql: run_sql(settings.clickhouse, sql),
                                           tables)
        except (QueryError, EngineBusy) as exc:
            print(f"meterstream loadgen check: {exc}", file=sys.stderr)
            return 2
        if not found or time.monotonic() >= deadline:
            break
        time.sleep(1.0)  # the sink inserts every METERSTREAM_SINK_BATCH_SECONDS
    if not expected.exact:
        print(f"warning: the expected totals are not exact: {expected.undetermined_bodies} "
              "bodies may or may not have been stored", file=sys.stderr)
    report.differences(compared, found, len(expected.deployments), tables, sys.stdout)
    return 1 if found else 0
