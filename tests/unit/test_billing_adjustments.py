"""Usage that lands after an invoice: adjustments, reruns, failed adjustments, concurrent
runs and closed periods, on the real embedded engine (chdb; no broker).

Rows go straight into the raw tables, as the sink writes them. Every expected amount is
written by hand from the default price book (billing/default_price_book.toml): the
starter plan includes 1 GB of database I/O, then 0.22 per GB; 1,000,000 function calls,
then 2.20 per 1,000,000; gpt-4o-mini output tokens are 0.60 per 1,000,000.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from billing import closing, invoices, pricebook
from billing.closing import ClosingError
from billing.database import Database
from billing.money import text
from billing.periods import Period
from billing.pricebook import PriceBook
from billing.queries import Subject
from billing.registry import Owner
from billing.statements import statements
from meterstream.core import migrate
from meterstream.core.clickhouse import EngineLock, connect
from meterstream.core.config import ClickHouseTarget
from tests.support.billing_data import (
    GIB,
    function_execution,
    insert_function_executions,
    insert_tokens,
    ms,
    reset,
)

OCTOBER = Period(2026, 10)
APP = "late-app"
REGISTRY = {APP: Owner("acme", "late", "starter")}
AFTER_OCTOBER = ms("2026-11-15T00:00:00")
DEPLOYMENT = ("deployment", APP, "")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    path = tmp_path_factory.mktemp("chdb") / "clickhouse"
    with EngineLock(path):
        client = connect(ClickHouseTarget(url=f"chdb://{path}", chdb_path=path))
        migrate.apply(client)
        yield client
        client.close()


@pytest.fixture
def client(engine: Client) -> Client:
    reset(engine)
    return engine


@pytest.fixture
def db(client: Client) -> Database:
    return Database.of_client(client)


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return pricebook.load()


def database_io(client: Client, at: str, read_bytes: int) -> None:
    """One query of `read_bytes` database I/O: one function call."""
    insert_function_executions(client, [function_execution(APP, ms(at),
                                                           database_io_read_bytes=read_bytes)])


def generate(db: Database, book: PriceBook) -> invoices.Run:
    return invoices.generate(db, OCTOBER, book, REGISTRY, progress=False)


def documents(db: Database) -> dict[str, invoices.Invoice]:
    return {invoice.id: invoice for invoice in invoices.show(db, OCTOBER)}


def lines(invoice: invoices.Invoice | closing.Unbilled) -> dict[str, tuple[str, ...]]:
    return {line.item: tuple(text(getattr(line, name)) for name in
                             ("usage", "included", "quantity", "unit_price", "amount"))
            for line in invoice.lines}


def deployment_statement(db: Database, book: PriceBook) -> dict[str, Any]:
    (found,) = statements(db, book, REGISTRY, Subject("deployment", APP, (APP,)),
                          OCTOBER.start_ms, OCTOBER.end_ms)
    return found.to_json()


def test_late_usage_crossing_the_included_amount_is_adjusted_once(
        client: Client, db: Database, book: PriceBook) -> None:
    # The invoice: 1 call, 0.75 GB of database I/O, all within the included amounts.
    database_io(client, "2026-10-10T10:00:00", 3 * GIB // 4)
    (original,) = generate(db, book).created
    assert (original.amount, original.amount_due, original.kind) == (
        Decimal(0), Decimal("0.00"), "invoice")
    # Lands after it: 1 call and 0.5 GB, so 1.25 GB in all.
    database_io(client, "2026-10-20T10:00:00", GIB // 2)
    # The console's view before the adjustment: 0.25 GB above 1 GB is 0.25 x 0.22 = 0.055
    # now, nothing invoiced.
    assert deployment_statement(db, book) | {"closed_at": None} == {
        "period": "2026-10-01", "state": "open", "closed_at": None, "current": "0.055",
        "invoiced": "0", "uninvoiced": "0.055", "invoiced_due": "0.00", "invoices": 1,
        "adjustments": 0}

    run = generate(db, book)
    assert (run.created, run.already, run.problems) == ([], 0, [])
    (adjustment,) = run.adjustments
    digest = original.id.split("-")[2]
    assert adjustment.id == f"adj-202610-{digest}-1"
    assert (adjustment.kind, adjustment.adjusts, adjustment.attempt, adjustment.status) == (
        "adjustment", original.id, 1, "pending")
    assert (adjustment.plan, adjustment.team, adjustment.deployment) == ("starter", "acme", APP)
    # Only the lines that changed. Calls: 1 more, of the 1,000,000 included: 0.
    # Database I/O: 0.5 GB more; 1 - 0.75 = 0.25 GB of the included amount was left, the
    # other 1.25 - 1 = 0.25 GB is billed: 0.25 x 0.22 = 0.055.
    assert lines(adjustment) == {
        "function_calls": ("1", "1", "0", "0.0000022", "0"),
        "database_io": ("0.5", "0.25", "0.25", "0.22", "0.055")}
    # 0.055 rounds half-up to 0.06; the invoice made 0.00 due: 0.06 - 0.00.
    assert (adjustment.amount, adjustment.amount_due) == (Decimal("0.055"), Decimal("0.06"))
    assert run.summary()["amount_due"] == "0.06"
    assert documents(db)[adjustment.id] == adjustment

    # Generating again finds nothing new: nothing is written.
    again = generate(db, book)
    assert (again.created, again.adjustments, again.already) == ([], [], 1)
    assert sorted(documents(db)) == sorted([original.id, adjustment.id])
    assert deployment_statement(db, book) | {"closed_at": None} == {
        "period": "2026-10-01", "state": "open", "closed_at": None, "current": "0.055",
        "invoiced": "0.055", "uninvoiced": "0", "invoiced_due": "0.06", "invoices": 1,
        "adjustments": 1}

    # More late usage: a second adjustment, of what the first did not hold.
    # 2 GB more: 3.25 GB in all, (3.25 - 1) x 0.22 = 0.495; 0.495 - 0.055 = 0.44.
    database_io(client, "2026-10-25T10:00:00", 2 * GIB)
    (second,) = generate(db, book).adjustments
    assert second.id == f"adj-202610-{digest}-2"
    assert lines(second)["database_io"] == ("2", "0", "2", "0.22", "0.44")
    # The dues: 0.495 is due 0.50 in all; 0.00 + 0.06 are due already: 0.44.
    assert (second.amount, second.amount_due) == (Decimal("0.44"), Decimal("0.44"))


def test_an_agent_token_line_is_adjusted(client: Client, db: Database,
                                         book: PriceBook) -> None:
    # 1,000,000 gpt-4o-mini output tokens: 1 x 0.60 = 0.60.
    insert_tokens(client, APP, "u1", ms("2026-10-05T10:00:00"), "openai", "gpt-4o-mini", "s1",
                  output_tokens=1_000_000, text_output_tokens=1_000_000,
                  total_tokens=1_000_000)
    created = generate(db, book).created
    (user,) = [i for i in created if i.subject == "end_user"]
    assert (user.amount, user.amount_due) == (Decimal("0.6"), Decimal("0.60"))
    # 2,500,000 more after it: 3,500,000 x 0.0000006 = 2.10 on the whole; 2.10 - 0.60 = 1.50.
    insert_tokens(client, APP, "u1", ms("2026-10-06T10:00:00"), "openai", "gpt-4o-mini", "s2",
                  output_tokens=2_500_000, text_output_tokens=2_500_000,
                  total_tokens=2_500_000)
    run = generate(db, book)
    # The deployment's Convex lines did not change: only the end user is adjusted.
    (adjustment,) = run.adjustments
    assert (adjustment.subject, adjustment.user_id, adjustment.adjusts) == ("end_user", "u1",
                                                                            user.id)
    assert lines(adjustment) == {
        "tokens:openai/gpt-4o-mini:output": ("2500000", "0", "2500000", "0.0000006", "1.5")}
    assert (adjustment.amount, adjustment.amount_due) == (Decimal("1.5"), Decimal("1.50"))
    assert run.already == 1  # the deployment
    assert generate(db, book).adjustments == []


def test_a_failed_adjustment_is_billed_again_by_the_next(client: Client, db: Database,
                                                         book: PriceBook) -> None:
    database_io(client, "2026-10-10T10:00:00", 3 * GIB // 4)
    generate(db, book)
    database_io(client, "2026-10-20T10:00:00", GIB // 2)
    (first,) = generate(db, book).adjustments
    invoices.mark(db, first.id, "failed")
    # A failed adjustment holds nothing: the next one charges the same 0.055 again.
    (second,) = generate(db, book).adjustments
    assert second.id == first.id[:-1] + "2"
    assert lines(second) == lines(first)
    assert (second.amount, second.amount_due) == (Decimal("0.055"), Decimal("0.06"))
    assert generate(db, book).adjustments == []


def test_late_tokens_of_a_model_without_prices_are_a_problem_not_an_adjustment(
        client: Client, db: Database, book: PriceBook) -> None:
    insert_tokens(client, APP, "u1", ms("2026-10-05T10:00:00"), "openai", "gpt-4o-mini", "s1",
                  output_tokens=1_000_000, total_tokens=1_000_000)
    database_io(client, "2026-10-05T11:00:00", 3 * GIB // 4)
    assert len(generate(db, book).created) == 2
    insert_tokens(client, APP, "u1", ms("2026-10-06T10:00:00"), "mystery", "model-x", "s2",
                  output_tokens=10, total_tokens=10)
    database_io(client, "2026-10-20T10:00:00", GIB // 2)
    run = generate(db, book)
    assert run.problems == [
        f"end_user {APP} user 'u1': no token prices for provider 'mystery' model 'model-x' "
        f"in the price book {book.source}"]
    # The deployment is adjusted all the same (0.055, as above); the end user is not.
    assert [(i.subject, i.amount) for i in run.adjustments] == [
        ("deployment", Decimal("0.055"))]


class Deferred(Database):
    """A run's view of the engine whose writes wait: it reads what another run has not
    written yet, and writes after it."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.held: list[tuple[str, list[dict[str, Any]]]] = []

    def rows(self, sql: str) -> list[dict[str, Any]]:
        return self._db.rows(sql)

    def command(self, sql: str) -> None:
        self._db.command(sql)

    def insert_json(self, table: str, rows: Iterable[dict[str, Any]]) -> None:
        self.held.append((table, list(rows)))

    def release(self) -> None:
        for table, rows in self.held:
            self._db.insert_json(table, rows)


