"""The dashboard in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``) driven by selenium against a real uvicorn process.

The app has jobs in every state; the test signs in through the form, checks the
figures against the store, clicks Cancel and Retry and sees the states change,
and saves a screenshot under its temp dir. The app's periodic refresh is set to
an hour, so whatever changes on a page without a click came by its live stream.
Nothing is downloaded at run time: a missing browser fails in CI and skips
elsewhere with the install command.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from async_accept.dashboard.page import NOTICES
from async_accept.job import Job, JobStatus
from async_accept.stores.sqlite import SQLiteStore
from tests import dashboard_app
from tests.browser import chromium
from tests.servers import Server, base_env, uvicorn
from tests.test_dashboard import post_job, wait_job

ALICE = {"Authorization": "Bearer alice"}


# The browsers depend on the site: they close (and their live streams with them)
# before the server stops, which would otherwise wait for the open streams.
@pytest.fixture
def browser(site: Site) -> Iterator[Any]:
    with chromium(javascript=True) as driver:
        yield driver


@pytest.fixture
def browser_without_js(site: Site) -> Iterator[Any]:
    with chromium(javascript=False) as driver:
        yield driver


class Site:
    """The app in a uvicorn process, and its SQLite store opened by the test too."""

    def __init__(self, server: Server, store: SQLiteStore) -> None:
        self.server = server
        self.store = store
        self.base = server.base
        self.http = httpx.Client(base_url=server.base, timeout=10)

    def job(self, path: str) -> str:
        return post_job(self.http, path, headers=ALICE)

    def wait(self, job_id: str, until: Callable[[Job], bool], timeout: float = 15.0) -> Job:
        return wait_job(self.store, job_id, until, timeout)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    db = tmp_path / "jobs.db"
    # An hour: only the live updates can change a page in the test's time.
    env = base_env(ASYNC_ACCEPT_STORE=f"sqlite:///{db}", DASHBOARD_REFRESH="3600")
    server = uvicorn("tests.dashboard_app:app", env, tmp_path / "server.log").start()
    store = SQLiteStore(str(db))
    s = Site(server, store)
    try:
        yield s
    finally:
        for job in store.list_jobs(JobStatus.PROCESSING):
            store.cancel(job.id, time.time())
        s.http.close()
        server.stop()
        store.close()


def every_state(site: Site) -> dict[str, str]:
    """One job in each state (two queued), by name."""
    from tests.test_dashboard import seed_queued

    jobs = {
        "completed": site.job("/ok"),
        "failed": site.job("/flaky"),
        "running": site.job("/slow/nightly-report"),
        "queued": seed_queued(site.store),
        "queued2": seed_queued(site.store),
        "canceled": seed_queued(site.store),
    }
    site.store.cancel(jobs["canceled"], time.time())
    site.wait(jobs["completed"], lambda j: j.status is JobStatus.COMPLETED)
    site.wait(jobs["failed"], lambda j: j.status is JobStatus.FAILED)
    site.wait(jobs["running"], lambda j: j.percent is not None)
    return jobs


def sign_in(driver: Any, site: Site) -> None:
    from selenium.webdriver.common.by import By

    driver.get(site.base + "/_jobs/dashboard")
    assert "Sign in" in driver.title
    field = driver.find_element(By.ID, "token")
    field.send_keys(dashboard_app.TOKEN)
    field.submit()
    wait_for(lambda: driver.find_elements(By.ID, "count-completed"))


def hold_still(driver: Any) -> None:
    """Turn the page's live updates off (the checkbox), so that the rows a test reads
    and clicks are not swapped under it while a running job reports progress."""
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, "auto")
    if box.is_displayed() and box.is_selected():
        box.click()
        body = driver.find_element(By.TAG_NAME, "body")
        driver.execute_script("arguments[0].focus()", body)


def wait_for(condition: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Poll *condition* until it is truthy; an element replaced under it (the page's
    refresh swaps the panels) counts as not yet."""
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except StaleElementReferenceException:
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, "the page never showed it"
        time.sleep(0.1)


