"""Liveness doesn't depend on the handler; progress writes are coalesced."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.faults.conftest import SIZES, Deployment
from tests.faults.harness import assert_nothing_lost

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("n", [pytest.param(1, id="short")])
def test_a_handler_blocking_the_loop_is_not_worker_lost(deploy: Deployment, n: int) -> None:
    """A handler blocking the loop 3x worker_lost_after (sla=600) completes, not worker-lost."""
    server = deploy.uvicorn(workers=2, ASYNC_ACCEPT_WORKER_LOST_AFTER="1")
    run = deploy.run(server)
    run.submit("/block", n, query="sleep=3")
    report = run.poll_all(timeout=30)
    assert report.completed == n, report.summary()
    assert_nothing_lost(report)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("door", ["uvicorn", "gunicorn"])
def test_progress_writes_are_coalesced(deploy: Deployment, door: str, n: int) -> None:
    """200 reports in ~1 s: at most one write per heartbeat_interval; the last one lands."""
    env = {"ASYNC_ACCEPT_FAULT_WRAP_STORE": "1", "ASYNC_ACCEPT_HEARTBEAT_INTERVAL": "0.5"}
    server = deploy.gunicorn(**env) if door == "gunicorn" else deploy.uvicorn(**env)
    run = deploy.run(server)
    count, gap, hold = 200, 0.005, 1.5
    started = time.monotonic()
    subs = run.submit("/progress", n, query=f"count={count}&gap={gap}&hold={hold}")
    held = run.wait_for(subs[:1], ("processing",), at_least=1, timeout=60)[0]
    # During the hold the last report (step 200 = 90 %) must be visible.
    seen = None
    while True:
        _code, body = run.status(held)
        assert body is not None
        if body["status"] != "processing":
            break
        if body["message"] == f"step {count}":
            seen = body["percent_complete"]
            break
        time.sleep(0.05)
    report = run.poll_all(timeout=30 + n)
    elapsed = time.monotonic() - started
    assert_nothing_lost(report)
    assert seen == 90.0, "the last progress report never reached the store"
    calls = httpx.get(server.base + "/_fault/stats", timeout=5).json()["calls"]
    # One write per job per interval, plus the final one, over the whole run (generous).
    budget = n * (elapsed / 0.5 + 2)
    assert calls.get("set_progress", 0) <= budget, (calls, budget)
