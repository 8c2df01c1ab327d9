"""A job returns what the app would, and the middleware's own answers follow
the standards: Set-Cookie on the 303 to the handler's own Location,
background tasks after the recorded response, handler helpers that work
anywhere, ``result_status``, ``Prefer`` over several lines,
``Preference-Applied`` only for what was applied, conditional requests on the
result, DELETE of an ended job, ProxyFix in Flask's documented order, and
Django logging the middleware's answers as what they are."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from async_accept import current_job, long_running, report_progress
from tests.differential.harness import (
    SECRET,
    Req,
    Resp,
    asgi_call,
    asgi_flow,
    asgi_lifespan,
    follow_up,
    wsgi_call,
    wsgi_flow,
)

H = (b"host", b"testserver")
ALICE = (b"authorization", b"Bearer alice")
OPTS: dict[str, Any] = {"secret_key": SECRET, "store": "memory://", "poll_interval": 1}


def _starlette(routes: list[Any], **options: Any) -> Any:
    from starlette.applications import Starlette

    from async_accept.asgi import AsyncAcceptMiddleware

    app = Starlette(routes=routes)
    app.add_middleware(AsyncAcceptMiddleware, **{**OPTS, "executor": "asyncio", **options})
    return app


def _run(app: Any, coro: Any) -> Any:
    async def go() -> Any:
        async with asgi_lifespan(app):
            return await coro

    return asyncio.run(go())


# --- Set-Cookie on the 303 to the handler's Location ---


def test_flask_flash_and_redirect_keeps_the_cookie() -> None:
    """Flask (flaskr): ``flash(...)`` then ``redirect(...)`` in a job: the 303 goes to the
    handler's Location carrying the handler's session cookie, so the page shows the
    message as it would without the middleware."""
    from flask import Flask, flash, get_flashed_messages, redirect

    from async_accept.flask import AsyncAccept

    def build(marked: bool) -> Any:
        app = Flask(__name__)
        app.secret_key = "flaskr-dev"

        def create() -> Any:
            flash("Post created")
            return redirect("/posts")

        app.add_url_rule(
            "/create", view_func=long_running(create) if marked else create, methods=["POST"]
        )

        @app.get("/posts")
        def posts() -> str:
            return " | ".join(get_flashed_messages()) or "no message"

        return app

    req = Req(method="POST", raw_path=b"/create", headers=(H, ALICE))
    plain = wsgi_call(build(False), req)
    assert plain.status == 302
    app = build(True)
    ext = AsyncAccept(app, **OPTS)
    try:
        first = wsgi_call(app, req)
        assert first.status == 202
        status_req = follow_up(req, first.header(b"location") or b"")
        deadline = time.monotonic() + 10
        while (answer := wsgi_call(app, status_req)).status == 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        ext.middleware.runtime.shutdown()
    assert answer.status == 303
    assert answer.header(b"location") == b"/posts"
    # The same cookies with the same attributes (the signed value carries its own time).
    assert [_shape(c) for c in answer.all(b"set-cookie")] == [
        _shape(c) for c in plain.all(b"set-cookie")
    ]
    cookie = answer.all(b"set-cookie")[0].split(b";", 1)[0]
    page = wsgi_call(
        build(False), Req(method="GET", raw_path=b"/posts", headers=(H, (b"cookie", cookie)))
    )
    assert page.body == b"Post created"


def _shape(cookie: bytes) -> tuple[bytes, bytes]:
    name, _, rest = cookie.partition(b"=")
    return name, rest.partition(b";")[2]


# --- background tasks ---


BG: list[str] = []


def test_background_tasks_do_not_delay_the_hybrid_answer() -> None:
    """Starlette: a response's BackgroundTask runs after the job's response is recorded:
    the hybrid answer comes before the task ends."""
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def slow_task() -> None:
        await asyncio.sleep(1.5)
        BG.append("done")

    @long_running(wait=5)
    async def send(request: Request) -> PlainTextResponse:
        return PlainTextResponse("sent", background=BackgroundTask(slow_task))

    app = _starlette([Route("/send", send, methods=["POST"])])
    BG.clear()

    async def go() -> tuple[Resp, float]:
        start = time.monotonic()
        answer = await asgi_call(app, Req(raw_path=b"/send", headers=(H, ALICE)))
        return answer, time.monotonic() - start

    answer, took = _run(app, go())
    assert answer.status == 200
    assert answer.body == b"sent"
    assert took < 1.0


def test_background_task_error_leaves_the_job_completed() -> None:
    """Starlette: a background task that raises does not change the job's outcome:
    it stays ``completed`` with the handler's 200."""
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    def broken() -> None:
        raise RuntimeError("mail server down")

    @long_running
    async def send(request: Request) -> PlainTextResponse:
        return PlainTextResponse("sent", background=BackgroundTask(broken))

    app = _starlette([Route("/send", send, methods=["POST"])])
    flow = _run(app, asgi_flow(app, Req(raw_path=b"/send", headers=(H, ALICE))))
    assert json.loads(flow.statuses[-1].body)["status"] == "completed"
    assert flow.final is not None
    assert (flow.final.status, flow.final.body) == (200, b"sent")