def test_two_runs_that_find_the_same_late_usage_write_one_adjustment(
        client: Client, db: Database, book: PriceBook) -> None:
    database_io(client, "2026-10-10T10:00:00", 3 * GIB // 4)
    generate(db, book)
    database_io(client, "2026-10-20T10:00:00", GIB // 2)
    slow = Deferred(db)
    (held,) = invoices.generate(slow, OCTOBER, book, REGISTRY, progress=False).adjustments
    (written,) = generate(db, book).adjustments
    slow.release()
    assert held.id == written.id
    adjustments = [i for i in documents(db).values() if i.kind == "adjustment"]
    assert [(i.id, i.amount) for i in adjustments] == [(written.id, Decimal("0.055"))]
    assert generate(db, book).adjustments == []


def test_a_closed_period_reports_late_usage_and_bills_none(client: Client, db: Database,
                                                           book: PriceBook) -> None:
    database_io(client, "2026-10-10T10:00:00", 3 * GIB // 4)
    (original,) = generate(db, book).created
    closed = closing.close(db, OCTOBER, now_ms=AFTER_OCTOBER)
    assert (closed.closed_at, closed.already) == (AFTER_OCTOBER, False)
    # Closing again keeps the first closing time.
    assert closing.close(db, OCTOBER, now_ms=AFTER_OCTOBER + 1000) == closing.Closed(
        OCTOBER, AFTER_OCTOBER, already=True)

    database_io(client, "2026-10-20T10:00:00", GIB // 2)
    # A deployment whose only usage lands after the close: never invoiced, not billed.
    insert_function_executions(client, [function_execution(
        "newcomer", ms("2026-10-21T10:00:00"), database_io_read_bytes=2 * GIB)])
    registry = {**REGISTRY, "newcomer": REGISTRY[APP]}
    run = invoices.generate(db, OCTOBER, book, registry, progress=False)
    assert (run.created, run.adjustments, run.already, run.problems) == ([], [], 0, [])
    assert list(documents(db)) == [original.id]
    # late-app: 0.055 as an adjustment would have had it; newcomer: 1 call and 2 GB,
    # (2 - 1) x 0.22 = 0.22. In all 0.275, for 2 subjects.
    assert run.summary()["unbilled"] == {"subjects": 2, "amount": "0.275"}
    assert run.summary()["closed_at"] == "2026-11-15T00:00:00Z"
    stored = {(u.deployment, u.subject): u for u in closing.unbilled(db, OCTOBER)}
    assert sorted(stored) == [(APP, "deployment"), ("newcomer", "deployment")]
    assert lines(stored[(APP, "deployment")]) == {
        "function_calls": ("1", "1", "0", "0.0000022", "0"),
        "database_io": ("0.5", "0.25", "0.25", "0.22", "0.055")}
    assert lines(stored[("newcomer", "deployment")])["database_io"] == (
        "2", "1", "1", "0.22", "0.22")
    assert deployment_statement(db, book) == {
        "period": "2026-10-01", "state": "closed", "closed_at": "2026-11-15T00:00:00Z",
        "current": "0.055", "invoiced": "0", "uninvoiced": "0.055", "invoiced_due": "0.00",
        "invoices": 1, "adjustments": 0}

    # Generating again reports the same difference once more (one row per subject).
    again = invoices.generate(db, OCTOBER, book, registry, progress=False)
    assert (again.created, again.adjustments) == ([], [])
    assert again.summary()["unbilled"] == {"subjects": 2, "amount": "0.275"}
    assert len(closing.unbilled(db, OCTOBER)) == 2


def test_a_period_that_has_not_ended_cannot_be_closed(db: Database) -> None:
    with pytest.raises(ClosingError, match=r"period 2026-10-01 has not ended .*2026-11-01"):
        closing.close(db, OCTOBER, now_ms=ms("2026-10-31T23:59:59.999"))
    assert closing.closed_at(db, OCTOBER) is None
    # Its last millisecond is over at the period's end: then it can.
    assert closing.close(db, OCTOBER, now_ms=OCTOBER.end_ms).already is False


def test_a_closed_period_has_no_effect_on_the_next(client: Client, db: Database,
                                                   book: PriceBook) -> None:
    closing.close(db, OCTOBER, now_ms=AFTER_OCTOBER)
    database_io(client, "2026-11-02T10:00:00", GIB)
    november = invoices.generate(db, OCTOBER.next(), book, REGISTRY, progress=False)
    assert [i.deployment for i in november.created] == [APP]
    assert november.closed_at is None
    assert "unbilled" not in november.summary()


def test_on_a_cluster_a_run_syncs_its_replica_before_it_reads(client: Client,
                                                              book: PriceBook) -> None:
    """A sink may have written through another replica: the run first waits for this one
    to hold every acknowledged part of what it reads (SYSTEM SYNC REPLICA, which the
    embedded engine's plain tables do not take, so it is recorded here, not run)."""
    database_io(client, "2026-10-10T00:00:00", 10**9)
    real = Database.of_client(client)
    statements_run: list[str] = []

    def recording(sql: str, fmt: str) -> bytes:
        statements_run.append(sql)
        return b"" if sql.startswith("SYSTEM SYNC REPLICA") else real._run(sql, fmt)

    replicated = invoices.generate(Database(recording), OCTOBER, book, REGISTRY,
                                   now_ms=AFTER_OCTOBER, progress=False, replicated=True)
    synced = [sql for sql in statements_run if sql.startswith("SYSTEM SYNC REPLICA")]
    assert synced == [f"SYSTEM SYNC REPLICA {table}" for table in invoices.SYNCED_TABLES]
    assert statements_run[:len(synced)] == synced  # before anything is read
    assert {"function_executions", "invoices"} <= set(invoices.SYNCED_TABLES)
    assert [i.id for i in replicated.created]

    statements_run.clear()
    reset(client)
    database_io(client, "2026-10-10T00:00:00", 10**9)
    single = invoices.generate(Database(recording), OCTOBER, book, REGISTRY,
                               now_ms=AFTER_OCTOBER, progress=False)
    assert not [sql for sql in statements_run if "SYNC REPLICA" in sql]
    assert [i.id for i in single.created] == [i.id for i in replicated.created]
