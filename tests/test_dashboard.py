"""The operator dashboard (``{prefix}/dashboard``): who may see it, what it shows,
that nothing it shows can run as script or leak a captured request, and its
cancel / retry / replay actions with their CSRF token."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from async_accept.dashboard import Guard, guard_for
from async_accept.dashboard.data import (
    hour_buckets,
    percentile,
    route_stats,
    safe_target,
)
from async_accept.dashboard.gate import COOKIE
from async_accept.dashboard.page import STYLE
from async_accept.job import CapturedRequest, Job, JobStatus, new_job_id
from async_accept.outbox import Delivery
from async_accept.webhooks import generate_secret
from tests import dashboard_app
from tests.conftest import find_middleware

BASE = "/_jobs/dashboard"
ALICE = {"Authorization": "Bearer alice-credential-XYZ"}


@dataclass
class Dash:
    client: httpx.Client
    mw: Any

    @property
    def store(self) -> Any:
        return self.mw.store

    def login(self) -> str:
        """Sign in with the token; the page's CSRF token."""
        r = self.client.post(BASE + "/login", data={"token": dashboard_app.TOKEN})
        assert r.status_code == 303, r.text
        return self.csrf()

    def page(self) -> str:
        r = self.client.get(BASE)
        assert r.status_code == 200, r.text
        return r.text

    def csrf(self) -> str:
        m = re.search(r'name="csrf" value="([^"]+)"', self.page())
        assert m, "the page has no action form"
        return m.group(1)

    def job(self, path: str, **kw: Any) -> str:
        return post_job(self.client, path, **kw)

    def wait(self, job_id: str, until: Callable[[Job], bool], timeout: float = 10.0) -> Job:
        return wait_job(self.store, job_id, until, timeout)


def post_job(client: httpx.Client, path: str, **kw: Any) -> str:
    """POST a long-running request (as Alice unless told); the job id."""
    kw.setdefault("headers", ALICE)
    r = client.post(path, **kw)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def wait_job(store: Any, job_id: str, until: Callable[[Job], bool], timeout: float) -> Job:
    """The job once ``until(job)`` holds (read from the store)."""
    deadline = time.monotonic() + timeout
    while True:
        job = store.get(job_id, time.time())
        if job is not None and until(job):
            return job
        assert time.monotonic() < deadline, f"job {job_id} is {job}"
        time.sleep(0.02)


def seed_queued(store: Any, route: str = "POST /ok") -> str:
    """A queued job nobody runs (requeue_after is an hour in the test app)."""
    now = time.time()
    method, path = route.split(" ", 1)
    job = Job(
        id=new_job_id(),
        status=JobStatus.QUEUED,
        owner="",
        created_at=now,
        updated_at=now,
        expires_at=now + 3600,
        deadline_at=now + 600,
        sla=300,
        route=route,
    )
    store.create(job, CapturedRequest(method, path))
    return job.id


@pytest.fixture
def make_dash() -> Iterator[Callable[..., Dash]]:
    from starlette.testclient import TestClient

    stack: list[tuple[TestClient, Any]] = []

    def make(**options: Any) -> Dash:
        options.setdefault("store", "memory://")
        app = dashboard_app.build(**options)
        client = TestClient(app, follow_redirects=False)
        client.__enter__()
        client.get("/hello")  # builds the middleware stack
        mw = find_middleware(app)
        stack.append((client, mw))
        return Dash(client, mw)

    yield make
    for client, mw in reversed(stack):
        for job in mw.store.list_jobs(JobStatus.PROCESSING):
            mw.store.cancel(job.id, time.time())  # the slow handlers stop at their next report
        client.__exit__(None, None, None)
        mw.store.close()


@pytest.fixture
def dash(make_dash: Callable[..., Dash]) -> Dash:
    return make_dash()


def tiles(html: str) -> dict[str, str]:
    return dict(re.findall(r'<dd id="([^"]+)">([^<]*)</dd>', html))


# --- who may look ------------------------------------------------------------------


def test_without_credentials_the_page_is_a_401_sign_in_form(dash: Dash) -> None:
    """No token, no session: 401 with a Bearer challenge and the sign-in form, no data."""
    dash.job("/ok")
    r = dash.client.get(BASE)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert 'name="token"' in r.text and '<label for="token">' in r.text
    assert 'id="count-completed"' not in r.text


