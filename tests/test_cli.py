"""The ``async-accept`` command: job inspection, retry, purge, webhook dead letters, and
the worker command's refusals. (The worker running jobs is in test_distributed.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from async_accept.cli import main
from async_accept.engine.responses import problem_dict
from async_accept.job import CapturedRequest, CapturedResponse, Job, JobStatus, new_job_id
from tests import apps
from tests.services import require_redis
from tests.test_distributed import wipe_redis

SECRET = "cli-secret-0123456789abcdef-0123456"

#: Applications the CLI imports by path in these tests (set by fixtures).
RQ_APP: Any = None
THREAD_APP: Any = None


def make_job(store: Any, status: JobStatus = JobStatus.QUEUED, **fields: Any) -> Job:
    """A job in ``store``, brought to ``status`` through the store's own transitions."""
    now = time.time()
    job = Job(
        id=new_job_id(),
        status=JobStatus.QUEUED,
        owner="owner-hash",
        created_at=now,
        updated_at=now,
        expires_at=now + 3600,
        deadline_at=now + 60,
        sla=30,
        route="POST /slow",
        **fields,
    )
    request = CapturedRequest(
        "POST",
        "/slow",
        headers=[(b"authorization", b"Bearer alice"), (b"content-type", b"text/plain")],
        body=b"hello",
    )
    store.create(job, request)
    if status is JobStatus.QUEUED:
        return job
    if status is JobStatus.CANCELED:
        return store.cancel(job.id, now)[0]  # type: ignore[no-any-return]
    store.claim(job.id, "w", now)
    if status is JobStatus.PROCESSING:
        return store.get(job.id, now)  # type: ignore[no-any-return]
    error = problem_dict(500, "handler-error", "Handler error", "The handler raised.")
    response = CapturedResponse(500, [(b"set-cookie", b"s=1")], b"boom")
    done = store.finish(
        job.id,
        "w",
        now,
        status,
        response,
        error if status is JobStatus.FAILED else None,
    )
    assert done is not None
    return done  # type: ignore[no-any-return]


@pytest.fixture(params=["sqlite", "sqlite-namespaced", "redis"])
def store_args(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, list[str]]]:
    """A store and the CLI arguments that name it, for SQLite, SQLite with --namespace
    (beside jobs of the file's default namespace, which the commands must not see)
    and Redis."""
    if request.param == "sqlite":
        from async_accept.stores.sqlite import SQLiteStore

        path = tmp_path / "jobs.db"
        store: Any = SQLiteStore(str(path))
        args = ["--store", f"sqlite:///{path}"]
    elif request.param == "sqlite-namespaced":
        from async_accept.stores.sqlite import SQLiteStore

        path = tmp_path / "jobs.db"
        neighbour = SQLiteStore(str(path))
        make_job(neighbour)
        make_job(neighbour, JobStatus.FAILED)
        neighbour.close()
        store = SQLiteStore(str(path), namespace="billing")
        args = ["--store", f"sqlite:///{path}", "--namespace", "billing"]
    else:
        from async_accept.stores.redis import RedisStore

        url = require_redis()
        ns = f"cli-{uuid.uuid4().hex[:8]}"
        store = RedisStore.from_url(url, namespace=ns)
        args = ["--store", url, "--namespace", ns]
    yield store, args
    store.close()
    if request.param == "redis":
        wipe_redis(url, ns)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_jobs_list_by_state(store_args: tuple[Any, list[str]], capsys: Any) -> None:
    """jobs list shows every job (oldest first); --status filters; --json gives one per line."""
    store, args = store_args
    queued = make_job(store)
    failed = make_job(store, JobStatus.FAILED)
    code, out, _ = run(capsys, "jobs", "list", *args)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "CREATED_AT", "ATTEMPTS", "ROUTE", "ERROR"]
    assert [ln.split()[:2] for ln in lines[1:]] == [
        [queued.id, "queued"],
        [failed.id, "failed"],
    ]
    assert lines[2].split()[-1] == "handler-error"
    code, out, _ = run(capsys, "jobs", "list", "--status", "failed", "--json", *args)
    assert code == 0
    assert [json.loads(ln)["id"] for ln in out.splitlines()] == [failed.id]
    code, out, _ = run(capsys, "jobs", "list", "--status", "canceled", *args)
    assert (code, out.strip()) == (0, "no jobs canceled")


def test_jobs_show_redacts_credentials(store_args: tuple[Any, list[str]], capsys: Any) -> None:
    """jobs show prints the job, its request and result, with credentials redacted."""
    store, args = store_args
    job = make_job(store, JobStatus.FAILED)
    code, out, _ = run(capsys, "jobs", "show", *args, "--", job.id)
    assert code == 0
    shown = json.loads(out)
    assert shown["job"]["id"] == job.id and shown["job"]["status"] == "failed"
    assert shown["request"]["method"] == "POST" and shown["request"]["body_bytes"] == 5
    assert ["authorization", "<redacted>"] in shown["request"]["headers"]
    assert ["set-cookie", "s=1"] in shown["result"]["headers"]
    assert shown["result"]["status"] == 500
    assert "Bearer alice" not in out
    code, _, err = run(capsys, "jobs", "show", *args, "--", "no-such-job")
    assert code == 1 and "no job no-such-job" in err


