"""A handler that raises SystemExit or KeyboardInterrupt fails its job, nothing else."""

from __future__ import annotations

import pytest

from tests.faults.conftest import SIZES, Deployment
from tests.faults.harness import assert_nothing_lost

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", ["systemexit", "keyboardinterrupt"])
def test_uvicorn_survives_a_handler_that_exits(deploy: Deployment, kind: str, n: int) -> None:
    """A handler raising SystemExit/KeyboardInterrupt fails handler-error; uvicorn lives on."""
    server = deploy.uvicorn()
    run = deploy.run(server)
    exits = run.submit("/exit", 2, query=f"kind={kind}", prefix="exit")
    run.wait_for(exits, ("failed",), at_least=2, timeout=15)
    run.submit("/work", n, query="sleep=0.05")
    report = run.poll_all(timeout=60)
    assert report.failed == {"handler-error": 2}, report.summary()
    assert report.completed == n, report.summary()
    assert_nothing_lost(report, allowed_errors={"handler-error"})
    assert server.proc is not None and server.proc.poll() is None, deploy.log()


@pytest.mark.parametrize("n", SIZES)
def test_thread_pool_survives_handlers_that_exit(deploy: Deployment, n: int) -> None:
    """More SystemExit jobs than max_workers leave the pool whole: later jobs all complete."""
    server = deploy.gunicorn(ASYNC_ACCEPT_EXECUTOR="thread?max_workers=2")
    run = deploy.run(server)
    run.submit("/exit", 3, query="kind=systemexit", prefix="exit")  # FIFO: these run first
    run.submit("/work", n, query="sleep=0.05")
    report = run.poll_all(timeout=30)
    assert report.failed == {"handler-error": 3}, report.summary()
    assert report.completed == n, report.summary()
    assert_nothing_lost(report, allowed_errors={"handler-error"})
