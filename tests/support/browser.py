"""Debian's chromium and chromedriver for browser tests, through Selenium, with no download:
the driver's path is given, so Selenium Manager fetches nothing."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def require_browser(paths: tuple[Path, ...] = (CHROMIUM, CHROMEDRIVER),
                    environ: Mapping[str, str] | None = None) -> None:
    """Returns when every path exists; otherwise fails under CI=true (CI installs them:
    deploy/system-packages.sh) and skips elsewhere."""
    missing = [str(path) for path in paths if not path.exists()]
    if not missing:
        return
    message = f"{', '.join(missing)} missing: apt-get install chromium chromium-driver"
    if (os.environ if environ is None else environ).get("CI") == "true":
        pytest.fail(f"the browser test must run in CI: {message}")
    pytest.skip(message)


@contextmanager
def chromium(width: int = 1280, height: int = 1400) -> Iterator[Any]:
    """A headless chromium driven by Selenium, quit at the end."""
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}", "--disable-gpu"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)),
                              options=options)
    try:
        yield driver
    finally:
        driver.quit()