def test_jobs_retry_requeues_a_failed_job(store_args: tuple[Any, list[str]], capsys: Any) -> None:
    """jobs retry makes a failed job queued again, same id, error and result cleared."""
    store, args = store_args
    job = make_job(store, JobStatus.FAILED)
    code, out, _ = run(capsys, "jobs", "retry", *args, "--", job.id)
    assert code == 0
    assert "queued again (attempt 2)" in out and "requeue_after" in out
    again = store.get(job.id, time.time())
    assert again.status is JobStatus.QUEUED
    assert again.error is None and again.result_status is None and again.started_at is None
    assert again.deadline_at >= time.time() + 59
    assert store.get_result(job.id) is None
    claimed = store.claim(job.id, "w2", time.time())
    assert claimed is not None and claimed.attempts == 2


def test_jobs_retry_refuses_what_is_not_failed(
    store_args: tuple[Any, list[str]], capsys: Any
) -> None:
    """Only failed jobs are retried: queued, completed and unknown ones are refused (exit 1)."""
    store, args = store_args
    for status in (JobStatus.QUEUED, JobStatus.COMPLETED):
        job = make_job(store, status)
        code, _, err = run(capsys, "jobs", "retry", *args, "--", job.id)
        assert code == 1 and f"is {status.value}" in err
        assert store.get(job.id, time.time()).status is status
    code, _, err = run(capsys, "jobs", "retry", *args, "--", "nope")
    assert code == 1 and "no job nope" in err


def test_jobs_purge_failed_or_expired(store_args: tuple[Any, list[str]], capsys: Any) -> None:
    """purge --status failed deletes the failed jobs only; --expired the ones past their TTL."""
    store, args = store_args
    failed = [make_job(store, JobStatus.FAILED) for _ in range(3)]
    kept = make_job(store, JobStatus.COMPLETED)
    code, out, _ = run(capsys, "jobs", "purge", "--status", "failed", *args)
    assert (code, out.strip()) == (0, "purged 3 failed job(s)")
    assert all(store.get(j.id, time.time()) is None for j in failed)
    assert store.get(kept.id, time.time()) is not None
    old = make_job(store)
    store.delete(old.id)
    past = time.time() - 10
    stale = Job(
        id=new_job_id(),
        status=JobStatus.COMPLETED,
        owner="o",
        created_at=past - 100,
        updated_at=past,
        expires_at=past,
        deadline_at=past,
        sla=30,
    )
    store.create(stale, CapturedRequest("GET", "/x"))
    code, out, _ = run(capsys, "jobs", "purge", "--expired", *args)
    assert code == 0 and out.startswith("purged ") and "expired" in out
    assert stale.id not in {j.id for j in store.list_jobs(None, 100, None)}
    assert store.get(kept.id, time.time()) is not None


