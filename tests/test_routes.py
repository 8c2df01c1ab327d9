"""Marking routes: the decorator, route patterns and the lookup table."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from async_accept import ConfigurationError, long_running
from async_accept.routes import RouteOptions, RouteTable, marker_of, parse_route, parse_routes

SEGMENT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=10)


def test_decorator_returns_the_function_behind_its_precheck() -> None:
    """@long_running and @long_running(...) return a wrapper that, outside a middleware's
    pre-check, runs the function (same name, signature and sync/async kind), marked;
    ``precheck=False`` returns the function itself, marked."""
    import inspect

    def f(x: int) -> int:
        return x + 1

    async def g() -> str:
        return "g"

    wf = long_running(f)
    assert wf is not f
    assert wf.__wrapped__ is f  # type: ignore[attr-defined]
    # The same signature, its string annotations evaluated in f's module (FastAPI
    # before 0.112 reads them with the wrapper's globals, where they can't resolve).
    assert (wf(1), wf.__name__, inspect.signature(wf)) == (
        2,
        "f",
        inspect.signature(f, eval_str=True),
    )
    assert inspect.signature(wf).parameters["x"].annotation is int
    assert marker_of(wf) == marker_of(f) == RouteOptions(precheck=True)
    wg = long_running(sla=5, wait=1)(g)
    assert asyncio.iscoroutinefunction(wg)
    assert asyncio.run(wg()) == "g"
    assert marker_of(wg) == RouteOptions(sla=5, wait=1, precheck=True)

    def h() -> None: ...

    assert long_running(precheck=False)(h) is h
    assert marker_of(h) == RouteOptions()


def test_decorator_on_classes_and_methods() -> None:
    """Class-based endpoints: the class or a method can carry the mark."""

    @long_running(sla=9)
    class View:
        def post(self) -> None: ...

    class Other:
        @long_running
        def post(self) -> None: ...

    assert marker_of(View) == RouteOptions(sla=9, precheck=True)
    assert marker_of(View.post) == RouteOptions(sla=9, precheck=True)  # wrapped in place
    assert marker_of(Other.post) == RouteOptions(precheck=True)
    assert marker_of(Other().post) == RouteOptions(precheck=True)


def test_decorator_rejects_bad_options() -> None:
    """Bad decorator options raise ConfigurationError at decoration time."""
    with pytest.raises(ConfigurationError, match="sla"):
        long_running(sla=0)
    with pytest.raises(ConfigurationError, match="idempotency"):
        long_running(idempotency="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="wait"):
        long_running(wait=-1)


def test_pattern_parsing() -> None:
    """'METHOD[,METHOD] /path/{param[:conv]}' with * or no method for any."""
    p = parse_route("POST /reports/{id:int}")
    assert p.methods == frozenset({"POST"})
    assert p.matches("POST", "/reports/12")
    assert not p.matches("POST", "/reports/x")
    assert not p.matches("GET", "/reports/12")
    assert parse_route("/x").methods is None
    assert parse_route("* /x").methods is None
    assert parse_route("get,post /y").methods == frozenset({"GET", "POST"})
    assert parse_route("GET /files/{p:path}").matches("GET", "/files/a/b/c")
    assert not parse_route("GET /a/{b}").matches("GET", "/a/b/c")


@pytest.mark.parametrize(
    "spec",
    ["", "POST", "POST reports", "/a/{b", "/a/{b:nope}", "/a/{b}/{b}", "P@ST /a", "POST /a b"],
)
def test_bad_patterns_raise_configuration_error(spec: str) -> None:
    """Malformed patterns are refused at start-up with ConfigurationError."""
    with pytest.raises(ConfigurationError):
        parse_route(spec)


def test_routes_option_forms() -> None:
    """routes= takes a list of patterns or a mapping pattern -> options."""
    assert len(parse_routes(["POST /a", "GET /b"])) == 2
    [p] = parse_routes({"POST /a": {"sla": 3}})
    assert p.options.sla == 3
    with pytest.raises(ConfigurationError):
        parse_routes("POST /a")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        parse_routes({"POST /a": {"nope": 1}})


@given(segments=st.lists(SEGMENT, min_size=1, max_size=5))
def test_literal_patterns_match_exactly_themselves(segments: list[str]) -> None:
    """A literal path matches itself and not a longer or shorter path."""
    path = "/" + "/".join(segments)
    table = RouteTable([parse_route(f"POST {path}", RouteOptions(sla=7))])
    assert table.lookup("POST", path) == RouteOptions(sla=7)
    assert table.lookup("POST", path + "/x") is None
    assert table.lookup("GET", path) is None


@given(prefix=SEGMENT, value=SEGMENT)
def test_param_patterns_match_one_segment(prefix: str, value: str) -> None:
    """{param} matches exactly one non-empty segment."""
    table = RouteTable([parse_route(f"POST /{prefix}/{{v}}")])
    assert table.lookup("POST", f"/{prefix}/{value}") is not None
    assert table.lookup("POST", f"/{prefix}/{value}/more") is None
    assert table.lookup("POST", f"/{prefix}/") is None


@given(n=st.integers(min_value=0, max_value=10**12))
def test_int_convertor(n: int) -> None:
    """{id:int} matches digits only."""
    table = RouteTable([parse_route("GET /r/{id:int}")])
    assert table.lookup("GET", f"/r/{n}") is not None
    assert table.lookup("GET", f"/r/{n}x") is None


def test_first_match_wins_and_exact_beats_regex() -> None:
    """Exact paths are checked before patterns; among patterns the first wins."""
    table = RouteTable(
        [
            parse_route("POST /a/{x}", RouteOptions(sla=1)),
            parse_route("POST /a/b", RouteOptions(sla=2)),
            parse_route("POST /a/{y}", RouteOptions(sla=3)),
        ]
    )
    assert table.lookup("POST", "/a/b") == RouteOptions(sla=2)
    assert table.lookup("POST", "/a/c") == RouteOptions(sla=1)
