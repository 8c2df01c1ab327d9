"""Transient store errors at accept, claim, heartbeat and progress lose no job.

The store is wrapped (``tests/faults/app.py``, ``FaultyStore``) so that the first
calls of one method raise a ``StoreError``: either before the write ("before") or
after it, the answer lost ("after", as a timeout past the commit does).
"""

from __future__ import annotations

import sqlite3
from typing import Any

import httpx
import pytest

from tests.faults.conftest import SIZES, Deployment
from tests.faults.harness import assert_nothing_lost
from tests.servers import Server

pytestmark = pytest.mark.slow

MODES = ["before", "after"]


def faulty(deploy: Deployment, door: str, fail: str, mode: str, **extra: str) -> Server:
    """A server whose store fails the calls ``fail`` names (``"create:3"``)."""
    env = {"ASYNC_ACCEPT_FAULT_WRAP_STORE": "1", "ASYNC_ACCEPT_FAULT_FAIL": fail, **extra}
    if mode == "after":
        env["ASYNC_ACCEPT_FAULT_FAIL_AFTER"] = "1"
    return deploy.door(door, **env)[0]


def every_job_completes_once(
    deploy: Deployment, door: str, mode: str, fail: str, path: str, query: str, n: int
) -> None:
    """``n`` jobs to ``path`` while the calls ``fail`` names fail: all complete, once."""
    server = faulty(deploy, door, fail, mode)
    run = deploy.run(server)
    run.submit(path, n, query=query)
    report = run.poll_all(timeout=30 + n * 0.5, settle=0.5)
    name, _, count = fail.partition(":")
    assert injected(server) == {name: int(count)}
    assert report.completed == n, report.summary()
    assert_nothing_lost(report)


def injected(server: Server) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(server.base + "/_fault/stats", timeout=5).json()
    return stats["injected"]


def stored_jobs(deploy: Deployment) -> int:
    """How many jobs the SQLite file holds."""
    path = deploy.store.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM jobs").fetchone()[0])


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("door", ["uvicorn", "gunicorn"])
def test_failed_create_answers_503_and_leaves_no_job(
    deploy: Deployment, door: str, mode: str, n: int
) -> None:
    """The first 3 creates fail: 503 problem+json, no job stored or run; the rest complete."""
    server = faulty(deploy, door, "create:3", mode)
    run = deploy.run(server)
    subs = run.submit("/work", n + 3, query="sleep=0.05")
    refused = [s for s in subs if s.code != 202]
    assert [s.code for s in refused] == [503, 503, 503], [s.code for s in subs]
    assert all(s.content_type == "application/problem+json" for s in refused), refused
    # settle: past requeue_after + a sweep, when a stray queued job would be re-dispatched
    report = run.poll_all(timeout=30 + n * 0.2, settle=2.5)
    assert injected(server) == {"create": 3}
    assert report.completed == n, report.summary()
    assert stored_jobs(deploy) == n
    assert_nothing_lost(report)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("door", ["uvicorn", "gunicorn"])
def test_failed_claims_neither_lose_nor_double_run_a_job(
    deploy: Deployment, door: str, mode: str, n: int
) -> None:
    """The first 3 claims fail: those jobs are handed over again; every job completes once."""
    every_job_completes_once(deploy, door, mode, "claim_with_request:3", "/work", "sleep=0.05", n)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("door", ["uvicorn", "gunicorn"])
def test_failed_heartbeats_are_not_a_lost_worker(deploy: Deployment, door: str, n: int) -> None:
    """6 heartbeats fail (~1 s of a 2 s worker_lost_after): running jobs complete, once."""
    path = "/work" if door == "uvicorn" else "/work-sync"
    every_job_completes_once(deploy, door, "before", "heartbeat:6", path, "sleep=1.5", n)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("door", ["uvicorn", "gunicorn"])
def test_failed_progress_writes_lose_no_job(
    deploy: Deployment, door: str, mode: str, n: int
) -> None:
    """The first 3 progress writes fail: every job still completes, once."""
    every_job_completes_once(
        deploy, door, mode, "set_progress:3", "/progress", "count=5&gap=0.1&hold=0.1", n
    )