def test_jobs_without_a_store_say_how_to_name_one(
    capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No --store, --app or ASYNC_ACCEPT_STORE: exit 2 with the way to give one."""
    monkeypatch.delenv("ASYNC_ACCEPT_STORE", raising=False)
    code, _, err = run(capsys, "jobs", "list")
    assert code == 2 and "--store URL" in err


# -- through the application: its store and its executor ---------------------------------------


@pytest.fixture
def rq_app(tmp_path: Path) -> Iterator[Any]:
    """tests.test_cli:RQ_APP, a WSGI app whose middleware uses a Redis store and RQ."""
    from async_accept import worker
    from async_accept.stores.redis import RedisStore

    url = require_redis()
    queue = f"cli-{uuid.uuid4().hex[:8]}"
    app = apps.build_wsgi(
        secret_key=SECRET,
        store=RedisStore.from_url(url, namespace=queue),
        executor=f"rq?app=tests.test_cli:RQ_APP&redis_url={url}&queue={queue}",
    )
    global RQ_APP
    RQ_APP = app
    try:
        yield app
    finally:
        worker.shutdown()
        RQ_APP = None
        app.runtime.executor.connection.close()
        app.store.close()
        wipe_redis(url, queue, queue)


def test_jobs_retry_with_app_hands_the_job_to_its_executor(rq_app: Any, capsys: Any) -> None:
    """jobs retry --app uses the app's store and hands the job to its broker at once."""
    from rq import Queue

    job = make_job(rq_app.store, JobStatus.FAILED)
    code, out, _ = run(capsys, "jobs", "retry", "--app", "tests.test_cli:RQ_APP", "--", job.id)
    assert code == 0 and "handed over" in out
    executor = rq_app.runtime.executor
    rq_queue = Queue(executor.queue, connection=executor.connection, serializer=executor.serializer)
    [rq_job] = rq_queue.get_jobs()
    assert rq_job.args == ["tests.test_cli:RQ_APP", job.id]  # a reference, not the request
    assert rq_app.store.get(job.id, time.time()).status is JobStatus.QUEUED


def test_client_canceled_job_is_not_retried(rq_app: Any, capsys: Any) -> None:
    """A failed job whose client asked to cancel it is not retried."""
    job = make_job(rq_app.store, JobStatus.PROCESSING)
    rq_app.store.cancel(job.id, time.time())
    rq_app.store.fail(job.id, {JobStatus.PROCESSING}, time.time(), {"type": "x"})
    code, _, err = run(capsys, "jobs", "retry", "--app", "tests.test_cli:RQ_APP", "--", job.id)
    assert code == 1 and "canceled by its client" in err


# -- the worker command's refusals ---------------------------------------------------------------


@pytest.fixture
def thread_app(tmp_path: Path) -> Iterator[Any]:
    """tests.test_cli:THREAD_APP, an app that runs its jobs in its own threads."""
    from async_accept import worker

    global THREAD_APP
    THREAD_APP = apps.build_wsgi(secret_key=SECRET, store=f"sqlite:///{tmp_path / 'j.db'}")
    try:
        yield THREAD_APP
    finally:
        worker.shutdown()
        THREAD_APP.store.close()
        THREAD_APP = None


def test_worker_refuses_an_app_without_a_remote_executor(thread_app: Any, capsys: Any) -> None:
    """worker --app on an app with the thread executor: exit 2, saying to configure celery/rq."""
    code, _, err = run(capsys, "worker", "--app", "tests.test_cli:THREAD_APP")
    assert code == 2
    assert "executor='celery' or executor='rq'" in err


def test_worker_refuses_a_different_executor(rq_app: Any, capsys: Any) -> None:
    """worker --executor celery on an app configured with rq: exit 2 naming both."""
    code, _, err = run(capsys, "worker", "--app", "tests.test_cli:RQ_APP", "--executor", "celery")
    assert code == 2 and "--executor celery" in err and "'rq'" in err


def test_worker_with_a_bad_app_path(capsys: Any) -> None:
    """worker --app naming no module, or no attribute: exit 2 with what to fix."""
    code, _, err = run(capsys, "worker", "--app", "no_such_module_xyz:app")
    assert code == 2 and "no module named 'no_such_module_xyz'" in err
    code, _, err = run(capsys, "worker", "--app", "tests.test_cli:NOPE")
    assert code == 2 and "has no 'NOPE'" in err
    code, _, err = run(capsys, "worker", "--app", "tests.test_cli")
    assert code == 2 and "package.module:attribute" in err


def test_module_entry_point_prints_help() -> None:
    """python -m async_accept.cli works as the async-accept command does."""
    done = subprocess.run(
        [sys.executable, "-m", "async_accept.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    for command in ("worker", "jobs", "webhooks"):
        assert command in done.stdout


# -- webhook dead letters ----------------------------------------------------------------------


def test_webhooks_dead_lists_and_replay_requeues(tmp_path: Path, capsys: Any) -> None:
    """webhooks dead lists dead letters; webhooks replay sends one again (pending)."""
    from async_accept.outbox import Delivery, DeliveryState, SQLiteOutbox

    path = tmp_path / "hooks.db"
    outbox = SQLiteOutbox(str(path))
    now = time.time()
    delivery = Delivery(
        id="msg_1",
        url="https://example.test/hook",
        payload="{}",
        created_at=now,
        next_at=now,
        updated_at=now,
        job_id="job-1",
    )
    outbox.enqueue(delivery)
    [claimed] = outbox.due(now)
    assert outbox.mark_dead(claimed, now=now, attempts=8, last_error="HTTP 500", status=500)
    args = ["--outbox", f"sqlite:///{path}"]
    code, out, _ = run(capsys, "webhooks", "dead", *args)
    assert code == 0
    assert out.splitlines()[1].split() == [
        "msg_1",
        "https://example.test/hook",
        "job-1",
        "8",
        "500",
    ]
    code, out, _ = run(capsys, "webhooks", "dead", "--json", *args)
    assert json.loads(out)["last_error"] == "HTTP 500"
    code, out, _ = run(capsys, "webhooks", "replay", "msg_1", *args)
    assert code == 0 and "queued again" in out
    assert outbox.get("msg_1").state is DeliveryState.PENDING  # type: ignore[union-attr]
    code, out, _ = run(capsys, "webhooks", "dead", *args)
    assert out.strip() == "no dead letters"
    code, _, err = run(capsys, "webhooks", "replay", "msg_1", *args)
    assert code == 1 and "not a dead letter" in err
    outbox.close()
