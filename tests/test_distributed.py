"""Beyond one machine: web processes, a shared Redis store and Celery / RQ workers.

Everything here runs against real services: Redis on 127.0.0.1:6379 (db 15,
a namespace and queue names of its own per test group), ``async-accept worker``
subprocesses, and for the end-to-end tests uvicorn and gunicorn servers.

:class:`ExecutorContract` is the executor contract; ``tests/test_celery.py``
and ``tests/test_rq.py`` run it with a real worker of each kind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import httpx
import pytest

from async_accept.job import CapturedRequest, Job, JobStatus, new_job_id
from async_accept.worker import RemoteExecutor
from tests import apps
from tests.conftest import find_middleware
from tests.servers import ROOT, Server, base_env, gunicorn, uvicorn
from tests.services import free_port, require_redis

ALICE = {"Authorization": "Bearer alice"}
ASYNC = {**ALICE, "Prefer": "respond-async"}
APPS = {"asgi": "tests.e2e_app:asgi_app", "wsgi": "tests.e2e_app:wsgi_app"}
LIFESPAN_APP = "tests.e2e_app:lifespan_app"
#: short lease settings, so that worker-lost is quick to see
TIMING = {
    "ASYNC_ACCEPT_HEARTBEAT_INTERVAL": "0.2",
    "ASYNC_ACCEPT_WORKER_LOST_AFTER": "2",
    "ASYNC_ACCEPT_SWEEP_INTERVAL": "0.3",
    "ASYNC_ACCEPT_REQUEUE_AFTER": "1",
}
WORKER_LOST_AFTER = 2.0


# -- helpers: settings, worker processes, web apps --------------------------------------------


@dataclass
class Setup:
    """One isolated deployment on the shared test Redis: a store namespace and a queue."""

    executor: str  # "rq" or "celery"
    redis_url: str
    ns: str = field(default_factory=lambda: f"dist-{uuid.uuid4().hex[:10]}")
    queue: str = field(default_factory=lambda: f"aa-{uuid.uuid4().hex[:10]}")
    #: Celery's broker when not the store's Redis (RabbitMQ)
    broker_url: str | None = None
    queues: set[str] = field(default_factory=set)

    def spec(self, app_path: str, queue: str | None = None, **extra: Any) -> str:
        """The executor option for a process serving ``app_path``."""
        broker = "redis_url" if self.executor == "rq" else "broker_url"
        queue = queue or self.queue
        self.queues.add(queue)
        query = f"app={app_path}&{broker}={self.broker_url or self.redis_url}&queue={queue}"
        for k, v in extra.items():
            query += f"&{k}={v}"
        return f"{self.executor}?{query}"

    def env(self, app_path: str, queue: str | None = None, **extra: str) -> dict[str, str]:
        names = ("redispatch_after", "batch_size", "jobs_per_message", "flush_interval")
        executor_opts = {k: extra.pop(k) for k in names if k in extra}
        env = {
            "ASYNC_ACCEPT_STORE": self.redis_url,
            "ASYNC_ACCEPT_REDIS_NAMESPACE": self.ns,
            "ASYNC_ACCEPT_EXECUTOR": self.spec(app_path, queue, **executor_opts),
            **TIMING,
        }
        env.update(extra)
        return env

    def store(self) -> Any:
        from async_accept.stores.redis import RedisStore

        return RedisStore.from_url(self.redis_url, namespace=self.ns)

    def wipe(self) -> None:
        """Delete this setup's keys (store namespace, RQ queues and jobs, Celery lists),
        and its queues and exchanges on an AMQP broker."""
        wipe_redis(self.redis_url, self.ns, self.queue)
        if self.broker_url and self.broker_url.startswith("amqp"):
            from kombu import Connection

            with Connection(self.broker_url, connect_timeout=5) as conn:
                channel = conn.default_channel
                for name in self.queues:
                    channel.queue_delete(name)
                    channel.exchange_delete(name)


def wipe_redis(url: str, namespace: str, queue: str | None = None) -> None:
    """Delete a store namespace's keys and, for ``queue`` (and queues named after it),
    the broker's: RQ's queue lists, registries and the jobs they name; Celery's lists."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        doomed = set(client.scan_iter(match=f"{namespace}:*", count=1000))
        if queue:
            rq_jobs: set[bytes] = set()
            for key in client.scan_iter(match=f"*{queue}*", count=1000):
                doomed.add(key)
                kind = client.type(key)
                if key.startswith(b"rq:") and kind == b"list":
                    rq_jobs.update(client.lrange(key, 0, -1))
                elif key.startswith(b"rq:") and kind == b"zset":
                    rq_jobs.update(m.split(b":")[0] for m in client.zrange(key, 0, -1))
            for job_id in rq_jobs:
                name = job_id.decode()
                doomed.update((f"rq:job:{name}".encode(), f"rq:results:{name}".encode()))
                doomed.update(client.scan_iter(match=f"rq:execution*{name}*", count=1000))
            members = [m for m in client.smembers("rq:queues") if queue.encode() in m]
            if members:
                client.srem("rq:queues", *members)
            stale = [
                m for m in client.zrange("_kombu.binding_deadlines", 0, -1) if queue.encode() in m
            ]
            if stale:
                client.zrem("_kombu.binding_deadlines", *stale)
        keys = list(doomed)
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