def test_a_wrong_token_is_401_and_sets_no_session(dash: Dash) -> None:
    """A wrong Bearer token and a wrong token in the form both get 401 and no cookie."""
    r = dash.client.get(BASE, headers={"Authorization": "Bearer not-the-token"})
    assert r.status_code == 401
    r = dash.client.post(BASE + "/login", data={"token": "not-the-token"})
    assert r.status_code == 401
    assert "set-cookie" not in r.headers
    assert "not the dashboard token" in r.text
    assert dash.client.get(BASE).status_code == 401


def test_the_bearer_token_opens_the_page(dash: Dash) -> None:
    """Authorization: Bearer <health_token> reads the page without signing in."""
    r = dash.client.get(BASE, headers={"Authorization": f"Bearer {dashboard_app.TOKEN}"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"


def test_the_session_cookie_is_http_only_strict_and_scoped(dash: Dash) -> None:
    """Signing in sets an HttpOnly, SameSite=Strict cookie limited to the dashboard path."""
    r = dash.client.post(BASE + "/login", data={"token": dashboard_app.TOKEN})
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(COOKIE + "=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert f"Path={BASE}" in cookie
    assert r.headers["location"] == BASE + "/"


def test_a_forged_session_cookie_is_refused(dash: Dash) -> None:
    """A cookie not signed with the app's secret and token is no session."""
    dash.client.cookies.set(COOKIE, "made-up.value.sig", path=BASE)
    assert dash.client.get(BASE).status_code == 401


def test_a_check_guard_decides_per_request(make_dash: Callable[..., Dash]) -> None:
    """With check(headers) the app decides: 403 when it says no, the page when yes."""
    d = make_dash(dashboard=lambda h: h.get("x-operator") == "yes")
    assert d.client.get(BASE).status_code == 403
    assert d.client.post(BASE + "/login", data={"token": "x"}).status_code == 404
    r = d.client.get(BASE, headers={"X-Operator": "yes"})
    assert r.status_code == 200
    assert COOKIE in r.headers["set-cookie"]  # the session the CSRF token is bound to


def test_the_dashboard_is_off_unless_a_guard_exists() -> None:
    """dashboard off, or "auth" with neither a health token nor a health check: no guard."""
    assert guard_for("off", "auth", "t" * 16) is None
    assert guard_for(None, "auth", "t" * 16) is None
    assert guard_for("auth", "auth", None) is None
    assert guard_for("auth", "on", None) is None
    assert guard_for("auth", "auth", "t" * 16) == Guard(token="t" * 16)

    def check(headers: Any) -> bool:
        return True

    assert guard_for("auth", check, None) == Guard(check=check)
    assert guard_for(check, "auth", None) == Guard(check=check)


def test_the_dashboard_is_off_by_default_and_then_404(make_dash: Callable[..., Dash]) -> None:
    """Without dashboard= (or with "off") every dashboard URL is the 404 of an unknown job."""
    bearer = {"Authorization": f"Bearer {dashboard_app.TOKEN}"}
    for d in (make_dash(dashboard="off"), make_dash(dashboard=None)):
        r = d.client.get(BASE, headers=bearer)
        assert r.status_code == 404
        assert "no job at this URL" in r.json()["detail"]
        assert (
            d.client.post(BASE + "/login", data={"token": dashboard_app.TOKEN}).status_code == 404
        )


def test_dashboard_auth_without_a_guard_fails_at_construction() -> None:
    """dashboard="auth" with neither health_token nor a health check is a ConfigurationError."""
    from starlette.applications import Starlette

    from async_accept.asgi import AsyncAcceptMiddleware
    from async_accept.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="health_token"):
        AsyncAcceptMiddleware(Starlette(), secret_key="s" * 32, store="memory://", dashboard="auth")
    with pytest.raises(ConfigurationError, match="dashboard="):
        AsyncAcceptMiddleware(Starlette(), secret_key="s" * 32, store="memory://", dashboard="on")


def test_the_page_sends_a_nonce_csp_and_is_never_cached(dash: Dash) -> None:
    """The HTML runs only its own nonce'd script and style, can't be framed, isn't cached."""
    dash.login()
    r = dash.client.get(BASE)
    csp = r.headers["content-security-policy"]
    nonce = re.search(r"'nonce-([^']+)'", csp)
    assert nonce and f'<script nonce="{nonce.group(1)}">' in r.text
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-frame-options"] == "DENY"
    assert "http://" not in r.text and "https://" not in r.text  # nothing from elsewhere


# --- what it shows ------------------------------------------------------------------


def test_the_numbers_match_the_store(dash: Dash) -> None:
    """Queue depth and jobs by state on the page are the store's counts."""
    done = dash.job("/ok")
    failed = dash.job("/boom")
    running = dash.job("/slow/report")
    dash.wait(done, lambda j: j.status is JobStatus.COMPLETED)
    dash.wait(failed, lambda j: j.status is JobStatus.FAILED)
    dash.wait(running, lambda j: j.percent is not None)
    seed_queued(dash.store)
    seed_queued(dash.store)
    canceled = seed_queued(dash.store)
    dash.store.cancel(canceled, time.time())
    dash.login()
    shown = tiles(dash.page())
    counts = dash.store.count_by_status()
    assert shown["queue-depth"] == str(counts[JobStatus.QUEUED]) == "2"
    for status in (JobStatus.PROCESSING, JobStatus.COMPLETED, JobStatus.FAILED):
        assert shown[f"count-{status.value}"] == str(counts[status]) == "1"
    assert shown["count-canceled"] == str(counts[JobStatus.CANCELED]) == "1"
    assert shown["oldest-queued"].endswith(" s")


def test_running_jobs_show_progress_message_eta_and_worker(dash: Dash) -> None:
    """A running job's row has its progress bar, message, ETA, worker and heartbeat age."""
    job_id = dash.job("/slow/nightly")
    job = dash.wait(job_id, lambda j: j.percent is not None and j.message is not None)
    dash.login()
    html = dash.page()
    row = re.search(rf'<tr id="job-{job_id}".*?</tr>', html, re.S)
    assert row, html
    text = row.group(0)
    assert 'data-status="processing"' in text
    assert "<progress" in text and "working on nightly" in text
    assert job.worker_id and job.worker_id in text
    assert "Cancel job" in text


def test_failures_show_the_error_type_and_problem_detail(dash: Dash) -> None:
    """A failed job's row names its error type and title; its detail is escaped."""
    job_id = dash.job("/boom")
    job = dash.wait(job_id, lambda j: j.status is JobStatus.FAILED)
    dash.login()
    row = re.search(rf'<tr id="job-{job_id}".*?</tr>', dash.page(), re.S)
    assert row
    assert job.error is not None
    assert str(job.error["title"]) in row.group(0)
    assert str(job.error["type"]).rsplit(":", 1)[-1] in row.group(0)
    assert "Retry job" in row.group(0)


def test_routes_show_counts_percentiles_and_failure_rate(dash: Dash) -> None:
    """The per-route table counts each route's jobs and its failure rate."""
    ids = [dash.job("/ok") for _ in range(3)] + [dash.job("/boom")]
    for job_id in ids:
        dash.wait(job_id, lambda j: j.terminal)
    dash.login()
    html = dash.page()
    ok_row = re.search(r'<tr data-route="POST /ok">.*?</tr>', html, re.S)
    boom_row = re.search(r'<tr data-route="POST /boom">.*?</tr>', html, re.S)
    assert ok_row and boom_row
    cells = re.findall(r"<td[^>]*>(.*?)</td>", ok_row.group(0))
    assert cells[2] == "3" and cells[6] == "0.0%"
    assert re.findall(r"<td[^>]*>(.*?)</td>", boom_row.group(0))[6] == "100.0%"


def test_workers_are_listed(dash: Dash) -> None:
    """This process appears in the workers table with its pid and role."""
    import os

    dash.mw.runtime.beat()
    dash.login()
    html = dash.page()
    section = html.split('id="h-workers"', 1)[1]
    assert f'<td class="num">{os.getpid()}</td>' in section
    assert "<td>web</td>" in section


def test_script_in_a_jobs_path_message_and_error_is_escaped(dash: Dash) -> None:
    """<script> in a job's path, progress message and error is shown as text, never as markup."""
    evil = "<script>window.pwned=1</script>"
    running = dash.job(f"/slow/{evil}")
    failed = dash.job("/boom")
    dash.wait(running, lambda j: j.message is not None)
    dash.wait(failed, lambda j: j.status is JobStatus.FAILED)
    dash.login()
    html = dash.page()
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in html
    assert "<script>window" not in html
    assert html.count("<script") == 1  # the page's own, with its nonce


def test_no_credential_body_or_query_of_a_captured_request_is_shown(dash: Dash) -> None:
    """The captured request's Authorization, cookies, body and query never reach the page."""
    job_id = dash.job(
        "/ok?api_key=QUERY-SECRET-1",
        headers={"Authorization": "Bearer CRED-SECRET-2", "Cookie": "session=COOKIE-SECRET-3"},
        content=b"BODY-SECRET-4",
    )
    dash.wait(job_id, lambda j: j.terminal)
    slow = dash.job("/slow/x?token=QUERY-SECRET-5", content=b"BODY-SECRET-6")
    dash.wait(slow, lambda j: j.percent is not None)
    dash.login()
    html = dash.page()
    assert slow in html  # a running job is listed; the completed one only counted
    for secret in ("SECRET-1", "SECRET-2", "SECRET-3", "SECRET-4", "SECRET-5", "SECRET-6"):
        assert secret not in html
    assert "alice-credential" not in html


# --- actions ------------------------------------------------------------------------------


def test_cancel_of_a_queued_job_needs_the_csrf_token(dash: Dash) -> None:
    """Without the session's CSRF token a cancel is 403 and changes nothing; with it, done."""
    job_id = seed_queued(dash.store)
    csrf = dash.login()
    url = f"{BASE}/jobs/{job_id}/cancel"
    assert dash.client.post(url).status_code == 403
    assert dash.client.post(url, data={"csrf": "0" * 64}).status_code == 403
    assert dash.store.get(job_id, time.time()).status is JobStatus.QUEUED
    r = dash.client.post(url, data={"csrf": csrf})
    assert r.status_code == 303
    assert r.headers["location"] == f"{BASE}/?done=canceled"
    assert dash.store.get(job_id, time.time()).status is JobStatus.CANCELED
    assert "Job canceled." in dash.client.get(r.headers["location"]).text


def test_a_csrf_token_of_another_session_is_refused(make_dash: Callable[..., Dash]) -> None:
    """A CSRF token works only with the session cookie it was made for."""
    d = make_dash()
    job_id = seed_queued(d.store)
    d.login()
    other_csrf = d.csrf()
    d.client.cookies.clear()
    d.login()  # a new session
    r = d.client.post(f"{BASE}/jobs/{job_id}/cancel", data={"csrf": other_csrf})
    assert r.status_code == 403
    assert d.store.get(job_id, time.time()).status is JobStatus.QUEUED


def test_actions_without_a_session_are_401(dash: Dash) -> None:
    """A POST with a valid-looking CSRF field but no session is refused before anything runs."""
    job_id = seed_queued(dash.store)
    r = dash.client.post(f"{BASE}/jobs/{job_id}/cancel", data={"csrf": "x"})
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert dash.store.get(job_id, time.time()).status is JobStatus.QUEUED


def test_actions_are_posts(dash: Dash) -> None:
    """GET on an action URL is 405: no state changes through a link."""
    job_id = seed_queued(dash.store)
    dash.login()
    assert dash.client.get(f"{BASE}/jobs/{job_id}/cancel").status_code == 405
    assert dash.client.get(f"{BASE}/nothing/here").status_code == 404


def test_cancel_of_a_running_job_stops_it(dash: Dash, caplog: pytest.LogCaptureFixture) -> None:
    """Cancel on a running job requests the cancel; the handler stops and the job ends canceled."""
    job_id = dash.job("/slow/cancel-me")
    dash.wait(job_id, lambda j: j.percent is not None)
    csrf = dash.login()
    with caplog.at_level(logging.INFO, logger="async_accept"):
        r = dash.client.post(f"{BASE}/jobs/{job_id}/cancel", data={"csrf": csrf})
    assert r.headers["location"].endswith("done=cancel-requested")
    dash.wait(job_id, lambda j: j.status is JobStatus.CANCELED)
    assert any(f"cancel job {job_id}" in m for m in caplog.messages)


def test_retry_runs_a_failed_job_again(dash: Dash, caplog: pytest.LogCaptureFixture) -> None:
    """Retry puts a failed job back in the queue and runs it: same id, attempt 2, logged."""
    job_id = dash.job("/flaky")
    dash.wait(job_id, lambda j: j.status is JobStatus.FAILED)
    csrf = dash.login()
    with caplog.at_level(logging.INFO, logger="async_accept"):
        r = dash.client.post(f"{BASE}/jobs/{job_id}/retry", data={"csrf": csrf})
    assert r.headers["location"].endswith("done=retried")
    job = dash.wait(job_id, lambda j: j.status is JobStatus.COMPLETED)
    assert job.attempts == 2
    assert any(f"retry job {job_id} -> retried" in m for m in caplog.messages)


def test_retry_of_a_job_that_is_not_failed_changes_nothing(dash: Dash) -> None:
    """Retry on a completed job is answered 'unchanged' and leaves it alone."""
    job_id = dash.job("/ok")
    dash.wait(job_id, lambda j: j.status is JobStatus.COMPLETED)
    csrf = dash.login()
    r = dash.client.post(f"{BASE}/jobs/{job_id}/retry", data={"csrf": csrf})
    assert r.headers["location"].endswith("done=unchanged")
    assert dash.store.get(job_id, time.time()).status is JobStatus.COMPLETED


def test_dead_letters_are_listed_without_secrets_and_replayed(
    make_dash: Callable[..., Dash], caplog: pytest.LogCaptureFixture
) -> None:
    """A dead letter shows its target without user info or query; Replay queues it again."""
    d = make_dash(webhook_secret=generate_secret(), webhook_allow_private=True)
    dispatcher = d.mw.runtime.observer.dispatcher
    outbox = dispatcher.outbox
    now = time.time()
    url = "http://user:PASS-SECRET@127.0.0.1:9/hook?sig=QUERY-SECRET"
    outbox.enqueue(
        Delivery(id="msg_dead1", url=url, payload="{}", created_at=now, next_at=now + 3600)
    )
    claimed = outbox.due(now + 3600, 10)
    assert [c.id for c in claimed] == ["msg_dead1"]
    assert outbox.mark_dead(claimed[0], now=now, attempts=9, last_error="refused")
    csrf = d.login()
    html = d.page()
    row = re.search(r'<tr id="dead-msg_dead1">.*?</tr>', html, re.S)
    assert row and "http://127.0.0.1:9/hook" in row.group(0)
    assert "SECRET" not in html
    with caplog.at_level(logging.INFO, logger="async_accept"):
        r = d.client.post(f"{BASE}/dead/msg_dead1/replay", data={"csrf": csrf})
    assert r.headers["location"].endswith("done=replayed")
    # Queued again, the dispatcher took it at once (its policy refuses user info in a URL).
    deadline = time.monotonic() + 10
    while outbox.get("msg_dead1").last_error == "refused":
        assert time.monotonic() < deadline, "the replayed letter was never attempted"
        time.sleep(0.02)
    assert any("replay delivery msg_dead1 -> replayed" in m for m in caplog.messages)


# --- the figures ----------------------------------------------------------------------


def _finished(route: str, status: JobStatus, run: float, at: float) -> Job:
    return Job(
        id=new_job_id(),
        status=status,
        owner="",
        created_at=at - run - 1,
        updated_at=at,
        expires_at=at + 3600,
        deadline_at=at + 60,
        sla=10,
        started_at=at - run,
        finished_at=at,
        route=route,
    )


def test_percentiles_are_nearest_rank() -> None:
    """p50/p95/p99 are nearest-rank over the sorted run times; none for no data."""
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.95) == 95.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([], 0.5) is None


def test_route_stats_count_failures_and_compare_p99_to_the_sla() -> None:
    """Per route: finished count, failure rate, and p99 as a fraction of the sla."""
    now = 1_000_000.0
    jobs = [_finished("POST /a", JobStatus.COMPLETED, float(i), now) for i in range(1, 10)]
    jobs.append(_finished("POST /a", JobStatus.FAILED, 20.0, now))
    (stats,) = route_stats([], jobs)
    assert stats.finished == 10 and stats.failed == 1
    assert stats.failure_rate == pytest.approx(0.1)
    assert stats.p50 == 5.0 and stats.p99 == 20.0
    assert stats.p99_of_sla == pytest.approx(2.0)


def test_the_chart_buckets_the_last_hour() -> None:
    """Finished jobs land in twelve five-minute buckets; older ones are left out."""
    now = 1_000_000.0
    jobs = [
        _finished("r", JobStatus.COMPLETED, 1, now - 10),
        _finished("r", JobStatus.FAILED, 1, now - 10),
        _finished("r", JobStatus.COMPLETED, 1, now - 3000),
        _finished("r", JobStatus.COMPLETED, 1, now - 7200),
    ]
    buckets = hour_buckets(jobs, now)
    assert len(buckets) == 12
    assert buckets[-1][1:] == (1, 1)
    assert sum(c for _, c, _ in buckets) == 2


def test_webhook_targets_lose_credentials_and_query() -> None:
    """A dead letter's URL is shown as scheme, host, port and path only."""
    assert safe_target("https://u:p@hooks.example:8443/a/b?token=x#f") == (
        "https://hooks.example:8443/a/b"
    )
    assert safe_target("http://[::1]:9/x") == "http://[::1]:9/x"


def _luminance(hex_color: str) -> float:
    rgb = [int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def test_text_colours_meet_wcag_aa_contrast() -> None:
    """Every colour/background pair the stylesheet sets has a contrast of at least 4.5:1."""
    pairs = re.findall(r"background:(#[0-9a-f]{6});color:(#[0-9a-f]{6})", STYLE)
    pairs += [
        (bg, fg) for fg, bg in re.findall(r"color:(#[0-9a-f]{6});background:(#[0-9a-f]{6})", STYLE)
    ]
    assert len(pairs) >= 10
    for bg, fg in pairs:
        hi, lo = sorted((_luminance(bg), _luminance(fg)), reverse=True)
        assert (hi + 0.05) / (lo + 0.05) >= 4.5, (bg, fg)


def test_the_dashboard_behind_the_wsgi_door(tmp_path: Any) -> None:
    """The WSGI middleware routes the dashboard and reads its forms: sign in, then cancel."""
    from tests.conftest import deploy

    opts = {"dashboard": "auth", "health_token": dashboard_app.TOKEN}
    with deploy("wsgi", "sqlite", "thread", tmp_path, **opts) as d:
        assert d.client.get(BASE).status_code == 401
        r = d.client.post(BASE + "/login", data={"token": dashboard_app.TOKEN})
        assert r.status_code == 303
        job_id = seed_queued(d.store)
        html = d.client.get(BASE).text
        assert f'id="job-{job_id}"' in html
        m = re.search(r'name="csrf" value="([^"]+)"', html)
        assert m
        r = d.client.post(f"{BASE}/jobs/{job_id}/cancel", data={"csrf": m.group(1)})
        assert r.headers["location"].endswith("done=canceled")
        assert d.store.get(job_id, time.time()).status is JobStatus.CANCELED


def test_the_chart_counts_the_last_hour_however_many_older_jobs_there_are(dash: Dash) -> None:
    """The figures read the newest finished jobs: 2,100 finished hours ago don't hide one
    that finished a minute ago."""
    from async_accept.dashboard.data import SAMPLE

    store = dash.store
    old = time.time() - 3 * 3600
    for _ in range(SAMPLE + 100):
        job_id = seed_queued(store)
        store.claim(job_id, "w", old)
        store.finish(job_id, "w", old, JobStatus.COMPLETED)
    recent = dash.job("/ok")
    dash.wait(recent, lambda j: j.status is JobStatus.COMPLETED)
    dash.login()
    desc = re.search(r'<desc id="chart-desc">([^<]*)</desc>', dash.page())
    assert desc and desc.group(1) == "1 completed and 0 failed in the last hour."


def test_a_bad_or_huge_content_length_below_the_prefix_is_refused_before_reading(
    tmp_path: Any,
) -> None:
    """A POST below the prefix (a dashboard form) with a malformed Content-Length is 400 and
    one over max_body_size is 413, as on a marked route, before anything is read."""
    from tests.conftest import deploy

    opts = {"dashboard": "auth", "health_token": dashboard_app.TOKEN, "max_body_size": 100}
    with deploy("wsgi", "memory", "thread", tmp_path, **opts) as d:
        url = BASE + "/login"
        r = d.client.post(url, content=b"token=x", headers={"Content-Length": "\x00"})
        assert r.status_code == 400
        r = d.client.post(url, content=b"token=" + b"x" * 200)
        assert r.status_code == 413
