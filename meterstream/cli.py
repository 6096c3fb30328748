"""The `meterstream` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from meterstream.core.config import VARIABLES, ConfigError, Settings
from meterstream.core.logs import configure


def _parser() -> argparse.ArgumentParser:
    variables = "\n".join(f"  {v.name} (default {v.default})\n      {v.help}" for v in VARIABLES)
    parser = argparse.ArgumentParser(
        prog="meterstream",
        description="Real-time usage metering for Convex deployments.",
        epilog=f"configuration, from environment variables:\n{variables}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    kafka = commands.add_parser("kafka", help="a local Apache Kafka broker (no Docker needed)")
    kafka.add_argument("action", choices=("start", "stop", "status", "kill"),
                       help="kill: SIGKILL one node of a local cluster (--node), for tests")
    kafka.add_argument("--sasl-ssl", action="store_true",
                       help="start: clients connect with SASL_SSL and SCRAM-SHA-512 (a CA, "
                            "a broker certificate and a user are made; their settings are "
                            "printed); with --brokers, every node and the replication "
                            "between them)")
    kafka.add_argument("--brokers", type=int, default=None, metavar="N",
                       help="a local cluster of N nodes (broker + controller each) on ports "
                            "METERSTREAM_KAFKA's + 2(k-1); stop and status cover all of them")
    kafka.add_argument("--node", type=int, default=None, metavar="K",
                       help="only node K of the local cluster (start, stop, kill)")
    commands.add_parser("receiver", help="the Convex webhook receiver")
    commands.add_parser("worker", help="the Faust worker")
    commands.add_parser("sink", help="the ClickHouse sink")
    commands.add_parser("console", help="the usage console in the browser (docs/console.md)")
    up = commands.add_parser(
        "up", help="receiver, workers, sink and console together, in the foreground")
    up.add_argument("--workers", type=_workers, default=None, metavar="N",
                    help="worker processes, with web ports METERSTREAM_WORKER_PORT to "
                         "METERSTREAM_WORKER_PORT+N-1 (default: the cores less one, "
                         "at least 1)")
    from meterstream import deployments

    deployments.add_parser(commands)
    from meterstream import tokens_cli

    tokens_cli.add_parser(commands)
    from meterstream.loadgen import cli as loadgen

    loadgen.add_parser(commands)
    sql = commands.add_parser("sql", help="run SQL on meterstream's ClickHouse; prints TSV")
    sql.add_argument("query", help="one statement, e.g. 'SELECT count() FROM function_executions'")
    sql.add_argument("--write", action="store_true",
                     help="allow statements that change data or schema (read-only otherwise)")
    from meterstream import secrets_cli

    secrets_cli.add_parser(commands)
    from billing import cli as billing_cli

    billing_cli.add_parsers(commands)
    return parser


def _workers(text: str) -> int:
    from meterstream.supervisor import MAX_WORKERS

    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= count <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{count}: from 1 to {MAX_WORKERS}")
    return count


# Commands that write webhook secrets to the registry make the data directory's key when
# none is configured; `up` makes it before its children start, so that they share it.
_KEY_MAKERS = ("receiver", "up", "secrets reencrypt")


def main(argv: Sequence[str] | None = None) -> None:
    # Everything meterstream writes (Kafka logs, chdb files, keys, sockets) is for this
    # user only; the broker and every child process inherit the mask.
    os.umask(0o077)
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        if len(exc.problems) == 1:
            sys.exit(f"meterstream: configuration error: {exc}")
        sys.exit("meterstream: configuration errors:\n"
                 + "\n".join(f"  - {problem}" for problem in exc.problems))
    configure(args.command, settings.log_level)
    close_data_dirs(settings)
    from meterstream.core import secret_box

    try:
        command = " ".join([args.command, *([args.action] if args.command == "secrets" else [])])
        keyring = secret_box.load(settings, create=command in _KEY_MAKERS)
    except ConfigError as exc:
        sys.exit(f"meterstream: configuration error: {exc}")
    # The receiver verifies webhooks: a registry record it cannot open stops its start.
    secret_box.install(keyring, strict=args.command == "receiver")
    if command_name(args) in _KAFKA_COMMANDS:
        check_kafka_login(settings)
    if args.command == "secrets":
        from meterstream import secrets_cli

        sys.exit(secrets_cli.run(args, settings, keyring))
    try:
        code = _run(args, settings)
    except ConfigError as exc:
        # Found once running, e.g. existing topics the configuration cannot use
        # (meterstream/core/topics.py TopicsRefused): an error to fix, not a crash.
        sys.exit(f"meterstream {args.command}: configuration error: {exc}")
    sys.exit(code)


# Commands whose work starts by reaching Kafka.
_KAFKA_COMMANDS = ("receiver", "worker", "sink", "up", "secrets status", "secrets reencrypt",
                   "usage", "invoices generate", "console")


def command_name(args: argparse.Namespace) -> str:
    """The command, with its action for those that have one (`secrets status`)."""
    action = getattr(args, "action", None)
    return f"{args.command} {action}" if isinstance(action, str) else args.command


def check_kafka_login(settings: Settings) -> None:
    """Exits with one line naming the setting when Kafka refuses the configured TLS or SASL
    login: the clients would otherwise retry it in the background for ever, the services
    looking started but never ready. Kafka out of reach is left to each command (the
    receiver starts anyway and answers 503 until Kafka is back)."""
    from meterstream.core.kafka_client import KafkaConnection, KafkaRefused, check_login

    try:
        asyncio.run(check_login(KafkaConnection.of(settings)))
    except KafkaRefused as exc:
        sys.exit(f"meterstream: {exc}")


def close_data_dirs(settings: Settings) -> None:
    """Makes the data directory (and the embedded ClickHouse's, wherever it is) private.
    Versions before the umask made them 0755 and their files 0644: a directory found open
    to others has the group and other bits taken off everything under it, once."""
    for directory in (settings.data_dir, settings.clickhouse.chdb_path):
        if directory is None or not directory.is_dir() or not directory.stat().st_mode & 0o077:
            continue
        try:
            for path in (directory, *directory.rglob("*")):
                if not path.is_symlink():
                    path.chmod(path.stat().st_mode & 0o700)
        except PermissionError:
            print(f"meterstream: warning: cannot make {directory} private (0700): "
                  "not its owner", file=sys.stderr)
        except FileNotFoundError:
            pass  # a file another process removed meanwhile


def _run(args: argparse.Namespace, settings: Settings) -> int:
    # Imports are per command: `meterstream sql` should not pay for Faust.
    if args.command == "kafka":
        from meterstream import broker

        try:
            return broker.run(args.action, settings, sasl_ssl=args.sasl_ssl,
                              brokers=args.brokers, node=args.node)
        except (ConfigError, FileNotFoundError) as exc:
            print(f"meterstream: {exc}", file=sys.stderr)
            return 2
    if args.command == "receiver":
        from meterstream.processes import receiver

        receiver.main(settings)
    elif args.command == "worker":
        from meterstream.processes import worker

        worker.main(settings)
    elif args.command == "sink":
        from meterstream.processes import sink

        sink.main(settings)
    elif args.command == "console":
        from meterstream.processes import console

        console.main(settings)
    elif args.command == "up":
        from meterstream import supervisor

        workers = args.workers or supervisor.default_workers()
        if settings.worker_port + workers - 1 > 65535:
            print(f"meterstream up: {workers} workers need ports {settings.worker_port} to "
                  f"{settings.worker_port + workers - 1}: past 65535", file=sys.stderr)
            return 2
        metrics_port = settings.worker_metrics_port if settings.metrics_host else None
        if metrics_port is not None:
            problem = _probe_ports_problem(workers, settings.worker_port, metrics_port)
            if problem:
                print(f"meterstream up: {problem}", file=sys.stderr)
                return 2
        return supervisor.run(workers, settings.worker_port, metrics_port)
    elif args.command == "sql":
        return _sql(args.query, settings, write=args.write)
    elif args.command == "deployments":
        from meterstream import deployments

        return deployments.run(args, settings)
    elif args.command == "tokens":
        from meterstream import tokens_cli

        return tokens_cli.run(args, settings)
    elif args.command == "loadgen":
        from meterstream.loadgen import cli as loadgen

        return loadgen.run(args, settings)
    elif args.command in ("usage", "invoices"):
        from billing import cli as billing_cli

        return billing_cli.run(args, settings)
    return 0


def _probe_ports_problem(workers: int, api_port: int, metrics_port: int) -> str | None:
    """Why `workers` workers cannot have probe ports from `metrics_port` next to API ports
    from `api_port`, or None when they can."""
    last = metrics_port + workers - 1
    if last > 65535:
        return f"{workers} workers need probe ports {metrics_port} to {last}: past 65535"
    if metrics_port <= api_port + workers - 1 and api_port <= last:
        return (f"the workers' probe ports {metrics_port} to {last} overlap their API ports "
                f"{api_port} to {api_port + workers - 1}")
    return None


def _sql(query: str, settings: Settings, write: bool = False) -> int:
    from meterstream.core.clickhouse import EngineBusy
    from meterstream.core.query import QueryError, run_sql

    try:
        output = run_sql(settings.clickhouse, query, write=write)
    except (QueryError, EngineBusy) as exc:
        print(f"meterstream sql: {exc}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(output)
    sys.stdout.flush()
    return 0
