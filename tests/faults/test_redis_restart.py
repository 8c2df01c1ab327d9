"""A Redis restart mid-load: with persistence nothing acknowledged is lost; without,
the loss is answered honestly (404 on the status URL, never a hang or a 500)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.conftest import SIZES, Deployment
from tests.faults.harness import FaultRun, assert_nothing_lost
from tests.faults.redis_server import OwnRedis

pytestmark = pytest.mark.slow


@pytest.fixture(params=[True, False], ids=["appendonly", "no-persistence"])
def own_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path, persistent=request.param)
    try:
        yield server.start()
    finally:
        server.stop()


def restart_mid_load(
    deploy: Deployment, redis: OwnRedis, door: str, n: int
) -> tuple[FaultRun, str]:
    """``n`` 1.5-s jobs on the Redis store; Redis restarted once some run. The run
    and the job route."""
    deploy.store = redis.url
    server, path = deploy.door(door)
    run = deploy.run(server)
    subs = run.submit(path, n, query="sleep=1.5")
    run.wait_for(subs, ("processing",), at_least=min(n, 4), timeout=20)
    redis.restart()
    return run, path


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("door", ["uvicorn", "gunicorn"])
def test_redis_restart_mid_load(deploy: Deployment, own_redis: OwnRedis, door: str, n: int) -> None:
    """appendonly: every job completes once. None: each earlier 202 answers 404, none hangs."""
    run, path = restart_mid_load(deploy, own_redis, door, n)
    if own_redis.persistent:
        report = run.poll_all(timeout=60 + n * 1.0)
        assert report.completed == n, report.summary()
        assert_nothing_lost(report)
        return
    before = run.poll_all(timeout=30 + n * 0.1, gone_is_final=True)
    # The jobs are gone with Redis's memory: each status URL says so (never a 500, no hang).
    assert before.vanished == {404: n}, before.summary()
    assert not before.never_ending and before.completed == 0, before.summary()
    # The same processes, not restarted, take and run new jobs (a pooled connection
    # that died with Redis is replaced and the command sent again; a 503
    # problem+json, which the client retries, is tolerated here while Redis starts).
    after = deploy.run(deploy.servers[-1])
    for _ in range(3 * n + 20):
        sub = after.submit(path, 1, query="sleep=0.05", prefix="after")[0]
        if sub.code != 202:
            assert sub.code == 503 and sub.content_type == "application/problem+json", sub
            time.sleep(0.1)
        if sum(s.code == 202 for s in after.submissions) == n:
            break
    report = after.poll_all(timeout=30 + n * 0.2)
    assert report.completed == report.accepted == n, report.summary()
    assert_nothing_lost(report)


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path, persistent=True)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.mark.parametrize("door", ["uvicorn", "gunicorn"])
def test_first_accept_after_a_redis_restart_is_accepted(
    deploy: Deployment, aof_redis: OwnRedis, door: str
) -> None:
    """While Redis is down an accept answers 503 problem+json (never a 202 for an
    unrecorded job); the first accept once it is back answers 202, though every pooled
    connection died with the old server, and its job completes."""
    deploy.store = aof_redis.url
    server, path = deploy.door(door)
    run = deploy.run(server)
    warm = run.submit(path, 6, query="sleep=0.05", prefix="warm")  # connections pooled
    assert [s.code for s in warm] == [202] * 6
    run.wait_for(warm, ("completed",), at_least=6, timeout=30)
    aof_redis.stop()
    down = run.submit(path, 1, prefix="down")[0]
    assert down.code == 503 and down.content_type == "application/problem+json", down
    aof_redis.start()
    back = run.submit(path, 1, query="sleep=0.05", prefix="back")[0]
    assert back.code == 202, back
    more = run.submit(path, 4, query="sleep=0.05", prefix="more")
    assert [s.code for s in more] == [202] * 4
    report = run.poll_all(timeout=60)
    assert report.completed == report.accepted == 11, report.summary()
    assert report.refused == {"503": 1}, report.summary()
    assert_nothing_lost(report)
