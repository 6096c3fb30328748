"""`meterstream usage` and `meterstream invoices`: billing from the command line.

Both work against a ClickHouse server, an embedded engine no process holds,
and, while `meterstream up` runs, the embedded engine the sink holds (through
its socket). The deployment registry (plans, teams) is read from Kafka.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from decimal import Decimal
from typing import Any

from meterstream.core.config import Settings
from meterstream.core.exit_codes import ExitCode
from meterstream.core.text_table import aligned, is_terminal, write_rows

USAGE_EXAMPLES = """\
examples:
  meterstream usage --deployment happy-otter-123
  meterstream usage --deployment happy-otter-123 --user user_2f9KqM
  meterstream usage --team acme --from 2026-10 --to 2026-11 --resolution day
  meterstream usage --top 10 --format json
  meterstream usage --deployment happy-otter-123 --from 2026-10-01T12:00:00Z --to now \\
      --resolution hour --format csv > usage.csv

At a terminal the table is aligned; piped, it is tab-separated with a header line.
Reads only: the registry and ClickHouse's tables must exist (nothing is created)."""

GENERATE_EXAMPLES = """\
examples:
  meterstream invoices generate --period 2026-10"""

SHOW_EXAMPLES = """\
examples:
  meterstream invoices show --period 2026-10
  meterstream invoices show --period 2026-10 --status pending --deployment happy-otter-123
  meterstream invoices show --period 2026-10 --format csv > invoices-2026-10.csv

--format defaults to an aligned table at a terminal and to JSON when piped."""

MARK_EXAMPLES = """\
examples:
  meterstream invoices mark inv-202610-1a2b3c4d-1 --status paid"""


