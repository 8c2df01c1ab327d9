"""A long-poll status read (``Prefer: wait``) that sees the job complete answers
its 303 to the handler's own Location with the handler's Set-Cookie, as a plain
status read does."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from async_accept import long_running

SECRET = "test-secret-key-0123456789abcdef"


def _app(store: Any = "memory://") -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import RedirectResponse
    from starlette.routing import Route

    from async_accept.asgi import AsyncAcceptMiddleware

    @long_running
    async def create(request: Request) -> RedirectResponse:
        await asyncio.sleep(0.5)  # still running when the long poll starts
        response = RedirectResponse("/posts", status_code=302)
        response.set_cookie("flash", "created", httponly=True)
        return response

    app = Starlette(routes=[Route("/create", create, methods=["POST"])])
    app.add_middleware(
        AsyncAcceptMiddleware,
        secret_key=SECRET,
        store=store,
        executor="asyncio",
    )
    return app


@pytest.mark.parametrize("wait", [False, True])
def test_303_to_the_handlers_location_carries_its_cookie(wait: bool) -> None:
    """The status read's 303 to the handler's Location brings its Set-Cookie, long poll or not."""
    from starlette.testclient import TestClient

    headers = {"authorization": "Bearer alice"}
    with TestClient(_app(), follow_redirects=False) as client:
        accepted = client.post("/create", headers={**headers, "prefer": "respond-async"})
        assert accepted.status_code == 202
        status_url = accepted.headers["location"]
        if wait:
            r = client.get(status_url, headers={**headers, "prefer": "wait=10"})
        else:
            for _ in range(200):
                r = client.get(status_url, headers=headers)
                if r.status_code == 303:
                    break
                time.sleep(0.02)
        assert r.status_code == 303, r.text
        assert r.headers["location"].endswith("/posts")
        assert r.headers.get_list("set-cookie") == ["flash=created; HttpOnly; Path=/; SameSite=lax"]


def test_a_long_poll_that_sees_the_job_complete_reads_it_once() -> None:
    """The long poll's 303 is built from the record the change feed handed over: the job
    is read for the owner check and once by the feed as the first waiter parks (closing
    the gap between the two), never again after the wake."""
    from starlette.testclient import TestClient

    from async_accept.stores.memory import MemoryStore

    store = MemoryStore()
    reads: list[str] = []
    plain_get = store.get

    def counted_get(job_id: str, now: float) -> Any:
        reads.append(job_id)
        return plain_get(job_id, now)

    store.get = counted_get  # type: ignore[method-assign]
    headers = {"authorization": "Bearer alice"}
    with TestClient(_app(store), follow_redirects=False) as client:
        accepted = client.post("/create", headers={**headers, "prefer": "respond-async"})
        assert accepted.status_code == 202
        reads.clear()
        r = client.get(accepted.headers["location"], headers={**headers, "prefer": "wait=10"})
        assert r.status_code == 303, r.text
        assert r.headers["location"].endswith("/posts")
        assert r.headers.get_list("set-cookie") == ["flash=created; HttpOnly; Path=/; SameSite=lax"]
    assert len(reads) <= 2, f"{len(reads)} reads of the job for one long poll"
