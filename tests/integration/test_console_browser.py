"""The console in a real browser on the real pipeline: `meterstream up` (real broker,
embedded ClickHouse behind the sink, the console among its services), usage sent through
the receiver, then Debian's chromium through chromedriver and Selenium logs in, finds the
deployment with its exact numbers, a chart drawn, and marks its invoice paid.

Without chromium and chromedriver the test skips, except under CI=true, where it fails:
CI installs them (deploy/system-packages.sh). With CONSOLE_SCREENSHOTS=<dir> it saves
the main pages there (docs/console/ holds the committed ones).
"""

from __future__ import annotations

import copy
import json
import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from billing.periods import Period
from tests.support import convex_examples, meterstream, wait_for
from tests.support.browser import chromium
from tests.support.clock import settled
from tests.support.pipeline import ADMIN_TOKEN, READ_TOKEN, Pipeline, running_pipeline

DEPLOYMENT = "happy-otter-123"
SECRET = "3f1c2b7e9a0d4c5e8b6a7f0e1d2c3b4a"
HOSTILE_TEAM = "<b>acme</b><script>window.pwned = 1</script>"
HOSTILE_LABEL = '"><img src=x onerror="window.pwned = 2">'
BODIES = 5
CALLS = 3 * BODIES  # the reference's three function executions per body
WAIT_SECONDS = 30


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium() as driver:
        yield driver


def bodies(at_ms: int) -> list[bytes]:
    """BODIES distinct bodies of the reference's three function executions, at `at_ms`."""
    templates = [e for e in convex_examples()["events"] if e["topic"] == "function_execution"]
    first = min(e["timestamp"] for e in templates)
    found = []
    for n in range(BODIES):
        events = copy.deepcopy(templates)
        for event in events:
            event["timestamp"] = at_ms + (event["timestamp"] - first) + n
            event["convex"]["deployment_name"] = DEPLOYMENT
        found.append(orjson.dumps(events))
    return found