# --- the handler's helpers ---


@pytest.mark.parametrize("args", [(120,), (-5,), ("half",), (None,), (float("nan"),)])
def test_report_progress_outside_a_job_is_a_no_op(args: tuple[Any, ...]) -> None:
    """Outside a job ``report_progress(...)`` does nothing, whatever its arguments."""
    assert current_job() is None
    kwargs: dict[str, Any] = {"message": 42, "eta": -1}
    if args == (None,):
        report_progress(**kwargs)
    else:
        report_progress(*args, **kwargs)


def test_report_progress_outside_a_job_accepts_valid_values() -> None:
    """Outside a job ``report_progress(50, message=..., eta=...)`` returns None."""
    assert report_progress(50, message="half", eta=3.0) is None


SEEN_IN_THREADS: dict[str, Any] = {}


def test_current_job_inside_threads_the_handler_starts() -> None:
    """In a job, ``current_job()`` and ``report_progress()`` work in ``asyncio.to_thread``,
    in ``run_in_executor`` and in a ``ThreadPoolExecutor`` given the copied context
    (``contextvars.copy_context().run``, as the README shows)."""
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    def probe(where: str) -> None:
        job = current_job()
        SEEN_IN_THREADS[where] = job.id if job is not None else None
        report_progress(50, message=where)

    @long_running
    async def work(request: Request) -> PlainTextResponse:
        await asyncio.to_thread(probe, "to_thread")
        ctx = contextvars.copy_context()
        await asyncio.get_running_loop().run_in_executor(None, ctx.run, probe, "run_in_executor")
        with ThreadPoolExecutor(1) as pool:
            pool.submit(contextvars.copy_context().run, probe, "pool").result()
        return PlainTextResponse("ok")

    app = _starlette([Route("/work", work, methods=["POST"])])
    SEEN_IN_THREADS.clear()
    flow = _run(app, asgi_flow(app, Req(raw_path=b"/work", headers=(H, ALICE))))
    assert flow.final is not None and flow.final.body == b"ok"
    job_id = json.loads(flow.statuses[-1].body)["id"]
    want = {"to_thread": job_id, "run_in_executor": job_id, "pool": job_id}
    assert want == SEEN_IN_THREADS


def test_status_json_carries_result_status() -> None:
    """The status JSON has ``result_status``: the handler's HTTP status once the job
    has a response (a 4xx outcome is visible without fetching the result)."""
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    @long_running
    async def lookup(request: Request) -> PlainTextResponse:
        return PlainTextResponse("no such thing", status_code=404)

    app = _starlette([Route("/lookup", lookup, methods=["POST"])])
    flow = _run(app, asgi_flow(app, Req(raw_path=b"/lookup", headers=(H, ALICE))))
    first = json.loads(flow.first.body)
    last = json.loads(flow.statuses[-1].body)
    assert first["result_status"] is None
    assert last["status"] == "completed"
    assert last["result_status"] == 404


# --- Prefer, Preference-Applied ---


def test_prefer_over_several_lines_means_one_line() -> None:
    """``Prefer`` sent as two header lines means the same as one (RFC 7240):
    ``respond-async`` on the second line is honoured."""
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def report(request: Request) -> PlainTextResponse:
        return PlainTextResponse("made")

    app = _starlette([Route("/report", report, methods=["POST"])], prefer_async=True)
    two = ((b"prefer", b"handling=lenient"), (b"prefer", b"respond-async"))
    answer = _run(app, asgi_call(app, Req(raw_path=b"/report", headers=(H, ALICE, *two))))
    assert answer.status == 202
    assert answer.header(b"preference-applied") == b"respond-async"


