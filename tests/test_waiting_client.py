"""The client waits by long-polling (``Prefer: wait``) by default and falls back to
``Retry-After`` when a server doesn't apply the preference."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from async_accept.client import apoll, poll
from tests import apps
from tests.conftest import ALICE, Deployment

STATUS = "http://testserver/_jobs/tok"


def status_json(state: str) -> dict[str, object]:
    links = {"self": "/_jobs/tok"}
    if state == "completed":
        links["result"] = "/_jobs/tok/result"
    return {"id": "j1", "status": state, "links": links}


class FakeServer:
    """A status URL that ends the job on the ``polls_to_end``-th read; it applies
    ``Prefer: wait`` (answering the end at once) only when ``long_polls`` is set."""

    def __init__(self, *, long_polls: bool, polls_to_end: int = 3) -> None:
        self.long_polls = long_polls
        self.polls_to_end = polls_to_end
        self.status_reads: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/result"):
            return httpx.Response(200, text="the result")
        self.status_reads.append(request)
        prefer = request.headers.get("prefer", "")
        ended = len(self.status_reads) >= self.polls_to_end
        if self.long_polls and "wait=" in prefer:
            ended = True  # the server held the request until the job ended
            headers = {"preference-applied": prefer.split(",")[0].strip()}
        else:
            headers = {"retry-after": "2"}
        if ended:
            headers["location"] = "/_jobs/tok/result"
            return httpx.Response(303, headers=headers, json=status_json("completed"))
        return httpx.Response(200, headers=headers, json=status_json("processing"))


def test_poll_sends_prefer_wait_and_does_not_sleep() -> None:
    """poll() asks Prefer: wait on every status read; a server that applies it costs no sleep."""
    server = FakeServer(long_polls=True)
    slept: list[float] = []
    with httpx.Client(transport=httpx.MockTransport(server)) as client:
        r = poll(STATUS, client=client, sleep=slept.append)
    assert r.text == "the result"
    assert slept == []
    assert len(server.status_reads) == 1
    assert server.status_reads[0].headers["prefer"].startswith("wait=")


def test_poll_asks_no_longer_than_its_timeout() -> None:
    """With timeout=5 the wait asked of the server is at most the time left (5 s)."""
    server = FakeServer(long_polls=True)
    with httpx.Client(transport=httpx.MockTransport(server)) as client:
        poll(STATUS, client=client, timeout=5, sleep=lambda s: None)
    asked = server.status_reads[0].headers["prefer"]
    assert 1 <= int(asked.split("=", 1)[1]) <= 5


def test_poll_falls_back_to_retry_after() -> None:
    """A server that ignores Prefer: wait is polled after each Retry-After, as before."""
    server = FakeServer(long_polls=False, polls_to_end=3)
    slept: list[float] = []
    with httpx.Client(transport=httpx.MockTransport(server)) as client:
        r = poll(STATUS, client=client, sleep=slept.append)
    assert r.text == "the result"
    assert slept == [2.0, 2.0]
    assert len(server.status_reads) == 3


def test_apoll_sends_prefer_wait_and_does_not_sleep() -> None:
    """apoll() long-polls by default too."""
    server = FakeServer(long_polls=True)
    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    async def main() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as client:
            return await apoll(STATUS, client=client, sleep=record)

    r = asyncio.run(main())
    assert r.text == "the result"
    assert slept == []
    assert server.status_reads[0].headers["prefer"].startswith("wait=")


def test_apoll_falls_back_to_retry_after() -> None:
    """apoll() honours Retry-After when the server doesn't apply Prefer: wait."""
    server = FakeServer(long_polls=False, polls_to_end=2)
    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    async def main() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as client:
            return await apoll(STATUS, client=client, sleep=record)

    assert asyncio.run(main()).text == "the result"
    assert slept == [2.0]


@pytest.mark.parametrize("door", ["asgi", "wsgi"])
def test_poll_knows_at_once_against_the_middleware(
    door: str, make_dep: Callable[..., Deployment]
) -> None:
    """poll() on a real deployment returns within a second of the job's end, though the
    route's Retry-After (sla=30) says 8 s."""
    dep = make_dep(door, "memory")
    r = dep.post("/gate/k")
    assert r.status_code == 202
    assert int(r.headers["retry-after"]) >= 5
    assert apps.GATES.entered_event("k").wait(10)
    opened: list[float] = []

    def open_later() -> None:
        time.sleep(0.5)
        opened.append(time.monotonic())
        apps.GATES.gate("k").set()

    def no_long_sleep(seconds: float) -> None:
        assert seconds <= 1.0, f"poll() slept {seconds} s instead of long-polling"
        time.sleep(seconds)

    threading.Thread(target=open_later, daemon=True).start()
    result = poll(r, client=dep.client, headers=ALICE, sleep=no_long_sleep, timeout=20)
    assert result.text == "released k"
    assert time.monotonic() - opened[0] < 1.5
