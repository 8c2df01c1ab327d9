"""A graceful stop (SIGTERM) under load loses nothing: running jobs finish or are requeued."""

from __future__ import annotations

import signal

import pytest

from tests.faults.conftest import SIZES, Deployment
from tests.faults.harness import assert_nothing_lost, restart
from tests.servers import Server, uvicorn

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("door", ["uvicorn", "gunicorn"])
def test_sigterm_under_load_loses_no_running_job(deploy: Deployment, door: str, n: int) -> None:
    """SIGTERM while jobs run, then a restart: every job completes once, none worker-lost."""
    env = {"ASYNC_ACCEPT_SHUTDOWN_TIMEOUT": "1"}
    if door == "uvicorn":
        server = deploy.uvicorn(ASYNC_ACCEPT_EXECUTOR="asyncio?max_concurrency=4", **env)
        path = "/work"
    else:
        server = deploy.gunicorn(ASYNC_ACCEPT_EXECUTOR="thread?max_workers=4", **env)
        path = "/work-sync"
    sigterm_mid_jobs_then_restart(deploy, server, path, n)


def sigterm_mid_jobs_then_restart(deploy: Deployment, server: Server, path: str, n: int) -> None:
    """Submit ``n`` jobs longer than the drain, SIGTERM the server once up to 4 run,
    restart it: every job completes once, none worker-lost."""
    run = deploy.run(server)
    # Jobs longer than the drain: the first ones can't finish before the process stops.
    subs = run.submit(path, n, query="sleep=3")
    run.wait_for(subs, ("processing",), at_least=min(n, 4), timeout=20)
    server.stop(signal.SIGTERM, timeout=30)
    deploy.started(restart(server))
    report = run.poll_all(timeout=120 + n * 1.0)
    assert report.completed == n, report.summary()
    assert_nothing_lost(report)


@pytest.mark.parametrize("n", SIZES)
def test_gunicorn_hup_under_load_loses_no_running_job(deploy: Deployment, n: int) -> None:
    """kill -HUP of gunicorn's master while jobs run: new workers take over, every job completes."""
    server = deploy.gunicorn(
        ASYNC_ACCEPT_EXECUTOR="thread?max_workers=4", ASYNC_ACCEPT_SHUTDOWN_TIMEOUT="1"
    )
    assert server.proc is not None
    run = deploy.run(server)
    subs = run.submit("/work-sync", n, query="sleep=3")
    run.wait_for(subs, ("processing",), at_least=min(n, 4), timeout=20)
    server.proc.send_signal(signal.SIGHUP)
    report = run.poll_all(timeout=120 + n * 1.0)
    assert report.completed == n, report.summary()
    assert_nothing_lost(report)


def test_gunicorn_drain_ends_within_its_graceful_timeout(deploy: Deployment) -> None:
    """shutdown_timeout past gunicorn's graceful timeout: the drain ends in time and requeues."""
    # gunicorn's graceful timeout here is 5 s (tests/servers.py); a drain of 60 s would be
    # cut by its SIGKILL, and a killed worker requeues nothing (its jobs end worker-lost).
    server = deploy.gunicorn(
        ASYNC_ACCEPT_EXECUTOR="thread?max_workers=4", ASYNC_ACCEPT_SHUTDOWN_TIMEOUT="60"
    )
    run = deploy.run(server)
    subs = run.submit("/work-sync", 4, query="sleep=8")
    run.wait_for(subs, ("processing",), at_least=4, timeout=20)
    server.stop(signal.SIGTERM, timeout=30)
    assert "requeued" in deploy.log(), deploy.log()
    deploy.started(restart(server))
    report = run.poll_all(timeout=120)
    assert report.completed == 4, report.summary()
    assert_nothing_lost(report)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("path", ["/work", "/work-sync"])
def test_sigterm_under_django_asgi_loses_no_running_job(
    deploy: Deployment, path: str, n: int
) -> None:
    """uvicorn SIGTERM under Django's ASGI handler (no lifespan): every job completes once."""
    # Django replays jobs through its WSGI handler, in the thread executor's threads.
    env = deploy.env(
        ASYNC_ACCEPT_EXECUTOR="thread?max_workers=4", ASYNC_ACCEPT_SHUTDOWN_TIMEOUT="1"
    )
    server = deploy.started(
        uvicorn("tests.faults.django_app:application", env, deploy.tmp_path / "server.log")
    )
    server.start()
    sigterm_mid_jobs_then_restart(deploy, server, path, n)


def test_uvicorn_reload_loses_no_running_job(deploy: Deployment) -> None:
    """uvicorn --reload restarting its server on a code change: every job completes once."""
    watched = deploy.tmp_path / "code"
    watched.mkdir()
    (watched / "module.py").write_text("VERSION = 1\n")
    env = deploy.env(
        ASYNC_ACCEPT_EXECUTOR="asyncio?max_concurrency=4", ASYNC_ACCEPT_SHUTDOWN_TIMEOUT="1"
    )
    server = uvicorn("tests.faults.app:asgi_app", env, deploy.tmp_path / "server.log")
    server.argv += ["--reload", "--reload-dir", str(watched)]
    deploy.started(server).start()
    run = deploy.run(server)
    subs = run.submit("/work", 8, query="sleep=3")
    run.wait_for(subs, ("processing",), at_least=4, timeout=20)
    (watched / "module.py").write_text("VERSION = 2\n")  # the reloader restarts the server
    report = run.poll_all(timeout=120)
    assert report.completed == 8, report.summary()
    assert_nothing_lost(report)
    assert "Reloading" in deploy.log(), deploy.log()
