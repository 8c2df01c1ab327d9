"""The dashboard's live updates (``{prefix}/dashboard/events``), its sign-in rate limit
and its per-route sla: the change feed's waiters on any job, the event stream over the
ASGI and WSGI doors, the coalescing of events, and the 429 of too many wrong tokens."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from async_accept.dashboard import live
from async_accept.dashboard.gate import SignInLimiter
from async_accept.dashboard.serve import serve_dashboard
from async_accept.feed import ChangeFeed, DataVersionSignal
from async_accept.job import CapturedRequest, Job, JobStatus, new_job_id
from async_accept.stores.sqlite import SQLiteStore
from tests import dashboard_app
from tests.test_dashboard import BASE, Dash, dash, make_dash, seed_queued  # noqa: F401

EVENT = re.compile(r"event: changed\nid: ([^\n]+)\ndata: changed\n\n")


def _job(status: JobStatus = JobStatus.QUEUED, percent: float | None = None) -> Job:
    now = time.time()
    return Job(
        id=new_job_id(),
        status=status,
        owner="",
        created_at=now,
        updated_at=now,
        expires_at=now + 600,
        deadline_at=now + 600,
        sla=300,
        route="POST /ok",
        percent=percent,
    )


def _later(seconds: float, fn: Callable[[], Any]) -> threading.Thread:
    """Run ``fn`` in a thread after ``seconds`` (while a stream is being read)."""

    def run() -> None:
        time.sleep(seconds)
        fn()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


# --- the feed: waiters on any job -------------------------------------------------------


def test_a_waiter_on_any_job_wakes_on_a_new_state_not_on_a_reread() -> None:
    """A job this process's store call returns in a state the feed had not seen moves
    the version; the same job read again (or heartbeat) does not."""
    feed = ChangeFeed(lambda _id: None, lambda: None)
    since = feed.touch_any()
    job = _job()
    _later(0.05, lambda: feed.saw(job))
    moved = feed.wait_any(since, 10)
    assert moved > since
    feed.saw(job)  # the same state again: a read
    assert feed.wait_any(moved, 0.05) == moved
    running = Job(**{**job.__dict__, "status": JobStatus.PROCESSING, "percent": 10.0})
    feed.saw(running)
    assert feed.version > moved


def test_changes_between_two_waits_are_not_missed() -> None:
    """While someone watches (and for a while after), every change moves the version,
    so a stream that reconnects with its version sees what happened in between."""
    feed = ChangeFeed(lambda _id: None, lambda: None)
    since = feed.wait_any(feed.touch_any(), 0.01)
    feed.saw(_job())  # nobody waits at this instant
    feed.poke("some-id")  # a job that ended here without a copy
    assert feed.wait_any(since, 0.01) == since + 2


def test_nothing_is_counted_when_nobody_watches() -> None:
    """Without a dashboard watching, the feed keeps no state for waiters on any job."""
    feed = ChangeFeed(lambda _id: None, lambda: None)
    feed.saw(_job())
    assert feed.version == 0 and feed._any_seen == {}


def test_an_awaited_waiter_on_any_job_wakes_too() -> None:
    """``await_any`` wakes on the loop when another thread's store call moved the version."""
    import asyncio

    feed = ChangeFeed(lambda _id: None, lambda: None)

    async def main() -> int:
        since = feed.touch_any()
        _later(0.05, lambda: feed.saw(_job()))
        return await feed.await_any(since, 10) - since

    assert asyncio.run(main()) >= 1


def test_another_process_write_wakes_a_waiter_on_any_job(tmp_path: Any) -> None:
    """SQLite: a write through another connection (another process) moves the version
    through the store's data_version signal."""
    db = str(tmp_path / "jobs.db")
    writer = SQLiteStore(db)
    feed = ChangeFeed(lambda _id: None, lambda: DataVersionSignal(db))
    try:
        since = feed.touch_any()
        # the watching thread's first look counts once: let it pass
        first = feed.wait_any(since, 2)
        since = feed.wait_any(first, 0.3)
        job = _job()
        _later(0.05, lambda: writer.create(job, CapturedRequest("POST", "/ok")))
        assert feed.wait_any(since, 10) > since
    finally:
        writer.close()


# --- the stream --------------------------------------------------------------------------


class FakeFeed:
    """A feed whose version moves by one at every wait (a busy store)."""

    def __init__(self) -> None:
        self.version = 7

    def touch_any(self) -> int:
        return self.version

    def wait_any(self, since: int, timeout: float) -> int:
        self.version += 1
        return self.version

    async def await_any(self, since: int, timeout: float) -> int:
        return self.wait_any(since, timeout)


def _drive(gen: Any) -> Any:
    """Run a stream's generator with blocking calls (what the WSGI door does)."""
    value = None
    while True:
        try:
            op = gen.send(value)
        except StopIteration as stop:
            return stop.value
        op.result = value = op.run(None)


