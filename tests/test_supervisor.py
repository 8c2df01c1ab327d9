"""One owner of a job's end: whatever the handler does, the job ends right and the
process, its pool and its other jobs are untouched; a stop hands jobs back."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx
import pytest

from async_accept import current_job, long_running, report_progress

SECRET = "supervisor-secret-0123456789abcdef"
OWNER = {"Authorization": "Bearer owner"}
GATE = threading.Event()


def _raise(kind: str) -> None:
    if kind == "SystemExit":
        raise SystemExit(2)
    if kind == "KeyboardInterrupt":
        raise KeyboardInterrupt
    if kind == "GeneratorExit":
        raise GeneratorExit
    raise RuntimeError(kind)


def build_asgi(**options: Any) -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from async_accept.asgi import AsyncAcceptMiddleware

    @long_running
    async def exit_(request: Request) -> Response:
        kind = request.query_params["kind"]
        if kind == "CancelledError":
            raise asyncio.CancelledError
        _raise(kind)
        return Response("unreachable")  # pragma: no cover

    @long_running
    async def attempt(request: Request) -> Response:
        job = current_job()
        assert job is not None
        return JSONResponse({"attempt": job.attempt})

    @long_running(retries=2, retry_on=TimeoutError)
    async def flaky(request: Request) -> Response:
        job = current_job()
        assert job is not None
        if job.attempt < int(request.query_params["succeed_at"]):
            raise TimeoutError("upstream timed out")
        return JSONResponse({"attempt": job.attempt})

    async def hello(request: Request) -> Response:
        return Response("hello")

    return Starlette(
        routes=[
            Route("/exit", exit_, methods=["POST"]),
            Route("/attempt", attempt, methods=["POST"]),
            Route("/flaky", flaky, methods=["POST"]),
            Route("/hello", hello),
        ],
        middleware=[Middleware(AsyncAcceptMiddleware, secret_key=SECRET, **options)],
    )


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/exit":
        _raise(environ["QUERY_STRING"].split("=", 1)[1])
    elif path == "/gated":
        assert GATE.wait(10)
    elif path == "/big":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (b"x" * 1000 for _ in range(100))
    elif path == "/progress":
        for i in range(1, 101):
            report_progress(i * 0.9, message=f"step {i}")
            time.sleep(0.005)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done"]


def build_wsgi(**options: Any) -> Any:
    from async_accept.wsgi import AsyncAcceptMiddleware

    routes = {
        "POST /exit": {},
        "POST /gated": {},
        "POST /ok": {},
        "POST /progress": {},
        "POST /big": {},
    }
    return AsyncAcceptMiddleware(wsgi_app, secret_key=SECRET, routes=routes, **options)


@pytest.fixture
def wsgi() -> Iterator[Callable[..., tuple[Any, httpx.Client]]]:
    made: list[tuple[Any, httpx.Client]] = []
    GATE.clear()

    def make(**options: Any) -> tuple[Any, httpx.Client]:
        options.setdefault("store", "memory://")
        mw = build_wsgi(**options)
        client = httpx.Client(transport=httpx.WSGITransport(app=mw), base_url="http://t")
        made.append((mw, client))
        return mw, client

    yield make
    GATE.set()
    for mw, client in made:
        client.close()
        mw.runtime.shutdown()
        mw.store.close()


def ended(client: Any, location: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(location, headers=OWNER)
        body: dict[str, Any] = r.json()
        if body["status"] in ("completed", "failed", "canceled"):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.02)


def submit(client: Any, path: str) -> str:
    r = client.post(path, headers=OWNER)
    assert r.status_code == 202, r.text
    location: str = r.headers["location"]
    return location


KINDS = ["SystemExit", "KeyboardInterrupt", "GeneratorExit"]


@pytest.mark.parametrize("kind", KINDS)
def test_asgi_handler_base_exception_fails_only_its_job(kind: str) -> None:
    """An async handler raising a BaseException ends failed handler-error; the app goes on."""
    from starlette.testclient import TestClient

    with TestClient(build_asgi(store="memory://"), follow_redirects=False) as client:
        failed = ended(client, submit(client, f"/exit?kind={kind}"))
        assert failed["status"] == "failed"
        assert failed["error"]["type"].endswith("handler-error")
        done = ended(client, submit(client, "/attempt"))
        assert done["status"] == "completed"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="needs Task.cancelling()")
def test_asgi_handler_raising_cancelled_error_itself_is_a_handler_error() -> None:
    """A handler's own CancelledError (nobody cancelled it) fails handler-error."""
    from starlette.testclient import TestClient

    with TestClient(build_asgi(store="memory://"), follow_redirects=False) as client:
        failed = ended(client, submit(client, "/exit?kind=CancelledError"))
        assert failed["status"] == "failed"
        assert failed["error"]["type"].endswith("handler-error")


