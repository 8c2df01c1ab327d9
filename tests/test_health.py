"""GET {prefix}/health (PROTOCOL.md 10): the report, its exposure, the stall rule, the registry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from async_accept.engine import Engine
from async_accept.engine.health import health_report, stall_after
from async_accept.errors import ConfigurationError
from async_accept.job import JobStatus
from async_accept.options import build_options
from async_accept.stores import as_async
from async_accept.stores.base import WORKER_RETENTION
from tests import apps
from tests.conftest import ALICE, BOB, COMBOS, Deployment, deploy

TOKEN = "health-token-0123456789"
NOW = 1_700_000_000.0


@pytest.fixture(params=COMBOS, ids=["-".join(c) for c in COMBOS])
def open_health(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    """Every door x store x executor with health="on"."""
    apps.GATES = apps.Gates()
    door, store, executor = request.param
    with deploy(door, store, executor, tmp_path, health="on") as d:
        yield d


def health(d: Deployment, **headers: str) -> Any:
    return d.client.get("/_jobs/health", headers=headers)


def wait_worker(d: Deployment, timeout: float = 10.0) -> dict[str, Any]:
    """This deployment's own entry in the worker registry, once it has beaten."""
    wid = d.middleware.runtime.worker_id
    deadline = time.monotonic() + timeout
    while True:
        body = health(d, **ALICE).json()
        mine = [w for w in body["workers"] if w["id"] == wid]
        if mine:
            return mine[0]
        assert time.monotonic() < deadline, body
        time.sleep(0.02)


# -- the report ------------------------------------------------------------------------------


def test_health_reports_queue_jobs_and_workers(open_health: Deployment) -> None:
    """The JSON has queue depth, jobs by state, oldest queued age and this process's beat."""
    d = open_health
    done = d.post("/slow").headers["location"]
    d.finished(done)
    d.post("/gate/health-busy")
    assert apps.GATES.entered_event("health-busy").wait(10)
    r = health(d)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["status"] == "ok"
    assert body["queue_depth"] == 0
    assert body["jobs"] == {
        "queued": 0,
        "processing": 1,
        "completed": 1,
        "failed": 0,
        "canceled": 0,
    }
    assert body["oldest_queued_age"] is None
    assert body["stall_after"] == 30.0
    assert body["checked_at"].endswith("Z")
    me = wait_worker(d)
    assert me["role"] == "web" and me["consumes"] is True and me["alive"] is True
    assert me["state"] == "running" and me["executor"] == d.executor_name
    assert me["age"] >= 0 and me["last_heartbeat"].endswith("Z")
    assert isinstance(me["pid"], int) and me["host"]
    apps.GATES.gate("health-busy").set()


def test_heartbeats_keep_coming(make_dep: Any) -> None:
    """The runtime beats every heartbeat_interval (0.2 s here), not once."""
    d = make_dep("wsgi", "sqlite", health="on")
    first = wait_worker(d)["last_heartbeat"]
    deadline = time.monotonic() + 5
    while wait_worker(d)["last_heartbeat"] == first:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_head_and_other_methods(make_dep: Any) -> None:
    """HEAD gets the headers without a body; POST is 405 with Allow."""
    d = make_dep("asgi", "memory", health="on")
    head = d.client.head("/_jobs/health")
    assert head.status_code == 200 and head.content == b""
    post = d.client.post("/_jobs/health")
    assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"


# -- exposure --------------------------------------------------------------------------------


def test_health_stays_off_by_default(make_dep: Any) -> None:
    """Default health="auth" without a health_token: the same 404 as an unknown job."""
    for door in ("asgi", "wsgi"):
        d = make_dep(door, "memory")
        r = health(d, **ALICE)
        unknown = d.get("/_jobs/not-a-token")
        assert r.status_code == 404
        assert r.content == unknown.content
        assert r.headers["content-type"] == "application/problem+json"


def test_health_off_is_404(make_dep: Any) -> None:
    """health="off" answers 404, even with credentials."""
    d = make_dep("wsgi", "memory", health="off")
    assert health(d, **ALICE).status_code == 404