def test_events_are_coalesced_to_one_per_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    """A busy store: the first change goes out at once, the next waits out the gap and
    carries the version reached by then (changes in the gap are one event)."""
    pauses: list[float] = []
    feed = FakeFeed()

    def pause(seconds: float) -> Any:
        pauses.append(seconds)
        feed.version += 5  # five more changes during the gap
        yield from ()

    monkeypatch.setattr(live, "_pause", pause)
    request = CapturedRequest("GET", BASE + "/events", query_string=b"")
    stream = live.open_live(feed, request, None)
    first = _drive(stream.next_chunk(1.0)).decode()
    assert first.startswith("retry: ")
    assert _events(first)[0].endswith(":8") and pauses == []
    second = _drive(stream.next_chunk(1.0)).decode()
    assert len(pauses) == 1 and 0 < pauses[0] <= live.MIN_GAP
    assert _events(second) == [second.split("id: ")[1].split("\n")[0]]
    assert _events(second)[0].endswith(":14")


def test_a_version_of_another_process_gets_an_event_at_once() -> None:
    """Reconnecting with the Last-Event-ID of another process (or a forked one), the
    client is told to refresh at once; with this process's current one, it is not."""
    feed = ChangeFeed(lambda _id: None, lambda: None)
    other = CapturedRequest("GET", BASE + "/events", headers=[(b"last-event-id", b"elsewhere:3")])
    stream = live.open_live(feed, other, 0.2)
    assert EVENT.search(_drive(stream.next_chunk(0.2)).decode())
    current = live.mark(feed).encode()
    same = CapturedRequest("GET", BASE + "/events", headers=[(b"last-event-id", current)])
    stream = live.open_live(feed, same, 0.2)
    chunks = []
    while (chunk := _drive(stream.next_chunk(0.2))) is not None:
        chunks.append(chunk.decode())
    assert chunks and not any(EVENT.search(c) for c in chunks)  # keep-alives, then the end


def _events(text: str) -> list[str]:
    return EVENT.findall(text)


def _since(html: str) -> str:
    m = re.search(r'data-live="([^"]+)"', html)
    assert m, "the page has no live stream"
    return m.group(1)


