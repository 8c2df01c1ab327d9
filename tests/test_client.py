"""The polling client: poll()/apoll() and cancel()/acancel().

The flows run against a small real status server (an ASGI app under uvicorn
on 127.0.0.1) that answers from per-job scripts; pure decisions (origins,
odd answers) use httpx.MockTransport. Waits are injected, never measured.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import httpx
import pytest
import uvicorn

from async_accept.client import (
    ClientError,
    JobCanceledError,
    JobExpired,
    JobFailed,
    JobNotFound,
    PollTimeout,
    UnexpectedResponse,
    acancel,
    apoll,
    cancel,
    parse_retry_after,
    poll,
)
from async_accept.errors import AsyncAcceptError, MissingDependencyError

TOKEN = {"Authorization": "Bearer s3cret"}
_LOCAL = ipaddress.ip_network("127.0.0.0/8")


# -- the network guard ----------------------------------------------------------


@pytest.fixture(autouse=True)
def network_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Block (and fail the test on) any connect or name lookup outside 127.0.0.0/8."""
    violations: list[str] = []
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def local(address: Any) -> bool:
        try:
            ip = ipaddress.ip_address(str(address[0]).split("%", 1)[0])
        except (ValueError, TypeError, IndexError):
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip in _LOCAL

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family == getattr(socket, "AF_UNIX", None):
            return
        if not local(address):
            violations.append(repr(address))
            raise PermissionError(f"test network guard: connect to {address!r} blocked")

    def connect(self: socket.socket, address: Any) -> None:
        check(self, address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(self, address)
        return real_connect_ex(self, address)

    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in (None, "localhost") and not local((host,)):
            violations.append(f"name lookup of {host!r}")
            raise socket.gaierror(socket.EAI_NONAME, f"test network guard: lookup of {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield violations
    assert violations == [], f"the code tried to reach outside 127.0.0.0/8: {violations}"


# -- a real status server ---------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None  # dict -> JSON, str -> text

    def encode(self) -> tuple[list[tuple[bytes, bytes]], bytes]:
        headers = dict(self.headers)
        if isinstance(self.body, dict):
            body = json.dumps(self.body).encode()
            ctype = "application/problem+json" if self.status >= 400 else "application/json"
            headers.setdefault("content-type", ctype)
        elif isinstance(self.body, str):
            body = self.body.encode()
            headers.setdefault("content-type", "text/plain")
        else:
            body = b""
        if headers.get("retry-after", "").startswith("DATE+"):
            offset = float(headers["retry-after"][len("DATE+") :])
            headers["retry-after"] = formatdate(time.time() + offset, usegmt=True)
        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        return raw, body


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class StatusApp:
    """An ASGI app playing the server side: ``POST /start/<job>`` answers 202,
    ``GET /_jobs/<job>`` walks through that job's script (the last answer
    repeats), ``GET /_jobs/<job>/result`` is the result, ``DELETE`` answers
    from its own script. Everything under /_jobs needs the bearer token."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.scripts: dict[tuple[str, str], list[Answer]] = {}
            self.seen: list[Seen] = []

    def script(self, method: str, path: str, *answers: Answer) -> None:
        with self.lock:
            self.scripts[(method, path)] = list(answers)

    def _answer(self, method: str, path: str, headers: dict[str, str]) -> Answer:
        with self.lock:
            self.seen.append(Seen(method, path, headers))
            if (
                path.startswith("/_jobs/")
                and headers.get("authorization") != TOKEN["Authorization"]
            ):
                return Answer(
                    404, body={"type": "about:blank", "title": "Not Found", "status": 404}
                )
            if method == "POST" and path.startswith("/start/"):
                job = path[len("/start/") :]
                return Answer(
                    202,
                    {"location": f"/_jobs/{job}", "retry-after": "1"},
                    {"id": job, "status": "queued", "status_url": f"/_jobs/{job}"},
                )
            if method == "GET" and path.endswith("/result"):
                return Answer(200, {"x-result": "yes"}, f"result of {path.split('/')[2]}")
            answers = self.scripts.get((method, path))
            if not answers:
                return Answer(
                    404,
                    body={
                        "type": "about:blank",
                        "title": "Not Found",
                        "status": 404,
                        "detail": path,
                    },
                )
            return answers.pop(0) if len(answers) > 1 else answers[0]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        answer = self._answer(scope["method"], scope["path"], headers)
        raw, body = answer.encode()
        await send({"type": "http.response.start", "status": answer.status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, StatusApp]]:
    """The status app under a real uvicorn on 127.0.0.1, for the whole module."""
    app = StatusApp()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", log_level="warning", loop="asyncio"
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}", app
    srv.should_exit = True
    thread.join(15)


@pytest.fixture
def status(server: tuple[str, StatusApp]) -> Iterator[tuple[str, StatusApp]]:
    """The shared status server, with its scripts and request log cleared."""
    server[1].reset()
    yield server


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    """An httpx client, closed afterwards."""
    with httpx.Client() as client:
        yield client


class Sleeps:
    """An injected sleep that records the waits instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)

    async def asleep(self, seconds: float) -> None:
        self.waits.append(seconds)


def running(job: str, retry_after: str = "1", **extra: Any) -> Answer:
    return Answer(200, {"retry-after": retry_after}, {"id": job, "status": "processing", **extra})


def done(job: str, location: str | None = None) -> Answer:
    return Answer(
        303,
        {"location": location or f"{job}/result"},
        {"id": job, "status": "completed", "links": {"result": f"/_jobs/{job}/result"}},
    )


PROBLEM = {
    "type": "https://async-accept.dev/problems/handler-error",
    "title": "Handler failed",
    "status": 500,
    "detail": "ValueError: bad input",
}


# -- the happy path ----------------------------------------------------------------


def test_poll_follows_a_202_through_retry_after_to_the_result(
    status: tuple[str, StatusApp], http: httpx.Client
) -> None:
    """202 -> 200 (Retry-After seconds) -> 200 (Retry-After date) -> 303 -> result."""
    base, app = status
    app.script(
        "GET",
        "/_jobs/ok",
        Answer(200, {"retry-after": "2"}, {"id": "ok", "status": "queued"}),
        running("ok", "DATE+3600", percent_complete=50),
        done("ok"),
    )
    accepted = http.post(f"{base}/start/ok", headers=TOKEN)
    assert accepted.status_code == 202
    progress: list[dict[str, Any]] = []
    sleeps = Sleeps()
    result = poll(
        accepted,
        client=http,
        headers=TOKEN,
        max_interval=7,
        on_progress=progress.append,
        sleep=sleeps,
        wait=None,  # plain polling: Retry-After from the first answer on
    )
    assert result.status_code == 200
    assert result.text == "result of ok"
    assert [p["status"] for p in progress] == ["queued", "processing", "completed"]
    assert progress[1]["percent_complete"] == 50
    assert sleeps.waits == [1.0, 2.0, 7.0]  # the 202's, the seconds form, the capped date
    paths = [(s.method, s.path) for s in app.seen]
    assert paths[-1] == ("GET", "/_jobs/ok/result")  # Location resolved against the status URL
    assert all(s.headers.get("authorization") == TOKEN["Authorization"] for s in app.seen)


def test_poll_reuses_the_accepting_requests_credentials(
    status: tuple[str, StatusApp], http: httpx.Client
) -> None:
    """Given only the 202, poll() sends the original Authorization to the status and result."""
    base, app = status
    app.script("GET", "/_jobs/creds", running("creds"), done("creds"))
    accepted = http.post(f"{base}/start/creds", headers=TOKEN)
    result = poll(accepted, sleep=Sleeps())  # its own client, closed afterwards
    assert result.text == "result of creds"


def test_poll_accepts_a_status_url(status: tuple[str, StatusApp]) -> None:
    """A status URL polls at once, then as Retry-After says."""
    base, app = status
    app.script("GET", "/_jobs/url", running("url"), done("url", "/_jobs/url/result"))
    sleeps = Sleeps()
    result = poll(f"{base}/_jobs/url", headers=TOKEN, sleep=sleeps)
    assert result.text == "result of url"
    assert sleeps.waits == [1.0]


def test_poll_returns_a_direct_answer_unchanged(http: httpx.Client) -> None:
    """A response that is not a 202 (the server answered within its wait) is the result."""
    response = httpx.Response(201, json={"id": 7}, request=httpx.Request("POST", "http://x.test/"))
    assert poll(response, client=http) is response


def test_poll_waits_with_a_backoff_when_there_is_no_retry_after(
    status: tuple[str, StatusApp],
) -> None:
    """Without Retry-After the waits grow and stop at max_interval."""
    base, app = status
    plain = Answer(200, {}, {"id": "b", "status": "processing"})
    app.script("GET", "/_jobs/b", plain, plain, plain, plain, plain, done("b"))
    sleeps = Sleeps()
    poll(f"{base}/_jobs/b", headers=TOKEN, sleep=sleeps, max_interval=2)
    assert sleeps.waits == [1.0, 1.5, 2.0, 2.0, 2.0]


def test_poll_rides_out_transient_errors(status: tuple[str, StatusApp]) -> None:
    """A 503 with Retry-After from the status URL is waited out, not raised."""
    base, app = status
    app.script(
        "GET",
        "/_jobs/flaky",
        Answer(503, {"retry-after": "3"}, {"title": "Service Unavailable", "status": 503}),
        done("flaky"),
    )
    sleeps = Sleeps()
    assert poll(f"{base}/_jobs/flaky", headers=TOKEN, sleep=sleeps).status_code == 200
    assert sleeps.waits == [3.0]


def test_poll_follows_an_odata_style_202_monitor(status: tuple[str, StatusApp]) -> None:
    """A status URL answering 202 with a new Location moves the polling there."""
    base, app = status
    app.script(
        "GET",
        "/_jobs/od",
        Answer(202, {"location": "/_jobs/od2", "retry-after": "1"}, {"status": "processing"}),
    )
    app.script("GET", "/_jobs/od2", done("od2"))
    assert poll(f"{base}/_jobs/od", headers=TOKEN, sleep=Sleeps()).text == "result of od2"


# -- how a job can end badly ----------------------------------------------------------


def test_failed_job_raises_with_the_problem(status: tuple[str, StatusApp]) -> None:
    """A failed job raises JobFailed carrying the problem object and the status JSON."""
    base, app = status
    app.script(
        "GET",
        "/_jobs/bad",
        running("bad"),
        Answer(200, {}, {"id": "bad", "status": "failed", "error": PROBLEM}),
    )
    with pytest.raises(JobFailed) as info:
        poll(f"{base}/_jobs/bad", headers=TOKEN, sleep=Sleeps())
    err = info.value
    assert err.problem == PROBLEM
    assert err.status_json is not None and err.status_json["status"] == "failed"
    assert err.job_id == "bad"
    assert "bad input" in str(err)
    assert isinstance(err, ClientError) and isinstance(err, AsyncAcceptError)


def test_canceled_job_raises(status: tuple[str, StatusApp]) -> None:
    """A canceled job raises JobCanceledError."""
    base, app = status
    app.script("GET", "/_jobs/cx", Answer(200, {}, {"id": "cx", "status": "canceled"}))
    with pytest.raises(JobCanceledError) as info:
        poll(f"{base}/_jobs/cx", headers=TOKEN, sleep=Sleeps())
    assert info.value.job_id == "cx"


def test_unknown_job_raises_not_found_with_the_problem(status: tuple[str, StatusApp]) -> None:
    """A 404 from the status URL raises JobNotFound with the server's problem object."""
    base, _app = status
    with pytest.raises(JobNotFound) as info:
        poll(f"{base}/_jobs/nope", headers=TOKEN, sleep=Sleeps())
    assert info.value.problem["status"] == 404
    with pytest.raises(JobNotFound):  # wrong credentials look the same
        poll(f"{base}/_jobs/nope", headers={"Authorization": "Bearer other"}, sleep=Sleeps())


def test_expired_job_raises_expired(status: tuple[str, StatusApp]) -> None:
    """A 410 from the status URL raises JobExpired."""
    base, app = status
    app.script("GET", "/_jobs/old", Answer(410, {}, {"title": "Gone", "status": 410}))
    with pytest.raises(JobExpired) as info:
        poll(f"{base}/_jobs/old", headers=TOKEN, sleep=Sleeps())
    assert info.value.problem["title"] == "Gone"


def test_total_timeout_raises_poll_timeout(status: tuple[str, StatusApp]) -> None:
    """A job still running when the total timeout runs out raises PollTimeout with its URL."""
    base, app = status
    app.script("GET", "/_jobs/slow", running("slow", "1"))
    with pytest.raises(PollTimeout) as info:
        poll(f"{base}/_jobs/slow", headers=TOKEN, timeout=0.2)
    assert info.value.url == f"{base}/_jobs/slow"
    assert info.value.status_json is not None
    assert info.value.status_json["status"] == "processing"
    assert isinstance(info.value, TimeoutError)


def test_unexpected_answers_raise(status: tuple[str, StatusApp]) -> None:
    """A status URL answering outside the protocol raises UnexpectedResponse."""
    base, app = status
    app.script("GET", "/_jobs/teapot", Answer(418, {}, {"title": "teapot", "status": 418}))
    with pytest.raises(UnexpectedResponse) as info:
        poll(f"{base}/_jobs/teapot", headers=TOKEN, sleep=Sleeps())
    assert info.value.problem["title"] == "teapot"
    app.script("GET", "/_jobs/noloc", Answer(303, {}, {"status": "completed"}))
    with pytest.raises(UnexpectedResponse):
        poll(f"{base}/_jobs/noloc", headers=TOKEN, sleep=Sleeps())


def test_a_202_without_location_is_refused() -> None:
    """poll() needs the 202's Location to know where to look."""
    response = httpx.Response(202, request=httpx.Request("POST", "http://x.test/"))
    with pytest.raises(UnexpectedResponse):
        poll(response)


# -- credentials and origins (pure logic) ----------------------------------------------


def test_credentials_do_not_follow_the_result_to_another_origin() -> None:
    """A 303 to another host gets the result without Authorization or auth."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "api.test":
            return httpx.Response(
                303,
                headers={"location": "https://cdn.test/report/1"},
                json={"status": "completed"},
            )
        return httpx.Response(200, text="report")

    transport = httpx.MockTransport(handler)
    with httpx.Client(transport=transport) as client:
        result = poll("https://api.test/_jobs/t", client=client, headers={**TOKEN, "x-trace": "1"})
    with httpx.Client(transport=transport, auth=("u", "p")) as client:
        poll("https://api.test/_jobs/t", client=client)
    assert result.text == "report"
    status_req, result_req, basic_status_req, basic_result_req = seen
    assert status_req.headers["authorization"] == TOKEN["Authorization"]
    assert "authorization" not in result_req.headers
    assert result_req.headers["x-trace"] == "1"
    assert basic_status_req.headers["authorization"].startswith("Basic ")
    assert "authorization" not in basic_result_req.headers


def test_completed_status_with_a_result_link_fetches_it() -> None:
    """A 200 'completed' with links.result (no 303) still ends at the result."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/_jobs/t":
            return httpx.Response(
                200, json={"status": "completed", "links": {"result": "/_jobs/t/result"}}
            )
        return httpx.Response(200, text="done")

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        assert poll("http://api.test/_jobs/t", client=client).text == "done"


def test_parse_retry_after_reads_both_forms() -> None:
    """Delta-seconds and HTTP dates are understood; junk and absence give None."""
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 0 ", now) == 0.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now) == 30.0
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now) == 0.0
    assert parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now) == 0.0
    for junk in (None, "", "soon", "-5", "1.5"):
        assert parse_retry_after(junk, now) is None


