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
    out: list[object] = []
    for name in FRAMEWORKS:
        marks = []
        if name in XFAIL:
            marks.append(pytest.mark.xfail(strict=True, reason=XFAIL[name]))
        out.append(pytest.param(name, id=name, marks=marks))
    return out


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
            reason = KNOWN_XFAIL.get((framework, case))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            out.append(pytest.param(framework, case, id=f"{framework}-{case}", marks=marks))
    return out


_TLS = "issue 11: the ASGI tls extension is dropped from the replayed scope"
_FF = "issue 11: %FF in PATH_INFO replays as U+FFFD (decoded as UTF-8, re-encoded)"
_CHUNKED = "issue 11: a chunked body replays with Transfer-Encoding but no input: 0 bytes"
_ADDR = "issue 11: REMOTE_ADDR is dropped when the server sent no REMOTE_PORT"
_LENGTH = "issue 11: a request without a body replays with CONTENT_LENGTH='0' added"
#: (framework, case) pairs that fail today, and why
KNOWN_XFAIL: dict[tuple[str, str], str] = {
    **{(fw, "tls-extension"): _TLS for fw in ("starlette", "fastapi", "litestar", "quart")},
    ("falcon-asgi", "tls-extension"): _TLS,
    **{(fw, "ff-in-path"): _FF for fw in ("flask", "falcon-wsgi")},
    **{(fw, "chunked-body"): _CHUNKED for fw in ("flask", "falcon-wsgi")},
    **{(fw, "addr-without-port"): _ADDR for fw in ("flask", "falcon-wsgi", "django-wsgi")},
    **{(fw, case): _LENGTH for fw in ("flask", "falcon-wsgi") for case in ("duplicates", "mount")},
}


#: what fails today, framework by framework (each reason names what the handler misses)
XFAIL: dict[str, str] = {
    "flask": f"{_FF}; {_CHUNKED}; {_ADDR}; {_LENGTH}",
    "falcon-wsgi": f"{_FF}; {_CHUNKED}; {_ADDR}; {_LENGTH}",
    "django-wsgi": _ADDR,
}


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
