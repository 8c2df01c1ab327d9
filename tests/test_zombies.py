"""Hung handlers stay inside their limits: a handler still running past its job's
deadline (a zombie) keeps its executor slot, is shown in health and logged, its late
result never overwrites the job's end, and with ``max_zombies`` the process recycles
itself (drains, exits) for its process manager to start a fresh one.

The server tests run real uvicorn, gunicorn and ``async-accept worker`` processes on
SQLite with apps from ``tests/zombie_app.py``, whose handlers write a ledger line when
they start and when they end: how many ran at once is counted from it, not timed.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from async_accept.engine.beats import BeatWatch
from async_accept.engine.health import health_report
from async_accept.errors import ConfigurationError, StoreError
from async_accept.job import JobStatus
from async_accept.options import build_options
from async_accept.zombies import EXIT_RECYCLE, ZombieWatch, check_max_zombies
from tests.servers import ROOT, Server, base_env, gunicorn, uvicorn
from tests.zombie_app import HEALTH_TOKEN, SECRET

AUTH = {"Authorization": f"Bearer {HEALTH_TOKEN}"}
#: generous bound of every wait (outcomes are asserted, never durations)
WAIT = 60.0

# -- helpers ---------------------------------------------------------------------------------


def poll(check: Callable[[], Any], timeout: float = WAIT, what: str = "") -> Any:
    """``check()``'s first truthy answer, tried every 0.1 s for up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout:g} s: {what}")
        time.sleep(0.1)


