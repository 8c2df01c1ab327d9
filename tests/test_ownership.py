"""A process runs only queued jobs of routes its app marks (ownership.py): its sweep,
start-up recovery included, leaves another app's queued jobs alone and warns once per
route; the deadman still ends them at their deadline; store-as-queue workers never
claim them; jobs taken through ``Prefer: respond-async`` stay with apps that do so."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from async_accept.executors.store import StoreWorker
from async_accept.job import CapturedRequest, Job, JobStatus, new_job_id
from async_accept.stores.sqlite import SQLiteStore

SECRET = "ownership-secret-0123456789abcdef0123"
ALICE = {"authorization": "Bearer alice", "prefer": "respond-async"}


def _until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.05)


def _app(store: str, routes: dict[str, Any] | None, executor: str, **options: Any) -> Any:
    """A Starlette app marking POST /mine with @long_running, and more routes by pattern."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from async_accept import long_running
    from async_accept.asgi import AsyncAcceptMiddleware

    @long_running
    async def mine(request: Request) -> JSONResponse:
        return JSONResponse({"path": request.url.path})

    async def unmarked(request: Request) -> JSONResponse:
        return JSONResponse({"path": request.url.path})

    app = Starlette(
        routes=[
            Route("/mine", mine, methods=["POST"]),
            Route("/theirs", unmarked, methods=["POST"]),
            Route("/plain", unmarked, methods=["POST"]),
        ]
    )
    app.add_middleware(
        AsyncAcceptMiddleware,
        secret_key=SECRET,
        store=store,
        executor=executor,
        routes=routes,
        **options,
    )
    return app


def test_the_sweep_leaves_another_apps_jobs_and_recovers_its_own(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """App A (jobs wait for store workers) accepts jobs of POST /theirs and POST /mine;
    app B on the same file marks only POST /mine (by decorator, found before any request
    reaches B): B's start-up recovery runs A's /mine jobs, never A's /theirs jobs, which
    the deadman ends deadline-exceeded unrun; one warning names the route and the fix."""
    from starlette.testclient import TestClient

    store = f"sqlite:///{tmp_path}/jobs.db"
    a = _app(store, {"POST /theirs": {"sla": 0.5}, "POST /mine": {}}, "store")
    with TestClient(a) as client_a:
        theirs = [client_a.post("/theirs", headers=ALICE) for _ in range(3)]
        mine = [client_a.post("/mine", headers=ALICE) for _ in range(2)]
    assert {r.status_code for r in theirs + mine} == {202}
    caplog.set_level(logging.WARNING, logger="async_accept")
    b = _app(store, None, "asyncio", sweep_interval=0.05, requeue_after=0)
    with TestClient(b) as client_b:

        def status(r: Any) -> dict[str, Any]:
            loc = r.headers["location"]
            got: dict[str, Any] = client_b.get(loc, headers=ALICE, follow_redirects=False).json()
            return got

        _until(lambda: all(status(r)["status"] == "completed" for r in mine))
        _until(lambda: all(status(r)["status"] == "failed" for r in theirs))
        for r in theirs:
            assert status(r)["error"]["type"].endswith("deadline-exceeded")
        time.sleep(0.3)  # a few more sweeps: still one warning
    direct = SQLiteStore(str(tmp_path / "jobs.db"))
    try:
        for job in direct.list_jobs(JobStatus.FAILED):
            assert (job.route, job.attempts, job.started_at) == ("POST /theirs", 0, None)
    finally:
        direct.close()
    warnings = [r.getMessage() for r in caplog.records if "'POST /theirs'" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "?namespace=" in warnings[0] and "store of its own" in warnings[0]


def _job(now: float, route: str) -> Job:
    return Job(
        id=new_job_id(),
        status=JobStatus.QUEUED,
        owner="o",
        created_at=now,
        updated_at=now,
        expires_at=now + 3600,
        deadline_at=now + 600,
        sla=300,
        route=route,
    )


def test_a_store_worker_never_claims_another_apps_jobs(tmp_path: Path) -> None:
    """Ten queued jobs of another app's route ahead of three of this app's: a worker
    (concurrency 2, so it looks at 4 jobs at first) reaches past them, runs its own
    three, and leaves the ten queued, never claimed."""
    store = SQLiteStore(str(tmp_path / "jobs.db"))
    request = CapturedRequest(method="POST", path="/x", headers=[], body=b"")
    now = time.time()
    foreign = [store.create(_job(now, "POST /theirs"), request)[0].id for _ in range(10)]
    own = [store.create(_job(now + 1, "POST /mine"), request)[0].id for _ in range(3)]
    ran: list[str] = []

    def run_job(job_id: str) -> None:
        claimed = store.claim(job_id, "w", time.time())
        if claimed is not None:
            ran.append(job_id)
            store.finish(job_id, "w", time.time(), JobStatus.COMPLETED, None, None)

    worker = StoreWorker(
        run_job,
        store,
        concurrency=2,
        poll_interval=0.02,
        owns=lambda job: job.route == "POST /mine",
    )
    thread = threading.Thread(target=worker.run, args=(5.0,))
    thread.start()
    try:
        _until(lambda: len(ran) == 3)
        time.sleep(0.2)  # more polls: still nothing of theirs
    finally:
        worker.stop()
        thread.join(10)
    try:
        assert sorted(ran) == sorted(own)
        for job_id in foreign:
            job = store.get(job_id, time.time())
            assert job is not None and (job.status, job.attempts) == (JobStatus.QUEUED, 0)
    finally:
        store.close()


def test_prefer_async_jobs_stay_with_apps_that_take_them(tmp_path: Path) -> None:
    """A job taken through Prefer: respond-async on an unmarked route is marked so: an
    app with prefer_async may run it, one without may not; a job of a route only the
    other app marks is never this app's, prefer_async or not."""
    from starlette.testclient import TestClient

    store = f"sqlite:///{tmp_path}/jobs.db"
    taker = _app(store, {"POST /theirs": {}}, "store", prefer_async=True)
    with TestClient(taker) as client:
        by_prefer = client.post("/plain", headers=ALICE)
        by_route = client.post("/theirs", headers=ALICE)
    assert (by_prefer.status_code, by_route.status_code) == (202, 202)
    direct = SQLiteStore(str(tmp_path / "jobs.db"))
    try:
        jobs = {job.route: job for job in direct.list_jobs(JobStatus.QUEUED)}
    finally:
        direct.close()
    assert jobs["POST /plain"].meta.get("prefer") is True
    assert "prefer" not in jobs["POST /theirs"].meta
    other_prefer = _app(store, None, "store", prefer_async=True)
    other_plain = _app(store, None, "store")
    with TestClient(other_prefer), TestClient(other_plain):
        owns_prefer = _door(other_prefer).engine.owns_job
        owns_plain = _door(other_plain).engine.owns_job
        assert owns_prefer(jobs["POST /plain"]) is True
        assert owns_plain(jobs["POST /plain"]) is False
        assert owns_prefer(jobs["POST /theirs"]) is False
        assert owns_plain(jobs["POST /theirs"]) is False


def _door(app: Any) -> Any:
    from async_accept.worker import find_front_door

    return find_front_door(app)