class WorkerProcess:
    """``python -m async_accept.cli worker`` in its own process group."""

    def __init__(self, app: str | list[str], env: dict[str, str], log: Path, *extra: str) -> None:
        self.argv = [sys.executable, "-m", "async_accept.cli", "worker", "--loglevel", "info"]
        for path in [app] if isinstance(app, str) else app:
            self.argv += ["--app", path]
        self.argv += extra
        self.env = base_env(**env)
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def launch(self) -> WorkerProcess:
        """Start it without waiting for anything (its store may be down)."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def consuming(self) -> bool:
        """Celery or RQ said its queue consumer is ready."""
        return any(s in self.tail() for s in ("ready.", "Listening on"))

    def start(self, store: Any, timeout: float = 30.0) -> WorkerProcess:
        """Start it; wait until the worker registry lists it and its queue consumer is ready."""
        self.launch()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited:\n{self.tail()}")
            workers = store.list_workers(time.time())
            registered = any(
                w.get("pid") == self.pid and w.get("role") == "worker" for w in workers
            )
            # ... and Celery or RQ consume (and handle signals) by now.
            if registered and self.consuming():
                return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"worker did not start:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def stop(self, timeout: float = 15.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """kill -9 the worker (and anything it started)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def worker_args(executor: str) -> tuple[str, ...]:
    # One job at a time, so that "queued behind a busy worker" is deterministic.
    return ("--pool", "threads", "--concurrency", "1") if executor == "celery" else ()


@dataclass
class Web:
    """An in-process web app (ASGI through Starlette's TestClient, or WSGI)."""

    door: str
    client: httpx.Client
    middleware: Any

    @property
    def runtime(self) -> Any:
        return self.middleware.runtime

    @property
    def store(self) -> Any:
        return self.middleware.store

    def accept(self, path: str = "/slow", headers: dict[str, str] | None = None, **kw: Any) -> str:
        r = self.client.post(path, headers=headers or ALICE, **kw)
        assert r.status_code == 202, r.text
        return str(r.headers["location"])

    def status(self, loc: str) -> httpx.Response:
        return self.client.get(loc, headers=ALICE)

    def job(self, loc: str) -> Job:
        job_id = self.runtime.engine.signer.unsign(loc.rsplit("/", 1)[1])
        job = self.store.get(job_id, time.time())
        assert job is not None
        return job  # type: ignore[no-any-return]

    def wait(
        self, loc: str, until: Callable[[httpx.Response], bool], timeout: float = 20.0
    ) -> httpx.Response:
        return wait_for(lambda: self.status(loc), until, timeout)

    def finished(self, loc: str, timeout: float = 20.0) -> httpx.Response:
        return self.wait(loc, is_finished, timeout)


def is_finished(r: httpx.Response) -> bool:
    assert r.status_code in (200, 303), r.text
    return r.status_code == 303 or r.json()["status"] in ("failed", "canceled")


def wait_for(
    get: Callable[[], httpx.Response], until: Callable[[httpx.Response], bool], timeout: float
) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        r = get()
        if until(r):
            return r
        if time.monotonic() > deadline:
            raise AssertionError(f"never reached the condition: {r.status_code} {r.text}")
        time.sleep(0.05)


@contextlib.contextmanager
def web_app(door: str, env: dict[str, str], app: str = "") -> Iterator[Web]:
    """The contract app in this process, configured as ``env`` says (as e2e_app does)."""
    from tests import e2e_app

    opts = e2e_app._options(env)
    if door == "asgi":
        from starlette.testclient import TestClient

        asgi = (
            e2e_app.build_lifespan_app(**opts)
            if app == "lifespan"
            else apps.build_starlette(**opts)
        )
        with TestClient(asgi, follow_redirects=False) as client:
            client.get("/hello")  # builds the middleware stack
            mw = find_middleware(asgi)
            try:
                yield Web(door, client, mw)
            finally:
                apps.GATES.open_all()
        mw.store.close()
    else:
        mw = apps.build_wsgi(**opts)
        transport = httpx.WSGITransport(app=mw)
        with httpx.Client(
            transport=transport, base_url="http://testserver", follow_redirects=False
        ) as client:
            try:
                yield Web(door, client, mw)
            finally:
                mw.runtime.shutdown()
        mw.store.close()


def orphan_job(middleware: Any, body: bytes, age: float = 5.0) -> tuple[Job, str]:
    """A job recorded in the store as an accept would, but never handed to any broker
    (as when the web process dies between the store write and the publish)."""
    engine = middleware.runtime.engine
    request = CapturedRequest(
        "POST", "/slow", headers=[(b"authorization", b"Bearer alice")], body=body
    )
    now = time.time() - age
    job = Job(
        id=new_job_id(),
        status=JobStatus.QUEUED,
        owner=engine.signer.owner_hash(engine.identity_material(request)),
        created_at=now,
        updated_at=now,
        expires_at=now + 3600,
        deadline_at=now + 60,
        sla=30,
        route="POST /slow",
    )
    stored, created = middleware.store.create(job, request)
    assert created
    return stored, engine.status_url("", engine.token_for(stored))


