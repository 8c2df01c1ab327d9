"""kill -9 of a server worker mid-load: its jobs end (worker-lost), nothing else is lost."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.faults.conftest import SIZES, Deployment
from tests.faults.harness import FaultRun, assert_nothing_lost, spawned_workers, wait_until

pytestmark = pytest.mark.slow


def two_workers_one_killed(deploy: Deployment, path: str, n: int) -> FaultRun:
    """Two uvicorn workers on one SQLite file; ``n`` one-second jobs to ``path``;
    kill -9 of one worker once jobs run."""
    server = deploy.uvicorn(workers=2, ASYNC_ACCEPT_EXECUTOR="asyncio?max_concurrency=4")
    assert server.proc is not None
    wait_until(lambda: len(spawned_workers(server.proc.pid)) >= 2, 30, "two uvicorn workers")
    run = deploy.run(server)
    subs = run.submit(path, n, query="sleep=1")
    run.wait_for(subs, ("processing",), at_least=2, timeout=20)
    os.kill(max(spawned_workers(server.proc.pid)), signal.SIGKILL)
    return run


@pytest.mark.parametrize("n", SIZES)
def test_kill9_of_one_uvicorn_worker_loses_no_accepted_job(deploy: Deployment, n: int) -> None:
    """kill -9 of one of two uvicorn workers (SQLite): every 202 ends, no job runs twice."""
    run = two_workers_one_killed(deploy, "/work", n)
    time.sleep(0.2)
    # Load goes on while the survivor (and uvicorn's replacement worker) carry it.
    run.submit("/work", n, query="sleep=0.2", prefix="after")
    report = run.poll_all(timeout=60 + n * 0.5)
    assert report.accepted >= n, report.summary()
    assert_nothing_lost(report, allowed_errors={"worker-lost"})


@pytest.mark.parametrize("n", SIZES)
def test_kill9_with_retries_allowed_completes_every_job(deploy: Deployment, n: int) -> None:
    """On a route with retries=2, the jobs of a killed uvicorn worker run again: all complete."""
    run = two_workers_one_killed(deploy, "/work-retry", n)
    report = run.poll_all(timeout=60 + n * 0.5)
    assert report.completed == n, report.summary()
    assert_nothing_lost(report, retries_allowed=True)
