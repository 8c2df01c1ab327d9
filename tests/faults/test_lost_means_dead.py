"""Lost means dead: worker-lost only for a process that is gone, never for a store that
stalls writes (a SQLite write lock held by another process) or for a worker whose
clock differs from the judge's; a process killed -9 still loses its jobs."""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults.conftest import Deployment
from tests.faults.harness import FaultRun, assert_nothing_lost, read_ledger
from tests.servers import Server, uvicorn

pytestmark = pytest.mark.slow

SKEW_PATH = Path(__file__).resolve().parent / "clock_skew"
#: the held write lock of the issue's fault run, and its clock difference
LOCK_HELD = 15.0
SKEW = -9.0

_LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
print("released", flush=True)
"""


def hold_write_lock(db: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process takes SQLite's write lock (``BEGIN IMMEDIATE``) on ``db`` and
    holds it ``seconds``; returns once the lock is held."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _LOCKER, str(db), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def server(deploy: Deployment, name: str, skew: float = 0.0, **env: str) -> Server:
    """A uvicorn process on the deployment's SQLite file (its own log), its clock
    ``skew`` seconds off the machine's; an asyncio executor for 20 jobs at once."""
    extra = {"ASYNC_ACCEPT_EXECUTOR": "asyncio?max_concurrency=20", **env}
    options = deploy.env(**extra)
    if skew:
        options["ASYNC_ACCEPT_FAULT_CLOCK_SKEW"] = str(skew)
        options["PYTHONPATH"] = f"{SKEW_PATH}:{options['PYTHONPATH']}"
    log = deploy.tmp_path / f"{name}.log"
    return deploy.started(uvicorn("tests.faults.app:asgi_app", options, log).start())


def pids(ledger: Path) -> collections.Counter[str]:
    """How many runs each process made (the ledger's second column)."""
    if not ledger.exists():
        return collections.Counter()
    return collections.Counter(line.split()[1] for line in ledger.read_text().splitlines())


def test_a_write_lock_held_15s_by_another_process_loses_no_job(deploy: Deployment) -> None:
    """20 healthy jobs while another process holds SQLite's write lock 15 s: 0 worker-lost."""
    app = server(deploy, "app")
    run = deploy.run(app)
    subs = run.submit("/work", 20, query="sleep=20")
    running = run.wait_for(subs, ("processing",), at_least=10, timeout=30)
    assert len(running) >= 10
    locker = hold_write_lock(deploy.tmp_path / "jobs.db", LOCK_HELD)
    try:
        # While the lock is held (worker_lost_after=2 s) every read still answers.
        for sub in running[:3]:
            _code, body = run.status(sub)
            assert body is not None and body["status"] == "processing", body
        out, _ = locker.communicate(timeout=LOCK_HELD + 30)
    finally:
        if locker.poll() is None:
            locker.kill()
            locker.wait()
    assert "released" in out
    report = run.poll_all(timeout=60)
    assert report.completed == 20, report.summary()
    assert_nothing_lost(report)


def test_a_worker_whose_clock_is_9s_behind_is_not_lost(deploy: Deployment) -> None:
    """Two processes on one SQLite file, one's clock 9 s behind runs the jobs, the
    other judges (its sweeper, its status reads): 0 worker-lost, all complete."""
    skewed = server(deploy, "skewed", SKEW)
    judge = server(deploy, "judge")
    run = deploy.run(skewed)
    subs = run.submit("/work", 10, query="sleep=5")
    # The judge reads every job too (its status reads apply the deadman switch).
    watch = FaultRun(judge.base, deploy.ledger)
    deploy.runs.append(watch)
    watch.submissions = list(subs)
    watch.wait_for(subs, ("processing",), at_least=5, timeout=30)
    judged = watch.poll_all(timeout=60)
    report = run.poll_all(timeout=30)
    assert report.completed == 10, report.summary()
    assert judged.completed == 10, judged.summary()
    assert_nothing_lost(report)
    assert skewed.proc is not None
    assert set(pids(deploy.ledger)) == {str(skewed.proc.pid)}  # the skewed process ran them


@pytest.mark.parametrize("path", ["/work", "/work-retry"])
def test_kill9_of_the_running_process_still_ends_its_jobs(deploy: Deployment, path: str) -> None:
    """kill -9 of the (clock-skewed) process running 4 jobs: the judge ends them
    worker-lost, or runs them again on a route with retries."""
    skewed = server(deploy, "skewed", SKEW)
    judge = server(deploy, "judge")
    run = deploy.run(skewed)
    subs = run.submit(path, 4, query="sleep=12")
    run.wait_for(subs, ("processing",), at_least=4, timeout=30)
    skewed.kill()
    watch = FaultRun(judge.base, deploy.ledger)
    deploy.runs.append(watch)
    watch.submissions = list(subs)
    report = watch.poll_all(timeout=90)
    if path == "/work":
        assert report.failed == {"worker-lost": 4}, report.summary()
        assert not read_ledger(deploy.ledger)
        assert_nothing_lost(report, allowed_errors={"worker-lost"})
    else:
        assert report.completed == 4, report.summary()
        assert judge.proc is not None
        assert set(pids(deploy.ledger)) == {str(judge.proc.pid)}
        assert_nothing_lost(report)
