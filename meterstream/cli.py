"""The `meterstream` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
from collections.abc import Sequence

from meterstream.core.config import VARIABLES, ConfigError, Settings, unknown_variables
from meterstream.core.exit_codes import ExitCode
from meterstream.core.logs import configure

log = logging.getLogger("meterstream.cli")

EXAMPLES = """\
examples:
  meterstream kafka start                 a local broker on METERSTREAM_KAFKA's port
  meterstream up                          receiver, workers and sink in the foreground
  meterstream sql "SELECT count() FROM function_executions"
  meterstream usage --top 10
  meterstream COMMAND --help              each command's options, with examples

exit codes: 0 done, 1 failed, 2 bad arguments, 3 broker not running (kafka status),
4 Kafka unreachable, 5 ClickHouse unreachable, 6 admin API unreachable, 130 Ctrl-C
(docs/cli.md). Shell completion: eval "$(register-python-argcomplete meterstream)"."""

KAFKA_EXAMPLES = """\
examples:
  meterstream kafka start
  meterstream kafka status && echo running
  meterstream kafka start --sasl-ssl
  meterstream kafka start --brokers 3
  meterstream kafka kill --node 2 && meterstream kafka start --node 2
  meterstream kafka stop"""

SQL_EXAMPLES = """\
examples:
  meterstream sql "SELECT deployment, count() FROM function_executions GROUP BY deployment"
  meterstream sql --format csv --header "SELECT * FROM invoices LIMIT 10" > invoices.csv
  meterstream sql --format json "SELECT deployment, status FROM function_executions LIMIT 3"
  meterstream sql --write "OPTIMIZE TABLE function_executions FINAL"

--format json prints JSON lines: one object per row, keyed by column name (so it has no
header). Choose the format with --format, not with a FORMAT clause in the query."""

UP_EXAMPLES = """\
examples:
  meterstream up
  meterstream up --workers 3      worker i serves on METERSTREAM_WORKER_PORT + i

Ctrl-C or SIGTERM stops the services in pipeline order (console and receiver, workers,
sink)."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("meterstream")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _service(commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
             text: str, example: str) -> argparse.ArgumentParser:
    return commands.add_parser(name, help=text, description=text.capitalize() + ".",
                               epilog=f"example:\n  {example}",
                               formatter_class=argparse.RawDescriptionHelpFormatter)


