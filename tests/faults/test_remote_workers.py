"""Celery and RQ workers killed (kill -9) or stopped (SIGTERM, a warm shutdown)
mid-job: every job ends once (completed, or worker-lost where the route allows no
retry), none is lost silently, none runs twice unless the route allows retries.

Each scenario runs its own redis-server (store and broker) on a free port.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.conftest import SIZES, Deployment
from tests.faults.harness import FaultRun, assert_nothing_lost
from tests.faults.redis_server import OwnRedis
from tests.test_distributed import WorkerProcess, worker_args

pytestmark = pytest.mark.slow

APP = "tests.faults.app:asgi_app"


class Remote:
    """A web server and a worker of one kind (``celery`` / ``rq``) on a private Redis."""

    def __init__(
        self,
        deploy: Deployment,
        redis: OwnRedis,
        kind: str,
        redispatch_after: float | None = 2.0,
        **env: str,
    ) -> None:
        from async_accept.stores.redis import RedisStore

        self.deploy = deploy
        self.kind = kind
        broker = "redis_url" if kind == "rq" else "broker_url"
        spec = f"{kind}?app={APP}&{broker}={redis.url}&queue=faults"
        if redispatch_after is not None:
            spec += f"&redispatch_after={redispatch_after:g}"
        deploy.store = redis.url
        self.env = deploy.env(ASYNC_ACCEPT_EXECUTOR=spec, ASYNC_ACCEPT_SHUTDOWN_TIMEOUT="1", **env)
        self.store = RedisStore.from_url(redis.url)
        self.workers: list[WorkerProcess] = []

    def worker(self) -> WorkerProcess:
        log = self.deploy.tmp_path / f"worker{len(self.workers)}.log"
        worker = WorkerProcess(APP, self.env, log, *worker_args(self.kind))
        self.workers.append(worker)
        return worker.start(self.store)

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        self.store.close()


@pytest.fixture(params=["celery", "rq"])
def remote(request: pytest.FixtureRequest, deploy: Deployment, tmp_path: Path) -> Iterator[Remote]:
    redis = OwnRedis(tmp_path, persistent=False).start()
    setup = Remote(deploy, redis, request.param)
    try:
        yield setup
    finally:
        setup.close()
        redis.stop()


def stop_mid_job(remote: Remote, path: str, n: int, sig: int) -> FaultRun:
    """A 3-s job running in the worker, ``n`` short ones queued behind it; ``sig`` to the
    worker's process group; a new worker takes over."""
    worker = remote.worker()
    web = remote.deploy.uvicorn(**{k: v for k, v in remote.env.items() if k.startswith("ASYNC")})
    run = remote.deploy.run(web)
    first = run.submit(path, 1, query="sleep=3", prefix="long")
    run.wait_for(first, ("processing",), timeout=20)
    run.submit(path, n, query="sleep=0.1")
    os.killpg(worker.pid, sig)
    assert worker.proc is not None
    worker.proc.wait(30)
    time.sleep(0.2)
    remote.worker()
    return run


@pytest.mark.parametrize("n", SIZES)
def test_worker_killed_mid_job(remote: Remote, n: int) -> None:
    """kill -9 of the worker mid-job: that job fails worker-lost, every other one completes."""
    run = stop_mid_job(remote, "/work", n, signal.SIGKILL)
    report = run.poll_all(timeout=60 + n * 0.5)
    assert report.failed == {"worker-lost": 1}, report.summary()
    assert report.completed == n, report.summary()
    assert_nothing_lost(report, allowed_errors={"worker-lost"})


@pytest.mark.parametrize("n", SIZES)
def test_worker_killed_mid_job_with_retries(remote: Remote, n: int) -> None:
    """kill -9 of the worker on a retries=2 route: the killed job runs again; all complete."""
    run = stop_mid_job(remote, "/work-retry", n, signal.SIGKILL)
    report = run.poll_all(timeout=60 + n * 0.5)
    assert report.completed == n + 1, report.summary()
    assert_nothing_lost(report, retries_allowed=True)


@pytest.mark.parametrize("n", SIZES)
def test_worker_warm_shutdown_mid_job(remote: Remote, n: int) -> None:
    """SIGTERM to the worker mid-job: nothing is worker-lost; every job completes once."""
    run = stop_mid_job(remote, "/work", n, signal.SIGTERM)
    report = run.poll_all(timeout=60 + n * 0.5)
    assert report.completed == n + 1, report.summary()
    assert_nothing_lost(report)


@pytest.fixture(params=["celery", "rq"])
def short_sla(
    request: pytest.FixtureRequest, deploy: Deployment, tmp_path: Path
) -> Iterator[Remote]:
    """Celery or RQ on a private Redis with the default redispatch_after (60 s) and
    routes of sla=30: a job left in a dead worker must not wait for redispatch_after."""
    redis = OwnRedis(tmp_path, persistent=False).start()
    setup = Remote(deploy, redis, request.param, None, ASYNC_ACCEPT_FAULT_SLA="30")
    try:
        yield setup
    finally:
        setup.close()
        redis.stop()


@pytest.mark.parametrize("n", SIZES)
def test_jobs_prefetched_by_a_killed_worker_are_sent_again_within_the_sla(
    short_sla: Remote, n: int
) -> None:
    """kill -9 of a worker holding a running and a prefetched job, another worker idle,
    sla=30, redispatch_after at its default of 60 s: every job completes, none ends
    deadline-exceeded, none runs twice."""
    run = stop_mid_job(short_sla, "/work-retry", n, signal.SIGKILL)
    report = run.poll_all(timeout=120 + n * 0.5)
    assert report.completed == n + 1, report.summary()
    assert not report.failed, report.summary()
    assert not report.executed_more_than_once, report.summary()
    assert_nothing_lost(report, retries_allowed=True)
