"""Transient store errors on the way to a job's end don't throw its outcome away."""

from __future__ import annotations

import httpx
import pytest

from tests.faults.conftest import SIZES, Deployment
from tests.faults.harness import assert_nothing_lost

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("door", ["uvicorn", "gunicorn"])
def test_transient_finish_errors_still_write_the_outcome(
    deploy: Deployment, door: str, n: int
) -> None:
    """The first finish calls fail with a StoreError: every job still ends completed, once."""
    env = {"ASYNC_ACCEPT_FAULT_WRAP_STORE": "1", "ASYNC_ACCEPT_FAULT_FINISH_FAILURES": "3"}
    server = deploy.gunicorn(**env) if door == "gunicorn" else deploy.uvicorn(**env)
    run = deploy.run(server)
    run.submit("/work", n, query="sleep=0.1")
    report = run.poll_all(timeout=30 + n * 0.2)
    stats = httpx.get(server.base + "/_fault/stats", timeout=5).json()
    assert stats["finish_failures_left"] == 0, stats  # the injected failures really happened
    assert report.completed == n, report.summary()
    assert_nothing_lost(report)
