"""A route's retries after a lost worker need the loss noticed before the job's
deadline: start-up (``routes=[...]``) and the first accept of a decorated route warn
when worker_lost_after + heartbeat_interval + sweep_interval reaches 2 x sla."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from async_accept import long_running
from async_accept.asgi import AsyncAcceptMiddleware
from async_accept.options import build_options
from async_accept.routes import RouteOptions, retry_window_warning

SECRET = "retry-window-secret-0123456789abcdef"
TIMING = {"worker_lost_after": 10, "heartbeat_interval": 2, "sweep_interval": 5}


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "never runs again" in r.getMessage()]


def test_start_up_warns_about_a_route_whose_deadline_comes_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """routes=[...] with retries and 2 x sla below the time to notice a lost worker:
    one warning naming the route, both times and the fix."""
    routes = {"POST /short": {"sla": 5, "retries": 2}, "POST /long": {"sla": 60, "retries": 2}}
    with caplog.at_level(logging.WARNING, logger="async_accept"):
        build_options(secret_key=SECRET, routes=routes, **TIMING)
    got = _warnings(caplog)
    assert len(got) == 1
    assert "routes['POST /short']" in got[0] and "retries=2" in got[0]
    assert "17 s" in got[0] and "10 s" in got[0] and "above 8.5" in got[0]


def test_no_warning_without_retries_or_with_room(caplog: pytest.LogCaptureFixture) -> None:
    """No retries (at-most-once), or a deadline after the loss is noticed: silence."""
    routes = {"POST /a": {"sla": 1}, "POST /b": {"sla": 9, "retries": 1}}
    with caplog.at_level(logging.WARNING, logger="async_accept"):
        build_options(secret_key=SECRET, routes=routes, **TIMING)
    assert _warnings(caplog) == []


@settings(max_examples=300, deadline=None)
@given(
    sla=st.floats(min_value=0.1, max_value=1000),
    retries=st.integers(min_value=0, max_value=5),
    lost=st.floats(min_value=0.2, max_value=100),
    beat=st.floats(min_value=0.1, max_value=0.19),
    sweep=st.one_of(st.none(), st.floats(min_value=0.1, max_value=100)),
)
def test_warning_iff_the_loss_is_noticed_after_the_deadline(
    sla: float, retries: int, lost: float, beat: float, sweep: float | None
) -> None:
    """The warning is given exactly when the route retries and worker_lost_after +
    heartbeat_interval + sweep_interval (0 without a sweeper) >= 2 x sla."""
    route = RouteOptions(sla=sla, retries=retries)
    got = retry_window_warning("r", route, 30.0, lost, beat, sweep)
    late = lost + beat + (sweep or 0.0) >= 2 * sla
    assert (got is not None) == (retries > 0 and late)


def test_a_decorated_route_warns_at_its_first_accept_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """@long_running(sla=..., retries=...) is only known at its first accept: it warns
    then, once, however many jobs follow; a routes=[...] pattern was warned about at
    start-up and is not warned about again."""

    @long_running(sla=2, retries=1)
    async def quick(request: Request) -> Response:
        return Response("ok")

    async def plain(request: Request) -> Response:
        return Response("ok")

    app = Starlette(
        routes=[
            Route("/quick", quick, methods=["POST"]),
            Route("/pattern", plain, methods=["POST"]),
        ],
        middleware=[
            Middleware(
                AsyncAcceptMiddleware,
                secret_key=SECRET,
                store="memory://",
                routes={"POST /pattern": {"sla": 2, "retries": 1}},
                **TIMING,
            )
        ],
    )
    headers: dict[str, Any] = {"authorization": "Bearer alice"}
    with caplog.at_level(logging.WARNING, logger="async_accept"), TestClient(app) as client:
        assert len(_warnings(caplog)) == 1  # the pattern, at start-up
        for _ in range(3):
            assert client.post("/quick", headers=headers).status_code == 202
            assert client.post("/pattern", headers=headers).status_code == 202
    got = _warnings(caplog)
    assert len(got) == 2
    assert "POST /quick has retries=1" in got[1]
