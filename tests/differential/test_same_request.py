"""The differential suite: for every framework, a request sent to the app
without the middleware and to the same app with its route marked (hybrid,
and 202 -> poll -> 303 -> result) reaches the handler as the same request and
ends in the same response for the client."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings

from tests.differential.harness import Req, requests
from tests.differential.runner import FRAMEWORKS, WSGI, differences

pytest.importorskip("django")

H = (b"host", b"testserver")
OCTETS = (b"content-type", b"application/octet-stream")

#: the failures the issue names, as explicit examples (they always run first)
KNOWN = {
    "ff-in-path": Req(raw_path=b"/d/a%FFb", headers=(H,), body=(b"x",)),
    "chunked-body": Req(method="PUT", headers=(H, OCTETS), body=(b"abc", b"defg"), chunked=True),
    "addr-without-port": Req(headers=(H,), client=("10.9.8.7", None)),
    "tls-extension": Req(
        headers=(H,), scheme="https", tls={"server_cert": None, "tls_version": 0x0304}
    ),
    "duplicates": Req(
        method="PATCH",
        raw_path=b"/d/x%2Fy/%C3%A9",
        query=b"a=1&a=2&b=%FF",
        headers=(H, (b"x-a", b"1"), (b"x-b", b"2"), (b"x-a", b"3"), (b"cookie", b"session=s")),
    ),
    "mount": Req(method="DELETE", headers=(H, (b"authorization", b"Bearer a")), root_path="/m"),
}

_SETTINGS = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _params() -> list[object]:
    return [pytest.param(name, id=name) for name in FRAMEWORKS]


#: Falcon's ASGI app routes on the whole path: a server's root_path is not a mount there
NO_MOUNTS = frozenset({"falcon-asgi"})


def _applies(framework: str, req: Req) -> bool:
    """A known example that a kind of server (or app) can't take is skipped for it."""
    if req.root_path and framework in NO_MOUNTS:
        return False
    if framework in WSGI:
        return req.tls is None  # WSGI has no tls extension
    return req.client is None or req.client[1] is not None  # ASGI clients carry a port


def _known_params() -> list[object]:
    out: list[object] = []
    for framework in FRAMEWORKS:
        for case, req in KNOWN.items():
            if not _applies(framework, req):
                continue
            out.append(pytest.param(framework, case, id=f"{framework}-{case}"))
    return out


@pytest.mark.parametrize(("framework", "case"), _known_params())
def test_known_failures(framework: str, case: str) -> None:
    """Each failure the issue names: the marked route's handler sees the same request
    and the client gets the same final response as without the middleware."""
    assert differences(framework, KNOWN[case]) == []


@pytest.mark.parametrize("framework", _params())
def test_generated_requests(framework: str) -> None:
    """Generated requests (methods, paths with %FF and %2F, queries, duplicate
    headers, empty/fixed/chunked/multipart bodies, credentials, mounts): the same
    request and the same final response, marked or not."""

    @_SETTINGS
    @given(req=requests(wsgi=framework in WSGI, mounts=framework not in NO_MOUNTS))
    @example(req=KNOWN["duplicates"])
    def check(req: Req) -> None:
        assert differences(framework, req) == []

    check()
