"""Rollups, invoices and usage queries on the real embedded engine (chdb).

Rows go straight into the raw tables, as the sink writes them; the materialized
views fire on those inserts. Expected amounts are computed by hand from the
default price book's numbers (billing/default_price_book.toml), in the comments.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from clickhouse_connect.driver.client import Client

from billing import invoices, pricebook, queries, rollups, scheduler
from billing.database import Database
from billing.invoices import InvoiceError
from billing.metrics import LOOKS, NEXT_RUN, WAITING
from billing.metrics import RUNS as REGISTRY_RUNS
from billing.periods import Period
from billing.pricebook import PriceBook
from billing.registry import Owner
from billing.scheduler import cut_off_ms, last_due, run_time
from meterstream.core import migrate
from meterstream.core.clickhouse import EngineLock, connect
from meterstream.core.config import ClickHouseTarget, Settings
from meterstream.core.kafka_client import KafkaConnection
from meterstream.core.topics import Topics, ensure_topics
from tests.support.billing_data import (
    GIB,
    function_execution,
    insert_function_executions,
    insert_tokens,
    ms,
    publish_registry,
    reset,
)
from tests.support.october import (
    ANONYMOUS,
    EU,
    EU_APP,
    EU_APP_LINES,
    REGISTRY,
    US,
    US_APP,
    USER,
    october_usage,
)

OCTOBER = Period(2026, 10)
MB_MS_PER_GB_HOUR = 1024 * 3_600_000
T = TypeVar("T")


@pytest.fixture(scope="module")
def engine_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb") / "clickhouse"


@pytest.fixture(scope="module")
def engine(engine_path: Path) -> Iterator[Client]:
    path = engine_path
    with EngineLock(path):
        client = connect(ClickHouseTarget(url=f"chdb://{path}", chdb_path=path))
        migrate.apply(client)
        yield client
        client.close()  # one embedded engine path per process at a time


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


def test_rollups_hold_the_same_sums_as_the_events(client: Client, db: Database) -> None:
    october_usage(client)
    sums = ", ".join(f"sum({name})" for name in rollups.COUNTERS)

    def per_deployment(table: str) -> dict[str, tuple[int, ...]]:
        rows = client.query(f"SELECT deployment, {sums} FROM {table} "
                            f"GROUP BY deployment ORDER BY deployment").result_rows
        return {row[0]: tuple(row[1:]) for row in rows}

    events = per_deployment("usage_events")
    assert per_deployment("usage_hourly") == events
    assert per_deployment("usage_daily") == events
    eu = dict(zip(rollups.COUNTERS, events["eu-app"], strict=True))
    assert eu["function_calls"] == 3
    assert eu["database_io_read_bytes"] + eu["database_io_write_bytes"] == 50 * GIB + GIB // 2
    assert eu["action_compute_mb_ms"] == 251 * MB_MS_PER_GB_HOUR
    assert eu["data_egress_bytes"] == 51 * GIB
    assert eu["tokens"] == 2162 + 150 + 3500 + 2000
    assert eu["storage_snapshots"] == 2
    us = dict(zip(rollups.COUNTERS, events["us-app"], strict=True))
    assert (us["function_calls"], us["file_downloads"]) == (3, 2)
    assert (us["file_download_bytes"], us["log_stream_egress_bytes"]) == (2 * GIB, GIB // 2)
    assert us["data_egress_bytes"] == 2 * GIB + GIB // 2
    assert us["search_query_bytes"] == 3001 * GIB
    regions = {deployment: region for deployment, region in client.query(
        "SELECT deployment, max(region) FROM usage_daily GROUP BY deployment").result_rows}
    assert regions == {"eu-app": EU, "us-app": US, "quiet-app": US, "mystery-app": US}

    users = rollups.user_tokens(db, OCTOBER.start_ms)
    assert users[("eu-app", "user_2f9KqM")][("openai.chat", "gpt-4o-mini")] == {
        "input_tokens": 1950, "non_cached_input_tokens": 926, "cached_input_tokens": 1024,
        "cache_write_input_tokens": 0, "output_tokens": 362, "text_output_tokens": 362,
        "reasoning_tokens": 0, "total_tokens": 2312}
    assert sorted(users) == [("eu-app", ""), ("eu-app", "user_2f9KqM"), ("us-app", "bob")]
    hourly = client.query("SELECT sum(total_tokens), sum(steps) FROM tokens_hourly "
                          "WHERE deployment = 'eu-app'").result_rows
    assert hourly == [(7812, 4)]


def test_totals_over_any_range_read_rollups_and_events_alike(client: Client,
                                                             db: Database) -> None:
    october_usage(client)
    ranges = [("2026-10-01T00:00:00", "2026-11-01T00:00:00"),  # days only
              ("2026-10-03T09:59:59.999", "2026-10-05T10:00:00.001"),  # all five kinds
              ("2026-10-10T12:15:00", "2026-10-10T13:45:00"),  # hours and events
              ("2026-10-10T12:29:00", "2026-10-10T12:31:00")]  # events only
    for start, end in ranges:
        found, _ = rollups.totals(db, ms(start), ms(end))
        rows = client.query(
            "SELECT deployment, " + ", ".join(f"sum({n})" for n in rollups.COUNTERS)
            + f" FROM usage_events WHERE timestamp >= fromUnixTimestamp64Milli({ms(start)}) "
            f"AND timestamp < fromUnixTimestamp64Milli({ms(end)}) GROUP BY deployment"
        ).result_rows
        assert found == {row[0]: dict(zip(rollups.COUNTERS, row[1:], strict=True))
                         for row in rows}, (start, end)
    found, _ = rollups.totals(db, ms("2026-10-10T12:29:00"), ms("2026-10-10T12:31:00"))
    assert found["us-app"]["function_calls"] == 1  # the download at 12:30


def test_invoices_equal_the_hand_computed_amounts(client: Client, db: Database,
                                                  book: PriceBook) -> None:
    october_usage(client)
    run = invoices.generate(db, OCTOBER, book, REGISTRY, progress=False)
    assert sorted(run.problems) == [
        "deployment mystery-app: plan 'enterprise' is not in the price book "
        f"{book.source} (plans: free, professional, starter)",
        "end_user us-app user 'bob': no token prices for provider 'mystery' model 'model-x' "
        f"in the price book {book.source}",
    ]
    found = {(i.subject, i.deployment, i.user_id): i for i in invoices.show(db, OCTOBER)}
    assert sorted(found) == [("deployment", "eu-app", ""), ("deployment", "quiet-app", ""),
                             ("deployment", "us-app", ""), ("end_user", "eu-app", ""),
                             ("end_user", "eu-app", "user_2f9KqM")]

    eu = found[("deployment", "eu-app", "")]
    assert (eu.amount, eu.amount_due) == (EU_APP, Decimal("3.93"))
    assert {line.item: str(line.amount.normalize()) for line in eu.lines} == EU_APP_LINES
    assert (eu.team, eu.project, eu.plan, eu.region, eu.status, eu.attempt) == (
        "acme", "support-bot", "professional", EU, "pending", 1)
    storage_line = next(line for line in eu.lines if line.item == "database_storage")
    assert (storage_line.usage, storage_line.included, storage_line.quantity,
            storage_line.unit_price) == (Decimal(60), Decimal(50), Decimal(10), Decimal("0.26"))

    us = found[("deployment", "us-app", "")]
    assert (us.amount, us.amount_due, us.plan) == (US_APP, Decimal("0.20"), "starter")
    calls = next(line for line in us.lines if line.item == "function_calls")
    assert (calls.usage, calls.quantity, calls.amount) == (Decimal(3), Decimal(0), Decimal(0))

    quiet = found[("deployment", "quiet-app", "")]
    assert (quiet.amount, quiet.plan, quiet.team) == (Decimal(0), "professional", "")

    user = found[("end_user", "eu-app", "user_2f9KqM")]
    assert user.amount == USER
    assert {line.item: line.amount for line in user.lines if line.amount} == {
        "tokens:anthropic.messages/claude-sonnet-4-5:input": Decimal("0.003"),
        "tokens:anthropic.messages/claude-sonnet-4-5:cache_write": Decimal("0.0075"),
        "tokens:anthropic.messages/claude-sonnet-4-5:output": Decimal("0.0045"),
        "tokens:anthropic.messages/claude-sonnet-4-5:reasoning": Decimal("0.003"),
        "tokens:openai.chat/gpt-4o-mini:input": Decimal("0.0001389"),
        "tokens:openai.chat/gpt-4o-mini:cached_input": Decimal("0.0000768"),
        "tokens:openai.chat/gpt-4o-mini:output": Decimal("0.0002172"),
    }
    assert found[("end_user", "eu-app", "")].amount == ANONYMOUS


def test_invoices_read_the_events_so_a_rollup_that_missed_rows_changes_nothing(
        client: Client, db: Database, book: PriceBook) -> None:
    # A sink killed between a base table's part and its materialized view's leaves rows
    # the rollups never got; here the rollups lost everything.
    october_usage(client)
    for rollup in ("usage_hourly", "usage_daily", "tokens_hourly", "user_tokens_monthly"):
        client.command(f"TRUNCATE TABLE {rollup}")
    invoices.generate(db, OCTOBER, book, REGISTRY, progress=False)
    found = {(i.subject, i.deployment, i.user_id): i.amount for i in invoices.show(db, OCTOBER)}
    assert found == {("deployment", "eu-app", ""): EU_APP, ("deployment", "us-app", ""): US_APP,
                     ("deployment", "quiet-app", ""): Decimal(0),
                     ("end_user", "eu-app", "user_2f9KqM"): USER,
                     ("end_user", "eu-app", ""): ANONYMOUS}


EDGE_APP = "edge-app"
EDGE_REGISTRY = {EDGE_APP: Owner("acme", "edges", "starter")}


@pytest.mark.parametrize(("last_ms", "first_ms"), [
    ("2026-10-31T23:59:59.999", "2026-11-01T00:00:00.000"),
    # A leap February: its 29th is in February, the next millisecond in March.
    ("2028-02-29T23:59:59.999", "2028-03-01T00:00:00.000"),
])
def test_an_event_on_a_month_edge_is_invoiced_in_its_own_month(
        client: Client, db: Database, book: PriceBook, last_ms: str, first_ms: str) -> None:
    # The month's last millisecond reads 3 GiB, the next month's first 5 GiB (starter plan:
    # 1 GB of database I/O included, then 0.22 per GB), and a tokens step at each.
    before, after = Period.containing(ms(last_ms)), Period.containing(ms(first_ms))
    assert after == before.next()
    insert_function_executions(client, [
        function_execution(EDGE_APP, ms(last_ms), database_io_read_bytes=3 * GIB),
        function_execution(EDGE_APP, ms(first_ms), database_io_read_bytes=5 * GIB)])
    for at, step, tokens in ((last_ms, "e1", 1_000_000), (first_ms, "e2", 2_000_000)):
        insert_tokens(client, EDGE_APP, "edge-user", ms(at), "openai", "gpt-4o", step,
                      input_tokens=tokens, non_cached_input_tokens=tokens,
                      total_tokens=tokens)
    for period in (before, after):
        assert invoices.generate(db, period, book, EDGE_REGISTRY, progress=False).problems == []
    found = {(i.period, i.subject): i for p in (before, after) for i in invoices.show(db, p)}
    assert sorted(found) == sorted((p, s) for p in (before, after)
                                   for s in ("deployment", "end_user"))

    def line(invoice: invoices.Invoice, item: str) -> tuple[Decimal, Decimal]:
        (found_line,) = [x for x in invoice.lines if x.item == item]
        return found_line.usage, found_line.amount

    # The last millisecond: 1 call, 3 GB, (3 - 1) x 0.22 = 0.44; 1,000,000 gpt-4o input
    # tokens at 2.50 per million = 2.5.
    assert line(found[(before, "deployment")], "function_calls")[0] == 1
    assert line(found[(before, "deployment")], "database_io") == (Decimal(3), Decimal("0.44"))
    assert found[(before, "deployment")].amount == Decimal("0.44")
    assert found[(before, "end_user")].amount == Decimal("2.5")
    # The first millisecond of the next month: 1 call, 5 GB, (5 - 1) x 0.22 = 0.88;
    # 2,000,000 tokens = 5.
    assert line(found[(after, "deployment")], "function_calls")[0] == 1
    assert line(found[(after, "deployment")], "database_io") == (Decimal(5), Decimal("0.88"))
    assert found[(after, "deployment")].amount == Decimal("0.88")
    assert found[(after, "end_user")].amount == Decimal("5")


def test_generating_again_never_duplicates_and_a_failed_invoice_gets_a_new_attempt(
        client: Client, db: Database, book: PriceBook) -> None:
    october_usage(client)
    first = invoices.generate(db, OCTOBER, book, REGISTRY, progress=False)
    assert len(first.created) == 5
    again = invoices.generate(db, OCTOBER, book, REGISTRY, progress=False)
    assert (len(again.created), again.already) == (0, 5)
    assert len(invoices.show(db, OCTOBER)) == 5

    eu = next(i for i in first.created if i.deployment == "eu-app" and i.subject == "deployment")
    assert invoices.mark(db, eu.id, "failed").status == "failed"
    paid = next(i for i in first.created if i.subject == "end_user" and i.user_id == "")
    invoices.mark(db, paid.id, "paid")
    retried = invoices.generate(db, OCTOBER, book, REGISTRY, progress=False)
    assert [(i.deployment, i.attempt, i.amount) for i in retried.created] == [
        ("eu-app", 2, EU_APP)]
    assert retried.created[0].id == eu.id[:-1] + "2"
    statuses = {i.id: i.status for i in invoices.show(db, OCTOBER)}
    assert len(statuses) == 6
    assert (statuses[eu.id], statuses[eu.id[:-1] + "2"], statuses[paid.id]) == (
        "failed", "pending", "paid")
    assert [i.id for i in invoices.show(db, OCTOBER, status="paid")] == [paid.id]
    assert invoices.generate(db, OCTOBER, book, REGISTRY, progress=False).created == []

    with pytest.raises(InvoiceError, match="no invoice 'inv-202610-0000000000000000-1'"):
        invoices.mark(db, "inv-202610-0000000000000000-1", "paid")
    with pytest.raises(InvoiceError, match="status must be one of pending, paid, failed"):
        invoices.mark(db, paid.id, "refunded")


def test_daily_costs_add_up_to_the_invoice(client: Client, db: Database,
                                           book: PriceBook) -> None:
    october_usage(client)
    who = queries.subject(REGISTRY, "eu-app", None, None)
    report = queries.usage(db, book, REGISTRY, who, "day", OCTOBER.start_ms, OCTOBER.end_ms)
    assert len(report.buckets) == 31
    costs = {queries.iso(b.start)[:10]: b.convex_cost for b in report.buckets}
    assert sum(costs.values()) == EU_APP
    assert costs["2026-10-01"] == 0
    assert (costs["2026-10-03"], costs["2026-10-04"], costs["2026-10-05"]) == (
        Decimal("0.156"), Decimal("0.13"), Decimal("0.39"))
    # Search storage (2 GB all month, 1 included) passes 1 GB-month on day 16 of 31:
    # (2 x 16/31 - 1) x 0.50 x 1.3 = 0.65/31 = 0.0209677419 (to 10 places). Database
    # storage (60 GB, 50 included) passes 50 on day 26: (60 x 26/31 - 50) x 0.26 =
    # 2.6/31 = 0.0838709677; search storage adds its day: (2 x 26/31 - 1) x 0.65 =
    # 0.4403225806 minus (2 x 25/31 - 1) x 0.65 = 0.3983870968, 0.0419354838.
    assert costs["2026-10-16"] == Decimal("0.0209677419")
    assert costs["2026-10-26"] == Decimal("0.0838709677") + Decimal("0.0419354838")
    total = report.total()
    assert total.token_cost == USER + ANONYMOUS
    assert total.usage["function_calls"] == 3
    assert report.problems == []


def test_minute_windows_read_the_events_and_count_the_month_before(
        client: Client, db: Database, book: PriceBook) -> None:
    october_usage(client)
    who = queries.subject(REGISTRY, "eu-app", None, None)
    report = queries.usage(db, book, REGISTRY, who, "minute", ms("2026-10-05T09:58:30"),
                           ms("2026-10-05T10:01:00"))
    assert [queries.iso(b.start) for b in report.buckets] == [
        "2026-10-05T09:58:00Z", "2026-10-05T09:59:00Z", "2026-10-05T10:00:00Z"]
    action = report.buckets[2]
    # The included 250 GB-hours are untouched before, so the action's 251 cost 1 GB-hour;
    # storage is still far below its included amounts (no cost).
    assert action.convex_cost == Decimal("0.39")
    assert action.usage["action_compute_mb_ms"] == 251 * MB_MS_PER_GB_HOUR
    assert action.token_cost == Decimal("0.0003879")  # the reference's example step
    assert [b.usage["database_storage_byte_ms"] for b in report.buckets] == [60 * GIB * 60_000] * 3


def test_team_user_and_top_n(client: Client, db: Database, book: PriceBook) -> None:
    october_usage(client)
    team = queries.subject(REGISTRY, None, "acme", None)
    assert team.deployments == ("eu-app", "us-app")
    report = queries.usage(db, book, REGISTRY, team, "month", OCTOBER.start_ms, OCTOBER.end_ms)
    (month,) = report.buckets
    assert month.convex_cost == EU_APP + US_APP
    assert month.token_cost == USER + ANONYMOUS
    assert report.problems == ["no token prices for mystery/model-x; its tokens' cost is "
                               "left out"]

    user = queries.subject(REGISTRY, "eu-app", None, "user_2f9KqM")
    report = queries.usage(db, book, REGISTRY, user, "day", ms("2026-10-05T00:00:00"),
                           ms("2026-10-08T00:00:00"))
    assert [b.token_cost for b in report.buckets] == [
        Decimal("0.0003879"), Decimal("0.000045"), Decimal("0.018")]
    assert [b.convex_cost for b in report.buckets] == [0, 0, 0]

    ranked, problems = queries.top(db, book, REGISTRY, 2, OCTOBER.start_ms, OCTOBER.end_ms)
    assert [(r["deployment"], r["cost"]) for r in ranked] == [
        ("eu-app", str(EU_APP + USER + ANONYMOUS)), ("us-app", str(US_APP))]
    assert any("plan 'enterprise'" in problem for problem in problems)
    with pytest.raises(queries.UsageQueryError, match="no deployment of team 'nobody'"):
        queries.subject(REGISTRY, None, "nobody", None)


def test_the_rollup_migration_backfills_once(client: Client) -> None:
    october_usage(client)
    before = client.query("SELECT sum(function_calls), sum(data_egress_bytes) "
                          "FROM usage_daily").result_rows
    for table in ("usage_hourly", "usage_daily", "tokens_hourly", "user_tokens_monthly"):
        client.command(f"TRUNCATE TABLE {table}")  # as before the migration
    (rollup,) = [m for m in migrate.migrations() if m.name == "rollups"]
    for _ in range(2):  # a second run (a crash before it was recorded) adds nothing
        for statement in rollup.statements():
            client.command(statement)
        assert client.query("SELECT sum(function_calls), sum(data_egress_bytes) "
                            "FROM usage_daily").result_rows == before
        assert client.command("SELECT sum(steps) FROM user_tokens_monthly") == 5


def _october_pipeline(client: Client, engine_path: Path, kafka_bootstrap: str,
                      extra: dict[str, str] | None = None) -> Settings:
    """October's usage in the engine, the registry of its deployments on a namespace of
    its own, and the settings of a sink over both."""
    october_usage(client)
    namespace = f"t{uuid.uuid4().hex[:10]}"
    publish_registry(kafka_bootstrap, namespace, {
        name: {"team": owner.team, "project": owner.project, "plan": owner.plan or ""}
        for name, owner in REGISTRY.items()})
    return Settings.from_env({"METERSTREAM_KAFKA": kafka_bootstrap,
                              "METERSTREAM_NAMESPACE": namespace,
                              "METERSTREAM_CLICKHOUSE": f"chdb://{engine_path}", **(extra or {})})


def test_the_schedule_invoices_the_month_before_once_due(
        client: Client, db: Database, engine_path: Path, kafka_bootstrap: str) -> None:
    settings = _october_pipeline(client, engine_path, kafka_bootstrap)
    runs_before = REGISTRY_RUNS.labels("problems")._value.get()

    async def scenario() -> list[invoices.Invoice]:
        # A sink that starts a few seconds after the cut-off (day 2, 00:00:10: a day of
        # grace and the 10 s produce timeout); no raw topic, so nothing to wait for.
        schedule = scheduler.start(settings, clock=lambda: ms("2026-11-02T00:00:15") / 1000)
        november_run = ms("2026-12-02T00:00:10") / 1000
        try:
            # The invoices are in before the schedule moves on to November's run.
            for _ in range(600):  # 60 s
                found = invoices.show(db, OCTOBER)
                if found and NEXT_RUN._value.get() == november_run:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("no invoices for October, or no run set for November, "
                                     f"within 60 s (next run {NEXT_RUN._value.get()})")
        finally:
            await schedule.stop()
        return found

    found = asyncio.run(scenario())
    assert sorted((i.subject, i.deployment, i.user_id, i.amount) for i in found) == [
        ("deployment", "eu-app", "", EU_APP), ("deployment", "quiet-app", "", Decimal(0)),
        ("deployment", "us-app", "", US_APP), ("end_user", "eu-app", "", ANONYMOUS),
        ("end_user", "eu-app", "user_2f9KqM", USER)]
    assert next(i for i in found if i.deployment == "eu-app").team == "acme"
    assert REGISTRY_RUNS.labels("problems")._value.get() == runs_before + 1


async def _commit(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commits `offsets` for `group` as its member would (the group has no member here)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


def test_the_schedule_waits_for_the_worker_and_the_sink_to_catch_up(
        client: Client, db: Database, engine_path: Path, kafka_bootstrap: str) -> None:
    """After October's cut-off the raw topic holds bodies the worker's group has not
    committed: no run. The worker catches up, having forwarded records the sink's group
    has not committed: still no run. The sink catches up: October is invoiced."""
    settings = _october_pipeline(client, engine_path, kafka_bootstrap,
                                 {"METERSTREAM_PARTITIONS": "2"})
    namespace = settings.namespace
    topics = Topics.of(settings)
    raw = topics.raw.name
    records = topics.records("function_execution").name

    def looks(stage: str) -> float:
        return LOOKS.labels(stage)._value.get()

    async def until(condition: Callable[[], T], what: str) -> T:
        for _ in range(1200):  # 60 s
            if found := condition():
                return found
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    async def wait_looks(stage: str, before: float) -> None:
        # Three looks that found the group behind.
        await until(lambda: looks(stage) >= before + 3, f"three looks at the {stage}")

    async def scenario() -> list[invoices.Invoice]:
        await ensure_topics(KafkaConnection(kafka_bootstrap),
                            [topics.raw, topics.records("function_execution")])
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for partition in (0, 1, 1):  # bodies the worker has not processed yet
                await producer.send_and_wait(raw, b"[]", key=b"eu-app", partition=partition)
            worker_looks, sink_looks = looks("worker"), looks("sink")
            schedule = scheduler.start(settings, clock=lambda: ms("2026-11-02T00:01:00") / 1000,
                                       poll_seconds=0.1)
            try:
                await wait_looks("worker", worker_looks)
                assert invoices.show(db, OCTOBER) == []
                assert WAITING.labels("worker")._value.get() == 1
                # The worker forwards records and commits the raw offsets it processed.
                await producer.send_and_wait(records, b"[]", key=b"eu-app", partition=0)
                await _commit(kafka_bootstrap, namespace,
                              {TopicPartition(raw, 0): 1, TopicPartition(raw, 1): 2})
                await wait_looks("sink", sink_looks)
                assert invoices.show(db, OCTOBER) == []
                assert WAITING.labels("sink")._value.get() == 1
                await _commit(kafka_bootstrap, f"{namespace}-sink",
                              {TopicPartition(records, 0): 1})
                found = await until(lambda: invoices.show(db, OCTOBER), "October's invoices")
            finally:
                await schedule.stop()
        finally:
            await producer.stop()
        assert WAITING.labels("sink")._value.get() == 0
        return found

    found = asyncio.run(scenario())
    assert sorted((i.deployment, i.user_id, i.amount) for i in found
                  if i.subject == "deployment") == [
        ("eu-app", "", EU_APP), ("quiet-app", "", Decimal(0)), ("us-app", "", US_APP)]


def test_the_schedule_runs_after_the_grace_and_the_produce_timeout() -> None:
    wait = cut_off_ms(Settings.from_env({}))  # a day of grace + the 10 s produce timeout
    assert run_time(OCTOBER, wait) == ms("2026-11-02T00:00:10")
    assert run_time(Period(2026, 12), wait) == ms("2027-01-02T00:00:10")
    assert last_due(ms("2026-11-02T00:00:09.999"), wait) == Period(2026, 9)
    assert last_due(ms("2026-11-02T00:00:10"), wait) == OCTOBER
    assert last_due(ms("2026-12-01T10:00:00"), wait) == OCTOBER


def test_period_labels() -> None:
    assert Period.parse("2026-10").label == "2026-10-01"
    assert OCTOBER.hours == 744
    assert Period(2026, 2).hours == 672
    with pytest.raises(ValueError, match="a billing period is YYYY-MM"):
        Period.parse("2026-13")


