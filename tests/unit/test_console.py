"""The console's web layer without a broker or ClickHouse: who gets in, what a read token
may not do, CSRF on the one change, hostile tenant text rendered inert, charts drawn.

The pages' data functions (meterstream/console/reads.py) are replaced by fakes here;
tests/integration/test_console_browser.py runs them on the real pipeline."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from billing import pricebook, queries
from billing.invoices import Invoice
from billing.periods import Period
from meterstream.console import month_to_date as month_to_date_module
from meterstream.console import pages, reads
from meterstream.console import web as console_web
from meterstream.console.access import COOKIE, Tokens, csrf_token
from meterstream.console.charts import line_chart
from meterstream.console.clickhouse_reader import ClickHouseReader, Unavailable
from meterstream.console.markup import Html, path, tag
from meterstream.console.month_to_date import MonthToDate, MonthToDateCache
from meterstream.core.config import ClickHouseTarget

ADMIN = "admin-token-0123456789abcdef"
READ = "read-token-0123456789abcdef"
HOSTILE = '<script>alert(1)</script><img src=x onerror=alert(2)>"\'&'
NOW = 1_796_000_000_000


class Elements(HTMLParser):
    """Every element of a page with its attributes, and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parsed(page: str) -> Elements:
    elements = Elements()
    elements.feed(page)
    return elements


def assert_inert(page: str) -> None:
    """No element or attribute came from the hostile text: it is only text."""
    elements = parsed(page)
    assert not [t for t, _ in elements.tags if t in ("script", "img", "iframe")]
    assert not [a for _, attrs in elements.tags for a in attrs if a.startswith("on")]
    assert HOSTILE in "".join(elements.text)


class FakeReader(ClickHouseReader):
    def __init__(self) -> None:
        super().__init__(ClickHouseTarget(url="http://127.0.0.1:1/", chdb_path=None))
        self.marked: list[tuple[str, str]] = []

    def run(self, sql: str, fmt: str, write: bool = False) -> bytes:
        raise Unavailable("no ClickHouse in unit tests")