def test_preference_applied_lists_only_what_was_applied() -> None:
    """A hybrid answer that came back synchronously applied ``wait`` but not
    ``respond-async``: Preference-Applied says only ``wait``."""
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    @long_running(max_wait=10)
    async def quick(request: Request) -> PlainTextResponse:
        return PlainTextResponse("done")

    app = _starlette([Route("/quick", quick, methods=["POST"])])
    prefer = (b"prefer", b"respond-async, wait=5")
    answer = _run(app, asgi_call(app, Req(raw_path=b"/quick", headers=(H, ALICE, prefer))))
    assert (answer.status, answer.body) == (200, b"done")
    applied = (answer.header(b"preference-applied") or b"").decode()
    assert "respond-async" not in applied
    assert "wait=5" in applied


# --- the result: conditional requests; DELETE of an ended job ---


def _ended_job(handler_headers: dict[str, str]) -> tuple[Any, Req]:
    """A Starlette app whose marked route answers with ``handler_headers``, and a request to it."""
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    @long_running
    async def make(request: Request) -> PlainTextResponse:
        return PlainTextResponse("content", headers=handler_headers)

    app = _starlette([Route("/make", make, methods=["POST"])])
    return app, Req(raw_path=b"/make", headers=(H, ALICE))


def test_result_honours_if_none_match() -> None:
    """``GET /result`` with the handler's ETag in ``If-None-Match`` answers 304 without a body."""
    app, req = _ended_job({"ETag": '"v1"'})

    async def go() -> Resp:
        flow = await asgi_flow(app, req)
        assert flow.final is not None and flow.final.header(b"etag") == b'"v1"'
        result_url = flow.statuses[-1].header(b"location") or b""
        again = follow_up(req, result_url)
        again = Req(**{**again.__dict__, "headers": (*again.headers, (b"if-none-match", b'"v1"'))})
        return await asgi_call(app, again)

    answer = _run(app, go())
    assert answer.status == 304
    assert answer.body == b""
    assert answer.header(b"etag") == b'"v1"'


def test_delete_of_an_ended_job_deletes_it() -> None:
    """``DELETE`` on a completed job deletes it: 204, then its status URL answers 404."""
    app, req = _ended_job({})

    async def go() -> tuple[Resp, Resp]:
        flow = await asgi_flow(app, req)
        status_url = follow_up(req, flow.first.header(b"location") or b"")
        deleted = await asgi_call(app, Req(**{**status_url.__dict__, "method": "DELETE"}))
        return deleted, await asgi_call(app, status_url)

    deleted, after = _run(app, go())
    assert deleted.status == 204
    assert after.status == 404


# --- Flask behind ProxyFix ---


def test_flask_proxyfix_in_the_documented_order() -> None:
    """Flask: ``app.wsgi_app = ProxyFix(app.wsgi_app, x_prefix=1)`` then
    ``AsyncAccept(app)``: the 202's Location carries ``X-Forwarded-Prefix``."""
    from flask import Flask
    from werkzeug.middleware.proxy_fix import ProxyFix

    from async_accept.flask import AsyncAccept

    app = Flask(__name__)

    @app.post("/report")
    @long_running
    def report() -> str:
        return "made"

    app.wsgi_app = ProxyFix(app.wsgi_app, x_prefix=1)  # type: ignore[method-assign]
    ext = AsyncAccept(app, **OPTS)
    req = Req(raw_path=b"/report", headers=(H, ALICE, (b"x-forwarded-prefix", b"/api")))
    try:
        answer = wsgi_call(app, req)
    finally:
        ext.middleware.runtime.shutdown()
    assert answer.status == 202
    assert (answer.header(b"location") or b"").startswith(b"/api/_jobs/")


# --- Django: the middleware's own answers are logged as what they are ---


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


GATE = threading.Event()