# -- the executor contract -------------------------------------------------------------------


class ExecutorContract:
    """What every out-of-process executor guarantees, with a real worker process.

    Subclasses set ``executor`` and implement :meth:`broker_depth`.
    """

    executor: ClassVar[str]

    def broker_depth(self, remote: Setup, queue: str) -> int:
        raise NotImplementedError

    @classmethod
    def make_setup(cls) -> Setup:
        return Setup(cls.executor, require_redis())

    @pytest.fixture(scope="class")
    @classmethod
    def remote(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
        """A namespace, a queue and one worker consuming it, for the whole class."""
        setup = cls.make_setup()
        log = tmp_path_factory.mktemp(f"{cls.__name__}-worker") / "worker.log"
        # The worker doesn't sweep: recovery in these tests is the web process's doing.
        env = setup.env(APPS["asgi"], ASYNC_ACCEPT_SWEEP_INTERVAL="0")
        store = setup.store()
        paths = [APPS["asgi"], APPS["wsgi"], LIFESPAN_APP]
        worker = WorkerProcess(paths, env, log, *worker_args(cls.executor))
        try:
            worker.start(store)
            setup.worker = worker  # type: ignore[attr-defined]
            yield setup
        finally:
            worker.stop()
            store.close()
            setup.wipe()

    @pytest.fixture(params=["asgi", "wsgi"])
    def web(self, request: pytest.FixtureRequest, remote: Setup) -> Iterator[Web]:
        """The web side, in this process, on each front door."""
        apps.GATES = apps.Gates()
        with web_app(request.param, remote.env(APPS[request.param])) as web:
            yield web

    # -- running -----------------------------------------------------------------------

    def test_job_runs_in_the_worker_and_answers_here(self, web: Web, remote: Setup) -> None:
        """202 at once; the worker process replays the request; status 303 and the result here."""
        t0 = time.monotonic()
        loc = web.accept(content=b"payload", headers={**ALICE, "content-type": "text/plain"})
        assert time.monotonic() - t0 < 1.0
        done = web.finished(loc)
        assert done.status_code == 303
        result = web.client.get(done.headers["location"], headers=ALICE)
        assert result.status_code == 200
        echoed = result.json()
        assert echoed["body"] == "payload" and echoed["in_job"] is True
        assert echoed["authorization"] == "Bearer alice"
        job = web.job(loc)
        assert job.attempts == 1
        assert f":{remote.worker.pid}:" in (job.worker_id or "")  # type: ignore[attr-defined]

    def test_handler_error_fails_the_job(self, web: Web) -> None:
        """A handler raising in the worker makes the job failed with a handler-error problem."""
        body = web.finished(web.accept("/fail")).json()
        assert body["status"] == "failed"
        assert body["error"]["type"].endswith("handler-error")
        assert "secret detail" not in str(body)

    def test_progress_shows_and_cancel_reaches_the_running_job(self, web: Web) -> None:
        """Progress reported in the worker shows here; a cancel makes the handler stop: canceled."""
        loc = web.accept("/progress/remote")
        seen = web.wait(loc, lambda r: r.json().get("percent_complete") == 10.0)
        assert seen.json()["message"] == "started"
        r = web.client.delete(loc, headers=ALICE)
        assert r.status_code == 202
        assert r.json()["cancel_requested"] is True
        t0 = time.monotonic()
        done = web.finished(loc, timeout=10)
        assert done.json()["status"] == "canceled"
        assert time.monotonic() - t0 < 5  # seen within a few heartbeats, not at the handler's end

    def test_job_canceled_while_queued_never_runs(self, web: Web) -> None:
        """A job canceled while it waits behind a busy worker is never claimed or run."""
        blocker = web.accept("/hybrid?delay=1.5", headers=ASYNC)
        web.wait(blocker, lambda r: r.json()["status"] == "processing")
        queued = web.accept(content=b"never")
        assert web.status(queued).json()["status"] == "queued"
        r = web.client.delete(queued, headers=ALICE)
        assert r.status_code == 200 and r.json()["status"] == "canceled"
        assert web.finished(blocker).status_code == 303
        # The worker takes jobs in order: once the probe ran, the canceled job's
        # message has been consumed (and refused by the claim).
        assert web.finished(web.accept(content=b"probe")).status_code == 303
        job = web.job(queued)
        assert job.status is JobStatus.CANCELED
        assert job.attempts == 0 and job.started_at is None

    def test_hybrid_wait_answers_directly_from_the_worker(self, web: Web) -> None:
        """A route with wait= answers with the handler's own response when the worker is quick."""
        r = web.client.post("/hybrid", headers=ALICE)
        assert r.status_code == 200, r.text
        assert r.text == "fast answer" and r.headers["x-handler"] == "hybrid"

    def test_job_handed_over_three_times_runs_once(self, web: Web) -> None:
        """Duplicate broker messages for one job (recovery can send them) run it once."""
        from async_accept.executors import resolve_executor

        loc = web.accept(content=b"once")
        job_id = web.job(loc).id
        # As another process's executor would: past the dispatch marks.
        other = resolve_executor(web.middleware.options.executor, web.door)
        try:
            other._publish([job_id, job_id])
        finally:
            other._close_connections()
        assert web.finished(loc).status_code == 303
        assert web.finished(web.accept(content=b"probe")).status_code == 303
        job = web.job(loc)
        assert job.status is JobStatus.COMPLETED and job.attempts == 1

    # -- recovery ------------------------------------------------------------------------

    def test_job_never_handed_over_is_recovered_by_the_sweeper(self, web: Web) -> None:
        """A job recorded but never published is handed over by a live web process's sweeper."""
        _, loc = orphan_job(web.middleware, b"orphan")
        done = web.finished(loc)
        assert done.status_code == 303
        result = web.client.get(done.headers["location"], headers=ALICE).json()
        assert result["body"] == "orphan"
        assert web.job(loc).attempts == 1

    def test_waiting_jobs_are_not_redispatched_until_redispatch_after(self, remote: Setup) -> None:
        """Sweepers leave jobs waiting in the broker alone; after redispatch_after, one re-send."""
        idle = remote.queue + "-idle"  # nobody consumes it
        env = remote.env(
            APPS["wsgi"],
            queue=idle,
            redispatch_after="1.5",
            ASYNC_ACCEPT_SWEEP_INTERVAL="0.1",
            ASYNC_ACCEPT_REQUEUE_AFTER="0.1",
        )
        with web_app("wsgi", env) as web:
            t0 = time.monotonic()
            for i in range(3):
                web.accept(content=f"w{i}".encode())
            assert web.runtime.executor.flush(5)
            time.sleep(max(0.0, t0 + 1.2 - time.monotonic()))  # ~10 sweeps
            assert self.broker_depth(remote, idle) == 3
            deadline = time.monotonic() + 5
            while self.broker_depth(remote, idle) < 6:
                assert time.monotonic() < deadline, self.broker_depth(remote, idle)
                time.sleep(0.05)
            time.sleep(0.5)
            assert self.broker_depth(remote, idle) == 6

    def test_jobs_per_message_groups_a_round_evenly(self, remote: Setup) -> None:
        """jobs_per_message=4: ten jobs of one round go out as three messages, not ten
        (a lone job to an idle sender goes at once, in a message of its own)."""
        idle = remote.queue + "-grouped"  # nobody consumes it
        env = remote.env(APPS["wsgi"], queue=idle, jobs_per_message="4", flush_interval="0.3")
        with web_app("wsgi", env) as web:
            web.accept(content=b"lone")
            assert web.runtime.executor.flush(5)
            assert self.broker_depth(remote, idle) == 1
            for i in range(10):  # right after a round: a burst forming, batched
                web.accept(content=f"g{i}".encode())
            assert web.runtime.executor.flush(5)
            assert self.broker_depth(remote, idle) == 1 + 3

    def test_grouped_messages_run_every_job_once(self, remote: Setup) -> None:
        """Jobs sent several to a message all run, once each, in the worker."""
        env = remote.env(APPS["wsgi"], jobs_per_message="4", flush_interval="0.3")
        with web_app("wsgi", env) as web:
            locs = [web.accept(content=f"m{i}".encode()) for i in range(10)]
            for i, loc in enumerate(locs):
                done = web.finished(loc)
                assert done.status_code == 303
                result = web.client.get(done.headers["location"], headers=ALICE).json()
                assert result["body"] == f"m{i}"
                assert web.job(loc).attempts == 1

    def test_accept_never_waits_for_an_unreachable_broker(self, remote: Setup) -> None:
        """With the broker down, accepts still answer 202 at once: the store write commits."""
        dead = Setup(self.executor, f"redis://127.0.0.1:{free_port()}/0", ns=remote.ns)
        env = remote.env(APPS["wsgi"])
        env["ASYNC_ACCEPT_EXECUTOR"] = dead.spec(APPS["wsgi"])
        with web_app("wsgi", env) as web:
            # Options are frozen: this test alone shortens the shutdown wait.
            object.__setattr__(web.middleware.options, "shutdown_timeout", 1.0)
            for i in range(5):
                t0 = time.monotonic()
                loc = web.accept(content=f"d{i}".encode())
                assert time.monotonic() - t0 < 0.5
                assert web.status(loc).json()["status"] == "queued"
                assert web.runtime.executor.is_pending(web.job(loc).id)

    # -- workers ---------------------------------------------------------------------------

    def test_worker_is_in_the_registry_as_a_consumer(self, remote: Setup) -> None:
        """A worker process heartbeats in the store's worker registry as a consumer."""
        store = remote.store()
        try:
            pid = remote.worker.pid  # type: ignore[attr-defined]
            entries = [w for w in store.list_workers(time.time()) if w.get("pid") == pid]
            assert entries
            assert all(w["role"] == "worker" and w["consumes"] for w in entries)
            assert {w["executor"] for w in entries} == {self.executor}
        finally:
            store.close()

    def test_asgi_lifespan_runs_once_and_jobs_use_its_loop(self, remote: Setup) -> None:
        """An ASGI app's lifespan runs once in the worker; jobs replay on its event loop."""
        env = remote.env(LIFESPAN_APP)
        with web_app("asgi", env, app="lifespan") as web:
            answers = []
            for _ in range(2):
                loc = web.accept("/uses-lifespan")
                done = web.finished(loc)
                assert done.status_code == 303, done.text
                answers.append(web.client.get(done.headers["location"], headers=ALICE).json())
        pid = remote.worker.pid  # type: ignore[attr-defined]
        assert answers == [{"same_loop": True, "startups": 1, "pid": pid}] * 2

    def test_worker_stops_on_sigterm_and_says_so(self, remote: Setup, tmp_path: Path) -> None:
        """SIGTERM: the worker exits cleanly within seconds and the registry says it stopped."""
        store = remote.store()
        env = remote.env(APPS["asgi"], queue=f"{remote.queue}-term")
        worker = WorkerProcess(
            [APPS["asgi"], APPS["wsgi"]], env, tmp_path / "w.log", *worker_args(self.executor)
        )
        try:
            worker.start(store)
            assert worker.proc is not None
            os.killpg(worker.pid, signal.SIGTERM)
            assert worker.proc.wait(10) == 0, worker.tail()
            mine = [w for w in store.list_workers(time.time()) if w.get("pid") == worker.pid]
            assert len(mine) == 2  # one runtime per application it serves
            assert {w["state"] for w in mine} == {"stopped"}
        finally:
            worker.kill()
            store.close()

    @pytest.mark.parametrize("door", ["asgi", "wsgi"])
    def test_worker_killed_mid_job_fails_it_worker_lost(
        self, door: str, remote: Setup, tmp_path: Path
    ) -> None:
        """kill -9 of the worker running a job: the job turns failed/worker-lost within bound."""
        queue = f"{remote.queue}-kill-{door}"
        env = remote.env(APPS[door], queue=queue)
        store = remote.store()
        worker = WorkerProcess(
            APPS[door], env, tmp_path / "worker.log", *worker_args(self.executor)
        )
        try:
            kill_worker_mid_job(worker, store, door, env)
        finally:
            worker.kill()
            store.close()


def kill_worker_mid_job(worker: WorkerProcess, store: Any, door: str, env: dict[str, str]) -> None:
    """Start ``worker``, kill -9 it while it runs a job accepted by ``door``'s app, and
    check the job turns failed/worker-lost within the bound (the caller stops both)."""
    worker.start(store)
    with web_app(door, env) as web:
        loc = web.accept("/hybrid?delay=30", headers=ASYNC)
        web.wait(loc, lambda r: r.json()["status"] == "processing")
        assert f":{worker.pid}:" in (web.job(loc).worker_id or "")
        worker.kill()
        killed = time.monotonic()
        done = web.finished(loc, timeout=WORKER_LOST_AFTER + 5)
        took = time.monotonic() - killed
    body = done.json()
    assert body["status"] == "failed"
    assert body["error"]["type"].endswith("worker-lost")
    assert took < WORKER_LOST_AFTER + 1.5, took


# -- end to end: two web servers and a worker --------------------------------------------------


@dataclass
class Cluster:
    """uvicorn (ASGI app) and gunicorn (WSGI app) on one store and queue, plus a worker."""

    setup: Setup
    asgi: Server
    wsgi: Server
    worker: WorkerProcess

    def store(self) -> Any:
        return self.setup.store()


def poll(
    base: str, loc: str, until: Callable[[httpx.Response], bool], timeout: float = 20.0
) -> Any:
    return wait_for(lambda: httpx.get(base + loc, headers=ALICE, timeout=5), until, timeout)


@pytest.fixture(scope="module", params=["rq", "celery"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """uvicorn + gunicorn + one worker, for each executor."""
    setup = Setup(request.param, require_redis())
    logs = tmp_path_factory.mktemp(f"cluster-{request.param}")
    store = setup.store()
    asgi = uvicorn(APPS["asgi"], base_env(**setup.env(APPS["asgi"])), logs / "uvicorn.log")
    wsgi = gunicorn(APPS["wsgi"], base_env(**setup.env(APPS["wsgi"])), logs / "gunicorn.log")
    worker = WorkerProcess(
        [APPS["asgi"], APPS["wsgi"]],
        setup.env(APPS["asgi"], ASYNC_ACCEPT_SWEEP_INTERVAL="0"),
        logs / "worker.log",
        *worker_args(request.param),
    )
    try:
        asgi.start()
        wsgi.start()
        worker.start(store)
        yield Cluster(setup, asgi, wsgi, worker)
    finally:
        worker.stop()
        asgi.stop()
        wsgi.stop()
        store.close()
        setup.wipe()


@pytest.mark.slow
def test_job_accepted_by_one_web_process_is_answered_by_the_other(cluster: Cluster) -> None:
    """ASGI-accepted and WSGI-accepted jobs run in the worker; the other server answers them."""
    for accept_on, answer_on in ((cluster.asgi, cluster.wsgi), (cluster.wsgi, cluster.asgi)):
        body = f"from-{accept_on.port}".encode()
        r = httpx.post(accept_on.base + "/slow", content=body, headers=ALICE, timeout=5)
        assert r.status_code == 202, r.text
        loc = r.headers["location"]
        done = poll(answer_on.base, loc, is_finished)
        assert done.status_code == 303, done.text
        result = httpx.get(answer_on.base + done.headers["location"], headers=ALICE, timeout=5)
        assert result.json()["body"] == body.decode()
        assert (
            httpx.get(answer_on.base + loc, headers={"Authorization": "Bearer eve"}).status_code
            == 404
        )
        store = cluster.store()
        try:
            job = store.get(done.json()["id"], time.time())
            assert job.attempts == 1
            assert f":{cluster.worker.pid}:" in job.worker_id
        finally:
            store.close()


@pytest.mark.slow
def test_cancel_across_processes(cluster: Cluster) -> None:
    """Cancel sent to the other server: a queued job never runs, a running one stops canceled."""
    a, b = cluster.asgi.base, cluster.wsgi.base
    running = httpx.post(a + "/progress/x", headers=ALICE, timeout=5).headers["location"]
    poll(a, running, lambda r: r.json()["status"] == "processing")
    queued = httpx.post(a + "/slow", content=b"never", headers=ALICE, timeout=5).headers["location"]
    assert httpx.get(b + queued, headers=ALICE).json()["status"] == "queued"
    r = httpx.delete(b + queued, headers=ALICE)
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    r = httpx.delete(b + running, headers=ALICE)
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    assert poll(a, running, is_finished, timeout=10).json()["status"] == "canceled"
    probe = httpx.post(b + "/slow", content=b"probe", headers=ALICE, timeout=5).headers["location"]
    assert poll(a, probe, is_finished).status_code == 303
    store = cluster.store()
    try:
        job_id = httpx.get(a + queued, headers=ALICE).json()["id"]
        job = store.get(job_id, time.time())
        assert job.status is JobStatus.CANCELED and job.attempts == 0
    finally:
        store.close()


@pytest.mark.slow
def test_job_never_handed_over_is_run_once_via_a_live_web_sweeper(cluster: Cluster) -> None:
    """A job written to the store and never published is handed over by a live web process."""
    from tests import e2e_app

    # The worker doesn't sweep; the web servers do.
    opts = e2e_app._options(cluster.setup.env(APPS["wsgi"]))
    mw = apps.build_wsgi(**opts)  # only for its signer and store: never started
    try:
        job, loc = orphan_job(mw, b"orphan-e2e")
        done = poll(cluster.asgi.base, loc, is_finished)
        assert done.status_code == 303, done.text
        result = httpx.get(cluster.wsgi.base + done.headers["location"], headers=ALICE, timeout=5)
        assert result.json()["body"] == "orphan-e2e"
        time.sleep(1.0)  # a few more sweeps: nothing sends it again
        after = mw.store.get(job.id, time.time())
        assert after.status is JobStatus.COMPLETED and after.attempts == 1
    finally:
        mw.store.close()


# -- Redis going away and coming back ----------------------------------------------------------


class RedisServer:
    """A throwaway redis-server on a free port, with an append-only file in ``folder``."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            require_redis()  # fails in CI, skips elsewhere, with the how-to
            pytest.skip("redis-server is not installed")
        self.binary = str(binary)
        self.port = free_port()
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.mark.slow
def test_redis_down_gives_503_then_service_resumes_without_restart(tmp_path: Path) -> None:
    """Redis down: accept is 503 + Retry-After, no phantom job; back up: it works again."""
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    setup = Setup("rq", redis_server.url, ns="down")
    web = uvicorn(APPS["asgi"], base_env(**setup.env(APPS["asgi"])), tmp_path / "uvicorn.log")
    worker = WorkerProcess(APPS["asgi"], setup.env(APPS["asgi"]), tmp_path / "worker.log")
    store = setup.store()
    try:
        web.start()
        worker.start(store)
        before = httpx.post(web.base + "/slow", content=b"before", headers=ALICE, timeout=10)
        assert before.status_code == 202
        assert poll(web.base, before.headers["location"], is_finished).status_code == 303

        redis_server.stop()
        down = time.monotonic()
        while time.monotonic() - down < 2:  # long enough for every client to notice
            r = httpx.post(web.base + "/slow", content=b"refused", headers=ALICE, timeout=15)
            assert r.status_code == 503, r.text
            assert int(r.headers["retry-after"]) >= 1
            assert r.headers["content-type"] == "application/problem+json"
            time.sleep(0.2)

        redis_server.start()
        deadline = time.monotonic() + 15
        while True:  # the same web process, not restarted
            r = httpx.post(web.base + "/slow", content=b"after", headers=ALICE, timeout=15)
            if r.status_code == 202:
                break
            assert r.status_code == 503 and time.monotonic() < deadline, r.text
            time.sleep(0.2)
        done = poll(web.base, r.headers["location"], is_finished, timeout=30)
        assert done.status_code == 303, worker.tail()
        assert web.proc is not None and web.proc.poll() is None
        assert worker.proc is not None and worker.proc.poll() is None  # nor the worker
        # The requests are gone with their completed jobs: the echoed results say which ran.
        bodies = sorted(
            json.loads(store.get_result(j.id).body)["body"]  # type: ignore[union-attr]
            for j in store.list_jobs(None, 100, None)
        )
        assert bodies == ["after", "before"]  # nothing recorded for the refused accepts
    finally:
        worker.kill()
        web.stop()
        store.close()
        redis_server.stop()


# -- the hand-over, without a broker -------------------------------------------------------------


class Recording(RemoteExecutor):
    """A remote executor whose "broker" is a list; it can fail its first publishes."""

    name = "recording"

    def __init__(self, fail_first: int = 0, **options: Any) -> None:
        super().__init__("tests.e2e_app:wsgi_app", **options)
        self.batches: list[list[str]] = []
        self.fail_first = fail_first

    def _publish(self, job_ids: list[str]) -> None:
        if self.fail_first > 0:
            self.fail_first -= 1
            raise ConnectionError("broker down")
        self.batches.append(list(job_ids))


@contextlib.contextmanager
def recording(fail_first: int = 0, **options: Any) -> Iterator[tuple[Recording, Any]]:
    from async_accept.stores.memory import MemoryStore

    store = MemoryStore()
    runtime = SimpleNamespace(store=store, engine=SimpleNamespace(clock=time.time))
    executor = Recording(fail_first, **options)
    executor.start(runtime, None)  # type: ignore[arg-type]
    try:
        yield executor, store
    finally:
        executor.shutdown(2)


def queued_jobs(store: Any, n: int) -> list[str]:
    now = time.time()
    ids = []
    for _ in range(n):
        job = Job(new_job_id(), JobStatus.QUEUED, "o", now, now, now + 60, now + 60, 30)
        store.create(job, CapturedRequest("POST", "/slow"))
        ids.append(job.id)
    return ids


def test_a_burst_of_accepts_goes_out_in_a_few_batches() -> None:
    """250 submits in a burst are published in batches of at most batch_size, each once."""
    with recording(batch_size=100, flush_interval=0.02) as (executor, store):
        ids = queued_jobs(store, 250)
        t0 = time.monotonic()
        for job_id in ids:
            executor.submit(job_id)
            executor.submit(job_id)  # a repeat while pending is a no-op
        assert time.monotonic() - t0 < 0.5  # submit only appends to a buffer
        assert executor.flush(5)
        sent = [j for batch in executor.batches for j in batch]
        assert sorted(sent) == sorted(ids)
        assert max(map(len, executor.batches)) <= 100 and len(executor.batches) <= 5
        assert not any(executor.is_pending(j) for j in ids)


def test_jobs_dispatched_recently_or_no_longer_queued_are_not_published() -> None:
    """A job dispatched within redispatch_after, canceled or claimed is not sent (again)."""
    with recording(redispatch_after=30) as (executor, store):
        fresh, canceled, claimed = queued_jobs(store, 3)
        store.cancel(canceled, time.time())
        store.claim(claimed, "w", time.time())
        for job_id in (fresh, canceled, claimed):
            executor.submit(job_id)
        assert executor.flush(5)
        executor.submit(fresh)  # as a sweeper would, while the broker still holds it
        assert executor.flush(5)
        assert executor.batches == [[fresh]]


def test_a_failed_publish_is_retried_and_nothing_is_lost() -> None:
    """When the broker refuses, the batch stays buffered and goes out once it is back."""
    with recording(fail_first=2, redispatch_after=30) as (executor, store):
        ids = queued_jobs(store, 5)
        for job_id in ids:
            executor.submit(job_id)
        assert all(executor.is_pending(j) for j in ids)  # the sweeper leaves them alone
        assert executor.flush(5)
        assert [j for b in executor.batches for j in b] == ids


# -- the worker side: finding the application's middleware ---------------------------------------

LAZY_APP: Any = None


def test_worker_finds_the_middleware_of_a_starlette_app_never_called(tmp_path: Path) -> None:
    """load_runtime builds Starlette's lazy middleware stack and replays against the whole app."""
    from async_accept import worker

    global LAZY_APP
    LAZY_APP = apps.build_starlette(
        secret_key="w" * 32,
        store=f"sqlite:///{tmp_path / 'jobs.db'}",
        executor="rq?app=tests.test_distributed:LAZY_APP&redis_url=redis://127.0.0.1:6379/15",
    )
    assert LAZY_APP.middleware_stack is None
    try:
        runtime = worker.load_runtime("tests.test_distributed:LAZY_APP")
        assert runtime is find_middleware(LAZY_APP).runtime
        assert runtime.app is LAZY_APP  # outer middleware runs again on replay
        assert (runtime.kind, runtime.role) == ("asgi", "worker")
        assert worker.load_runtime("tests.test_distributed:LAZY_APP") is runtime  # cached
    finally:
        worker.shutdown()
        find_middleware(LAZY_APP).store.close()
        LAZY_APP = None


def test_worker_finds_a_middleware_the_app_hides_and_runs_a_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A middleware no attribute leads to is found among those built on import; run_job works."""
    from async_accept import worker

    (tmp_path / "hidden_app.py").write_text(
        textwrap.dedent(
            f"""
            from async_accept.wsgi import AsyncAcceptMiddleware
            from tests.apps import WSGI_ROUTES, plain_wsgi_app

            _mw = AsyncAcceptMiddleware(
                plain_wsgi_app,
                secret_key="h" * 32,
                store="sqlite:///{tmp_path / "hidden.db"}",
                executor="rq?app=hidden_app:app&redis_url=redis://127.0.0.1:6379/15",
                routes=WSGI_ROUTES,
                sweep_interval=0,
            )

            def app(environ, start_response):
                return _mw(environ, start_response)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(worker.ALLOWED_ENV, "hidden_app:app")
    try:
        runtime = worker.load_runtime("hidden_app:app")
        module = sys.modules["hidden_app"]
        assert runtime is module._mw.runtime
        assert runtime.app is module.app
        job, _ = orphan_job(module._mw, b"hidden")
        assert worker.run_job("hidden_app:app", job.id) == "completed"
        assert worker.run_job("hidden_app:app", job.id) is None  # not ours to run twice
        result = module._mw.store.get_result(job.id)
        assert result is not None and b'"body": "hidden"' in result.body
    finally:
        worker.shutdown()
        module = sys.modules.pop("hidden_app", None)
        if module is not None:
            module._mw.store.close()


def test_worker_refuses_to_guess_between_middlewares(tmp_path: Path) -> None:
    """Several unreachable middlewares: a ConfigurationError saying which object to point at."""
    from async_accept.errors import ConfigurationError
    from async_accept.worker import find_front_door

    mws = [
        apps.build_wsgi(secret_key="g" * 32, store=f"sqlite:///{tmp_path / f'{i}.db'}")
        for i in range(2)
    ]
    try:
        doors = [mw._door for mw in mws]
        with pytest.raises(ConfigurationError, match="2 async_accept middlewares"):
            find_front_door(object(), doors)
        assert find_front_door(mws[1], doors) is doors[1]  # reachable: no guessing
    finally:
        for mw in mws:
            mw.store.close()


def test_worker_runs_only_the_apps_it_was_started_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker message naming another application is refused before anything is imported."""
    from async_accept import worker
    from async_accept.errors import ConfigurationError

    worker.allow_only(["tests.e2e_app:asgi_app"])
    try:
        with pytest.raises(ConfigurationError, match="async-accept worker --app os:system"):
            worker.run_job("os:system", "job")
    finally:
        worker.allow_only(None)
    monkeypatch.setenv(worker.ALLOWED_ENV, "tests.e2e_app:asgi_app, tests.e2e_app:wsgi_app")
    with pytest.raises(ConfigurationError, match="only"):
        worker.run_job("no_such_module:app", "job")
    assert "no_such_module" not in sys.modules
    # No list at all: nothing runs, not even an application already imported.
    monkeypatch.delenv(worker.ALLOWED_ENV)
    for path in ("no_such_module_either:app", "tests.e2e_app:asgi_app"):
        with pytest.raises(ConfigurationError, match=f"{worker.ALLOWED_ENV}=module:app"):
            worker.run_job(path, "job")
        with pytest.raises(ConfigurationError, match="async-accept worker --app"):
            worker.run_jobs(path, ["job"])
    assert "no_such_module_either" not in sys.modules


def test_a_celery_worker_without_an_allow_list_does_not_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Celery's worker_init refuses a worker with neither --app nor ASYNC_ACCEPT_WORKER_APPS."""
    pytest.importorskip("celery")
    from celery import Celery
    from celery.signals import worker_init

    from async_accept import worker
    from async_accept.errors import ConfigurationError
    from async_accept.executors.celery import register_task

    register_task(Celery("allow-list-test", broker="memory://"))
    monkeypatch.delenv(worker.ALLOWED_ENV, raising=False)
    with pytest.raises(SystemExit, match=worker.ALLOWED_ENV) as stopped:
        worker_init.send(sender=None)
    assert isinstance(stopped.value.__cause__, ConfigurationError)
    monkeypatch.setenv(worker.ALLOWED_ENV, "tests.e2e_app:asgi_app")
    worker_init.send(sender=None)  # with the list it starts
    assert worker.allowed_apps() == frozenset({"tests.e2e_app:asgi_app"})


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
def test_mark_dispatched_is_a_compare_and_set_per_job(kind: str, tmp_path: Path) -> None:
    """mark_dispatched marks queued jobs whose mark is absent or stale, each once per window."""
    from async_accept.stores.memory import MemoryStore
    from async_accept.stores.redis import RedisStore
    from async_accept.stores.sqlite import SQLiteStore

    ns = f"mark-{uuid.uuid4().hex[:8]}"
    if kind == "memory":
        store: Any = MemoryStore()
    elif kind == "sqlite":
        store = SQLiteStore(str(tmp_path / "jobs.db"))
    else:
        store = RedisStore.from_url(require_redis(), namespace=ns)
    try:
        a, b, canceled, running = queued_jobs(store, 4)
        now = time.time()
        store.cancel(canceled, now)
        store.claim(running, "w", now)
        ids = [b, a, canceled, running, "unknown"]
        assert store.mark_dispatched(ids, now, now - 60) == [b, a]  # in the order given
        assert store.mark_dispatched(ids, now + 1, now - 60) == []  # fresh marks hold
        assert store.mark_dispatched([a], now + 30, now + 1) == [a]  # a stale one is retaken
        assert store.mark_dispatched([], now, now) == []
        assert store.get(a, now).status is JobStatus.QUEUED  # nothing else changed
    finally:
        store.close()
        if kind == "redis":
            wipe_redis(require_redis(), ns)
