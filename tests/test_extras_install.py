"""Each worker extra, installed alone in a fresh virtual environment, gives a worker that runs jobs.

A user follows the README: ``pip install 'async-accept[redis,celery]'`` (or ``[redis,rq]``,
``[postgres]``, or nothing extra for a SQLite store) and starts ``async-accept worker``. These
tests do exactly that in a new venv that sees nothing of the test environment, then accept a
job through the same application in this process and wait for that worker to run it.

Tests never reach PyPI: the packages come from a wheelhouse built before the run
(``.ci/run`` builds it and sets ``ASYNC_ACCEPT_WHEELHOUSE``). Outside CI, without one, they
skip and say how to build it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.services import (
    IN_CI,
    drop_postgres_schema,
    postgres_schema_url,
    require_postgres,
    require_redis,
    wipe_redis_namespace,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SECRET = "extras-install-secret-0123456789abcdef"
BUILD = "python -m pip wheel -w /tmp/async-accept-wheels '.[redis,celery,rq,postgres]'"

APP = """
import os

from async_accept.wsgi import AsyncAcceptMiddleware


def inner(environ, start_response):
    size = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(size)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ran in " + os.environ["EXTRAS_ROLE"].encode() + b": " + body]


app = AsyncAcceptMiddleware(
    inner,
    secret_key=os.environ["ASYNC_ACCEPT_SECRET_KEY"],
    store=os.environ["EXTRAS_STORE"],
    executor=os.environ["EXTRAS_EXECUTOR"],
    routes=["POST /work"],
)
"""


@pytest.fixture(scope="module")
def wheelhouse() -> Path:
    """The directory of wheels to install from (no index)."""
    path = os.environ.get("ASYNC_ACCEPT_WHEELHOUSE")
    if not path or not any(Path(path).glob("async_accept-*.whl")):
        msg = (
            "no wheelhouse with an async_accept wheel: build one with "
            f"`{BUILD}` and set ASYNC_ACCEPT_WHEELHOUSE=/tmp/async-accept-wheels"
        )
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return Path(path)


def fresh_venv(where: Path, wheelhouse: Path, requirement: str) -> Path:
    """A new virtual environment holding ``requirement`` installed from the wheelhouse only;
    its bin directory."""
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-index", "-q"]
    out = subprocess.run(
        [*pip, "--find-links", str(wheelhouse), requirement],
        capture_output=True,
        text=True,
        timeout=600,
        env=clean_env(),
    )
    assert out.returncode == 0, f"pip install {requirement} failed:\n{out.stdout}{out.stderr}"
    return venv / "bin"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a process outside the test venv: no PYTHONPATH, no VIRTUAL_ENV."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(extra)
    return env


@contextlib.contextmanager
def worker(
    bin_dir: Path, cwd: Path, env: dict[str, str], *args: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``async-accept worker --app extras_app:app`` from the fresh venv (its log: worker.log)."""
    log = cwd / "worker.log"
    argv = [str(bin_dir / "async-accept"), "worker", "--app", "extras_app:app", *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=clean_env(**env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def load_app(cwd: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> ModuleType:
    """The same application module, imported in this process as the web tier."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("EXTRAS_ROLE", "web")
    monkeypatch.delitem(sys.modules, "extras_app", raising=False)
    spec = importlib.util.spec_from_file_location("extras_app", cwd / "extras_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_one_job(
    app: Any, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90.0
) -> httpx.Response:
    """Accept a job through ``app`` and wait until the worker ``proc`` has run it; the result."""
    transport = httpx.WSGITransport(app=app)
    with httpx.Client(transport=transport, base_url="http://web.test") as client:
        r = client.post("/work", content=b"hello", headers={"Prefer": "respond-async"})
        assert r.status_code == 202, r.text
        loc = r.headers["location"]
        deadline = time.monotonic() + timeout
        while True:
            s = client.get(loc, follow_redirects=False)
            if s.status_code == 303:
                return client.get(s.headers["location"])
            assert s.status_code == 200, s.text
            assert s.json()["status"] in ("queued", "processing"), s.text
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                why = (
                    f"exited with {proc.returncode}"
                    if proc.returncode is not None
                    else "never ran it"
                )
                raise AssertionError(f"the worker {why}: {s.text}\n{tail}")
            time.sleep(0.2)


Setup = Callable[[Path], tuple[str, dict[str, str], tuple[str, ...], Callable[[], None]]]


def _broker(kind: str) -> Setup:
    """A Celery or RQ worker on the test Redis (store and broker), under keys of its own."""

    def setup(tmp: Path) -> tuple[str, dict[str, str], tuple[str, ...], Callable[[], None]]:
        url = require_redis()
        ns = f"extras-{uuid.uuid4().hex[:8]}"
        queue = f"aa-extras-{uuid.uuid4().hex[:8]}"
        broker = "broker_url" if kind == "celery" else "redis_url"
        executor = f"{kind}?app=extras_app:app&{broker}={url}&queue={queue}"
        env = {"EXTRAS_STORE": f"{url}?namespace={ns}", "EXTRAS_EXECUTOR": executor}
        args = ("--pool", "threads", "--concurrency", "1") if kind == "celery" else ()

        def cleanup() -> None:
            import redis

            wipe_redis_namespace(url, ns)
            client = redis.Redis.from_url(url)
            try:  # the queue's own keys: Celery's list and bindings, RQ's queue and registries
                keys = list(client.scan_iter(match=f"*{queue}*", count=500))
                if keys:
                    client.delete(*keys)
            finally:
                client.close()

        return f"async-accept[redis,{kind}]", env, args, cleanup

    return setup


def _postgres(tmp: Path) -> tuple[str, dict[str, str], tuple[str, ...], Callable[[], None]]:
    require_postgres()
    url, schema = postgres_schema_url()
    env = {"EXTRAS_STORE": url, "EXTRAS_EXECUTOR": "store"}
    return (
        "async-accept[postgres]",
        env,
        ("--concurrency", "2"),
        lambda: drop_postgres_schema(schema),
    )


def _sqlite(tmp: Path) -> tuple[str, dict[str, str], tuple[str, ...], Callable[[], None]]:
    env = {"EXTRAS_STORE": f"sqlite:///{tmp / 'jobs.db'}", "EXTRAS_EXECUTOR": "store"}
    return "async-accept", env, ("--concurrency", "2"), lambda: None


@pytest.mark.parametrize(
    "setup",
    [
        pytest.param(_broker("celery"), id="redis,celery"),
        pytest.param(_broker("rq"), id="redis,rq"),
        pytest.param(_postgres, id="postgres"),
        pytest.param(_sqlite, id="no-extra-sqlite"),
    ],
)
def test_a_fresh_install_of_the_extra_gives_a_worker_that_runs_jobs(
    setup: Setup, wheelhouse: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pip install of the README's extra alone, in a new venv, starts a worker that runs a job."""
    requirement, env, args, cleanup = setup(tmp_path)
    env = {**env, "ASYNC_ACCEPT_SECRET_KEY": SECRET}
    bin_dir = fresh_venv(tmp_path, wheelhouse, requirement)
    probe = subprocess.run(
        [str(bin_dir / "python"), "-c", "import async_accept, sys; print(async_accept.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        check=True,
    )
    assert str(ROOT) not in probe.stdout, "the fresh venv must not see the checkout"
    (tmp_path / "extras_app.py").write_text(APP)
    try:
        log = tmp_path / "worker.log"
        with worker(bin_dir, tmp_path, {**env, "EXTRAS_ROLE": "worker"}, *args) as proc:
            module = load_app(tmp_path, monkeypatch, env)
            try:
                result = run_one_job(module.app, proc, log)
            finally:
                module.app.runtime.shutdown()
                module.app.store.close()
        assert result.status_code == 200, result.text
        assert result.text == "ran in worker: hello"
        assert "Traceback" not in log.read_text(errors="replace")
    finally:
        cleanup()
