"""Idempotency-Key (PROTOCOL.md 7) on every door x store x executor, and across processes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from async_accept.engine.idempotency import parse_idempotency_key
from async_accept.errors import ExecutorError
from async_accept.job import JobStatus
from tests import apps
from tests.conftest import ALICE, BOB, Deployment
from tests.servers import Server, base_env, gunicorn, uvicorn


def keyed(key: str, **headers: str) -> dict[str, str]:
    return {**ALICE, "Idempotency-Key": key, **headers}


def total_jobs(dep: Deployment) -> int:
    return sum(dep.store.count_by_status().values())


def wait_for_jobs(dep: Deployment, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while total_jobs(dep) < n:
        assert time.monotonic() < deadline, "the job was never recorded"
        time.sleep(0.01)


# -- replays ------------------------------------------------------------------------------


def test_same_key_and_payload_get_the_original_202(dep: Deployment) -> None:
    """A repeat with the same key and payload gets the same job and status URL; one run."""
    first = dep.post("/slow", content=b"order-1", headers=keyed('"order-1"'))
    assert first.status_code == 202, first.text
    done = dep.finished(first.headers["location"])
    assert done.status_code == 303
    again = dep.post("/slow", content=b"order-1", headers=keyed('"order-1"'))
    assert again.status_code == 202, again.text
    assert again.headers["location"] == first.headers["location"]
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["status_url"] == first.headers["location"]
    assert again.json()["status"] == "completed"
    assert apps.GATES.runs["slow"] == 1
    assert total_jobs(dep) == 1


def test_repeat_while_running_gets_the_same_job(dep: Deployment) -> None:
    """A repeat while the job runs (outside a hybrid wait) answers 202 for the same job."""
    first = dep.post("/gate/idem-run", headers=keyed("run-1"))
    assert first.status_code == 202
    assert apps.GATES.entered_event("idem-run").wait(10)
    again = dep.post("/gate/idem-run", headers=keyed("run-1"))
    assert again.status_code == 202
    assert again.headers["location"] == first.headers["location"]
    assert again.json()["status"] == "processing"
    apps.GATES.gate("idem-run").set()
    dep.finished(first.headers["location"])
    assert apps.GATES.runs["idem-run"] == 1


def test_same_key_with_another_body_is_422(dep: Deployment) -> None:
    """The same key with a different body is 422 problem+json and records no job."""
    assert dep.post("/slow", content=b"a", headers=keyed("k-422")).status_code == 202
    r = dep.post("/slow", content=b"b", headers=keyed("k-422"))
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"].endswith("idempotency-key-reused")
    assert total_jobs(dep) == 1


def test_same_key_with_another_content_type_or_query_is_422(make_dep: Any) -> None:
    """Content type and query string are part of the payload: changing either is 422."""
    for door in ("asgi", "wsgi"):
        d = make_dep(door, "memory")
        ok = d.post("/slow?year=2024", content=b"{}", headers=keyed("k", **{"content-type": "a/b"}))
        assert ok.status_code == 202
        other_type = d.post(
            "/slow?year=2024", content=b"{}", headers=keyed("k", **{"content-type": "c/d"})
        )
        assert other_type.status_code == 422
        other_query = d.post(
            "/slow?year=2025", content=b"{}", headers=keyed("k", **{"content-type": "a/b"})
        )
        assert other_query.status_code == 422
        assert total_jobs(d) == 1


def test_repeat_during_a_hybrid_wait_is_409(dep: Deployment) -> None:
    """While the first request still waits for a direct answer, a repeat gets 409 + Retry-After."""
    first: dict[str, httpx.Response] = {}

    def send_first() -> None:
        first["r"] = dep.post("/hybrid?gate=idem409", headers=keyed("wait-1"))

    t = threading.Thread(target=send_first)
    t.start()
    try:
        wait_for_jobs(dep, 1)
        r = dep.post("/hybrid?gate=idem409", headers=keyed("wait-1"))
        assert r.status_code == 409, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"].endswith("request-in-progress")
        assert 1 <= int(r.headers["retry-after"]) <= 5
    finally:
        apps.GATES.gate("idem409").set()
        t.join(15)
    assert first["r"].status_code == 200 and first["r"].text == "fast answer"
    later = dep.post("/hybrid?gate=idem409", headers=keyed("wait-1"))
    assert later.status_code == 202  # the job of the first request, finished
    done = dep.finished(later.headers["location"])
    assert dep.get(done.headers["location"]).text == "fast answer"
    assert total_jobs(dep) == 1


# -- the header itself ------------------------------------------------------------------------


def test_required_key_missing_is_400_problem(dep: Deployment) -> None:
    """A route with idempotency="required" answers 400 problem+json without a key; no job."""
    r = dep.post("/keyed", content=b"x")
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == 400 and body["type"].endswith("idempotency-key-missing")
    assert total_jobs(dep) == 0
    ok = dep.post("/keyed", content=b"x", headers=keyed("present"))
    assert ok.status_code == 202


def test_quoted_and_bare_forms_of_a_key_are_the_same_key(dep: Deployment) -> None:
    """`"abc-1"` (an RFC 8941 string) and the bare token abc-1 name the same key."""
    quoted = dep.post("/slow", content=b"q", headers=keyed('"abc-1"'))
    bare = dep.post("/slow", content=b"q", headers=keyed("abc-1"))
    assert quoted.status_code == bare.status_code == 202
    assert quoted.json()["id"] == bare.json()["id"]
    escaped = dep.post("/slow", content=b"q", headers=keyed('"say \\"hi\\""'))
    assert escaped.status_code == 202 and escaped.json()["id"] != quoted.json()["id"]


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (b'"abc"', "abc"),
        (b"abc", "abc"),
        (b'  "a b"  ', "a b"),
        (b'"a\\"b\\\\c"', 'a"b\\c'),
        (b'"' + b"x" * 255 + b'"', "x" * 255),
        (b"x" * 255, "x" * 255),
        (b'"' + b"x" * 256 + b'"', None),
        (b"x" * 256, None),
        (b'""', None),
        (b"", None),
        (b'"abc', None),
        (b'"a"b"', None),
        (b'"a\\nb"', None),
        (b"a b", None),
        (b"a,b", None),
        (b'"caf\xc3\xa9"', None),
        (b'"tab\there"', None),
    ],
)
def test_parse_idempotency_key(raw: bytes, key: str | None) -> None:
    """Keys are sf-strings or bare tokens of 1 to 255 printable ASCII characters."""
    assert parse_idempotency_key(raw) == key


def test_key_over_255_characters_is_400(dep: Deployment) -> None:
    """A 256-character key is 400 problem+json; 255 characters are fine."""
    r = dep.post("/slow", headers=keyed("k" * 256))
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"].endswith("idempotency-key-invalid")
    assert dep.post("/slow", headers=keyed("k" * 255)).status_code == 202
    assert total_jobs(dep) == 1


def test_malformed_and_repeated_keys_are_400(make_dep: Any) -> None:
    """A key with a space, a non-ASCII one, or two Idempotency-Key headers: 400."""
    for door in ("asgi", "wsgi"):
        d = make_dep(door, "memory")
        assert d.post("/slow", headers=keyed("two words")).status_code == 400
        assert d.post("/slow", headers=keyed('"unterminated')).status_code == 400
        # Two header lines (ASGI keeps both; WSGI servers join them with a comma).
        repeats = [("Idempotency-Key", "one"), ("Idempotency-Key", "two")]
        if door == "wsgi":
            repeats = [("Idempotency-Key", "one, two")]
        twice = d.client.post("/slow", headers=[("Authorization", "Bearer alice"), *repeats])
        assert twice.status_code == 400
        assert total_jobs(d) == 0


def test_ignored_route_does_not_look_at_the_key(make_dep: Any) -> None:
    """idempotency="ignore": the same key twice makes two jobs, a bad key is no error."""
    d = make_dep("wsgi", "memory", routes={"POST /slow": {"idempotency": "ignore"}})
    a = d.post("/slow", headers=keyed("same"))
    b = d.post("/slow", headers=keyed("same"))
    assert a.json()["id"] != b.json()["id"]
    assert d.post("/slow", headers=keyed("not valid")).status_code == 202


# -- scope ------------------------------------------------------------------------------


def test_keys_are_scoped_to_the_owner(dep: Deployment) -> None:
    """Another caller with the same key and payload gets a job of its own."""
    alice = dep.post("/slow", content=b"p", headers=keyed("shared"))
    bob = dep.post("/slow", content=b"p", headers={**BOB, "Idempotency-Key": "shared"})
    assert alice.status_code == bob.status_code == 202
    assert alice.json()["id"] != bob.json()["id"]
    # Neither can read the other's job through the key or the URL.
    assert dep.get(alice.headers["location"], headers=BOB).status_code == 404
    assert total_jobs(dep) == 2


def test_keys_are_scoped_to_method_and_path(dep: Deployment) -> None:
    """The same key on another path is another job (the payload check never mixes them)."""
    slow = dep.post("/slow", headers=keyed("per-path"))
    other = dep.post("/create", headers=keyed("per-path"))
    keyed_route = dep.post("/keyed", headers=keyed("per-path"))
    ids = {r.json()["id"] for r in (slow, other, keyed_route)}
    assert len(ids) == 3
    get = dep.client.get("/report/7", headers=keyed("per-path"))
    assert get.status_code == 202 and get.json()["id"] not in ids


def test_key_lives_as_long_as_its_job(dep: Deployment) -> None:
    """Once the job expired (TTL), the same key and payload make a new job."""
    first = dep.post("/slow", content=b"ttl", headers=keyed("ttl-key"))
    dep.finished(first.headers["location"])
    dep.clock.advance(86400 + 5)
    again = dep.post("/slow", content=b"ttl", headers=keyed("ttl-key"))
    assert again.status_code == 202
    assert again.json()["id"] != first.json()["id"]
    dep.finished(again.headers["location"])
    assert apps.GATES.runs["slow"] == 2


def test_retry_after_executor_refusal_makes_a_new_job(make_dep: Any) -> None:
    """A 503 because the executor refused promised nothing: the retry with the key runs."""
    for door in ("asgi", "wsgi"):
        apps.GATES = apps.Gates()
        d = make_dep(door, "sqlite" if door == "wsgi" else "memory")
        executor = d.middleware.runtime.executor
        real = executor.submit
        calls = {"n": 0}

        def refuse_once(job_id: str, real: Any = real, calls: dict[str, int] = calls) -> None:
            calls["n"] += 1
            if calls["n"] == 1:
                raise ExecutorError("queue full")
            real(job_id)

        executor.submit = refuse_once
        r1 = d.post("/slow", content=b"once", headers=keyed("after-503"))
        assert r1.status_code == 503
        r2 = d.post("/slow", content=b"once", headers=keyed("after-503"))
        assert r2.status_code == 202, r2.text
        assert d.finished(r2.headers["location"]).status_code == 303
        r3 = d.post("/slow", content=b"once", headers=keyed("after-503"))
        assert r3.json()["id"] == r2.json()["id"]
        assert apps.GATES.runs["slow"] == 1
        counts = d.store.count_by_status()
        assert counts[JobStatus.COMPLETED] == 1 and counts[JobStatus.FAILED] == 0


# -- races ------------------------------------------------------------------------------------


def race(n: int, send: Any) -> list[httpx.Response]:
    """Run ``send()`` in ``n`` threads released together; their answers."""
    barrier = threading.Barrier(n)
    out: list[httpx.Response | BaseException] = [RuntimeError("no answer")] * n

    def go(i: int) -> None:
        barrier.wait()
        try:
            out[i] = send()
        except BaseException as exc:
            out[i] = exc

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for item in out:
        if isinstance(item, BaseException):
            raise item
    return out  # type: ignore[return-value]


def test_sixteen_racing_requests_make_one_job(dep: Deployment) -> None:
    """16 identical requests racing from separate threads create exactly one job, run once."""
    answers = race(16, lambda: dep.post("/slow", content=b"race", headers=keyed("race-1")))
    assert [r.status_code for r in answers] == [202] * 16
    assert len({r.json()["id"] for r in answers}) == 1
    assert len({r.headers["location"] for r in answers}) == 1
    dep.finished(answers[0].headers["location"])
    assert total_jobs(dep) == 1
    assert apps.GATES.runs["slow"] == 1


# -- across server processes --------------------------------------------------------------------


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        s.kill()


@pytest.mark.slow
@pytest.mark.parametrize("door", ["uvicorn", "gunicorn"])
def test_racing_requests_across_two_processes_make_one_job(
    door: str, tmp_path: Path, servers: list[Server]
) -> None:
    """16 racing requests to 2 server processes sharing one SQLite file make exactly one job."""
    db = tmp_path / "jobs.db"
    env = base_env(ASYNC_ACCEPT_STORE=f"sqlite:///{db}")
    start = uvicorn if door == "uvicorn" else gunicorn
    app = "tests.e2e_app:asgi_app" if door == "uvicorn" else "tests.e2e_app:wsgi_app"
    server = start(app, env, tmp_path / "server.log", workers=2)
    servers.append(server.start())
    for _ in range(2):  # warm both processes (their runtimes and connections)
        for _ in range(4):
            httpx.get(server.base + "/hello", timeout=5)
    headers = keyed("cross-process-1")

    def send() -> httpx.Response:
        return httpx.post(server.base + "/keyed", content=b"once", headers=headers, timeout=20)

    answers = race(16, send)
    assert [r.status_code for r in answers] == [202] * 16, [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    loc = answers[0].headers["location"]
    deadline = time.monotonic() + 30
    while (r := httpx.get(server.base + loc, headers=ALICE, timeout=5)).status_code != 303:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.05)
    result = httpx.get(server.base + r.headers["location"], headers=ALICE, timeout=5)
    assert result.json()["body"] == "once"
    from async_accept.stores.sqlite import SQLiteStore

    store = SQLiteStore(str(db))
    try:
        counts = store.count_by_status()
    finally:
        store.close()
    assert sum(counts.values()) == 1 and counts[JobStatus.COMPLETED] == 1
    # A different payload under the same key is refused by either process.
    other = httpx.post(server.base + "/keyed", content=b"twice", headers=headers, timeout=5)
    assert other.status_code == 422


def test_a_repeat_handed_a_job_whose_create_answer_was_lost_never_gets_a_404(
    make_dep: Any,
) -> None:
    """A's create is written but its answer lost (503); B, the same request with the
    same key, finds that job before A takes it back: B's 202 ends failed, never run,
    not 404, and the next repeat takes the key over and runs once."""
    from async_accept.errors import StoreError

    for store in ("sqlite", "memory"):
        apps.GATES = apps.Gates()
        d = make_dep("wsgi", store)
        real = d.store.create
        repeats: list[httpx.Response] = []
        calls = [0]

        def repeat(d: Any = d, repeats: list[httpx.Response] = repeats) -> None:
            repeats.append(d.post("/slow", content=b"once", headers=keyed("lost-answer")))

        def lost_answer(
            job: Any, request: Any, real: Any = real, repeat: Any = repeat, calls: list[int] = calls
        ) -> Any:
            out = real(job, request)
            calls[0] += 1
            if calls[0] == 1:
                # The write landed. Before A's accept takes it back, B arrives.
                t = threading.Thread(target=repeat)
                t.start()
                t.join(30)
                raise StoreError("injected: the create was written, its answer lost")
            return out

        d.store.create = lost_answer
        r_a = d.post("/slow", content=b"once", headers=keyed("lost-answer"))
        assert r_a.status_code == 503, r_a.text
        (r_b,) = repeats
        assert r_b.status_code == 202, r_b.text
        end = d.finished(r_b.headers["location"])
        assert end.status_code == 200, end.text
        assert end.json()["status"] == "failed", end.text
        assert end.json()["error"]["type"].endswith("store-unavailable"), end.text
        assert apps.GATES.runs.get("slow", 0) == 0
        r_c = d.post("/slow", content=b"once", headers=keyed("lost-answer"))
        assert r_c.status_code == 202, r_c.text
        assert r_c.json()["id"] != r_b.json()["id"]
        assert d.finished(r_c.headers["location"]).status_code == 303
        assert apps.GATES.runs["slow"] == 1
