"""Knowing at once when a job ends (PROTOCOL.md 2, "Waiting for a change"):
long-poll with ``Prefer: wait``, Server-Sent Events, a Retry-After learned
from the route's past run times, and one change feed per process for all waiters.

Runs on every door x store through the contract deployments, with two extra
routes: ``/steps/{name}`` (reports 50 % when gate ``<name>-1`` opens, ends when
``<name>-2`` opens) and ``/timed?s=N`` (sleeps N seconds; sla=30).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from async_accept import long_running, report_progress
from tests import apps
from tests.conftest import ALICE, BOB, Deployment

SSE = {**ALICE, "Accept": "text/event-stream"}
WAIT_COMBOS = [
    ("asgi", "memory"),
    ("asgi", "sqlite"),
    ("asgi", "redis"),
    ("wsgi", "memory"),
    ("wsgi", "sqlite"),
    ("wsgi", "redis"),
]

_BUILD_STARLETTE = apps.build_starlette


def _gate_open(name: str) -> bool:
    return apps.GATES.gate(name).wait(apps.HANDLER_LIMIT)


def _build_starlette(**options: Any) -> Any:
    """The contract Starlette app plus the /steps and /timed routes."""
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    async def until(name: str) -> None:
        ev = apps.GATES.gate(name)
        deadline = time.monotonic() + apps.HANDLER_LIMIT
        while not ev.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    @long_running(sla=30)
    async def steps(request: Request) -> Response:
        name = request.path_params["name"]
        apps.GATES.entered_event(name).set()
        await until(name + "-1")
        report_progress(50, message="half")
        await until(name + "-2")
        return PlainTextResponse("done")

    @long_running(sla=30)
    async def timed(request: Request) -> Response:
        await asyncio.sleep(float(request.query_params.get("s", "1")))
        return PlainTextResponse("timed")

    app = _BUILD_STARLETTE(**options)
    app.router.routes[0:0] = [
        Route("/steps/{name}", steps, methods=["POST"]),
        Route("/timed", timed, methods=["POST"]),
    ]
    return app


def _wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path.startswith("/steps/") or path == "/timed":
        if path == "/timed":
            query = dict(p.split("=", 1) for p in environ.get("QUERY_STRING", "").split("&") if p)
            time.sleep(float(query.get("s", "1")))
        else:
            name = path.rsplit("/", 1)[1]
            apps.GATES.entered_event(name).set()
            _gate_open(name + "-1")
            report_progress(50, message="half")
            _gate_open(name + "-2")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done"]
    return apps.plain_wsgi_app(environ, start_response)


def _build_wsgi(**options: Any) -> Any:
    from async_accept.wsgi import AsyncAcceptMiddleware

    options.setdefault(
        "routes",
        {**apps.WSGI_ROUTES, "POST /steps/{name}": {"sla": 30}, "POST /timed": {"sla": 30}},
    )
    return AsyncAcceptMiddleware(_wsgi_app, **options)


@pytest.fixture
def wmake(
    make_dep: Callable[..., Deployment], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Deployment]:
    """make_dep(door, store, **options) on apps that also have /steps and /timed."""
    monkeypatch.setattr(apps, "build_starlette", _build_starlette)
    monkeypatch.setattr(apps, "build_wsgi", _build_wsgi)
    return make_dep


@pytest.fixture(params=WAIT_COMBOS, ids=["-".join(c) for c in WAIT_COMBOS])
def wdep(request: pytest.FixtureRequest, wmake: Callable[..., Deployment]) -> Deployment:
    """Each door x store, with the waiting routes (WSGI reads may be held 20 s)."""
    door, store = request.param
    return wmake(door, store, **({"wsgi_max_wait": 20} if door == "wsgi" else {}))


# --- helpers ---------------------------------------------------------------------------


def accept(dep: Deployment, path: str) -> str:
    r = dep.post(path)
    assert r.status_code == 202, r.text
    return str(r.headers["location"])


def running_steps(dep: Deployment, name: str) -> str:
    """Accept /steps/<name> and return its status URL once the handler runs."""
    loc = accept(dep, f"/steps/{name}")
    assert apps.GATES.entered_event(name).wait(10), "the job never started"
    dep.wait_status(loc, lambda r: r.json()["status"] == "processing")
    return loc


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    t = time.monotonic()
    r = call()
    return r, time.monotonic() - t


def long_poll(dep: Deployment, url: str, wait: float, **headers: str) -> httpx.Response:
    return dep.client.get(url, headers={**ALICE, "Prefer": f"wait={wait:g}", **headers})


def parse_sse(text: str) -> tuple[list[dict[str, str]], int | None]:
    """The events of an SSE body (field -> value) and the last ``retry:`` value."""
    events: list[dict[str, str]] = []
    retry: int | None = None
    current: dict[str, str] = {}
    for raw in text.replace("\r\n", "\n").split("\n"):
        if not raw:
            if current:
                events.append(current)
                current = {}
            continue
        if raw.startswith(":"):
            continue
        name, _, value = raw.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "retry":
            retry = int(value)
        elif name == "data":
            current["data"] = current["data"] + "\n" + value if "data" in current else value
        else:
            current[name] = value
    if current:
        events.append(current)
    return events, retry


class Later:
    """Run a blocking call in a thread; ``result()`` waits for it."""

    def __init__(self, call: Callable[[], httpx.Response]) -> None:
        self._pool = ThreadPoolExecutor(1)
        self.started = time.monotonic()
        self._future = self._pool.submit(lambda: (call(), time.monotonic()))

    def result(self, timeout: float = 30) -> tuple[httpx.Response, float]:
        """The response and the monotonic time it arrived."""
        try:
            return self._future.result(timeout)
        finally:
            self._pool.shutdown(wait=False)


# --- long-poll: Prefer: wait on the status URL ----------------------------------------


def test_long_poll_answers_when_progress_changes(wdep: Deployment) -> None:
    """Prefer: wait=10 on a running job answers as soon as it reports progress."""
    loc = running_steps(wdep, "p")
    pending = Later(lambda: long_poll(wdep, loc, 10))
    time.sleep(0.5)  # the waiter is parked
    opened = time.monotonic()
    apps.GATES.gate("p-1").set()
    r, arrived = pending.result()
    assert r.status_code == 200, r.text
    assert r.json()["percent_complete"] == 50
    assert r.headers["preference-applied"] == "wait=10"
    assert arrived - opened < 3.0
    apps.GATES.gate("p-2").set()


def test_long_poll_answers_when_the_job_ends(wdep: Deployment) -> None:
    """Prefer: wait=10 answers the 303 as soon as the job completes, not after 10 s."""
    loc = running_steps(wdep, "e")
    apps.GATES.gate("e-1").set()
    wdep.wait_status(loc, lambda r: r.json()["percent_complete"] == 50)
    pending = Later(lambda: long_poll(wdep, loc, 10))
    time.sleep(0.5)
    opened = time.monotonic()
    apps.GATES.gate("e-2").set()
    r, arrived = pending.result()
    assert r.status_code == 303
    assert r.headers["location"] == loc + "/result"
    assert r.headers["preference-applied"] == "wait=10"
    assert arrived - opened < 3.0


def test_long_poll_without_a_change_answers_after_the_wait(wdep: Deployment) -> None:
    """With no change, Prefer: wait=1 answers the current status after about 1 s."""
    loc = running_steps(wdep, "q")
    r, took = timed(lambda: long_poll(wdep, loc, 1))
    assert r.status_code == 200
    assert r.json()["status"] == "processing"
    assert r.headers["preference-applied"] == "wait=1"
    assert int(r.headers["retry-after"]) >= 1
    assert 0.9 <= took < 5.0


@pytest.mark.parametrize("door", ["asgi", "wsgi"])
def test_long_poll_is_capped(door: str, wmake: Callable[..., Deployment]) -> None:
    """Prefer: wait=30 is capped: by max_wait on ASGI, by the smaller wsgi_max_wait on WSGI."""
    cap = {"max_wait": 1} if door == "asgi" else {"wsgi_max_wait": 1}
    dep = wmake(door, "memory", **cap)
    loc = running_steps(dep, "c")
    r, took = timed(lambda: long_poll(dep, loc, 30))
    assert r.headers["preference-applied"] == "wait=1"
    assert r.json()["status"] == "processing"
    assert 0.9 <= took < 5.0


def test_wsgi_long_poll_default_cap_is_smaller_than_max_wait(
    wmake: Callable[..., Deployment],
) -> None:
    """On WSGI a status read holds a thread: its default cap is below max_wait (25 s)."""
    dep = wmake("wsgi", "memory")
    loc = running_steps(dep, "w")
    r, took = timed(lambda: long_poll(dep, loc, 25))
    applied = r.headers["preference-applied"]
    assert applied.startswith("wait=")
    assert 1 <= int(applied[len("wait=") :]) < 25
    assert took < 25


def test_long_poll_on_an_ended_job_answers_at_once(wdep: Deployment) -> None:
    """A job that has ended answers a long-poll at once, with its 303."""
    loc = accept(wdep, "/slow")
    wdep.finished(loc)
    r, took = timed(lambda: long_poll(wdep, loc, 10))
    assert r.status_code == 303
    assert took < 2.0


def test_long_poll_keeps_the_404_and_410_rules(wdep: Deployment) -> None:
    """A foreign caller and a bad token get 404, an expired token 410, all at once."""
    loc = running_steps(wdep, "r")
    r, took = timed(lambda: wdep.client.get(loc, headers={**BOB, "Prefer": "wait=10"}))
    assert r.status_code == 404 and took < 2.0
    assert r.headers["content-type"] == "application/problem+json"
    r, took = timed(lambda: long_poll(wdep, loc[:-2] + "xx", 10))
    assert r.status_code == 404 and took < 2.0
    wdep.clock.advance(86400 + 5)
    r, took = timed(lambda: long_poll(wdep, loc, 10))
    assert r.status_code == 410 and took < 2.0
    apps.GATES.open_all()


# --- Server-Sent Events -----------------------------------------------------------------


def test_sse_streams_each_change_then_a_final_event(wdep: Deployment) -> None:
    """Accept: text/event-stream streams status/progress events with ids, then the end."""
    loc = running_steps(wdep, "s")
    pending = Later(lambda: wdep.client.get(loc, headers=SSE))
    time.sleep(0.5)
    apps.GATES.gate("s-1").set()
    time.sleep(0.5)
    apps.GATES.gate("s-2").set()
    r, _ = pending.result()
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-store"
    events, retry = parse_sse(r.text)
    assert retry is not None and retry >= 1000
    assert all(e.get("id") for e in events)
    assert len({e["id"] for e in events}) == len(events), "one id per change"
    *changes, final = events
    assert {e.get("event") for e in changes} <= {"status", "progress"}
    assert any(json.loads(e["data"])["percent_complete"] == 50 for e in changes)
    assert final["event"] == "done"
    data = json.loads(final["data"])
    assert data["status"] == "completed"
    assert data["links"]["result"] == loc + "/result"


def test_sse_on_an_ended_job_sends_the_final_event_and_ends(wdep: Deployment) -> None:
    """A stream opened after the end carries just the final event and closes."""
    loc = accept(wdep, "/fail")
    wdep.finished(loc)
    r = wdep.client.get(loc, headers=SSE)
    assert r.status_code == 200
    events, _ = parse_sse(r.text)
    assert [e["event"] for e in events] == ["done"]
    data = json.loads(events[0]["data"])
    assert data["status"] == "failed" and data["error"]["type"].endswith("handler-error")


def test_sse_last_event_id_resumes(wdep: Deployment) -> None:
    """Last-Event-ID of the final event ends reconnection (204); an older one resends it."""
    loc = accept(wdep, "/slow")
    wdep.finished(loc)
    events, _ = parse_sse(wdep.client.get(loc, headers=SSE).text)
    last = events[-1]["id"]
    again = wdep.client.get(loc, headers={**SSE, "Last-Event-ID": last})
    assert again.status_code == 204
    older = wdep.client.get(loc, headers={**SSE, "Last-Event-ID": "0"})
    resent, _ = parse_sse(older.text)
    assert [e["id"] for e in resent] == [last]


def test_sse_keeps_the_owner_404_and_410_rules(wdep: Deployment) -> None:
    """An event stream is refused like a status read: 404 problem+json, 410 when expired."""
    loc = accept(wdep, "/slow")
    wdep.finished(loc)
    r = wdep.client.get(loc, headers={**BOB, "Accept": "text/event-stream"})
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    r = wdep.client.get(loc[:-2] + "xx", headers=SSE)
    assert r.status_code == 404
    wdep.clock.advance(86400 + 5)
    assert wdep.client.get(loc, headers=SSE).status_code == 410


# --- Retry-After learned from the route's run times -------------------------------------


def run_timed(dep: Deployment, seconds: float, count: int) -> None:
    """Run ``count`` jobs of /timed?s=<seconds> side by side, to the end."""
    locs = [accept(dep, f"/timed?s={seconds}") for _ in range(count)]
    for loc in locs:
        assert dep.finished(loc).status_code == 303


def test_first_retry_after_is_learned_from_past_runs(wdep: Deployment) -> None:
    """After a few 1-s runs on an sla=30 route, the first Retry-After is near 1 s, not 8."""
    run_timed(wdep, 1.0, 3)
    r = wdep.post("/timed?s=1")
    assert r.status_code == 202
    assert int(r.headers["retry-after"]) <= 2
    status = wdep.wait_status(r.headers["location"], lambda s: s.json()["status"] != "queued")
    if status.status_code == 200 and status.json()["status"] == "processing":
        eta = status.json()["estimated_time_remaining"]
        assert eta is not None and 0 <= eta <= 1.5
        assert int(status.headers["retry-after"]) <= 2


def test_learned_run_time_is_kept_in_the_store(
    wmake: Callable[..., Deployment],
) -> None:
    """A second middleware on the same SQLite store starts with what the first learned."""
    first = wmake("asgi", "sqlite")
    run_timed(first, 1.0, 3)
    second = wmake("wsgi", "sqlite")  # same database file
    r = second.post("/timed?s=1")
    assert r.status_code == 202
    assert int(r.headers["retry-after"]) <= 2


@pytest.mark.parametrize("door", ["asgi", "wsgi"])
def test_learned_retry_after_stays_within_max_retry_after(
    door: str, wmake: Callable[..., Deployment]
) -> None:
    """A route learned at 3 s with max_retry_after=2 never tells a client to wait above 2 s."""
    dep = wmake(door, "memory", max_retry_after=2)
    run_timed(dep, 3.0, 2)
    r = dep.post("/timed?s=3")
    assert r.status_code == 202
    assert 1 <= int(r.headers["retry-after"]) <= 2
    status = dep.get(r.headers["location"])
    if status.status_code == 200:
        assert 1 <= int(status.headers["retry-after"]) <= 2


def test_retry_after_never_points_past_the_deadline(wmake: Callable[..., Deployment]) -> None:
    """Near the deadman deadline (2 x sla) Retry-After points no later than the deadline."""
    dep = wmake("asgi", "memory")
    loc = running_steps(dep, "d")
    dep.clock.advance(58)  # sla=30: the deadline is 60 s after acceptance
    time.sleep(0.6)  # a heartbeat on the advanced clock (worker_lost_after=3)
    r = dep.get(loc)
    assert r.json()["status"] == "processing"
    assert int(r.headers["retry-after"]) <= 3
    apps.GATES.open_all()


# --- one change feed per process, whatever the number of waiters -----------------------


class CountingStore:
    """Count every call on a store and its awaitable twin (instance attributes wrap them)."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def _bump(self) -> None:
        with self._lock:
            self.calls += 1

    def wrap(self, store: Any) -> None:
        for name in dir(type(store)):
            if name.startswith("_") or name in ("close", "aio"):
                continue
            fn = getattr(store, name, None)
            if not callable(fn) or isinstance(fn, type):
                continue
            if asyncio.iscoroutinefunction(fn):
                setattr(store, name, self._async_wrapper(fn))
            else:
                setattr(store, name, self._sync_wrapper(fn))

    def _sync_wrapper(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            self._bump()
            return fn(*args, **kwargs)

        return call

    def _async_wrapper(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            self._bump()
            return await fn(*args, **kwargs)

        return call


@pytest.fixture
def counted(wdep: Deployment) -> Iterator[tuple[Deployment, CountingStore]]:
    """A deployment whose store calls (sync and async faces) are counted."""
    counter = CountingStore()
    counter.wrap(wdep.middleware.store)
    twin = wdep.middleware.runtime.astore
    if getattr(wdep.middleware.store, "aio", None) is twin:
        counter.wrap(twin)
    yield wdep, counter


def test_200_waiters_cost_the_store_no_more_than_one(
    counted: tuple[Deployment, CountingStore],
) -> None:
    """200 concurrent long-polls on one process: store calls while they wait and wake are
    bounded by a constant (over the running job's own heartbeats), not by the waiters."""
    dep, counter = counted
    waiters = 200
    loc = running_steps(dep, "f")
    before = counter.calls
    time.sleep(1.0)  # no waiter: the heartbeats' own calls
    baseline = counter.calls - before
    before = counter.calls
    pool = ThreadPoolExecutor(waiters)
    try:
        futures = []
        for _ in range(waiters):  # all parked together, their arrival spread over ~1 s
            futures.append(pool.submit(long_poll, dep, loc, 20))
            time.sleep(0.005)
        deadline = time.monotonic() + 60
        # Each waiter reads its job once (the owner check) before it parks.
        while counter.calls - before < waiters and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        parked = counter.calls
        time.sleep(1.0)  # idle: nobody polls the store per waiter
        idle_calls = counter.calls - parked
        early = [f.result() for f in futures if f.done()]
        assert not early, (
            f"{len(early)} answered without a change: {early[0].text if early else None}"
        )
        opened = time.monotonic()
        apps.GATES.gate("f-1").set()
        answers = [f.result(30) for f in futures]
        took = time.monotonic() - opened
    finally:
        apps.GATES.open_all()
        pool.shutdown(wait=True)
    wake_calls = counter.calls - parked - idle_calls
    assert all(a.status_code == 200 and a.json()["percent_complete"] == 50 for a in answers)
    # Per-waiter polling would be hundreds a second; the feed reads per watched job.
    assert idle_calls <= baseline + 20, (
        f"{idle_calls} store calls in 1 s of {waiters} idle waiters ({baseline} without)"
    )
    assert wake_calls <= 25, f"{wake_calls} store calls to wake {waiters} waiters"
    assert took < 5.0


def test_a_loop_wakes_its_waiters_a_batch_per_iteration() -> None:
    """Many waiters woken at once are set WAKE_BATCH per loop iteration, so a callback
    that became ready meanwhile (a new request) runs before the last batch, and
    every waiter is woken in the end, from the loop or from another thread."""
    import asyncio

    from async_accept.context import WAKE_BATCH, loop_waker

    n = WAKE_BATCH * 3 + 5

    async def main(from_thread: bool) -> tuple[list[int], int]:
        loop = asyncio.get_running_loop()
        events = [asyncio.Event() for _ in range(n)]
        wakers = [loop_waker(loop, e) for e in events]
        if from_thread:
            t = threading.Thread(target=lambda: [w() for w in wakers])
            t.start()
            t.join()
        else:
            for w in wakers:
                w()
        seen_by_other: list[int] = []
        loop.call_soon(lambda: seen_by_other.append(sum(e.is_set() for e in events)))
        counts = []
        for _ in range(20):
            await asyncio.sleep(0)
            counts.append(sum(e.is_set() for e in events))
        return counts, seen_by_other[0]

    for from_thread in (False, True):
        counts, other = asyncio.run(main(from_thread))
        assert counts[-1] == n
        steps = [b - a for a, b in zip([0, *counts], counts, strict=False)]
        assert max(steps) <= WAKE_BATCH, steps
        assert other < n  # the other callback did not wait for every waiter