def test_health_auth_wants_the_bearer_token(make_dep: Any) -> None:
    """health="auth" with a token: 401 + WWW-Authenticate unless Authorization: Bearer <token>."""
    for door in ("asgi", "wsgi"):
        d = make_dep(door, "memory", health_token=TOKEN)
        for headers in ({}, ALICE, {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": TOKEN}):
            r = health(d, **headers)
            assert r.status_code == 401, headers
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.headers["content-type"] == "application/problem+json"
        ok = health(d, Authorization=f"Bearer {TOKEN}")
        assert ok.status_code == 200 and ok.json()["status"] == "ok"
        assert health(d, Authorization=f"bearer   {TOKEN}").status_code == 200


def test_health_callable_decides(make_dep: Any) -> None:
    """health=callable(headers): True answers, False is 403."""
    seen: list[dict[str, str]] = []

    def only_alice(headers: Any) -> bool:
        seen.append(dict(headers))
        return bool(headers.get("authorization") == "Bearer alice")

    d = make_dep("wsgi", "memory", health=only_alice)
    assert health(d, **ALICE).status_code == 200
    assert health(d, **BOB).status_code == 403
    assert seen[0]["authorization"] == "Bearer alice"

    def broken(headers: Any) -> bool:
        raise RuntimeError("identity service down")

    d2 = make_dep("asgi", "memory", health=broken)
    assert health(d2, **ALICE).status_code == 403


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"health": "public"}, "health="),
        ({"health_token": "short"}, "16 characters"),
        ({"health": "on", "health_token": TOKEN}, "only used with health='auth'"),
        ({"health_stall_after": 0}, "health_stall_after"),
    ],
)
def test_bad_health_options_fail_at_construction(options: dict[str, Any], message: str) -> None:
    """Each bad health option is a ConfigurationError naming the fix."""
    with pytest.raises(ConfigurationError, match=message):
        build_options(secret_key="k" * 32, **options)


# -- the stall rule -------------------------------------------------------------------------


class ParkingExecutor:
    """An out-of-process executor whose workers never come: jobs stay queued."""

    name = "parking"
    out_of_process = True
    supports = frozenset({"asgi", "wsgi"})

    def start(self, runtime: Any, loop: Any) -> None:
        pass

    def submit(self, job_id: str) -> None:
        pass

    def is_pending(self, job_id: str) -> bool:
        return True

    def shutdown(self, timeout: float) -> None:
        pass


@pytest.mark.parametrize("door", ["wsgi", "asgi"])
def test_unconsumed_queue_is_503_until_a_consumer_beats(door: str, tmp_path: Path) -> None:
    """Old queued work and no live consumer: 503 "stalled"; a consumer's heartbeat makes it 200."""
    with deploy(door, "sqlite", ParkingExecutor(), tmp_path, health="on") as d:
        loc = d.post("/slow").headers["location"]
        young = health(d).json()
        assert young["status"] == "ok" and young["queue_depth"] == 1
        me = wait_worker(d)
        assert me["consumes"] is False  # this web process hands jobs to other processes
        d.clock.advance(40)  # past stall_after (30 s), before the deadline (60 s)
        r = health(d)
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["status"] == "stalled" and body["oldest_queued_age"] >= 40
        assert int(r.headers["retry-after"]) >= 1
        d.store.worker_heartbeat("remote-1", d.clock(), {"role": "worker", "consumes": True})
        ok = health(d)
        assert ok.status_code == 200 and ok.json()["status"] == "ok"
        remote = [w for w in ok.json()["workers"] if w["id"] == "remote-1"]
        assert remote and remote[0]["alive"] and remote[0]["role"] == "worker"
        assert d.get(loc).json()["status"] == "queued"
        d.store.delete(d.get(loc).json()["id"])


def _engine(**options: Any) -> Engine:
    return Engine(build_options(secret_key="k" * 32, **options))


def _counts(queued: int = 0) -> dict[JobStatus, int]:
    counts = dict.fromkeys(JobStatus, 0)
    counts[JobStatus.QUEUED] = queued
    return counts