def test_current_job_attempt_is_one_on_the_first_run() -> None:
    """current_job().attempt is 1 on a job's first run."""
    from starlette.testclient import TestClient

    with TestClient(build_asgi(store="memory://"), follow_redirects=False) as client:
        done = ended(client, submit(client, "/attempt"))
        result = client.get(done["links"]["result"], headers=OWNER)
        assert result.json() == {"attempt": 1}


def test_thread_pool_keeps_its_threads_after_base_exceptions(
    wsgi: Callable[..., tuple[Any, httpx.Client]],
) -> None:
    """With one pool thread, three jobs raising BaseExceptions leave it to run the next job."""
    _mw, client = wsgi(executor="thread?max_workers=1")
    exits = [submit(client, f"/exit?kind={kind}") for kind in KINDS]
    last = submit(client, "/ok")
    for location in exits:
        failed = ended(client, location)
        assert failed["error"]["type"].endswith("handler-error")
    assert ended(client, last)["status"] == "completed"


def test_shutdown_requeues_a_job_still_running_after_the_drain(
    wsgi: Callable[..., tuple[Any, httpx.Client]],
) -> None:
    """A job still running when the drain period ends goes back to the queue, not worker-lost."""
    mw, client = wsgi(shutdown_timeout=0.3)
    location = submit(client, "/gated")
    deadline = time.monotonic() + 5
    while client.get(location, headers=OWNER).json()["status"] != "processing":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    started = time.monotonic()
    mw.runtime.shutdown()
    assert time.monotonic() - started < 3
    assert client.get(location, headers=OWNER).json()["status"] == "queued"


def test_a_draining_process_starts_no_queued_job(
    wsgi: Callable[..., tuple[Any, httpx.Client]],
) -> None:
    """After the first stop signal the running job finishes; a queued one stays queued."""
    mw, client = wsgi(executor="thread?max_workers=1")
    running = submit(client, "/gated")
    deadline = time.monotonic() + 5
    while client.get(running, headers=OWNER).json()["status"] != "processing":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    queued = submit(client, "/ok")
    mw.runtime.begin_drain()
    GATE.set()
    assert ended(client, running)["status"] == "completed"
    time.sleep(0.3)
    assert client.get(queued, headers=OWNER).json()["status"] == "queued"


def test_progress_writes_are_coalesced_per_heartbeat_interval(
    wsgi: Callable[..., tuple[Any, httpx.Client]],
) -> None:
    """100 reports in ~0.5 s write progress at most once per interval; the last one lands."""
    mw, client = wsgi(heartbeat_interval=0.25, worker_lost_after=2)
    writes: list[float | None] = []
    store = mw.store
    original = store.set_progress

    def counting(job_id: str, worker_id: str, now: float, *progress: Any) -> Any:
        writes.append(progress[0])
        return original(job_id, worker_id, now, *progress)

    store.set_progress = counting
    started = time.monotonic()
    location = submit(client, "/progress")
    assert ended(client, location)["status"] == "completed"
    elapsed = time.monotonic() - started
    assert 1 <= len(writes) <= elapsed / 0.25 + 2, writes
    assert writes[-1] == 90.0  # the last report, flushed when the handler returned


