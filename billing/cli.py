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
from typing import Any

from meterstream.core.config import Settings


def add_parsers(commands: Any) -> None:
    usage = commands.add_parser(
        "usage", help="usage and cost per deployment, team or end user; the top-N by cost")
    usage.add_argument("--deployment", help="one deployment")
    usage.add_argument("--user", help="one end user (userId) of --deployment: tokens")
    usage.add_argument("--team", help="every deployment of a team (from the registry)")
    usage.add_argument("--top", type=int, metavar="N",
                       help="the N deployments that cost most over the range")
    usage.add_argument("--from", dest="start", default=None, metavar="TIME",
                       help="start (UTC): YYYY-MM, YYYY-MM-DD, an ISO date-time or 'now'; "
                            "default: the start of this month")
    usage.add_argument("--to", dest="end", default="now", metavar="TIME",
                       help="end, excluded (default: now)")
    usage.add_argument("--resolution", choices=("minute", "hour", "day", "month"),
                       default="month", help="window of each row (default: month)")
    usage.add_argument("--format", choices=("table", "json", "csv"), default="table")
    usage.add_argument("--invoiced", action="store_true",
                       help="per billing period: the charge on the usage now against what "
                            "its invoices and adjustments hold")

    invoices = commands.add_parser(
        "invoices", help="monthly invoices: generate, show, mark, close, unbilled")
    actions = invoices.add_subparsers(dest="action", required=True, metavar="ACTION")
    generate = actions.add_parser(
        "generate", help="invoice a billing period (again: never duplicates; failed ones anew; "
                         "usage that landed after an invoice on an adjustment)")
    generate.add_argument("--period", required=True, metavar="YYYY-MM")
    show = actions.add_parser("show", help="a period's invoices as JSON or CSV")
    show.add_argument("--period", required=True, metavar="YYYY-MM")
    show.add_argument("--format", choices=("json", "csv"), default="json")
    show.add_argument("--status", choices=("pending", "paid", "failed"))
    show.add_argument("--deployment")
    mark = actions.add_parser("mark", help="set an invoice's status")
    mark.add_argument("id")
    mark.add_argument("--status", required=True, choices=("pending", "paid", "failed"))
    close = actions.add_parser(
        "close", help="close an ended billing period: its late usage is reported, not billed")
    close.add_argument("period", metavar="YYYY-MM")
    unbilled = actions.add_parser(
        "unbilled", help="a closed period's late usage, per subject (JSON), as last found")
    unbilled.add_argument("--period", required=True, metavar="YYYY-MM")


def _fail(command: str, message: object, code: int = 1) -> int:
    print(f"meterstream {command}: {message}", file=sys.stderr)
    return code


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
        return _fail(command, exc, 2)
    try:
        registry = None
        if command in ("usage", "invoices generate"):
            from billing.registry import load_now

            registry = load_now(settings)
        with session(settings.clickhouse, migrate=True) as execute:
            db = Database(execute)
            if args.command == "usage":
                return _usage(args, db, book, registry or {})
            return _invoices(args, db, book, registry or {})
    except (QueryError, EngineBusy, TimeoutError, InvoiceError, ClosingError,
            UsageQueryError, ValueError) as exc:
        return _fail(command, exc)


def _invoices(args: argparse.Namespace, db: Any, book: Any, registry: Any) -> int:
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
        run = invoices.generate(db, period, book, registry)
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
    sys.stdout.write(export.as_json(found) if args.format == "json" else export.as_csv(found))
    return 0


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
    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t" if fmt == "table" else ",", lineterminator="\n")
    writer.writerow(rows[0].keys())
    for row in rows:
        writer.writerow(row.values())
    sys.stdout.write(out.getvalue())