def test_the_asgi_stream_tells_the_page_of_a_new_job(
    make_dash: Callable[..., Dash],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Signed in, the page names its stream; a job accepted while the stream is open
    comes as a ``changed`` event with a later version (the stream then ends by itself)."""
    monkeypatch.setattr(live, "STREAM_SECONDS", 1.5)
    d = make_dash()
    d.login()
    html = d.page()
    since = _since(html)
    assert f'data-events="{BASE}/events"' in html and "live updates" in html
    _later(0.3, lambda: d.job("/ok"))
    r = d.client.get(BASE + "/events", params={"since": since})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-store"
    ids = _events(r.text)
    assert ids and int(ids[-1].rsplit(":", 1)[1]) > int(since.rsplit(":", 1)[1])


def test_the_stream_wants_the_dashboards_guard(dash: Dash) -> None:  # noqa: F811
    """No session, no stream: the same 401 as the page; only GET is served."""
    assert dash.client.get(BASE + "/events").status_code == 401
    dash.login()
    assert dash.client.post(BASE + "/events").status_code == 405


def test_the_wsgi_stream_is_capped_and_tells_of_a_new_job(tmp_path: Any) -> None:
    """Behind the WSGI door the stream holds its thread at most wsgi_max_wait seconds: a
    quiet one ends with no event, one during which another process (another SQLite
    connection) adds a job tells of it, through the store's signal."""
    from tests.conftest import deploy

    opts = {
        "dashboard": "auth",
        "health_token": dashboard_app.TOKEN,
        "wsgi_max_wait": 1.5,
        "heartbeat_interval": 60,  # no worker heartbeat commits during the test
        "worker_lost_after": 180,
    }
    with deploy("wsgi", "sqlite", "thread", tmp_path, **opts) as d:
        d.client.post(BASE + "/login", data={"token": dashboard_app.TOKEN})
        d.client.get(BASE)  # starts the feed's watch (its first look counts once)
        time.sleep(0.5)
        since = _since(d.client.get(BASE).text)
        quiet = d.client.get(BASE + "/events", params={"since": since})
        assert quiet.status_code == 200 and quiet.text.startswith("retry: ")
        assert _events(quiet.text) == []
        other = SQLiteStore(str(tmp_path / "jobs.db"))
        try:
            _later(0.3, lambda: seed_queued(other))
            r = d.client.get(BASE + "/events", params={"since": since})
        finally:
            other.close()
        assert r.status_code == 200 and _events(r.text)


def test_without_a_feed_the_page_refreshes_on_a_timer(dash: Dash) -> None:  # noqa: F811
    """Called without the change feed (no live stream), the page says it refreshes every
    few seconds and names no stream, and the stream URL is not there."""
    from async_accept.dashboard.gate import Guard

    mw = dash.mw
    guard = Guard(check=lambda headers: True)
    page = mw.runtime.drive(
        serve_dashboard(mw.runtime.engine, CapturedRequest("GET", BASE + "/"), guard=guard)
    )
    assert page.status == 200 and b' data-live="' not in page.body
    assert b"refresh every" in page.body
    events = CapturedRequest("GET", BASE + "/events")
    assert mw.runtime.drive(serve_dashboard(mw.runtime.engine, events, guard=guard)).status == 404


# --- routes: the sla configured now ------------------------------------------------------


def test_routes_show_the_configured_sla_and_routes_without_jobs(dash: Dash) -> None:  # noqa: F811
    """The sla column is the route's sla as marked now (not the one a job recorded), jobs
    count under the pattern they match, and a marked route with no job is listed."""
    seed_queued(dash.store, "POST /ok")  # recorded sla=300; /ok is marked sla=5
    dash.job("/slow/a")
    dash.job("/slow/b")
    dash.login()
    html = dash.page()

    def row(route: str) -> list[str]:
        m = re.search(rf'<tr data-route="{re.escape(route)}">(.*?)</tr>', html, re.S)
        assert m, f"no row for {route}"
        return re.findall(r"<td[^>]*>(.*?)</td>", m.group(1))

    assert row("POST /ok")[1] == "1" and row("POST /ok")[7] == "5.0 s"
    slow = row("POST /slow/{name:path}")
    assert slow[1] == "2" and slow[7] == "1 min 0 s"
    assert row("POST /boom")[1] == "0" and row("POST /boom")[7] == "5.0 s"


# --- sign-in rate limit ------------------------------------------------------------------


def test_the_limiter_counts_failures_per_address_and_forgets_on_success() -> None:
    """Five wrong tokens, then a wait; another address is unaffected; a success clears
    the address; the bucket refills with time; memory holds a bounded number of addresses."""
    now = [1000.0]
    lim = SignInLimiter(burst=5, per=12.0, addresses=3, clock=lambda: now[0])
    for _ in range(5):
        assert lim.retry_after("a") is None
        lim.failed("a")
    assert lim.retry_after("a") == 12
    assert lim.retry_after("b") is None
    now[0] += 12.0
    assert lim.retry_after("a") is None  # one token back
    lim.failed("a")
    assert lim.retry_after("a") is not None
    lim.succeeded("a")
    assert lim.retry_after("a") is None
    for who in ("c", "d", "e", "f"):
        lim.failed(who)
    assert len(lim._buckets) == 3 and "c" not in lim._buckets


def test_too_many_wrong_tokens_are_429_with_retry_after(
    dash: Dash,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After five wrong tokens from one address the sign-in is 429 with Retry-After, as
    the form again for a browser and problem+json otherwise, even with the right token;
    each refusal is logged."""
    for _ in range(5):
        r = dash.client.post(BASE + "/login", data={"token": "wrong"})
        assert r.status_code == 401
    with caplog.at_level(logging.WARNING, logger="async_accept"):
        r = dash.client.post(BASE + "/login", data={"token": dashboard_app.TOKEN})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"].endswith("too-many-sign-ins")
    assert "async_accept_dashboard" not in r.headers.get("set-cookie", "")
    assert any("rate limit" in rec.getMessage() for rec in caplog.records)
    html = dash.client.post(
        BASE + "/login", data={"token": "wrong"}, headers={"Accept": "text/html"}
    )
    assert html.status_code == 429 and "retry-after" in html.headers
    assert "Too many wrong tokens" in html.text and "<form" in html.text
    assert "content-security-policy" in html.headers


def test_right_tokens_never_count_against_an_address(dash: Dash) -> None:  # noqa: F811
    """Signing in right, again and again, never meets the limit."""
    for _ in range(8):
        r = dash.client.post(BASE + "/login", data={"token": dashboard_app.TOKEN})
        assert r.status_code == 303


def test_the_limit_is_per_client_address() -> None:
    """Another address signs in while one is limited (the limiter serve_dashboard is given)."""
    from async_accept.dashboard.gate import Guard
    from async_accept.engine import Engine
    from async_accept.options import build_options

    engine = Engine(build_options(secret_key=dashboard_app.SECRET))
    lim = SignInLimiter(burst=1)
    guard = Guard(token=dashboard_app.TOKEN)
    form = [(b"content-type", b"application/x-www-form-urlencoded")]

    def login(client: str, token: str) -> int:
        req = CapturedRequest(
            "POST",
            BASE + "/login",
            headers=form,
            body=f"token={token}".encode(),
            client=(client, 1),
        )
        gen = serve_dashboard(engine, req, guard=guard, limiter=lim)
        try:
            op = next(gen)
        except StopIteration as stop:
            return int(stop.value.status)
        raise AssertionError(f"a sign-in asked for {op!r}")

    assert login("10.0.0.1", "wrong") == 401
    assert login("10.0.0.1", dashboard_app.TOKEN) == 429
    assert login("10.0.0.2", dashboard_app.TOKEN) == 303