def test_retry_on_runs_the_job_again_with_attempt_counting_up() -> None:
    """retries=2, retry_on=TimeoutError: two timeouts, then the third run completes."""
    from starlette.testclient import TestClient

    with TestClient(
        build_asgi(store="memory://", sweep_interval=0.1), follow_redirects=False
    ) as client:
        done = ended(client, submit(client, "/flaky?succeed_at=3"))
        assert done["status"] == "completed", done
        assert done["attempt"] == 3
        result = client.get(done["links"]["result"], headers=OWNER)
        assert result.json() == {"attempt": 3}


def test_retries_exhausted_end_failed_on_the_last_attempt() -> None:
    """A job that keeps raising a retry_on error fails after 1 + retries runs."""
    from starlette.testclient import TestClient

    with TestClient(build_asgi(store="memory://"), follow_redirects=False) as client:
        failed = ended(client, submit(client, "/flaky?succeed_at=9"))
        assert failed["status"] == "failed"
        assert failed["error"]["type"].endswith("handler-error")
        assert failed["attempt"] == 3


def test_other_exceptions_are_not_retried() -> None:
    """An exception outside retry_on fails the job on its first run."""
    from starlette.testclient import TestClient

    with TestClient(build_asgi(store="memory://"), follow_redirects=False) as client:
        failed = ended(client, submit(client, "/exit?kind=ValueError"))
        assert failed["status"] == "failed" and failed["attempt"] == 1


@pytest.mark.parametrize(
    "options",
    [{"retries": -1}, {"retries": 1.5}, {"retry_backoff": -1}, {"retry_on": ("TimeoutError",)}],
)
def test_bad_retry_options_are_refused_at_decoration(options: dict[str, Any]) -> None:
    """retries, retry_backoff and retry_on are checked when the route is marked."""
    from async_accept.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        long_running(**options)


def test_a_result_over_max_result_size_fails_result_too_large(
    wsgi: Callable[..., tuple[Any, httpx.Client]],
) -> None:
    """A 100 kB response with max_result_size=50 kB fails result-too-large; nothing is kept."""
    _mw, client = wsgi(max_result_size=50_000)
    failed = ended(client, submit(client, "/big"))
    assert failed["status"] == "failed"
    assert failed["error"]["type"].endswith("result-too-large")
    assert "50000" in failed["error"]["detail"]
    small = ended(client, submit(client, "/ok"))
    assert small["status"] == "completed"


def test_asgi_streamed_result_over_max_result_size_fails_result_too_large() -> None:
    """A streamed ASGI response over max_result_size fails result-too-large."""
    from starlette.testclient import TestClient

    app = build_asgi(store="memory://", max_result_size=10)
    with TestClient(app, follow_redirects=False) as client:
        failed = ended(client, submit(client, "/attempt"))  # {"attempt":1} is 13 bytes
        assert failed["error"]["type"].endswith("result-too-large")


def test_asgi_drains_running_jobs_before_the_apps_lifespan_shutdown() -> None:
    """Server shutdown: the running job finishes first, then the app's own shutdown runs."""
    import contextlib
    from collections.abc import AsyncIterator

    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from async_accept.asgi import AsyncAcceptMiddleware

    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        events.append("app shutdown")

    @long_running
    async def slow(request: Request) -> Response:
        events.append("job started")
        await asyncio.sleep(0.5)
        events.append("job done")
        return Response("done")

    app = Starlette(
        routes=[Route("/slow", slow, methods=["POST"])],
        middleware=[Middleware(AsyncAcceptMiddleware, secret_key=SECRET, store="memory://")],
        lifespan=lifespan,
    )
    with TestClient(app, follow_redirects=False) as client:
        submit(client, "/slow")
        deadline = time.monotonic() + 5
        while "job started" not in events:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert events == ["job started", "job done", "app shutdown"]


