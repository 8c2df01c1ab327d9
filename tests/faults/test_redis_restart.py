"""A Redis restart mid-load: with persistence nothing acknowledged is lost; without,
the loss is answered honestly (404 on the status URL, never a hang or a 500)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.conftest import SIZES, Deployment
from tests.faults.harness import FaultRun, Submission, assert_nothing_lost
from tests.faults.redis_server import OwnRedis

pytestmark = pytest.mark.slow


@pytest.fixture(params=[True, False], ids=["appendonly", "no-persistence"])
def own_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path, persistent=request.param)
    try:
        yield server.start()
    finally:
        server.stop()


def restart_mid_load(deploy: Deployment, redis: OwnRedis, door: str, n: int) -> FaultRun:
    """``n`` 1.5-s jobs on the Redis store; Redis restarted once some run."""
    deploy.store = redis.url
    if door == "gunicorn":
        server = deploy.gunicorn(ASYNC_ACCEPT_EXECUTOR="thread?max_workers=4")
        path = "/work-sync"
    else:
        server = deploy.uvicorn(ASYNC_ACCEPT_EXECUTOR="asyncio?max_concurrency=4")
        path = "/work"
    run = deploy.run(server)
    subs = run.submit(path, n, query="sleep=1.5")
    run.wait_for(subs, ("processing",), at_least=min(n, 4), timeout=20)
    redis.restart()
    return run


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("door", ["uvicorn", "gunicorn"])
def test_redis_restart_mid_load(deploy: Deployment, own_redis: OwnRedis, door: str, n: int) -> None:
    """appendonly: every job completes once. None: each earlier 202 answers 404, none hangs."""
    run = restart_mid_load(deploy, own_redis, door, n)
    path = "/work-sync" if door == "gunicorn" else "/work"
    if own_redis.persistent:
        report = run.poll_all(timeout=60 + n * 1.0)
        assert report.completed == n, report.summary()
        assert_nothing_lost(report)
        return
    before = run.poll_all(timeout=30 + n * 0.1, gone_is_final=True)
    # The jobs are gone with Redis's memory: each status URL says so (never a 500, no hang).
    assert before.vanished == {404: n}, before.summary()
    assert not before.never_ending and before.completed == 0, before.summary()
    # The same processes, not restarted, take and run new jobs (once a pooled
    # connection that died with Redis has been noticed: a 503 problem+json till then).
    after = deploy.run(deploy.servers[-1])
    probe = Submission("", None)
    for i in range(20):
        probe = after.submit(path, 1, query="sleep=0.05", prefix=f"probe{i}")[0]
        if probe.code == 202:
            break
        assert probe.code == 503 and probe.content_type == "application/problem+json", probe
        time.sleep(0.2)
    assert probe.code == 202, "the server never took a job again after the restart"
    after.submit(path, n, query="sleep=0.05", prefix="after")
    report = after.poll_all(timeout=30 + n * 0.2)
    assert report.completed == report.accepted == n + 1, report.summary()
    assert_nothing_lost(report)