def test_django_logs_no_server_error_for_the_middlewares_answers() -> None:
    """Django: reading a failed job's stored 500 and cancelling a running job (its view
    stopped by report_progress) log no ERROR through ``django.request`` (mail_admins,
    Sentry): the first is a warning, the second the job's outcome."""
    import types

    from django.core.wsgi import get_wsgi_application
    from django.test import override_settings
    from django.urls import path
    from django.views.decorators.csrf import csrf_exempt

    @csrf_exempt
    @long_running
    def broken(request: Any) -> Any:
        raise RuntimeError("boom")

    @csrf_exempt
    @long_running
    def waiting(request: Any) -> Any:
        from django.http import HttpResponse

        GATE.set()  # running: the test may cancel now
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            report_progress(10)  # the cancellation point: raises once canceled
            time.sleep(0.02)
        return HttpResponse("late")

    urlconf = types.ModuleType("logging_urls")
    urlconf.urlpatterns = [path("broken", broken), path("waiting", waiting)]  # type: ignore[attr-defined]
    GATE.clear()
    with override_settings(
        ROOT_URLCONF=urlconf,
        ASYNC_ACCEPT={"store": "memory://", "poll_interval": 1},
        MIDDLEWARE=["async_accept.django.AsyncAcceptMiddleware"],
    ):
        app = get_wsgi_application()  # (re)configures logging: listen from here on
        records = _Records()
        logging.getLogger("django.request").addHandler(records)
        req = Req(raw_path=b"/broken", headers=(H, ALICE))
        flow = wsgi_flow(app, req)
        assert json.loads(flow.statuses[-1].body)["status"] == "failed"
        assert records.records  # the job's own 500 is the handler's: logged, once
        records.records.clear()
        result = wsgi_call(
            app, follow_up(req, (flow.first.header(b"location") or b"") + b"/result")
        )
        assert result.status == 500
        second = wsgi_call(app, Req(raw_path=b"/waiting", headers=(H, ALICE)))
        status = follow_up(req, second.header(b"location") or b"")
        assert GATE.wait(10)
        canceled = wsgi_call(app, Req(**{**status.__dict__, "method": "DELETE"}))
        assert canceled.status == 202
        deadline = time.monotonic() + 10
        while json.loads(wsgi_call(app, status).body)["status"] != "canceled":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        logging.getLogger("django.request").removeHandler(records)
    errors = [r.getMessage() for r in records.records if r.levelno >= logging.ERROR]
    assert errors == []


RAW_COOKIES = (
    b"theme=dark; Path=/; Secure; HttpOnly; SameSite=None; Partitioned",
    b'prefs={"a":[1,2]}; Path=/',
)


@pytest.mark.parametrize("asgi", [False, True], ids=["wsgi", "asgi"])
def test_django_result_keeps_every_cookie_as_sent(asgi: bool) -> None:
    """Django: a job's Set-Cookie headers reach the client at the result byte for byte,
    ``Partitioned`` and raw-JSON values included (SimpleCookie would drop them)."""
    import types

    from django.core.asgi import get_asgi_application
    from django.core.wsgi import get_wsgi_application
    from django.http import HttpResponse
    from django.test import override_settings
    from django.urls import path
    from django.views.decorators.csrf import csrf_exempt

    @csrf_exempt
    @long_running
    def cookies(request: Any) -> Any:
        response = HttpResponse("ok")
        response.headers["X-Done"] = "1"
        return response

    def raw_cookies(get_response: Any) -> Any:
        """A middleware writing Set-Cookie lines Django's cookie jar can't parse."""

        def middleware(request: Any) -> Any:
            response = get_response(request)
            if request.path == "/cookies":
                for i, value in enumerate(RAW_COOKIES):
                    dict.__setitem__(response.cookies, f"raw{i}", _Raw(value.decode()))
            return response

        return middleware

    urlconf = types.ModuleType("cookie_urls")
    urlconf.urlpatterns = [path("cookies", cookies)]  # type: ignore[attr-defined]
    global _RAW_MIDDLEWARE
    _RAW_MIDDLEWARE = raw_cookies
    with override_settings(
        ROOT_URLCONF=urlconf,
        ASYNC_ACCEPT={"store": "memory://", "poll_interval": 1},
        MIDDLEWARE=[
            "async_accept.django.AsyncAcceptMiddleware",
            f"{__name__}._raw_middleware",
        ],
    ):
        req = Req(raw_path=b"/cookies", headers=(H, ALICE))
        if asgi:
            flow = asyncio.run(asgi_flow(get_asgi_application(), req))
        else:
            flow = wsgi_flow(get_wsgi_application(), req)
    assert flow.final is not None and flow.final.status == 200
    assert [c.strip() for c in flow.final.all(b"set-cookie")] == list(RAW_COOKIES)


class _Raw:
    """A cookie entry whose output is the line as written (what an app's own
    middleware or a third-party library may put in ``response.cookies``)."""

    def __init__(self, value: str) -> None:
        self.value = value

    def output(self, attrs: Any = None, header: str = "Set-Cookie:") -> str:
        return f"{header} {self.value}"


_RAW_MIDDLEWARE: Any = None


def _raw_middleware(get_response: Any) -> Any:
    return _RAW_MIDDLEWARE(get_response)