def _parser() -> argparse.ArgumentParser:
    variables = "\n".join(f"  {v.name} (default {v.default})\n      {v.help}" for v in VARIABLES)
    parser = argparse.ArgumentParser(
        prog="meterstream",
        description="Real-time usage metering for Convex deployments.",
        epilog=f"{EXAMPLES}\n\nconfiguration, from environment variables:\n{variables}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"meterstream {_version()}",
                        help="print meterstream's version and exit, e.g. meterstream --version")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    kafka = commands.add_parser("kafka", help="a local Apache Kafka broker (no Docker needed)",
                                epilog=KAFKA_EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    kafka.add_argument("action", choices=("start", "stop", "status", "kill"),
                       help="start, stop, status (exit 0: running, 3: not running); "
                            "kill: SIGKILL one node of a local cluster (--node), for tests")
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
    _service(commands, "receiver", "the Convex webhook receiver",
             "METERSTREAM_RECEIVER_PORT=8686 meterstream receiver")
    _service(commands, "worker", "the Faust worker",
             "METERSTREAM_WORKER_PORT=6066 meterstream worker")
    _service(commands, "sink", "the ClickHouse sink",
             "METERSTREAM_CLICKHOUSE=chdb:///var/lib/meterstream/clickhouse meterstream sink")
    _service(commands, "console", "the usage console in the browser (docs/console.md)",
             "METERSTREAM_CONSOLE_PORT=8690 meterstream console")
    up = commands.add_parser("up", help="receiver, workers, sink and console together, in the "
                                        "foreground",
                             description="Receiver, workers, sink and console as child "
                                         "processes, in the foreground.",
                             epilog=UP_EXAMPLES,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    up.add_argument("--workers", type=_workers, default=None, metavar="N",
                    help="worker processes, with web ports METERSTREAM_WORKER_PORT to "
                         "METERSTREAM_WORKER_PORT+N-1 (default: the cores less one, "
                         "at least 1), e.g. --workers 3")
    from meterstream import deployments

    deployments.add_parser(commands)
    from meterstream import tokens_cli

    tokens_cli.add_parser(commands)
    from meterstream.loadgen import cli as loadgen

    loadgen.add_parser(commands)
    sql = commands.add_parser("sql", help="run SQL on meterstream's ClickHouse; prints TSV",
                              description="Runs one statement on meterstream's ClickHouse "
                                          "(read-only unless --write) and prints its rows.",
                              epilog=SQL_EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sql.add_argument("query", help="one statement, e.g. 'SELECT count() FROM function_executions'")
    sql.add_argument("--write", action="store_true",
                     help="allow statements that change data or schema (read-only otherwise), "
                          "e.g. --write \"ALTER TABLE ...\"")
    sql.add_argument("--format", choices=tuple(SQL_FORMATS), default="tsv",
                     help="tsv (default), csv, or json (JSON lines: one object per row), "
                          "e.g. --format csv")
    sql.add_argument("--header", action=argparse.BooleanOptionalAction, default=None,
                     help="a first line of column names (tsv and csv; default: with csv, not "
                          "with tsv), e.g. --header")
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


# `meterstream sql --format`: ClickHouse's output format without and with a header line.
SQL_FORMATS = {"tsv": ("TabSeparated", "TabSeparatedWithNames"),
               "csv": ("CSV", "CSVWithNames"),
               "json": ("JSONEachRow", "JSONEachRow")}


def main(argv: Sequence[str] | None = None) -> None:
    # Everything meterstream writes (Kafka logs, chdb files, keys, sockets) is for this
    # user only; the broker and every child process inherit the mask.
    os.umask(0o077)
    parser = _parser()
    import argcomplete

    # Answers the shell's completion request and exits when one is under way; else nothing.
    argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        if len(exc.problems) == 1:
            sys.exit(f"meterstream: configuration error: {exc}")
        sys.exit("meterstream: configuration errors:\n"
                 + "\n".join(f"  - {problem}" for problem in exc.problems))
    configure(args.command, settings.log_level, settings.log_format)
    if args.command not in _SERVICES:
        # A command ends with one line saying what could not be reached; the HTTP
        # drivers' retry warnings before it would only repeat that, at length.
        # (urllib3.connectionpool: clickhouse_connect sets urllib3's own level on import.)
        for noisy in ("urllib3.connectionpool", "clickhouse_connect"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    from meterstream.supervisor import SUPERVISED

    if not os.environ.get(SUPERVISED):  # `up` warned already, for its children too
        warn_unknown_variables(os.environ)
    try:
        sys.exit(_main(args, settings))
    except KeyboardInterrupt:
        print(f"meterstream {command_name(args)}: interrupted", file=sys.stderr)
        sys.exit(ExitCode.INTERRUPTED)


def warn_unknown_variables(env: dict[str, str] | os._Environ[str]) -> None:
    """One warning per METERSTREAM_* variable no setting reads, naming the closest one."""
    for name, closest in unknown_variables(env):
        hint = f"; did you mean {closest}?" if closest else " (see meterstream --help)"
        log.warning(f"unknown variable {name} is ignored{hint}",
                    extra={"variable": name, "closest": closest})


def _main(args: argparse.Namespace, settings: Settings) -> int:
    """Runs the command; Kafka or ClickHouse out of reach ends it with one line and the
    exit code that says which (docs/cli.md), not a traceback."""
    from aiokafka.errors import KafkaConnectionError
    from clickhouse_connect.driver.exceptions import OperationalError

    from meterstream.core.kafka_client import KafkaUnreachable

    name = command_name(args)
    try:
        return _command(args, settings)
    except KafkaUnreachable as exc:
        print(f"meterstream {name}: {exc}", file=sys.stderr)
        return ExitCode.KAFKA_UNREACHABLE
    except KafkaConnectionError as exc:
        print(f"meterstream {name}: Kafka at {settings.kafka_bootstrap} cannot be reached: "
              f"{_one_line(exc)}", file=sys.stderr)
        return ExitCode.KAFKA_UNREACHABLE
    except OperationalError as exc:
        print(f"meterstream {name}: ClickHouse at {settings.clickhouse.display} cannot be "
              f"reached: {_one_line(exc)}", file=sys.stderr)
        return ExitCode.CLICKHOUSE_UNREACHABLE


# The operating system's reason inside a driver's message ("[Errno 111] Connection refused").
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^\"')\]]+)")


def _one_line(exc: BaseException) -> str:
    """The reason of a connection failure, short: the drivers' messages nest the URL,
    the retry policy and the query id around it."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if reason := _ERRNO.search(text):
        return reason.group(1).strip().rstrip(".")
    return text if len(text) <= 200 else text[:197] + "..."


def _command(args: argparse.Namespace, settings: Settings) -> int:
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
        check_kafka_login(settings, required=command_name(args) not in _SERVICES)
    if args.command == "secrets":
        from meterstream import secrets_cli

        return secrets_cli.run(args, settings, keyring)
    try:
        return _run(args, settings)
    except ConfigError as exc:
        # Found once running, e.g. existing topics the configuration cannot use
        # (meterstream/core/topics.py TopicsRefused): an error to fix, not a crash.
        sys.exit(f"meterstream {args.command}: configuration error: {exc}")


# Commands whose work starts by reaching Kafka.
_KAFKA_COMMANDS = ("receiver", "worker", "sink", "up", "secrets status", "secrets reencrypt",
                   "usage", "invoices generate", "console")
# The services wait for a Kafka out of reach; the other commands end with exit code 4.
_SERVICES = ("receiver", "worker", "sink", "up", "console")


def command_name(args: argparse.Namespace) -> str:
    """The command, with its action for those that have one (`secrets status`)."""
    action = getattr(args, "action", None)
    return f"{args.command} {action}" if isinstance(action, str) else args.command


def check_kafka_login(settings: Settings, required: bool = False) -> None:
    """Exits with one line naming the setting when Kafka refuses the configured TLS or SASL
    login: the clients would otherwise retry it in the background for ever, the services
    looking started but never ready. Kafka out of reach is left to each service (the
    receiver starts anyway and answers 503 until Kafka is back); with `required` (a
    command, not a service) it raises KafkaUnreachable."""
    from meterstream.core.kafka_client import KafkaConnection, KafkaRefused, check_login

    try:
        asyncio.run(check_login(KafkaConnection.of(settings), required=required))
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
            return ExitCode.USAGE
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
        return _sql(args.query, settings, write=args.write, fmt=args.format,
                    header=args.header)
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


def _sql(query: str, settings: Settings, write: bool = False, fmt: str = "tsv",
         header: bool | None = None) -> int:
    from meterstream.core.clickhouse import EngineBusy
    from meterstream.core.query import QueryError, is_command, own_format, run_sql

    if fmt == "json" and header:
        print("meterstream sql: --header applies to tsv and csv; json lines name their "
              "columns in every row", file=sys.stderr)
        return ExitCode.USAGE
    named = None if is_command(query) else own_format(query)
    if named is not None:
        print(f"meterstream sql: the query ends with its own FORMAT {named}; leave it out "
              "and choose with --format tsv|csv|json (and --header)", file=sys.stderr)
        return ExitCode.USAGE
    with_names = header if header is not None else fmt == "csv"
    try:
        output = run_sql(settings.clickhouse, query, SQL_FORMATS[fmt][with_names],
                         write=write)
    except EngineBusy as exc:
        print(f"meterstream sql: {exc}", file=sys.stderr)
        return ExitCode.CLICKHOUSE_UNREACHABLE
    except QueryError as exc:
        print(f"meterstream sql: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    sys.stdout.buffer.write(output)
    sys.stdout.flush()
    return 0
