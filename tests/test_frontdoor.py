"""The routing decision every front door shares: FrontDoor.plan."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from async_accept.engine.responses import Response
from async_accept.frontdoor import Accept, FrontDoor, Pass, Serve
from tests.conftest import SECRET


def _app(environ: Any, start_response: Any) -> list[bytes]:  # pragma: no cover - never called
    return []


@pytest.fixture
def door() -> Iterator[FrontDoor]:
    d = FrontDoor(
        _app, "wsgi", {"secret_key": SECRET, "store": "memory://", "routes": ["POST /slow"]}
    )
    d.discover()
    yield d
    d.runtime.shutdown()
    d.store.close()


def test_below_the_prefix_is_served(door: FrontDoor) -> None:
    """A path under the prefix is served, with the rest of the path as subpath."""
    assert door.plan("GET", "/_jobs/abc.def", None) == Serve("/abc.def")
    assert door.plan("GET", "/_jobs", None) == Serve("")


def test_a_marked_route_is_accepted(door: FrontDoor) -> None:
    """A marked method and path is accepted with its route options."""
    plan = door.plan("POST", "/slow", None, "12")
    assert isinstance(plan, Accept)
    assert plan.route is door.routes.lookup("POST", "/slow")


def test_anything_else_passes(door: FrontDoor) -> None:
    """Unmarked methods and paths, and prefix look-alikes, pass on without Vary."""
    assert door.plan("GET", "/slow", None) == Pass(vary_prefer=False)
    assert door.plan("POST", "/_jobsx", None) == Pass(vary_prefer=False)


@pytest.mark.parametrize(("length", "status"), [("abc", 400), ("-1", 400), (str(10**12), 413)])
def test_a_bad_content_length_is_answered(door: FrontDoor, length: str, status: int) -> None:
    """A marked route with an invalid or too large Content-Length is answered at once."""
    plan = door.plan("POST", "/slow", None, length)
    assert isinstance(plan, Response)
    assert plan.status == status


def test_streaming_doors_skip_the_length_check(door: FrontDoor) -> None:
    """Without a Content-Length to check (ASGI), a marked route is accepted."""
    assert isinstance(door.plan("POST", "/slow", None, None), Accept)
