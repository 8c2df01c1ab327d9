"""Celery and RQ workers killed (kill -9) or stopped (SIGTERM, a warm shutdown)
mid-job: every job ends once (completed, or worker-lost where the route allows no
retry), none is lost silently, none runs twice unless the route allows retries.

Also: a worker killed while holding a prefetched job on a sla=30 route with the default
redispatch_after (60 s) -- its jobs go to the other worker within the sla; Redis stopped
for 5 s under a working worker -- the same process runs the jobs accepted afterwards;
the RQ loop of ``async-accept worker`` started while Redis is down.

Each scenario runs its own redis-server (store and broker) on a free port; one runs
two (the store down while the broker is up).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.conftest import SIZES, Deployment
from tests.faults.harness import FaultRun, assert_nothing_lost, wait_until
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
        broker: OwnRedis | None = None,
        **env: str,
    ) -> None:
        from async_accept.stores.redis import RedisStore

        self.deploy = deploy
        self.kind = kind
        via = "redis_url" if kind == "rq" else "broker_url"
        spec = f"{kind}?app={APP}&{via}={(broker or redis).url}&queue=faults"
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


@pytest.fixture(params=["celery", "rq"])
def remote_aof(
    request: pytest.FixtureRequest, deploy: Deployment, tmp_path: Path
) -> Iterator[tuple[Remote, OwnRedis]]:
    """Celery or RQ on a private Redis with an append-only file (store and broker)."""
    redis = OwnRedis(tmp_path, persistent=True).start()
    setup = Remote(deploy, redis, request.param)
    try:
        yield setup, redis
    finally:
        setup.close()
        redis.stop()


def test_workers_survive_a_redis_outage(remote_aof: tuple[Remote, OwnRedis]) -> None:
    """Redis down for 5 s under a working worker: the same worker process is still
    running afterwards and runs the jobs accepted once Redis is back, each once."""
    remote, redis = remote_aof
    worker = remote.worker()
    web = remote.deploy.uvicorn(**{k: v for k, v in remote.env.items() if k.startswith("ASYNC")})
    run = remote.deploy.run(web)
    before = run.submit("/work", 2, query="sleep=0.05", prefix="before")
    run.wait_for(before, ("completed",), at_least=2, timeout=30)
    redis.stop()
    time.sleep(5)  # the outage (what is asserted is outcomes, not how long anything took)
    redis.start()
    assert worker.proc is not None and worker.proc.poll() is None, worker.tail()
    after = run.submit("/work", 6, query="sleep=0.05", prefix="after")
    assert [s.code for s in after] == [202] * 6
    report = run.poll_all(timeout=120)
    assert report.completed == report.accepted == 8, report.summary() + worker.tail()
    assert_nothing_lost(report)
    assert worker.proc.poll() is None, worker.tail()  # never restarted: the same process
    ran_by = {line.split()[1] for line in remote.deploy.ledger.read_text().splitlines()}
    assert ran_by == {str(worker.pid)}, ran_by


RQ_LOOP = """
import argparse, logging, sys
from types import SimpleNamespace
import redis
from rq.serializers import JSONSerializer
from async_accept.cli import _rq_worker
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
conn = redis.Redis(port=int(sys.argv[1]), socket_timeout=2, socket_connect_timeout=1)
ex = SimpleNamespace(connection=conn, serializer=JSONSerializer)
sys.exit(_rq_worker(ex, "faults", argparse.Namespace(burst=False, loglevel="info")))
"""


def test_rq_worker_loop_waits_out_an_outage_of_any_length(tmp_path: Path) -> None:
    """The RQ worker loop of async-accept worker, its Redis down from the start: it keeps
    trying (capped backoff), logs the outage once, and runs jobs in the same process as
    soon as Redis answers; SIGTERM then ends it with status 0."""
    import subprocess
    import sys

    import redis as redis_py
    from rq import Queue
    from rq.serializers import JSONSerializer

    from tests.faults.harness import wait_until
    from tests.servers import ROOT, base_env

    server = OwnRedis(tmp_path, persistent=True)  # not started yet: Redis is down
    log = tmp_path / "rq-loop.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", RQ_LOOP, str(server.port)],
            cwd=ROOT,
            env=base_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    client = None
    try:
        wait_until(lambda: "Redis failed" in log.read_text(), 30, "the first failed attempt")
        time.sleep(4)  # several more attempts (0.5, 1, 2 s apart)
        assert proc.poll() is None, log.read_text()
        server.start()
        client = redis_py.Redis(port=server.port)
        job = Queue("faults", connection=client, serializer=JSONSerializer).enqueue("os.getpid")
        wait_until(lambda: job.get_status(refresh=True) == "finished", 60, "the job, run")
        assert job.return_value() == proc.pid  # run by the process that waited
        text = log.read_text()
        assert text.count("Redis failed (") == 1, text  # one line per streak ...
        assert text.count("works again after") == 1, text  # ... and one at its end
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if client is not None:
            client.close()
        server.stop()


def test_a_job_requeued_by_a_warm_shutdown_is_sent_again_within_the_sla(
    short_sla: Remote,
) -> None:
    """SIGTERM to a worker mid-job on a sla=30 route, redispatch_after at its default of
    60 s: the job it hands back and those it prefetched run on the next worker, once each."""
    run = stop_mid_job(short_sla, "/work", 8, signal.SIGTERM)
    report = run.poll_all(timeout=120)
    assert report.completed == 9, report.summary()
    assert_nothing_lost(report)


@pytest.fixture(params=["celery", "rq"])
def split_store(
    request: pytest.FixtureRequest, deploy: Deployment, tmp_path: Path
) -> Iterator[tuple[Remote, OwnRedis]]:
    """Celery or RQ whose store (a private Redis with an append-only file) and broker
    (another private Redis) are two servers; re-sends by the sweepers are off
    (redispatch_after: an hour)."""
    (tmp_path / "store").mkdir()
    (tmp_path / "broker").mkdir()
    store = OwnRedis(tmp_path / "store", persistent=True).start()
    broker = OwnRedis(tmp_path / "broker", persistent=False).start()
    setup = Remote(deploy, store, request.param, redispatch_after=3600, broker=broker)
    try:
        yield setup, store
    finally:
        setup.close()
        broker.stop()
        store.stop()


def test_a_worker_keeps_the_messages_it_takes_while_the_store_is_down(
    split_store: tuple[Remote, OwnRedis],
) -> None:
    """The store down, the broker up: a worker taking messages meanwhile tries each
    claim again until the store is back and runs every job once, in the same process,
    instead of acknowledging the messages and leaving the jobs queued for a sweeper's
    re-send (redispatch_after: an hour here)."""
    remote, store = split_store
    web = remote.deploy.uvicorn(**{k: v for k, v in remote.env.items() if k.startswith("ASYNC")})
    run = remote.deploy.run(web)
    jobs = run.submit("/work", 4, query="sleep=0.05")  # no worker yet: the messages wait
    assert [s.code for s in jobs] == [202] * 4
    store.stop()
    log = remote.deploy.tmp_path / "split-worker.log"
    worker = WorkerProcess(APP, remote.env, log, *worker_args(remote.kind)).launch()
    remote.workers.append(worker)
    wait_until(lambda: "claim of job" in worker.tail(), 60, "a claim the store failed")
    store.start()
    report = run.poll_all(timeout=90)
    assert report.completed == report.accepted == 4, report.summary() + worker.tail()
    assert_nothing_lost(report)
    assert worker.proc is not None and worker.proc.poll() is None, worker.tail()
    ran_by = {line.split()[1] for line in remote.deploy.ledger.read_text().splitlines()}
    assert ran_by == {str(worker.pid)}, ran_by
