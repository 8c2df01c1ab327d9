"""``GET {prefix}/``: a caller's own jobs (PROTOCOL.md section 12), on every front
door and store of the contract: the owner rule of the status URL, newest first,
filters, cursor pagination with ``Link: rel="next"``, never cached."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import ALICE, BOB, Deployment

LIST = "/_jobs/"


def ids(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return [item["id"] for item in r.json()["jobs"]]


def next_link(r: httpx.Response) -> str | None:
    m = re.search(r'<([^>]+)>;\s*rel="next"', r.headers.get("link", ""))
    return m.group(1) if m else None


def accept(dep: Deployment, path: str = "/create", headers: dict[str, str] = ALICE) -> str:
    r = dep.post(path, headers=headers)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def test_a_caller_lists_its_own_jobs_newest_first(dep: Deployment) -> None:
    """Alice sees her jobs, newest first, as status JSON with status URLs; not Bob's."""
    mine = [accept(dep) for _ in range(3)]
    theirs = accept(dep, headers=BOB)
    r = dep.get(LIST)
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["content-type"] == "application/json"
    assert ids(r) == list(reversed(mine))
    assert theirs not in ids(r)
    first = r.json()["jobs"][0]
    assert first["links"]["self"].startswith("/_jobs/")
    status = dep.get(first["links"]["self"])
    assert status.status_code in (200, 303) and status.json()["id"] == first["id"]
    assert ids(dep.get(LIST, headers=BOB)) == [theirs]


def test_an_anonymous_caller_sees_no_jobs(dep: Deployment) -> None:
    """Without credentials the list is empty, even when anonymous jobs exist."""
    accept(dep, headers={})
    accept(dep)
    r = dep.client.get(LIST)
    assert ids(r) == []
    assert r.headers["cache-control"] == "no-store"


def test_the_list_filters_by_status_and_route(dep: Deployment) -> None:
    """status= and route= narrow the list to matching jobs."""
    created = accept(dep, "/create")
    failed = accept(dep, "/fail")
    dep.finished(dep.get(LIST).json()["jobs"][0]["links"]["self"])
    dep.finished(dep.get(LIST).json()["jobs"][1]["links"]["self"])
    assert ids(dep.get(LIST + "?status=failed")) == [failed]
    assert ids(dep.get(LIST + "?status=completed")) == [created]
    assert ids(dep.get(LIST + "?route=" + quote("POST /create"))) == [created]
    assert ids(dep.get(LIST + "?status=queued")) == []
    assert dep.get(LIST + "?status=sleeping").status_code == 400


def test_the_list_filters_by_creation_time(dep: Deployment) -> None:
    """created_after= / created_before= (RFC 3339, as in the status JSON) bound the list."""
    first = accept(dep)
    dep.clock.advance(10)
    second = accept(dep)
    jobs = {j["id"]: j for j in dep.get(LIST).json()["jobs"]}
    t2 = jobs[second]["created_at"]
    assert ids(dep.get(LIST + "?created_after=" + quote(jobs[first]["created_at"]))) == [second]
    assert ids(dep.get(LIST + "?created_before=" + quote(t2))) == [first]
    assert dep.get(LIST + "?created_after=yesterday").status_code == 400


def test_the_list_pages_with_a_cursor_and_link_next(dep: Deployment) -> None:
    """limit= pages the list; Link rel=next leads through every job once; the last page has none."""
    made = [accept(dep) for _ in range(5)]
    seen: list[str] = []
    url: str | None = LIST + "?limit=2"
    pages = 0
    while url is not None:
        r = dep.get(url)
        page = ids(r)
        assert len(page) <= 2
        seen += page
        url = next_link(r)
        pages += 1
        assert pages <= 4
    assert seen == list(reversed(made))
    assert pages == 3


def test_limit_is_at_most_100(dep: Deployment) -> None:
    """limit must be 1..100; a tampered cursor is a 400, never another owner's page."""
    assert dep.get(LIST + "?limit=101").status_code == 400
    assert dep.get(LIST + "?limit=0").status_code == 400
    assert dep.get(LIST + "?cursor=garbage").status_code == 400
    assert dep.get(LIST + "?limit=100").status_code == 200


def test_the_list_answers_only_get_and_head(dep: Deployment) -> None:
    """POST to the list URL is 405 with Allow."""
    r = dep.post(LIST)
    assert r.status_code == 405
    assert "GET" in r.headers["allow"]


@pytest.fixture
def flask_app() -> Iterator[Any]:
    """A Flask app with a session login, a page that rewrites the session, a marked route."""
    pytest.importorskip("flask")
    from tests.test_owner import _flask_app

    app = _flask_app()
    yield app
    app.extensions["async_accept"].middleware.runtime.shutdown()


def test_a_session_callers_list_survives_a_session_rewrite(flask_app: Any) -> None:
    """Known by a session cookie alone, a caller still lists its jobs after the app rewrote
    the cookie (the owner cookie carries it); another user's browser lists none of them."""
    client = flask_app.test_client()
    client.post("/login/alice")
    accepted = client.post("/work")
    assert accepted.status_code == 202
    job_id = accepted.get_json()["id"]
    before = client.get_cookie("session").value
    client.get("/page")
    assert client.get_cookie("session").value != before  # the cookie really changed
    listed = client.get("/_jobs/")
    assert [j["id"] for j in listed.get_json()["jobs"]] == [job_id]
    bob = flask_app.test_client()
    bob.post("/login/bob")
    assert bob.get("/_jobs/").get_json()["jobs"] == []
