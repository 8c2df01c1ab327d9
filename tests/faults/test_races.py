"""A cancel that loses the race to the handler's completion keeps the result."""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import SIZES, Deployment
from tests.faults.harness import assert_nothing_lost

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("n", SIZES)
def test_cancel_racing_a_finishing_sync_handler_keeps_completed(deploy: Deployment, n: int) -> None:
    """DELETE while a sync endpoint (in a thread) finishes: a handler that ran ends completed."""
    server = deploy.uvicorn(ASYNC_ACCEPT_EXECUTOR="asyncio?max_concurrency=8")
    run = deploy.run(server)
    for _ in range(max(1, n // 8)):  # rounds of 8, each handler in its own thread
        subs = run.submit("/work-sync", min(n, 8), query="sleep=2")
        run.wait_for(subs, ("processing",), at_least=len(subs), timeout=20)
        time.sleep(0.3)  # every handler is well inside its sleep: none can notice the cancel
        for sub in subs:
            assert run.cancel(sub) == 202  # cancel requested: the job is still running
    report = run.poll_all(timeout=30 + n * 0.2, settle=1.0)
    # Threads can't be interrupted: each handler ran to its end, so each job has a result.
    assert_nothing_lost(report)
    assert report.completed == report.submitted, report.summary()