def add_parsers(commands: Any) -> None:
    usage = commands.add_parser(
        "usage", help="usage and cost per deployment, team or end user; the top-N by cost",
        description="Usage and cost from the rollups, one row per --resolution window.",
        epilog=USAGE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    usage.add_argument("--deployment", help="one deployment, e.g. happy-otter-123")
    usage.add_argument("--user", help="one end user (userId) of --deployment: tokens, "
                                      "e.g. user_2f9KqM")
    usage.add_argument("--team", help="every deployment of a team (from the registry), "
                                      "e.g. acme")
    usage.add_argument("--top", type=int, metavar="N",
                       help="the N deployments that cost most over the range, e.g. 10")
    usage.add_argument("--from", dest="start", default=None, metavar="TIME",
                       help="start (UTC): YYYY-MM, YYYY-MM-DD, an ISO date-time or 'now'; "
                            "default: the start of this month")
    usage.add_argument("--to", dest="end", default="now", metavar="TIME",
                       help="end, excluded (default: now)")
    usage.add_argument("--resolution", choices=("minute", "hour", "day", "month"),
                       default="month", help="window of each row (default: month), e.g. "
                                             "--resolution day")
    usage.add_argument("--format", choices=("table", "json", "csv"), default="table",
                       help="table (default: aligned at a terminal, tab-separated when piped), "
                            "json or csv, e.g. --format json")
    usage.add_argument("--invoiced", action="store_true",
                       help="per billing period: the charge on the usage now against what "
                            "its invoices and adjustments hold, e.g. --invoiced")

    invoices = commands.add_parser(
        "invoices", help="monthly invoices: generate, show, mark, close, unbilled",
        epilog="examples:\n  meterstream invoices generate --period 2026-10\n"
               "  meterstream invoices show --period 2026-10\n"
               "  meterstream invoices mark inv-202610-1a2b3c4d-1 --status paid\n"
               "  meterstream invoices close 2026-10\n"
               "  meterstream invoices unbilled --period 2026-10",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = invoices.add_subparsers(dest="action", required=True, metavar="ACTION")
    raw = argparse.RawDescriptionHelpFormatter
    generate = actions.add_parser(
        "generate", help="invoice a billing period (again: never duplicates; failed ones anew; "
                    "usage that landed after an invoice on an adjustment)",
        epilog=GENERATE_EXAMPLES, formatter_class=raw)
    generate.add_argument("--period", required=True, metavar="YYYY-MM",
                          help="the billing month, e.g. 2026-10")
    show = actions.add_parser("show", help="a period's invoices as a table, JSON or CSV",
                              epilog=SHOW_EXAMPLES, formatter_class=raw)
    show.add_argument("--period", required=True, metavar="YYYY-MM",
                      help="the billing month, e.g. 2026-10")
    show.add_argument("--format", choices=("table", "json", "csv"), default=None,
                      help="default: table at a terminal, json when piped; csv has one row "
                           "per line item, e.g. --format csv")
    show.add_argument("--status", choices=("pending", "paid", "failed"),
                      help="only invoices of this status, e.g. --status pending")
    show.add_argument("--deployment", help="only this deployment's, e.g. happy-otter-123")
    mark = actions.add_parser("mark", help="set an invoice's status",
                              epilog=MARK_EXAMPLES, formatter_class=raw)
    mark.add_argument("id", help="the invoice's id, as `invoices show` gives it")
    mark.add_argument("--status", required=True, choices=("pending", "paid", "failed"),
                      help="the new status, e.g. --status paid")
    close = actions.add_parser(
        "close", help="close an ended billing period: its late usage is reported, not billed",
        epilog="examples:\n  meterstream invoices close 2026-10", formatter_class=raw)
    close.add_argument("period", metavar="YYYY-MM", help="the ended billing month, e.g. 2026-10")
    unbilled = actions.add_parser(
        "unbilled", help="a closed period's late usage, per subject (JSON), as last found",
        epilog="examples:\n  meterstream invoices unbilled --period 2026-10",
        formatter_class=raw)
    unbilled.add_argument("--period", required=True, metavar="YYYY-MM",
                          help="the closed billing month, e.g. 2026-10")


def _fail(command: str, message: object, code: int = ExitCode.FAILED) -> int:
    print(f"meterstream {command}: {message}", file=sys.stderr)
    return code


# The only billing command that writes new rows; it brings the schema up to date first.
# The others read (or update one invoice) and create nothing: with no schema they say so.
_MIGRATING = ("invoices generate",)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from billing import pricebook
    from billing.closing import ClosingError
    from billing.database import Database
    from billing.invoices import InvoiceError
    from billing.queries import UsageQueryError
    from meterstream.core.clickhouse import EngineBusy
    from meterstream.core.query import QueryError, session

    command = args.command if args.command == "usage" else f"invoices {args.action}"
    try:
        book = pricebook.load(settings.price_book)
    except pricebook.PriceBookError as exc:
        return _fail(command, exc, ExitCode.USAGE)
    migrating = command in _MIGRATING
    target = settings.clickhouse
    if not migrating and target.chdb_path is not None and not target.chdb_path.exists():
        return _fail(command, _no_schema(target.display))
    try:
        registry = None
        if command in ("usage", "invoices generate"):
            from billing.registry import load_now

            registry = load_now(settings)
        with session(target, migrate=migrating) as execute:
            db = Database(execute)
            if not migrating and (problem := _schema_problem(db, target.display)):
                return _fail(command, problem)
            if args.command == "usage":
                return _usage(args, db, book, registry or {})
            return _invoices(args, db, book, registry or {}, bool(target.cluster))
    except EngineBusy as exc:
        return _fail(command, exc, ExitCode.CLICKHOUSE_UNREACHABLE)
    except (QueryError, TimeoutError, InvoiceError, ClosingError, UsageQueryError,
            ValueError) as exc:
        return _fail(command, exc)


def _no_schema(where: str) -> str:
    return (f"ClickHouse at {where} holds no meterstream tables yet; the sink creates them "
            "at its start (`meterstream up` or `meterstream sink`)")


def _schema_problem(db: Any, where: str) -> str | None:
    """Why ClickHouse cannot answer billing's reads without a migration, or None."""
    from meterstream.core.migrate import migrations

    if not db.rows("SELECT name FROM system.tables WHERE database = currentDatabase() "
                   "AND name = 'schema_migrations'"):
        return _no_schema(where)
    have = int(db.rows("SELECT max(version) AS v FROM schema_migrations")[0]["v"])
    need = migrations()[-1].version
    if have < need:
        return (f"ClickHouse at {where} has meterstream's schema at version {have}, this "
                f"version reads version {need}: start the sink, which migrates it")
    return None


def _invoices(args: argparse.Namespace, db: Any, book: Any, registry: Any,
              replicated: bool) -> int:
    from billing import closing, export, invoices
    from billing.periods import Period

    if args.action == "mark":
        invoice = invoices.mark(db, args.id, args.status)
        print(json.dumps({"id": invoice.id, "status": invoice.status}))
        return 0
    if args.action == "close":
        print(json.dumps(closing.close(db, Period.parse(args.period)).to_json()))
        return 0
    period = Period.parse(args.period)
    if args.action == "generate":
        run = invoices.generate(db, period, book, registry,
                                replicated=replicated)
        print(json.dumps(run.summary(), indent=2))
        for problem in run.problems:
            print(f"meterstream invoices generate: {problem}", file=sys.stderr)
        return 1 if run.problems else 0
    if args.action == "unbilled":
        reports = closing.unbilled(db, period)
        print(json.dumps({"period": period.label, **closing.summary(reports),
                          "subjects_unbilled": [r.to_json() for r in reports]}, indent=2))
        return 0
    found = invoices.show(db, period, args.status, args.deployment)
    fmt = args.format or ("table" if is_terminal(sys.stdout) else "json")
    if fmt == "table":
        sys.stdout.write(aligned([_invoice_row(invoice) for invoice in found])
                         or "no invoices\n")
        return 0
    sys.stdout.write(export.as_json(found) if fmt == "json" else export.as_csv(found))
    return 0


def _invoice_row(invoice: Any) -> dict[str, Any]:
    """One invoice as a line of the terminal table (its line items are in json and csv)."""
    from billing.money import cents, text

    return {"id": invoice.id, "subject": invoice.subject, "deployment": invoice.deployment,
            "user": invoice.user_id, "team": invoice.team, "plan": invoice.plan,
            "status": invoice.status, "amount": Decimal(text(invoice.amount)),
            "due": Decimal(cents(invoice.amount_due)), "currency": invoice.currency,
            "items": len(invoice.lines)}


def _usage(args: argparse.Namespace, db: Any, book: Any, registry: Any) -> int:
    from billing import queries
    from billing.periods import Period, parse_time

    now = int(time.time() * 1000)
    end = parse_time(args.end, now)
    start = (parse_time(args.start, now) if args.start is not None
             else Period.containing(end - 1).start_ms)
    if end <= start:
        raise queries.UsageQueryError("--to must be after --from")
    if args.top is not None:
        if args.invoiced:
            raise queries.UsageQueryError("--invoiced goes with --deployment or --team, "
                                          "not --top")
        if args.top < 1:
            raise queries.UsageQueryError("--top takes a positive number")
        ranked, problems = queries.top(db, book, registry, args.top, start, end)
        _print_rows(ranked, args.format, {"from": start, "to": end, "problems": problems})
        for problem in problems:
            print(f"meterstream usage: {problem}", file=sys.stderr)
        return 0
    who = queries.subject(registry, args.deployment, args.team, args.user)
    if args.invoiced:
        return _invoiced(args, db, book, registry, who, start, end)
    report = queries.usage(db, book, registry, who, args.resolution, start, end)
    for problem in report.problems:
        print(f"meterstream usage: {problem}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps(report.to_json(), indent=2))
        return 0
    rows = []
    for bucket in report.buckets:
        shown = bucket.to_json()
        rows.append({"start": shown["start"], **shown["usage"],
                     "convex_cost": shown["convex_cost"], "token_cost": shown["token_cost"],
                     "cost": shown["cost"]})
    _print_rows(rows, args.format, None)
    return 0


def _invoiced(args: argparse.Namespace, db: Any, book: Any, registry: Any, who: Any,
              start: int, end: int) -> int:
    from billing.statements import statements

    found = statements(db, book, registry, who, start, end)
    problems = [problem for statement in found for problem in statement.problems]
    for problem in problems:
        print(f"meterstream usage: {problem}", file=sys.stderr)
    rows = [statement.to_json() for statement in found]
    if args.format == "json":
        print(json.dumps({"subject": who.to_json(), "currency": book.currency,
                          "periods": rows, "problems": problems}, indent=2))
    else:
        _print_rows(rows, args.format, None)
    return 0


def _print_rows(rows: list[dict[str, Any]], fmt: str, context: dict[str, Any] | None) -> None:
    from billing.periods import iso

    if fmt == "json":
        document: Any = rows
        if context is not None:
            document = {"from": iso(context["from"]), "to": iso(context["to"]),
                        "deployments": rows, "problems": context["problems"]}
        print(json.dumps(document, indent=2))
        return
    if not rows:
        return
    if fmt == "table":
        write_rows(rows, sys.stdout)
        return
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(rows[0].keys())
    for row in rows:
        writer.writerow(row.values())
    sys.stdout.write(out.getvalue())