def notice_reads(driver: Any, *texts: str) -> None:
    """Wait for the page after a button's POST: its notice reads one of *texts*.

    The page before the click may still carry an older notice (and its element goes
    stale while the browser navigates), so the wait is on the text, not the element:
    a wait for the element alone read the previous action's notice."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    def shown() -> str:
        try:
            return " ".join(e.text for e in driver.find_elements(By.ID, "notice"))
        except StaleElementReferenceException:
            return ""

    try:
        wait_for(lambda: shown() in texts)
    except AssertionError:
        raise AssertionError(
            f"the notice reads {shown()!r}, not one of {texts!r} at {driver.current_url}"
            f"\n{driver.page_source[:3000]}"
        ) from None


def shown_counts(driver: Any) -> dict[JobStatus, int]:
    from selenium.webdriver.common.by import By

    out = {JobStatus.QUEUED: int(driver.find_element(By.ID, "queue-depth").text)}
    for s in JobStatus:
        if s is not JobStatus.QUEUED:
            out[s] = int(driver.find_element(By.ID, f"count-{s.value}").text)
    return out


def test_the_dashboard_in_chromium_shows_the_store_and_its_buttons_work(
    browser: Any, site: Site, tmp_path: Path
) -> None:
    """Signed in through the form, the page's numbers are the store's; Cancel and Retry
    change the jobs' states, the page shows it, and a screenshot is saved."""
    from selenium.webdriver.common.by import By

    jobs = every_state(site)
    sign_in(browser, site)
    hold_still(browser)
    assert shown_counts(browser) == site.store.count_by_status()
    assert shown_counts(browser)[JobStatus.QUEUED] == 2
    row = browser.find_element(By.ID, f"job-{jobs['running']}")
    assert "working on nightly-report" in row.text
    assert row.find_element(By.TAG_NAME, "progress").get_attribute("value")

    shot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000

    # Cancel the oldest queued job.
    queued_row = browser.find_element(By.ID, f"job-{jobs['queued']}")
    queued_row.find_element(By.CSS_SELECTOR, "button[aria-label^='Cancel job']").click()
    notice_reads(browser, "Job canceled.")
    hold_still(browser)
    assert site.store.get(jobs["queued"], time.time()).status is JobStatus.CANCELED
    assert not browser.find_elements(By.ID, f"job-{jobs['queued']}")
    assert shown_counts(browser)[JobStatus.CANCELED] == 2

    # Retry the failed job: it runs again and completes.
    failed_row = browser.find_element(By.ID, f"job-{jobs['failed']}")
    failed_row.find_element(By.CSS_SELECTOR, "button[aria-label^='Retry job']").click()
    notice_reads(browser, "Job queued again.")
    hold_still(browser)
    job = site.wait(jobs["failed"], lambda j: j.status is JobStatus.COMPLETED)
    assert job.attempts == 2
    browser.find_element(By.LINK_TEXT, "Refresh").click()
    wait_for(lambda: not browser.find_elements(By.ID, f"job-{jobs['failed']}"))
    hold_still(browser)
    assert shown_counts(browser) == site.store.count_by_status()

    # Cancel the running job: its handler stops and it ends canceled.
    running_row = browser.find_element(By.ID, f"job-{jobs['running']}")
    running_row.find_element(By.CSS_SELECTOR, "button[aria-label^='Cancel job']").click()
    notice_reads(browser, NOTICES["canceled"], NOTICES["cancel-requested"])
    site.wait(jobs["running"], lambda j: j.status is JobStatus.CANCELED)


def test_script_in_a_jobs_path_and_message_is_inert_in_the_browser(
    browser: Any, site: Site
) -> None:
    """A job whose path and progress message hold <script> shows the text and runs nothing."""
    from selenium.webdriver.common.by import By

    evil = "<script>window.pwned=1</script>"
    job_id = site.job(f"/slow/{evil}")
    failed = site.job("/boom")  # its error message holds <script> too
    site.wait(job_id, lambda j: j.message is not None)
    site.wait(failed, lambda j: j.status is JobStatus.FAILED)
    sign_in(browser, site)
    hold_still(browser)
    row = browser.find_element(By.ID, f"job-{job_id}")
    assert f"working on {evil}" in row.text
    assert browser.execute_script("return window.pwned === undefined")
    # The page's own script is the only one; none sits in the job tables.
    assert browser.execute_script("return document.scripts.length") == 1
    assert not browser.find_elements(By.CSS_SELECTOR, "main script")


def test_the_page_updates_live_and_is_keyboard_usable(browser: Any, site: Site) -> None:
    """A job accepted after the page loaded shows without a reload, by the live stream
    (the periodic refresh is an hour away); every control has a name and a visible
    focus ring when reached with the keyboard."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    sign_in(browser, site)
    assert browser.find_element(By.ID, "auto").is_displayed()  # JS on: the toggle shows
    assert "live updates" in browser.find_element(By.ID, "auto-label").text
    assert "3600000" in browser.page_source  # the periodic refresh: an hour away
    browser.execute_script("window.sameDocument = true")
    job_id = site.job("/ok")
    site.wait(job_id, lambda j: j.status is JobStatus.COMPLETED)
    wait_for(lambda: browser.find_element(By.ID, "count-completed").text == "1", timeout=20)
    assert browser.execute_script("return window.sameDocument === true")  # no reload

    unnamed = browser.execute_script(
        """
        const bad = [];
        for (const el of document.querySelectorAll('button, input, select, a[href]')) {
          if (el.type === 'hidden') continue;
          const name = el.getAttribute('aria-label') || el.textContent.trim() ||
            (el.labels && el.labels.length && el.labels[0].textContent.trim());
          if (!name) bad.push(el.outerHTML);
        }
        for (const t of document.querySelectorAll('table')) {
          if (!t.querySelector('caption') || t.querySelector('th:not([scope])')) bad.push('table');
        }
        if (!document.documentElement.lang) bad.push('lang');
        return bad;
        """
    )
    assert unnamed == []
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    focused = browser.switch_to.active_element
    for _ in range(5):
        if focused.tag_name in ("a", "button", "input"):
            break
        focused.send_keys(Keys.TAB)
        focused = browser.switch_to.active_element
    assert focused.tag_name in ("a", "button", "input")
    outline = browser.execute_script("return getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("none", "")


def test_with_javascript_off_the_page_reads_and_its_forms_work(
    browser_without_js: Any, site: Site
) -> None:
    """JS off: sign-in, the figures and the Cancel form work; the refresh toggle stays hidden."""
    from selenium.webdriver.common.by import By

    driver = browser_without_js
    queued = every_state(site)["queued"]
    sign_in(driver, site)
    # The page's script shows the refresh toggle: hidden, it did not run.
    assert not driver.find_element(By.ID, "auto").is_displayed()
    assert shown_counts(driver) == site.store.count_by_status()
    row = driver.find_element(By.ID, f"job-{queued}")
    row.find_element(By.CSS_SELECTOR, "button[aria-label^='Cancel job']").click()
    notice_reads(driver, "Job canceled.")
    assert site.store.get(queued, time.time()).status is JobStatus.CANCELED