def invoice(status: str = "pending") -> Invoice:
    return Invoice(id="inv-202611-abc-1", period=Period(2026, 11), subject="deployment",
                   deployment="happy-otter-123", user_id="", attempt=1, team=HOSTILE,
                   project="", plan="starter", region="", currency="USD",
                   amount=Decimal("12.5"), amount_due=Decimal("12.5"), status=status,
                   lines=(), generated_at=NOW, status_changed_at=NOW, version=1)


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The data functions the pages call, faked; `marked` records invoice changes."""
    state: dict[str, Any] = {"marked": [], "invoices": [invoice()]}
    book = pricebook.load()

    def month_to_date(db: Any, book_: Any, records: Any, now: int) -> MonthToDate:
        return MonthToDate(now, (0, 0), {}, {}, {}, [])

    def overview(found: MonthToDate, book_: Any, records: Any, filters: reads.Filters,
                 page: int) -> reads.Overview:
        row = reads.Row(HOSTILE, HOSTILE, "starter", {HOSTILE: HOSTILE},
                        dict.fromkeys(reads.OVERVIEW_COLUMNS, 7), Decimal("3.5"))
        state["filters"] = filters
        return reads.Overview(0, found.computed_ms, "USD", [row], 1, 1, 1, [row],
                              [(HOSTILE, 1, row.cost)], row.cost)

    def show(db: Any, period: Period, status: str | None = None) -> list[Invoice]:
        return list(state["invoices"])

    def mark(db: Any, invoice_id: str, status: str) -> Invoice:
        state["marked"].append((invoice_id, status))
        return invoice(status)

    monkeypatch.setattr(month_to_date_module, "month_to_date", month_to_date)
    monkeypatch.setattr(reads, "overview", overview)
    monkeypatch.setattr(console_web.invoice_store, "show", show)
    monkeypatch.setattr(console_web.invoice_store, "mark", mark)
    state["book"] = book
    return state


def serve(fakes: dict[str, Any], scenario: Callable[[TestClient[Any, Any]], Awaitable[None]],
          tokens: Tokens | None = None) -> None:
    async def live(name: str) -> dict[str, Any]:
        return {"quotas": [], "hard_limit_exceeded": False}

    sources = console_web.Sources(FakeReader(), fakes["book"], list, live, lambda: NOW)
    app = console_web.application(tokens or Tokens(ADMIN, READ), sources)

    async def run() -> None:
        async with TestClient(TestServer(app)) as client:
            await scenario(client)
    asyncio.run(run())


def test_every_page_without_a_token_asks_to_log_in(fakes: dict[str, Any]) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        for page in ("/", "/alerts", "/invoices", "/invoices.csv", "/deployments/x"):
            answer = await client.get(page, allow_redirects=False)
            assert answer.status == 401, page
            assert 'name="token"' in await answer.text()
        answer = await client.get("/", headers={"Authorization": "Bearer wrong"})
        assert answer.status == 401
        answer = await client.get("/", headers={"Cookie": f"{COOKIE}=wrong"})
        assert answer.status == 401
    serve(fakes, scenario)


def test_with_no_token_configured_the_console_is_off(fakes: dict[str, Any]) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        answer = await client.get("/", headers={"Authorization": "Bearer "})
        assert answer.status == 403
        assert "Console off" in await answer.text()
        answer = await client.post("/login", data={"token": ""}, allow_redirects=False)
        assert answer.status == 401
    serve(fakes, scenario, Tokens("", ""))


def test_login_sets_an_http_only_strict_cookie_and_a_bad_token_is_refused(
        fakes: dict[str, Any]) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        answer = await client.post("/login", data={"token": "nope"}, allow_redirects=False)
        assert answer.status == 401
        assert COOKIE not in answer.cookies
        answer = await client.post("/login", data={"token": READ}, allow_redirects=False)
        assert answer.status == 303
        cookie = answer.headers["Set-Cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        page = await client.get("/")  # the client keeps the cookie
        assert page.status == 200
        assert "signed in: read" in await page.text()
        assert "script-src" not in page.headers["Content-Security-Policy"]
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        out = await client.post("/logout", allow_redirects=False)
        assert out.status == 303
        assert (await client.get("/", allow_redirects=False)).status == 401
    serve(fakes, scenario)


def test_hostile_names_labels_and_teams_are_rendered_as_text(fakes: dict[str, Any]) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        answer = await client.get("/", headers={"Authorization": f"Bearer {READ}"})
        assert answer.status == 200
        assert_inert(await answer.text())
        answer = await client.get("/invoices?period=2026-11",
                                  headers={"Authorization": f"Bearer {ADMIN}"})
        assert_inert(await answer.text())
    serve(fakes, scenario)


def test_filters_reach_the_overview(fakes: dict[str, Any]) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        answer = await client.get("/?team=t1&plan=pro&label=env%3Dprod",
                                  headers={"Authorization": f"Bearer {READ}"})
        assert answer.status == 200
        assert fakes["filters"] == reads.Filters("t1", "pro", "env=prod")
    serve(fakes, scenario)


def test_the_read_token_cannot_mark_an_invoice(fakes: dict[str, Any]) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        page = await client.get("/invoices?period=2026-11",
                                headers={"Authorization": f"Bearer {READ}"})
        assert "mark paid" not in await page.text()
        answer = await client.post("/invoices/inv-202611-abc-1/status",
                                   data={"status": "paid", "csrf": csrf_token(READ)},
                                   headers={"Authorization": f"Bearer {READ}"},
                                   allow_redirects=False)
        assert answer.status == 403
        assert fakes["marked"] == []
    serve(fakes, scenario)


def test_marking_needs_the_csrf_field_of_the_admin_login(fakes: dict[str, Any]) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        await client.post("/login", data={"token": ADMIN}, allow_redirects=False)
        for csrf in (None, "forged", csrf_token(READ)):
            data = {"status": "paid", **({"csrf": csrf} if csrf else {})}
            answer = await client.post("/invoices/inv-202611-abc-1/status", data=data,
                                       allow_redirects=False)
            assert answer.status == 403, csrf
        assert fakes["marked"] == []
        page = await (await client.get("/invoices?period=2026-11")).text()
        forms = [attrs for tag_, attrs in parsed(page).tags
                 if tag_ == "input" and attrs.get("name") == "csrf"]
        assert forms
        assert all(attrs["value"] == csrf_token(ADMIN) for attrs in forms)
        answer = await client.post("/invoices/inv-202611-abc-1/status",
                                   data={"status": "paid", "csrf": csrf_token(ADMIN)},
                                   allow_redirects=False)
        assert answer.status == 303
        assert answer.headers["Location"] == "/invoices?period=2026-11"
        assert fakes["marked"] == [("inv-202611-abc-1", "paid")]
    serve(fakes, scenario)


def test_bad_invoice_queries_are_400_and_csv_is_an_attachment(fakes: dict[str, Any]) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        auth = {"Authorization": f"Bearer {READ}"}
        assert (await client.get("/invoices?period=nope", headers=auth)).status == 400
        assert (await client.get("/invoices?status=lost", headers=auth)).status == 400
        csv = await client.get("/invoices.csv?period=2026-11", headers=auth)
        assert csv.status == 200
        assert csv.headers["Content-Disposition"] == (
            'attachment; filename="invoices-202611.csv"')
        assert (await csv.text()).startswith("invoice_id,")
    serve(fakes, scenario)


def test_clickhouse_away_is_a_503_page(fakes: dict[str, Any]) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        answer = await client.get("/alerts", headers={"Authorization": f"Bearer {READ}"})
        assert answer.status == 503
        assert "no ClickHouse in unit tests" in await answer.text()
        answer = await client.get("/deployments/x?resolution=week",
                                  headers={"Authorization": f"Bearer {READ}"})
        assert answer.status == 400
    serve(fakes, scenario)


def test_deployment_page_escapes_users_models_alerts_and_labels() -> None:
    start = NOW - 3 * 3_600_000
    report = queries.Report(queries.Subject("deployment", "d", ("d",)), "hour", start, NOW,
                            "USD", [queries.Bucket(start + i * 3_600_000,
                                                   {"function_calls": i * 10})
                                    for i in range(3)])
    view = reads.DeploymentView(
        "d", {"name": "d", "labels": {HOSTILE: HOSTILE}, "team": HOSTILE, "quotas": []},
        "hour", report, Decimal("1.25"), {"function_calls": 30}, [(HOSTILE, HOSTILE, 5)],
        [(HOSTILE, 5)],
        [{"at": "2026-11-01T00:00:00Z", "kind": HOSTILE, "deployment": "d", "metric": HOSTILE,
          "detail": {"user": HOSTILE}}],
        live={"quotas": [{"metric": "function_calls", "period": "month", "limit": 100,
                          "usage": 80, "thresholds": [0.8, 1.0], "hard": True,
                          "exceeded": False}], "hard_limit_exceeded": False})
    page = pages.deployment(view, "read", "USD")
    assert_inert(page)
    charts = [attrs for tag_, attrs in parsed(page).tags if tag_ == "svg"]
    calls = next(c for c in charts if c["aria-label"] == "function_calls")
    assert calls["data-points"] == "3"
    assert calls["data-max"] == "20"
    assert "80.0%" in page
    assert "80%, 100%" in page


def test_a_chart_draws_one_point_per_window() -> None:
    svg = line_chart("calls", [(0, 0.0), (60_000, 5.0), (120_000, 10.0)], "minute")
    elements = parsed(svg)
    polyline = next(attrs for tag_, attrs in elements.tags if tag_ == "polyline")
    points = (polyline["points"] or "").split()
    assert len(points) == 3
    assert [float(p.split(",")[1]) for p in points] == sorted(
        (float(p.split(",")[1]) for p in points), reverse=True)  # higher value, higher up
    assert "polyline" not in line_chart("empty", [], "hour")


def test_markup_escapes_attributes_and_link_paths() -> None:
    assert tag("a", HOSTILE, href=path("deployments", "a/b?c")) == Html(
        '<a href="/deployments/a%2Fb%3Fc">&lt;script&gt;alert(1)&lt;/script&gt;&lt;img '
        'src=x onerror=alert(2)&gt;&quot;&#x27;&amp;</a>')
    assert tag("input", value='"><script>') == Html('<input value="&quot;&gt;&lt;script&gt;">')


def _view(name: str = "d") -> reads.DeploymentView:
    report = queries.Report(queries.Subject("deployment", name, (name,)), "hour", NOW, NOW,
                            "USD", [])
    return reads.DeploymentView(name, None, "hour", report, None, {}, [], [], [])


def test_a_worker_out_of_reach_leaves_the_rest_of_the_deployment_page(
        fakes: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reads, "deployment", lambda *args: _view())

    async def unreachable(name: str) -> dict[str, Any]:
        raise ConnectionRefusedError("connection refused")

    async def run() -> None:
        sources = console_web.Sources(FakeReader(), fakes["book"], list, unreachable,
                                      lambda: NOW)
        app = console_web.application(Tokens(ADMIN, READ), sources)
        async with TestClient(TestServer(app)) as client:
            answer = await client.get("/deployments/d",
                                      headers={"Authorization": f"Bearer {READ}"})
            assert answer.status == 200
            page = await answer.text()
            assert "live status unavailable: connection refused" in page
            assert "not in the registry" in page
            assert 'id="month-cost">unpriced<' in page
    asyncio.run(run())


def test_marking_an_unknown_invoice_or_status_is_a_400(
        fakes: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(db: Any, invoice_id: str, status: str) -> Invoice:
        raise console_web.InvoiceError(f"no invoice {invoice_id!r}")

    monkeypatch.setattr(console_web.invoice_store, "mark", refuse)

    async def scenario(client: TestClient[Any, Any]) -> None:
        answer = await client.post("/invoices/inv-nope/status",
                                   data={"status": "paid", "csrf": csrf_token(ADMIN)},
                                   headers={"Authorization": f"Bearer {ADMIN}"},
                                   allow_redirects=False)
        assert answer.status == 400
        assert "no invoice &#x27;inv-nope&#x27;" in await answer.text()
    serve(fakes, scenario)


def test_the_console_settings() -> None:
    from meterstream.core.config import ConfigError, Settings

    settings = Settings.from_env({"METERSTREAM_WORKER_PORT": "7001"})
    assert settings.console_port == 8690
    assert settings.worker_url == "http://127.0.0.1:7001"  # where it asks for live quotas
    assert Settings.from_env({"METERSTREAM_CONSOLE_PORT": "9100"}).console_port == 9100
    for bad in ("70000", "0", "http"):
        with pytest.raises(ConfigError, match="METERSTREAM_CONSOLE_PORT"):
            Settings.from_env({"METERSTREAM_CONSOLE_PORT": bad})


def test_the_browser_test_fails_in_ci_without_chromium_and_skips_elsewhere(
        tmp_path: Path) -> None:
    from tests.support.browser import require_browser

    missing = (tmp_path / "chromium", tmp_path / "chromedriver")
    with pytest.raises(pytest.fail.Exception, match="must run in CI"):
        require_browser(missing, {"CI": "true"})
    with pytest.raises(pytest.skip.Exception, match="chromium"):
        require_browser(missing, {})
    for file in missing:
        file.touch()
    require_browser(missing, {"CI": "true"})


def test_the_reader_never_opens_the_embedded_engine_and_says_when_clickhouse_is_away(
        tmp_path: Path) -> None:
    from meterstream.core.clickhouse import EngineLock
    from tests.support import free_port

    engine = tmp_path / "clickhouse"
    reader = ClickHouseReader(ClickHouseTarget(url=f"chdb://{engine}", chdb_path=engine))
    with pytest.raises(Unavailable, match="not reachable"):
        reader.run("SELECT 1", "TabSeparated")
    assert not reader.ready()
    assert not engine.exists()  # nothing opened it
    with EngineLock(engine):  # and nothing holds it: a sink can start
        pass
    server = ClickHouseReader(ClickHouseTarget(url=f"http://127.0.0.1:{free_port()}/",
                                                     chdb_path=None))
    with pytest.raises(Unavailable, match="not reachable"):
        server.run("SELECT 1", "TabSeparated")


def test_the_overview_reads_the_same_statements_for_ten_or_ten_thousand_deployments() -> None:
    """Its cost is the rollups' (a few rows per deployment with usage), never one query per
    deployment; and a page holds PAGE_SIZE rows."""
    from billing.database import Database
    from meterstream.core.registry import Deployment

    def statements(count: int) -> tuple[list[str], reads.Overview]:
        seen: list[str] = []

        def run(sql: str, fmt: str) -> bytes:
            seen.append(sql)
            return b""
        records = [Deployment(f"d{i:05d}", team=f"t{i % 7}", labels={"env": "prod"})
                   for i in range(count)]
        book = pricebook.load()
        found = month_to_date_module.month_to_date(Database(run), book, records, NOW)
        return seen, reads.overview(found, book, records, reads.Filters(label="env=prod"), 3)

    few, small = statements(10)
    many, large = statements(10_000)
    assert len(few) == len(many)
    assert (small.matched, small.pages, len(small.rows)) == (10, 1, 10)
    assert (large.matched, large.pages, large.page) == (10_000, 200, 3)
    assert [row.deployment for row in large.rows] == [
        f"d{i:05d}" for i in range(2 * reads.PAGE_SIZE, 3 * reads.PAGE_SIZE)]
    assert sum(count for _, count, _ in large.teams) == 10_000


def test_month_to_date_is_served_at_once_and_recomputed_behind_when_stale() -> None:
    from billing.database import Database
    from meterstream.core.registry import Deployment

    seen: list[str] = []

    def run(sql: str, fmt: str) -> bytes:
        seen.append(sql)
        return b""
    db, book = Database(run), pricebook.load()
    cache = MonthToDateCache(seconds=15)
    records = [Deployment("a", plan="starter")]
    first = cache.get(db, book, records, NOW)  # the first one is computed for the page
    asked = len(seen)
    assert asked > 0
    assert cache.get(db, book, records, NOW + 14_999) is first
    cache.wait_refreshed()
    assert len(seen) == asked  # fresh: nothing recomputed
    # A plan change: the page gets the last figures, the next one the recomputed ones.
    changed = [Deployment("a", plan="pro")]
    assert cache.get(db, book, changed, NOW + 1_000) is first
    cache.wait_refreshed()
    assert len(seen) == 2 * asked
    second = cache.get(db, book, changed, NOW + 2_000)
    assert second is not first
    assert second.computed_ms == NOW + 1_000
    # Stale by age: the same.
    assert cache.get(db, book, changed, NOW + 17_000) is second
    cache.wait_refreshed()
    assert cache.get(db, book, changed, NOW + 17_001).computed_ms == NOW + 17_000
    # A new month is never served from the last one's figures.
    next_month = Period.containing(NOW).next().start_ms
    assert cache.get(db, book, changed, next_month).computed_ms == next_month


def test_page_numbers_are_kept_within_bounds(fakes: dict[str, Any],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []

    def alerts(db: Any, page: int) -> tuple[list[dict[str, Any]], bool]:
        asked.append(page)
        return [], False

    monkeypatch.setattr(reads, "alerts", alerts)

    async def scenario(client: TestClient[Any, Any]) -> None:
        for page in ("-5", "0", "x", "1" + "0" * 30, "7"):
            answer = await client.get(f"/alerts?page={page}",
                                      headers={"Authorization": f"Bearer {READ}"})
            assert answer.status == 200
    serve(fakes, scenario)
    assert asked == [1, 1, 1, console_web.MAX_PAGE, 7]
