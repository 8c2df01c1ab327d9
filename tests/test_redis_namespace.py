"""Apps sharing one Redis database keep apart by namespace: ``?namespace=`` in the store
URL (or ``namespace=``) puts the store's keys and its webhook outbox under it; a job of
one namespace is unknown in another; bad or conflicting namespaces are refused at start."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from async_accept.errors import ConfigurationError
from async_accept.stores import resolve_store
from async_accept.stores.redis.connection import DEFAULT_NAMESPACE, split_namespace
from tests.services import require_redis, wipe_redis_namespace

SECRET = "namespace-secret-0123456789abcdef"
ALICE = {"authorization": "Bearer alice"}

names = st.from_regex(r"[A-Za-z0-9_.\-]{1,64}", fullmatch=True)
params = st.lists(
    st.tuples(
        st.sampled_from(["db", "socket_timeout", "health_check_interval", "client_name"]),
        st.text(st.characters(codec="ascii", exclude_characters="\x00"), max_size=8),
    ),
    max_size=3,
)


@given(names, params, st.integers(0, 3))
def test_the_urls_namespace_is_taken_out_and_the_rest_kept(
    ns: str, others: list[tuple[str, str]], at: int
) -> None:
    """?namespace=X anywhere in the query: X is the namespace, the other options stay in order."""
    query = list(others)
    query.insert(min(at, len(query)), ("namespace", ns))
    url = "redis://u:pw@127.0.0.1:6379/0?" + urlencode(query)
    rest, chosen = split_namespace(url, None)
    assert chosen == ns
    assert parse_qsl(urlsplit(rest).query, keep_blank_values=True) == others
    assert urlsplit(rest).netloc == "u:pw@127.0.0.1:6379"


def test_no_namespace_anywhere_is_the_default_and_the_url_is_untouched() -> None:
    """Without ?namespace= or namespace=, keys go under async_accept and the URL is as given."""
    url = "redis://127.0.0.1:6379/0?socket_timeout=3"
    assert split_namespace(url, None) == (url, DEFAULT_NAMESPACE)
    assert split_namespace(url, "billing") == (url, "billing")


@pytest.mark.parametrize(
    ("url", "keyword", "says"),
    [
        ("redis://h/0?namespace=a&namespace=b", None, "once"),
        ("redis://h/0?namespace=a", "b", "keep one"),
        ("redis://h/0?namespace=", None, "1-64 letters"),
        ("redis://h/0?namespace=a%20b", None, "1-64 letters"),
        ("redis://h/0?namespace=a:b", None, "1-64 letters"),
        ("redis://h/0", "x" * 65, "1-64 letters"),
    ],
)
def test_bad_or_conflicting_namespaces_are_refused(
    url: str, keyword: str | None, says: str
) -> None:
    """A namespace given twice, two different ones, or one with other characters: a
    ConfigurationError saying what to write."""
    with pytest.raises(ConfigurationError, match=says):
        split_namespace(url, keyword)


def test_the_password_is_not_in_the_error() -> None:
    """The message names the URL with its password hidden."""
    with pytest.raises(ConfigurationError) as err:
        split_namespace("redis://user:hunter2@h/0?namespace=a", "b")
    assert "hunter2" not in str(err.value) and "user:***@h" in str(err.value)


# -- on a real Redis ------------------------------------------------------------------------


@pytest.fixture
def two() -> Iterator[tuple[str, str, str]]:
    """The test Redis URL and two fresh namespaces, wiped after the test."""
    url = require_redis()
    a, b = ("ns-" + uuid.uuid4().hex[:12] for _ in range(2))
    yield url, a, b
    for ns in (a, b):
        wipe_redis_namespace(url, ns)


def _app(store_url: str) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from async_accept import long_running
    from async_accept.asgi import AsyncAcceptMiddleware

    @long_running
    async def report(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/report", report, methods=["POST"])])
    app.add_middleware(
        AsyncAcceptMiddleware, secret_key=SECRET, store=store_url, executor="asyncio"
    )
    return app


def test_a_store_url_namespace_puts_the_keys_under_it(two: tuple[str, str, str]) -> None:
    """resolve_store('redis://...?namespace=a'): the client connects with the option taken
    out, and a job written through the store lands under a."""
    import redis

    from tests.test_store_redis import REQUEST, make_job

    url, a, _ = two
    store = resolve_store(f"{url}?namespace={a}")
    job = make_job()
    try:
        assert store.namespace == a  # type: ignore[attr-defined]
        created, fresh = store.create(job, REQUEST)
        assert fresh and store.get(job.id, job.created_at) == created
    finally:
        store.close()
    raw = redis.Redis.from_url(url)
    try:
        keys = {k.decode() for k in raw.scan_iter(match=f"*{job.id}*")}
        assert keys and all(k.startswith(f"{a}:") for k in keys), keys
    finally:
        raw.close()


def test_two_apps_on_one_database_never_see_each_others_jobs(two: tuple[str, str, str]) -> None:
    """Two apps, same secret, same Redis db, namespaces a and b: a's job completes in a,
    and its status URL is an unknown job (404) in b; a's keys are all under a."""
    import redis
    from starlette.testclient import TestClient

    url, a, b = two
    with (
        TestClient(_app(f"{url}?namespace={a}")) as app_a,
        TestClient(_app(f"{url}?namespace={b}")) as app_b,
    ):
        r = app_a.post("/report", headers={**ALICE, "prefer": "respond-async"})
        assert r.status_code == 202, r.text
        loc = r.headers["location"]
        for _ in range(200):
            done = app_a.get(loc, headers=ALICE, follow_redirects=False)
            if done.status_code == 303:
                break
        assert done.status_code == 303, done.text
        assert app_b.get(loc, headers=ALICE, follow_redirects=False).status_code == 404
    raw = redis.Redis.from_url(url)
    try:
        assert list(raw.scan_iter(match=f"{a}:*"))
        assert not list(raw.scan_iter(match=f"{b}:j:*"))
    finally:
        raw.close()