def test_poll_refuses_bad_arguments() -> None:
    """Non-http URLs and nonsense limits fail before any request."""
    with pytest.raises(ValueError):
        poll("ftp://x.test/_jobs/t")
    with pytest.raises(ValueError):
        poll("http://x.test/_jobs/t", max_interval=0)
    with pytest.raises(ValueError):
        poll("http://x.test/_jobs/t", timeout=-1)


def test_missing_httpx_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without httpx the client says which extra to install."""
    monkeypatch.setitem(sys.modules, "httpx", None)
    with pytest.raises(MissingDependencyError, match=r"async-accept\[client\]"):
        poll("http://127.0.0.1:1/_jobs/t")


# -- cancel -----------------------------------------------------------------------------


def test_cancel_sends_delete_and_returns_the_answer(
    status: tuple[str, StatusApp], http: httpx.Client
) -> None:
    """cancel() DELETEs the status URL; 200, 202 and 409 come back, 404/410 raise."""
    base, app = status
    app.script("DELETE", "/_jobs/q", Answer(200, {}, {"id": "q", "status": "canceled"}))
    app.script(
        "DELETE", "/_jobs/p", Answer(202, {}, {"status": "processing", "cancel_requested": True})
    )
    app.script("DELETE", "/_jobs/f", Answer(409, {}, {"title": "Conflict", "status": 409}))
    app.script("DELETE", "/_jobs/g", Answer(410, {}, {"title": "Gone", "status": 410}))
    assert cancel(f"{base}/_jobs/q", headers=TOKEN).json()["status"] == "canceled"
    assert cancel(f"{base}/_jobs/p", client=http, headers=TOKEN).status_code == 202
    assert cancel(f"{base}/_jobs/f", headers=TOKEN).status_code == 409
    with pytest.raises(JobExpired):
        cancel(f"{base}/_jobs/g", headers=TOKEN)
    with pytest.raises(JobNotFound):
        cancel(f"{base}/_jobs/unknown", headers=TOKEN)
    assert [s.method for s in app.seen] == ["DELETE"] * 5


def test_cancel_accepts_the_202(status: tuple[str, StatusApp], http: httpx.Client) -> None:
    """cancel() takes the 202 itself and reuses its credentials."""
    base, app = status
    app.script("DELETE", "/_jobs/c2", Answer(200, {}, {"id": "c2", "status": "canceled"}))
    accepted = http.post(f"{base}/start/c2", headers=TOKEN)
    assert cancel(accepted, client=http).status_code == 200


# -- async -----------------------------------------------------------------------------


def test_apoll_follows_the_same_flow(status: tuple[str, StatusApp]) -> None:
    """apoll() does what poll() does, over an AsyncClient."""
    base, app = status
    app.script("GET", "/_jobs/as", running("as", "DATE+3600"), done("as"))
    sleeps = Sleeps()
    progress: list[str] = []

    async def main() -> httpx.Response:
        async with httpx.AsyncClient() as client:
            accepted = await client.post(f"{base}/start/as", headers=TOKEN)
            return await apoll(
                accepted,
                client=client,
                max_interval=5,
                on_progress=lambda s: progress.append(s["status"]),
                sleep=sleeps.asleep,
                wait=None,  # plain polling
            )

    result = asyncio.run(main())
    assert result.text == "result of as"
    assert sleeps.waits == [1.0, 5.0]
    assert progress == ["processing", "completed"]


def test_apoll_raises_the_same_errors(status: tuple[str, StatusApp]) -> None:
    """apoll() raises JobFailed with the problem, and PollTimeout, like poll()."""
    base, app = status
    app.script(
        "GET", "/_jobs/abad", Answer(200, {}, {"id": "abad", "status": "failed", "error": PROBLEM})
    )
    app.script("GET", "/_jobs/aslow", running("aslow", "1"))

    async def main() -> None:
        with pytest.raises(JobFailed) as info:
            await apoll(f"{base}/_jobs/abad", headers=TOKEN)
        assert info.value.problem == PROBLEM
        with pytest.raises(PollTimeout):
            await apoll(f"{base}/_jobs/aslow", headers=TOKEN, timeout=0.2)

    asyncio.run(main())


def test_acancel_sends_delete(status: tuple[str, StatusApp]) -> None:
    """acancel() DELETEs the status URL and maps 404 to JobNotFound."""
    base, app = status
    app.script("DELETE", "/_jobs/ac", Answer(200, {}, {"id": "ac", "status": "canceled"}))

    async def main() -> None:
        response = await acancel(f"{base}/_jobs/ac", headers=TOKEN)
        assert response.json()["status"] == "canceled"
        async with httpx.AsyncClient() as client:
            with pytest.raises(JobNotFound):
                await acancel(f"{base}/_jobs/none", client=client, headers=TOKEN)

    asyncio.run(main())
