"""Headless Chromium for the browser tests: Debian's ``chromium`` and
``chromium-driver`` (never a download at run time), driven by selenium. Missing, a
test fails in CI and is skipped elsewhere with the apt line."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.services import IN_CI

INSTALL = "apt-get install -y chromium chromium-driver"


def chromium_paths() -> tuple[str, str]:
    """The browser and its WebDriver, or the test fails (CI) / skips (elsewhere)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        msg = f"Chromium and its WebDriver are not installed; install them with: {INSTALL}"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.fail("selenium is missing: pip install -e '.[test]'")
    return browser, driver


@contextlib.contextmanager
def chromium(javascript: bool = True) -> Iterator[Any]:
    """A headless Chromium session (JavaScript on or off), quit at the end."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,1800")
    if not javascript:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2}
        )
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()