class Ledger:
    """The start/end lines the handlers wrote, in the order they wrote them."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[tuple[str, str, int]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            kind, job, pid = line.split()
            out.append((kind, job, int(pid)))
        return out

    def started(self, job: str) -> bool:
        return any(k == "start" and j == job for k, j, _ in self.lines())

    def ended(self, job: str) -> bool:
        return any(k == "end" and j == job for k, j, _ in self.lines())

    def pids(self, job: str) -> list[int]:
        return [p for k, j, p in self.lines() if k == "start" and j == job]

    def most_at_once(self) -> int:
        """The largest number of handlers running at once in one process."""
        running: dict[int, int] = {}
        most = 0
        for kind, _job, pid in self.lines():
            running[pid] = running.get(pid, 0) + (1 if kind == "start" else -1)
            most = max(most, running[pid])
        return most


class Deployment:
    """Processes one test starts (killed at its end), a SQLite store and a ledger."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.ledger = Ledger(tmp_path / "ledger.txt")
        self.store = f"sqlite:///{tmp_path / 'jobs.db'}"
        self.servers: list[Server] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        self.client = httpx.Client(timeout=10)

    def env(self, **extra: str) -> dict[str, str]:
        return base_env(
            ZOMBIE_STORE=self.store, ZOMBIE_LEDGER=str(self.ledger.path), ZOMBIE_SLA="1", **extra
        )

    def uvicorn(self, **env: str) -> Server:
        server = uvicorn("tests.zombie_app:asgi_app", self.env(**env), self.tmp / "server.log")
        self.servers.append(server)
        return server.start()

    def gunicorn(self, **env: str) -> Server:
        server = gunicorn("tests.zombie_app:wsgi_app", self.env(**env), self.tmp / "server.log")
        self.servers.append(server)
        return server.start()

    def worker(self, log: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "async_accept.cli", "worker"]
        argv += ["--app", "tests.zombie_app:asgi_app", "--concurrency", "2", *args]
        with (self.tmp / log).open("ab") as out:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=self.env(ZOMBIE_EXECUTOR="store", **env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.workers.append(proc)
        return proc

    def log(self, name: str = "server.log") -> str:
        path = self.tmp / name
        return path.read_text() if path.exists() else ""

    def submit(self, base: str, path: str, job: str, hang: float = 8.0) -> str:
        r = self.client.post(f"{base}{path}?id={job}&hang={hang}", content=b"")
        assert r.status_code == 202, r.text
        return f"{base}{r.headers['location']}"

    def status(self, url: str) -> dict[str, Any]:
        data: dict[str, Any] = self.client.get(url).json()
        return data

    def ended(self, url: str, timeout: float = WAIT) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            s = self.status(url)
            return s if s["status"] in ("completed", "failed", "canceled") else None

        result: dict[str, Any] = poll(done, timeout, f"{url} to end")
        return result

    def health(self, base: str) -> dict[str, Any]:
        data: dict[str, Any] = self.client.get(f"{base}/_jobs/health", headers=AUTH).json()
        return data

    def close(self) -> None:
        self.client.close()
        for server in self.servers:
            server.kill()
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture
def deploy(tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment(tmp_path)
    yield d
    d.close()


def error_type(status: dict[str, Any]) -> str:
    return str((status.get("error") or {}).get("type", "")).rsplit(":", 1)[-1]


def assert_deadline_exceeded(d: Deployment, url: str) -> None:
    status = d.status(url)
    assert status["status"] == "failed", status
    assert error_type(status) == "deadline-exceeded", status


def zombies_shown(d: Deployment, base: str, count: int) -> dict[str, Any] | None:
    report = d.health(base)
    zombies = report.get("zombies") or {}
    return report if zombies.get("count") == count else None


def hung_then_quick(d: Deployment, base: str, hung: list[tuple[str, str]]) -> None:
    """Two hung handlers on a 2-slot executor, then quick jobs: the client sees
    deadline-exceeded at the deadline, health shows both zombies, no quick job starts
    while they hold the slots, each quick job runs once they end, and the zombies'
    late results change nothing."""
    urls = {job: d.submit(base, path, job) for path, job in hung}
    poll(lambda: all(d.ledger.started(job) for _, job in hung), what="both hung handlers")
    quick = {f"q{i}": d.submit(base, "/quick", f"q{i}") for i in range(3)}
    # The deadline (2 x sla = 2 s after the accept) comes while the handlers still run.
    for job, url in urls.items():
        d.ended(url)
        assert not d.ledger.ended(job), "the handler was meant to outlive its deadline"
        assert_deadline_exceeded(d, url)
    report = poll(lambda: zombies_shown(d, base, 2), what="health to show 2 zombies")
    shown = {z["id"] for z in report["zombies"]["jobs"]}
    assert len(shown) == 2
    assert {z["route"] for z in report["zombies"]["jobs"]} == {f"POST {p}" for p, _ in hung}
    assert all(z["past_deadline"] >= 0 for z in report["zombies"]["jobs"])
    assert sum(w["zombies"] for w in report["workers"]) == 2
    assert not any(d.ledger.started(q) for q in quick), "a job started on a zombie's slot"
    for url in quick.values():
        assert d.ended(url)["status"] == "completed"
    poll(lambda: all(d.ledger.ended(job) for _, job in hung), what="the zombies to end")
    poll(lambda: zombies_shown(d, base, 0), what="health to show no zombie")
    for url in urls.values():  # the late results were discarded
        assert_deadline_exceeded(d, url)
    assert d.ledger.most_at_once() == 2
    assert all(len(d.ledger.pids(q)) == 1 for q in quick)
    log = d.log()
    assert log.count("is past its deadline and its handler still runs") == 2, log[-3000:]
    assert log.count("its late outcome was discarded") == 2, log[-3000:]


# -- real servers ------------------------------------------------------------------------------


def exited(pid: int) -> bool:
    """The process ``pid`` is gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "hung",
    [
        pytest.param([("/hang-sync", "sync"), ("/hang-ignore", "ignores")], id="sync+ignore"),
        pytest.param(
            [("/hang-thread", "thread"), ("/hang-executor", "executor")], id="to_thread+executor"
        ),
    ],
)
def test_asgi_zombies_keep_their_slots_and_show_in_health(
    deploy: Deployment, hung: list[tuple[str, str]]
) -> None:
    """ASGI, max_concurrency=2: hung handlers past their deadline keep their slots, in health."""
    server = deploy.uvicorn(ZOMBIE_EXECUTOR="asyncio?max_concurrency=2")
    hung_then_quick(deploy, server.base, hung)


@pytest.mark.timeout(180)
def test_wsgi_zombies_keep_their_threads_and_show_in_health(deploy: Deployment) -> None:
    """WSGI, max_workers=2: hung sync handlers keep their threads and show in health."""
    server = deploy.gunicorn(ZOMBIE_EXECUTOR="thread?max_workers=2")
    hung_then_quick(deploy, server.base, [("/hang-sync", "a"), ("/hang-sync", "b")])


@pytest.mark.timeout(240)
def test_store_worker_recycles_at_max_zombies_and_a_fresh_one_runs_the_queue(
    deploy: Deployment,
) -> None:
    """async-accept worker at max_zombies exits 75; a fresh worker runs the queued jobs once."""
    server = deploy.uvicorn(ZOMBIE_EXECUTOR="store")
    first = deploy.worker("worker1.log", ZOMBIE_MAX_ZOMBIES="2")
    hung = {job: deploy.submit(server.base, "/hang-sync", job, hang=300) for job in ("a", "b")}
    poll(lambda: all(deploy.ledger.started(job) for job in hung), what="both hung handlers")
    quick = {f"q{i}": deploy.submit(server.base, "/quick", f"q{i}") for i in range(3)}
    assert first.wait(WAIT) == EXIT_RECYCLE, deploy.log("worker1.log")[-3000:]
    log = deploy.log("worker1.log")
    assert "recycling this process" in log and "max_zombies=2" in log, log[-3000:]
    assert f"exits with status {EXIT_RECYCLE}" in log, log[-3000:]
    for url in hung.values():
        assert_deadline_exceeded(deploy, url)
    assert not any(deploy.ledger.started(q) for q in quick)
    for url in quick.values():
        assert deploy.status(url)["status"] == "queued"
    fresh = deploy.worker("worker2.log")
    for url in quick.values():
        assert deploy.ended(url)["status"] == "completed"
    assert all(deploy.ledger.pids(q) == [fresh.pid] for q in quick)
    assert not any(deploy.ledger.ended(job) for job in hung)  # ended with their process
    for url in hung.values():
        assert_deadline_exceeded(deploy, url)
    assert deploy.ledger.most_at_once() == 2


@pytest.mark.timeout(240)
def test_gunicorn_worker_recycles_at_max_zombies_and_the_arbiter_replaces_it(
    deploy: Deployment,
) -> None:
    """A gunicorn worker at max_zombies stops; the arbiter's fresh worker runs the queued jobs."""
    server = deploy.gunicorn(ZOMBIE_EXECUTOR="thread?max_workers=2", ZOMBIE_MAX_ZOMBIES="2")
    hung = {job: deploy.submit(server.base, "/hang-sync", job, hang=300) for job in ("a", "b")}
    poll(lambda: all(deploy.ledger.started(job) for job in hung), what="both hung handlers")
    old = deploy.ledger.pids("a")[0]
    quick = {f"q{i}": deploy.submit(server.base, "/quick", f"q{i}") for i in range(3)}
    for url in quick.values():
        assert deploy.ended(url)["status"] == "completed"
    for q in quick:
        assert len(deploy.ledger.pids(q)) == 1
        assert deploy.ledger.pids(q) != [old], "a job ran in the recycled worker"

    poll(lambda: exited(old), what="the recycled worker to exit")
    for url in hung.values():
        assert_deadline_exceeded(deploy, url)
    assert not any(deploy.ledger.ended(job) for job in hung)
    log = deploy.log()
    assert "recycling this process" in log and "max_zombies=2" in log, log[-3000:]


@pytest.mark.timeout(300)
def test_uvicorn_worker_recycles_at_max_zombies_and_its_supervisor_replaces_it(
    deploy: Deployment,
) -> None:
    """A uvicorn --workers worker at max_zombies exits; a fresh one runs the jobs accepted since."""
    server = uvicorn(
        "tests.zombie_app:asgi_app",
        deploy.env(ZOMBIE_EXECUTOR="asyncio?max_concurrency=2", ZOMBIE_MAX_ZOMBIES="1"),
        deploy.tmp / "server.log",
        workers=2,
    )
    deploy.servers.append(server)
    server.start()
    url = deploy.submit(server.base, "/hang-ignore", "a", hang=600)
    poll(lambda: deploy.ledger.started("a"), what="the hung handler")
    old = deploy.ledger.pids("a")[0]
    poll(lambda: "recycling this process" in deploy.log(), what="the worker to recycle")
    quick = {f"q{i}": deploy.submit(server.base, "/quick", f"q{i}") for i in range(4)}
    for done in quick.values():
        assert deploy.ended(done)["status"] == "completed"
    assert all(len(deploy.ledger.pids(q)) == 1 for q in quick)
    assert not any(deploy.ledger.pids(q) == [old] for q in quick)

    poll(lambda: exited(old), timeout=120, what="the recycled worker to exit")
    assert_deadline_exceeded(deploy, url)
    assert not deploy.ledger.ended("a")
    log = deploy.log()
    assert "recycling this process" in log and "max_zombies=1" in log, log[-3000:]
    # The supervisor started a fresh worker: new jobs still run, in two live processes.
    more = {f"m{i}": deploy.submit(server.base, "/quick", f"m{i}") for i in range(4)}
    for done in more.values():
        assert deploy.ended(done)["status"] == "completed"
    assert old not in {p for m in more for p in deploy.ledger.pids(m)}


# -- the parts, in process ---------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, True, "2", 1.5])
def test_max_zombies_refuses_anything_but_none_or_a_whole_number(value: Any) -> None:
    """max_zombies is None or a whole number >= 1; anything else is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="max_zombies"):
        build_options(secret_key=SECRET, max_zombies=value)


def test_max_zombies_defaults_to_never_recycling() -> None:
    """By default a process never recycles itself (max_zombies None); a number is kept."""
    assert build_options(secret_key=SECRET).max_zombies is None
    assert build_options(secret_key=SECRET, max_zombies=3).max_zombies == 3
    assert check_max_zombies("--max-zombies", 2) == 2


def test_max_zombies_with_a_memory_store_is_refused_at_construction() -> None:
    """Recycling a process with a memory store would lose its jobs: refused when built."""
    from async_accept.wsgi import AsyncAcceptMiddleware

    def app(environ: Any, start_response: Any) -> Any:  # pragma: no cover - never called
        return []

    with pytest.raises(ConfigurationError, match="max_zombies=2"):
        AsyncAcceptMiddleware(app, secret_key=SECRET, store="memory://", max_zombies=2)


class FakeEngine:
    def __init__(self) -> None:
        self.now = 1000.0
        self.late: list[str] = []

    def clock(self) -> float:
        return self.now

    def apply_deadman(self, job: Any, now: float) -> Any:
        self.late.append(job.id)
        yield from ()


class FakeJob:
    def __init__(self, job_id: str, deadline_at: float, terminal: bool = False) -> None:
        self.id = job_id
        self.route = "POST /hang"
        self.deadline_at = deadline_at
        self.terminal = terminal


class FakeHost:
    """The runtime, as far as the zombie watch uses it."""

    def __init__(self) -> None:
        self.engine = FakeEngine()
        self.jobs: dict[str, FakeJob] = {}
        self.store = self
        self._local: dict[str, Any] = {}
        self.drained = False
        self.beats = 0
        self.drain_timeout = 1.0
        self.store_down = False

    def get(self, job_id: str, now: float) -> FakeJob | None:
        if self.store_down:
            raise StoreError("injected: the store is unavailable")
        return self.jobs.get(job_id)

    def drive(self, gen: Any) -> Any:
        for _ in gen:  # pragma: no cover - the fake deadman yields nothing
            pass

    def begin_drain(self) -> None:
        self.drained = True

    def beat(self, state: str = "running") -> None:
        self.beats += 1


def test_zombie_watch_ends_late_jobs_counts_zombies_and_recycles_at_the_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past its deadline a job ends; after the grace it is a zombie; at the limit: recycle."""
    from async_accept.context import JobContext

    host = FakeHost()
    watch = ZombieWatch(host, limit=2, grace=0.0)
    recycled: list[bool] = []
    watch.on_recycle = lambda: recycled.append(True)
    for job_id, deadline in (("a", 1001.0), ("b", 1002.0), ("c", 1100.0)):
        job = FakeJob(job_id, deadline)
        host.jobs[job_id] = job
        host._local[job_id] = JobContext(job_id)
        watch.started(job)  # type: ignore[arg-type]
    assert watch.watch() == pytest.approx(1.0)  # a's deadline is 1 s away
    host.engine.now = 1001.5
    caplog.set_level(logging.WARNING, "async_accept")
    watch.watch()
    assert host.engine.late == ["a"] and host._local["a"].cancel_requested
    assert len(watch) == 1 and watch.is_zombie("a") and not watch.is_zombie("b")
    assert not recycled
    host.engine.now = 1002.5
    watch.watch()
    assert len(watch) == 2 and recycled == [True] and host.drained and watch.recycling
    assert [z["id"] for z in watch.snapshot()] == ["a", "b"]
    watch.ended("a", recorded=False)
    assert len(watch) == 1 and not watch.is_zombie("a")
    assert "its late outcome was discarded" in caplog.text
    assert caplog.text.count("is past its deadline and its handler still runs") == 2
    watch.ended("c", recorded=True)  # an ordinary job: nothing to say
    assert caplog.text.count("gave its executor slot back") == 1


def test_a_deadline_that_could_not_be_written_does_not_cancel_the_job() -> None:
    """A job the store couldn't end at its deadline is not cancelled (it would end canceled)."""
    from async_accept.context import JobContext

    host = FakeHost()
    host.store_down = True
    watch = ZombieWatch(host, grace=0.0)
    job = FakeJob("a", 1001.0)
    host._local["a"] = JobContext("a")
    watch.started(job)  # type: ignore[arg-type]
    host.engine.now = 1001.5
    watch.watch()
    assert not host._local["a"].cancel_requested and not host._local["a"].lost
    assert watch.is_zombie("a")  # its handler still runs past the deadline all the same


def test_health_lists_the_zombies_of_live_processes_only() -> None:
    """Health lists live processes' zombies with how late each is; a dead process's don't count."""

    class Engine:
        options = build_options(secret_key=SECRET)
        beats = BeatWatch(options.worker_lost_after)

        def clock(self) -> float:  # pragma: no cover - health_report takes now
            return 0.0

    now = 5000.0
    zombie = {"id": "j1", "route": "POST /hang", "deadline_at": now - 12.5}
    dead = {"id": "j2", "route": "POST /hang", "deadline_at": now - 40.0}
    workers = [
        {"id": "w1", "last_heartbeat": now - 1, "consumes": True, "zombies": [zombie]},
        {"id": "w2", "last_heartbeat": now - 600, "consumes": True, "zombies": [dead]},
    ]
    report = health_report(Engine(), {JobStatus.QUEUED: 0}, None, workers, now)
    assert report["zombies"] == {
        "count": 1,
        "jobs": [{"id": "j1", "route": "POST /hang", "worker": "w1", "past_deadline": 12.5}],
    }
    assert [w["zombies"] for w in report["workers"]] == [1, 1]
    assert health_report(Engine(), {}, None, None, now)["zombies"] is None