def console_page(pipeline: Pipeline, path: str) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{pipeline.env['METERSTREAM_CONSOLE_PORT']}{path}",
        headers={"Authorization": f"Bearer {READ_TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            text: str = answer.read().decode()
            return text
    except OSError:
        return ""


def test_console_in_a_browser_shows_usage_and_marks_an_invoice_paid(
        kafka_bootstrap: str, tmp_path: Path, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    assert isinstance(driver, WebDriver)
    shots = os.environ.get("CONSOLE_SCREENSHOTS")
    now = int(time.time() * 1000)
    at = settled(now, 20_000, "day", before_ms=600_000)
    period = Period.containing(at).label[:7]
    with running_pipeline(kafka_bootstrap, tmp_path) as pipeline:
        console = f"http://127.0.0.1:{pipeline.env['METERSTREAM_CONSOLE_PORT']}"
        pipeline.register(DEPLOYMENT, webhook_secret=SECRET, team=HOSTILE_TEAM, plan="starter",
                          labels={"env": HOSTILE_LABEL})
        status, answer = pipeline.admin("PUT", f"/v1/deployments/{DEPLOYMENT}/quotas", {
            "quotas": [{"metric": "function_calls", "period": "month", "limit": 10}]})
        assert status == 200, answer
        for body in bodies(at):
            status, text = pipeline.post(body, SECRET)
            assert status == 200, text
        wait_for(lambda: f"<td class=\"n\">{CALLS}</td>" in console_page(pipeline, "/"),
                 timeout=120, what=f"{CALLS} function calls on the console's overview")
        wait_for(lambda: "quota" in console_page(pipeline, "/alerts"), timeout=60,
                 what="the quota alerts on the console's alerts page")
        generated = meterstream(["invoices", "generate", "--period", period], pipeline.env)
        assert json.loads(generated.stdout)["created"] == 1

        def wait(condition: object) -> object:
            return WebDriverWait(driver, WAIT_SECONDS).until(condition)  # type: ignore[arg-type]

        # Not logged in: the login page; a wrong token is refused.
        driver.get(f"{console}/")
        driver.find_element(By.ID, "token").send_keys("not-a-token")
        driver.find_element(By.ID, "login").click()
        wait(lambda d: "opens nothing here" in d.page_source)
        driver.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
        driver.find_element(By.ID, "login").click()
        wait(lambda d: d.find_elements(By.ID, "deployments"))

        # The overview: the deployment with its exact calls; hostile text only as text.
        row = driver.find_element(By.XPATH, f"//table[@id='deployments']//tr[td/a="
                                            f"'{DEPLOYMENT}']")
        cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        assert cells[1] == HOSTILE_TEAM
        assert cells[3] == f"env={HOSTILE_LABEL}"
        assert cells[4] == str(CALLS)
        assert driver.execute_script("return window.pwned === undefined")
        assert driver.execute_script("return document.scripts.length") == 0
        assert not driver.find_elements(By.CSS_SELECTOR, "main img, main b")
        if shots:
            driver.save_screenshot(str(Path(shots) / "overview.png"))

        # One deployment: its calls this month, a chart with data, the live quota.
        row.find_element(By.TAG_NAME, "a").click()
        wait(lambda d: d.find_elements(By.ID, "month-usage"))
        month = {r.find_elements(By.TAG_NAME, "td")[0].text:
                 r.find_elements(By.TAG_NAME, "td")[1].text
                 for r in driver.find_elements(By.CSS_SELECTOR, "#month-usage tbody tr")}
        assert month["function_calls"] == str(CALLS)
        chart = driver.find_element(By.CSS_SELECTOR, "svg.chart[aria-label='function_calls']")
        assert int(chart.get_attribute("data-points") or 0) > 0
        assert chart.get_attribute("data-max") != "0"
        assert chart.find_elements(By.TAG_NAME, "polyline")
        quota = driver.find_element(By.CSS_SELECTOR, "#quotas tbody tr")
        assert [c.text for c in quota.find_elements(By.TAG_NAME, "td")][:5] == [
            "function_calls", "month", "", str(CALLS), "10"]
        assert "exceeded" in quota.text
        assert driver.find_elements(By.CSS_SELECTOR, "#alerts tbody tr")
        assert driver.execute_script("return window.pwned === undefined")
        if shots:
            driver.save_screenshot(str(Path(shots) / "deployment.png"))

        driver.get(f"{console}/alerts")
        wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#alerts tbody tr"))
        if shots:
            driver.save_screenshot(str(Path(shots) / "alerts.png"))

        # Invoices: mark the deployment's invoice paid, in the browser.
        driver.get(f"{console}/invoices?period={period}")
        button = wait(lambda d: d.find_elements(By.CSS_SELECTOR,
                                                "button[data-status='paid']"))
        assert isinstance(button, list)
        invoice_id = button[0].get_attribute("data-invoice")
        button[0].click()
        wait(lambda d: d.find_element(By.CSS_SELECTOR,
                                      f"tr[id='invoice-{invoice_id}'] td.status").text
             == "paid")
        if shots:
            driver.save_screenshot(str(Path(shots) / "invoices.png"))
        shown = json.loads(meterstream(["invoices", "show", "--period", period],
                                       pipeline.env).stdout)
        assert [(i["id"], i["status"]) for i in shown] == [(invoice_id, "paid")]

        # Its probes and metrics, like every service's, without a token.
        assert json.loads(urllib.request.urlopen(f"{console}/readyz", timeout=10).read()) == {
            "ready": True, "registry": True, "clickhouse": True}
        metrics = urllib.request.urlopen(f"{console}/metrics", timeout=10).read().decode()
        assert 'meterstream_console_invoice_marks_total{status="paid"} 1.0' in metrics
        assert 'meterstream_console_logins_total{result="refused"} 1.0' in metrics
        assert 'meterstream_console_requests_total{page="deployment",status="200"}' in metrics

        # `up` stops the console with the rest, cleanly.
        assert pipeline.stop() == 0, pipeline.log_tail()
        (stopped,) = [json.loads(line) for line in pipeline.log.read_text().splitlines()
                      if line.startswith("{") and '"pipeline stopped"' in line]
        assert stopped["clean"] is True
