"""``async-accept jobs watch ID``: follows a job's progress live and exits with its end."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from async_accept.cli import main
from async_accept.job import CapturedResponse, JobStatus
from tests.test_cli import make_job


@pytest.fixture(params=["sqlite", "redis"])
def store_and_args(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Any, list[str]]]:
    """A store and the CLI arguments naming it."""
    if request.param == "sqlite":
        from async_accept.stores.sqlite import SQLiteStore

        path = tmp_path / "jobs.db"
        store: Any = SQLiteStore(path)
        yield store, ["--store", f"sqlite:///{path}"]
        store.close()
    else:
        from async_accept.stores.redis import RedisStore
        from tests.services import require_redis, wipe_redis_namespace

        url = require_redis()
        namespace = f"watch-{time.time_ns()}"
        store = RedisStore.from_url(url, namespace=namespace)
        yield store, ["--store", url, "--namespace", namespace]
        store.close()
        wipe_redis_namespace(url, namespace)


def test_watch_follows_progress_and_exits_0_on_completion(
    store_and_args: tuple[Any, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """The command shows each progress change, then the end, within a second of it."""
    store, args = store_and_args
    job = make_job(store, JobStatus.PROCESSING)

    def work() -> None:
        time.sleep(0.4)
        store.set_progress(job.id, "w", time.time(), 40.0, "rendering", None)
        time.sleep(0.4)
        store.finish(job.id, "w", time.time(), JobStatus.COMPLETED, CapturedResponse(200, [], b""))

    worker = threading.Thread(target=work)
    started = time.monotonic()
    worker.start()
    code = main(["jobs", "watch", *args, "--", job.id])
    took = time.monotonic() - started
    worker.join()
    out = capsys.readouterr().out
    assert code == 0
    assert "40%" in out and "rendering" in out
    assert "completed" in out
    assert took < 2.5


def test_watch_exits_1_for_a_failed_job(
    store_and_args: tuple[Any, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """A job that ended failed makes the command print its error and exit 1."""
    store, args = store_and_args
    job = make_job(store, JobStatus.FAILED)
    assert main(["jobs", "watch", *args, "--", job.id]) == 1
    assert "failed" in capsys.readouterr().out
