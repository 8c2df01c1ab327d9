"""Problem ``type``s: under the app's ``problem_base``, with Link: rel=describedby,
and every name the middleware uses listed in the README."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from async_accept.errors import ConfigurationError
from async_accept.options import build_options
from tests.pysource import parse

ROOT = Path(__file__).resolve().parent.parent
BASE = "https://docs.example.com/problems/"
#: the functions that take a problem's name, and that name's position
NAME_ARG = {"problem_response": 1, "problem_dict": 1, "unavailable": 0}


def problem_names() -> set[str]:
    """Every literal problem name passed to the problem helpers in async_accept/."""
    names: set[str] = set()
    for path in (ROOT / "async_accept").rglob("*.py"):
        for node in ast.walk(parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            fn = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            pos = NAME_ARG.get(fn or "")
            if pos is not None and len(node.args) > pos:
                arg = node.args[pos]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    names.add(arg.value)
    return names


def test_readme_lists_every_problem_name() -> None:
    """Each problem name used in async_accept/ has its line in the README's list."""
    names = problem_names()
    assert len(names) > 15  # the scan found the helpers' calls
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^- `([a-z-]+)`: \S", readme, re.MULTILINE))
    assert names <= listed, sorted(names - listed)


@pytest.mark.parametrize("door", ["asgi", "wsgi"])
def test_problem_base_puts_types_under_docs_with_link(
    door: str, make_dep: Callable[..., Any]
) -> None:
    """With problem_base set, a problem answer's type is <base><name> and Link points to it."""
    d = make_dep(door, problem_base=BASE)
    r = d.get("/_jobs/not-a-token")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == BASE + "not-found"
    assert r.headers["link"] == f'<{BASE}not-found>; rel="describedby"'


def test_default_problem_base_is_the_urn_without_link(make_dep: Callable[..., Any]) -> None:
    """By default a problem's type is urn:async-accept:problem:<name> and no Link is sent."""
    d = make_dep("asgi")
    r = d.get("/_jobs/not-a-token")
    assert r.json()["type"] == "urn:async-accept:problem:not-found"
    assert "link" not in r.headers


@pytest.mark.parametrize(
    "bad", ["http://docs.example.com/p/", "/problems/", "docs.example.com", "https://x/#f", 3]
)
def test_problem_base_must_be_an_absolute_https_url(bad: Any) -> None:
    """problem_base refuses anything but an absolute https URL base, naming the option."""
    with pytest.raises(ConfigurationError, match="problem_base"):
        build_options(secret_key="k" * 32, problem_base=bad)