def test_the_first_sigterm_stops_claiming_and_the_servers_own_handler_still_runs() -> None:
    """SIGTERM: the runtime starts draining, then the handler that was there (the server's) runs."""
    import subprocess
    import textwrap

    code = textwrap.dedent(
        """
        import os, signal
        seen = []
        signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
        from async_accept.wsgi import AsyncAcceptMiddleware
        mw = AsyncAcceptMiddleware(lambda e, s: [b""], secret_key="k" * 32, store="memory://")
        assert not mw.runtime.draining
        os.kill(os.getpid(), signal.SIGTERM)
        print(mw.runtime.draining, seen == [signal.SIGTERM])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["True", "True"], out.stderr


def test_jobs_recovered_at_startup_replay_through_the_whole_app() -> None:
    """From lifespan startup on (before any request), jobs replay through the outermost app."""
    from starlette.testclient import TestClient

    from tests.conftest import find_middleware

    app = build_asgi(store="memory://")
    with TestClient(app, follow_redirects=False):
        assert find_middleware(app).runtime.app is app


def _hops() -> dict[str, Callable[[Callable[[], Any]], Any]]:
    """Every way a handler hands sync work to a thread, as awaitables of ``fn()``."""
    import concurrent.futures

    import anyio.to_thread
    from asgiref.sync import sync_to_async
    from starlette.concurrency import run_in_threadpool

    pool = concurrent.futures.ThreadPoolExecutor(1)
    return {
        "asyncio.to_thread": lambda fn: asyncio.to_thread(fn),
        "loop.run_in_executor default": lambda fn: asyncio.get_running_loop().run_in_executor(
            None, fn
        ),
        "loop.run_in_executor own pool": lambda fn: asyncio.get_running_loop().run_in_executor(
            pool, fn
        ),
        "asyncio.wrap_future": lambda fn: asyncio.wrap_future(pool.submit(fn)),
        "anyio.to_thread": lambda fn: anyio.to_thread.run_sync(fn),
        "starlette run_in_threadpool": lambda fn: run_in_threadpool(fn),
        "asgiref sync_to_async": lambda fn: sync_to_async(fn, thread_sensitive=False)(),
    }


@pytest.mark.parametrize("hop", list(_hops()))
def test_thread_watch_sees_a_sync_handler_on_a_thread_and_remembers_it(hop: str) -> None:
    """ThreadWatch: an app task waiting on a worker thread (each way of getting there)
    is past the point of no return, and stays so once the thread returned; an app
    task on the loop is not."""
    from async_accept.supervision import ThreadWatch

    async def main() -> tuple[bool, bool, bool]:
        release = threading.Event()
        on_loop = ThreadWatch()
        on_loop.set(asyncio.ensure_future(asyncio.sleep(0.5)))
        await asyncio.sleep(0.01)

        async def handler() -> None:
            await _hops()[hop](lambda: release.wait(5))

        watch = ThreadWatch()
        watch.set(asyncio.ensure_future(handler()))
        await asyncio.sleep(0.1)
        during = watch.past_no_return()
        release.set()
        await asyncio.sleep(0.1)
        return on_loop.past_no_return(), during, watch.past_no_return()

    assert asyncio.run(main()) == (False, True, True)


# -- a repeating failure is logged once per streak ----------------------------------------------


def test_a_failure_streak_logs_one_traceback_then_counts_then_its_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """100 failures in a row: one warning with the traceback; its end: one line with the
    count; the next failure starts a new streak with its traceback again."""
    import logging

    from async_accept.supervision import FailureStreak

    streak = FailureStreak("heartbeat", every=3600)
    caplog.set_level(logging.WARNING, logger="async_accept")
    for i in range(100):
        try:
            raise OSError(f"disk full {i}")
        except OSError:
            streak.failed(f"attempt {i}")
    assert [r.exc_info is not None for r in caplog.records] == [True]
    assert "disk full 0" in caplog.text
    streak.succeeded()
    streak.succeeded()  # no streak: nothing more
    assert (
        caplog.records[-1].getMessage() == "async_accept: heartbeat works again after 100 failures"
    )
    assert len(caplog.records) == 2
    try:
        raise OSError("again")
    except OSError:
        streak.failed("attempt 101")
    assert len(caplog.records) == 3 and caplog.records[-1].exc_info is not None


def test_a_long_streak_is_counted_every_period_without_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With a period of 0 s every later failure says the count so far, without a traceback."""
    import logging

    from async_accept.supervision import FailureStreak

    streak = FailureStreak("sweep", every=0.0)
    caplog.set_level(logging.WARNING, logger="async_accept")
    for i in range(3):
        try:
            raise OSError("store down")
        except OSError:
            streak.failed(f"attempt {i}")
    assert [r.exc_info is not None for r in caplog.records] == [True, False, False]
    assert "3 failures so far" in caplog.records[-1].getMessage()


def test_heartbeats_failing_for_a_while_log_one_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The heartbeat thread over a store failing its first 30 beats: every beat is tried,
    one traceback is logged for all of them, and one line when the beats work again."""
    import logging

    from async_accept.context import JobContext
    from async_accept.errors import StoreError
    from async_accept.supervision import Heartbeats

    class Host:
        worker_id = "w"

        def __init__(self) -> None:
            self.calls = 0
            self.ok = threading.Event()

        def beat_write(self, job_id: str, progress: Any) -> Any:
            self.calls += 1
            if self.calls <= 30:
                raise StoreError("database or disk is full")
            self.ok.set()
            return _Alive()

    class _Alive:
        cancel_requested = False

    caplog.set_level(logging.WARNING, logger="async_accept")
    host = Host()
    board = {"job-1": JobContext("job-1")}
    beats = Heartbeats(host, board, interval=0.01)
    beats.ensure_running()
    try:
        assert host.ok.wait(10), "the heartbeat never got through"
        deadline = time.monotonic() + 5
        while "works again" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        board.clear()
        beats.wake.set()
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert len(tracebacks) == 1 and "database or disk is full" in caplog.text
    assert "heartbeat works again after 30 failures" in caplog.text


def test_the_graceful_timeout_is_read_off_gunicorns_signal_handler() -> None:
    """A bound handler of an object with cfg.graceful_timeout gives it; anything else gives None."""
    from types import SimpleNamespace

    from async_accept.supervision import server_graceful_timeout

    class Worker:
        def __init__(self, value: object) -> None:
            self.cfg = SimpleNamespace(graceful_timeout=value)

        def handle_exit(self, signum: int, frame: object) -> None:
            """gunicorn's handler shape."""

    assert server_graceful_timeout(Worker(30).handle_exit) == 30.0
    assert server_graceful_timeout(Worker(2.5).handle_exit) == 2.5
    for bad in (0, -1, True, "30", None):
        assert server_graceful_timeout(Worker(bad).handle_exit) is None
    assert server_graceful_timeout(signal.default_int_handler) is None
    assert server_graceful_timeout(signal.SIG_DFL) is None


def test_the_drain_is_cut_to_what_is_left_of_the_servers_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """drain_timeout = min(shutdown_timeout, grace - margin - time since the stop signal)."""
    from types import SimpleNamespace

    from async_accept import supervision

    host = SimpleNamespace(options=SimpleNamespace(shutdown_timeout=60.0))
    drain = supervision.Draining.drain_timeout.fget  # type: ignore[attr-defined]
    monkeypatch.setattr(supervision, "_server_grace", None)
    assert drain(host) == 60.0
    monkeypatch.setattr(supervision, "_server_grace", 30.0)
    monkeypatch.setattr(supervision, "_stop_signal_at", None)
    assert drain(host) == 28.0  # a margin of min(2 s, 20 %)
    monkeypatch.setattr(supervision, "_stop_signal_at", time.monotonic() - 10)
    assert 17.0 <= drain(host) <= 18.0
    monkeypatch.setattr(supervision, "_stop_signal_at", time.monotonic() - 100)
    assert drain(host) == 0.0
    monkeypatch.setattr(supervision, "_server_grace", 5.0)
    monkeypatch.setattr(supervision, "_stop_signal_at", None)
    assert drain(host) == 4.0
    host.options.shutdown_timeout = 1.0
    assert drain(host) == 1.0


def test_without_a_lifespan_the_server_hears_the_signal_after_the_drain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a running loop, a busy runtime with no lifespan drain delays the server's handler
    until its jobs end (or are requeued); a second signal goes through at once."""
    import weakref

    from async_accept import supervision

    class Runtime:
        started = True
        lifespan_drain = False
        drain_timeout = 30.0

        def __init__(self) -> None:
            self.busy = True
            self.draining = False
            self.requeued = 0

        def begin_drain(self) -> None:
            self.draining = True

        def requeue_running(self) -> int:
            self.requeued += 1
            return 0

    rt = Runtime()
    live: weakref.WeakSet[Any] = weakref.WeakSet()
    live.add(rt)
    monkeypatch.setattr(supervision, "_LIVE", live)
    monkeypatch.setattr(supervision, "_stop_signal_at", None)
    heard: list[int] = []

    def server(signum: int, frame: Any) -> None:
        heard.append(signum)

    async def scenario() -> None:
        supervision._on_stop_signal(server, signal.SIGTERM, None)
        await asyncio.sleep(0.2)
        assert rt.draining and heard == []  # still draining: the server doesn't know yet
        rt.busy = False  # the running jobs ended
        for _ in range(200):
            if heard:
                break
            await asyncio.sleep(0.02)
        assert heard == [signal.SIGTERM] and rt.requeued == 0
        rt.busy = True
        supervision._on_stop_signal(server, signal.SIGTERM, None)  # a second signal
        assert heard == [signal.SIGTERM, signal.SIGTERM]

    asyncio.run(scenario())


def test_a_runtime_drained_by_its_lifespan_lets_the_signal_through_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a lifespan shutdown to drain in, the server's handler runs right away."""
    import weakref

    from async_accept import supervision

    class Runtime:
        started = busy = lifespan_drain = True

        def begin_drain(self) -> None:
            """Nothing to do here."""

    rt = Runtime()
    live: weakref.WeakSet[Any] = weakref.WeakSet()
    live.add(rt)
    monkeypatch.setattr(supervision, "_LIVE", live)
    monkeypatch.setattr(supervision, "_stop_signal_at", None)
    heard: list[int] = []

    async def scenario() -> None:
        supervision._on_stop_signal(lambda s, f: heard.append(s), signal.SIGTERM, None)

    asyncio.run(scenario())
    assert heard == [signal.SIGTERM]


class _QuietHost:
    """A heartbeat host whose jobs are alive (every beat answers a job)."""

    class _Alive:
        cancel_requested = False

    def beat_write(self, job_id: str, progress: Any) -> Any:
        return self._Alive()


def _until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition never came true"
        time.sleep(0.005)


def test_the_heartbeat_thread_waits_a_moment_for_the_next_job_then_ends() -> None:
    """Jobs one after another share one heartbeat thread (none started per job); once
    the board stays empty for IDLE_LINGER, the thread ends."""
    from async_accept.context import JobContext
    from async_accept.supervision import IDLE_LINGER, Heartbeats

    board = {"job-1": JobContext("job-1")}
    beats = Heartbeats(_QuietHost(), board, interval=30.0)
    beats.ensure_running()
    first = beats._thread
    assert first is not None
    board.clear()
    beats.wake.set()
    _until(lambda: beats._round_at < float("inf"))  # waiting, idle
    board["job-2"] = JobContext("job-2")
    beats.ensure_running()
    assert beats._thread is first and first.is_alive()
    board.clear()
    first.join(IDLE_LINGER + 10)
    assert not first.is_alive() and beats._thread is None


def test_a_new_job_wakes_the_heartbeat_thread_only_when_its_deadline_comes_first() -> None:
    """wake_within: a job due after the thread's next round leaves it asleep; one due
    before it wakes it (a new round)."""
    from async_accept.context import JobContext
    from async_accept.supervision import Heartbeats

    ctx = JobContext("job-1")
    ctx.last_beat = time.monotonic()  # just claimed: no beat due for an interval
    board = {"job-1": ctx}
    beats = Heartbeats(_QuietHost(), board, interval=30.0)
    beats.wake_within(3600.0)  # no thread waiting: a round may be on its way
    assert beats.wake.is_set()
    beats.wake.clear()
    beats.ensure_running()
    try:
        _until(lambda: beats._round_at < float("inf"))
        planned = beats._round_at
        beats.wake_within(3600.0)
        assert not beats.wake.is_set() and beats._round_at == planned
        beats.wake_within(0.0)
        _until(lambda: beats._round_at != planned)
    finally:
        board.clear()
        beats.wake.set()