@pytest.mark.parametrize(
    ("oldest_age", "workers", "stalled"),
    [
        (None, [], False),  # nothing queued: healthy without any worker
        (10.0, [], False),  # queued briefly
        (31.0, [], True),  # queued long, nobody consumes
        (31.0, [{"age": 1.0, "consumes": True}], False),  # a live consumer: busy, not stuck
        (31.0, [{"age": 11.0, "consumes": True}], True),  # its heartbeat is stale
        (31.0, [{"age": 1.0, "consumes": False}], True),  # a web process of a Celery app
        (31.0, [{"age": 1.0, "consumes": True, "state": "stopped"}], True),  # shut down
    ],
)
def test_stall_rule(oldest_age: float | None, workers: list[dict[str, Any]], stalled: bool) -> None:
    """Stalled = oldest queued job older than stall_after and no live consuming worker."""
    engine = _engine()
    entries = [
        {"id": f"w{i}", "last_heartbeat": NOW - w.pop("age"), **w} for i, w in enumerate(workers)
    ]
    oldest = None if oldest_age is None else NOW - oldest_age
    report = health_report(engine, _counts(1 if oldest else 0), oldest, entries, NOW)
    assert report["status"] == ("stalled" if stalled else "ok")


def test_stall_after_default_and_option() -> None:
    """stall_after is max(3 x requeue_after, 30 s) unless health_stall_after says otherwise."""
    assert stall_after(_engine()) == 30.0
    assert stall_after(_engine(requeue_after=20)) == 60.0
    assert stall_after(_engine(health_stall_after=5)) == 5.0


def test_store_without_registry_reports_no_workers() -> None:
    """A custom store without the worker registry still gets a report (workers: null)."""
    report = health_report(_engine(), _counts(), None, None, NOW)
    assert report["workers"] is None and report["status"] == "ok"


# -- the worker registry of every store ----------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "redis"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Each store, fresh."""
    if request.param == "memory":
        from async_accept.stores.memory import MemoryStore

        store: Any = MemoryStore()
    elif request.param == "sqlite":
        from async_accept.stores.sqlite import SQLiteStore

        store = SQLiteStore(str(tmp_path / "w.db"))
    else:
        from async_accept.stores.redis import RedisStore
        from tests.services import require_redis, wipe_redis_namespace

        namespace = f"workers-{time.time_ns()}"
        store = RedisStore.from_url(require_redis(), namespace=namespace)
    try:
        yield store
    finally:
        store.close()
        if request.param == "redis":
            wipe_redis_namespace(require_redis(), namespace)


def test_worker_registry_records_and_forgets(any_store: Any) -> None:
    """Beats replace a worker's entry; listed most recent first; silent ones are forgotten."""
    any_store.worker_heartbeat("a", NOW, {"pid": 1, "role": "web"})
    any_store.worker_heartbeat("b", NOW + 5.25, {"pid": 2, "role": "worker"})
    any_store.worker_heartbeat("a", NOW + 7.5, {"pid": 3, "role": "web"})
    assert any_store.list_workers(NOW + 8) == [
        {"id": "a", "last_heartbeat": NOW + 7.5, "pid": 3, "role": "web"},
        {"id": "b", "last_heartbeat": NOW + 5.25, "pid": 2, "role": "worker"},
    ]
    later = NOW + 5.25 + WORKER_RETENTION + 1
    assert [w["id"] for w in any_store.list_workers(later)] == ["a"]
    assert any_store.list_workers(NOW + 7.5 + WORKER_RETENTION + 1) == []


def test_worker_registry_through_the_async_face(any_store: Any) -> None:
    """The awaitable face of each store has the same registry."""

    async def go() -> list[dict[str, Any]]:
        a = as_async(any_store)
        await a.worker_heartbeat("x", NOW, {"state": "running"})
        return await a.list_workers(NOW)

    assert asyncio.run(go()) == [{"id": "x", "last_heartbeat": NOW, "state": "running"}]
