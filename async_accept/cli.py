"""The ``async-accept`` command: run workers, inspect jobs and webhook dead letters.

::

    async-accept worker --app mysite.asgi:application [--executor rq|celery|store]
    async-accept worker --app mysite.asgi:application --concurrency 8   (executor="store")
    async-accept worker --app ... --max-zombies 2   (exit 75 once 2 handlers hang past
                                                     their deadline: restart me)
    async-accept jobs list [--status failed] --store redis://localhost:6379/0
    async-accept jobs show --store ... -- ID
    async-accept jobs watch --store ... -- ID     (live progress; exit 0 if completed)
    async-accept jobs retry --app mysite.asgi:application -- ID
    async-accept jobs purge --status failed | --expired --store ...
    async-accept webhooks dead --outbox redis://localhost:6379/0
    async-accept webhooks replay ID --outbox ...
    async-accept db upgrade --store postgresql://user@host/db?schema=async_accept
    async-accept db sql [--schema async_accept] > async_accept.sql

``--app`` takes the store (and, for ``jobs retry``, the executor) from the
application's own middleware; ``--store`` names a store URL instead (default:
the ``ASYNC_ACCEPT_STORE`` environment variable), with ``--namespace`` for a
SQLite or Redis store's namespace (as the URL's ``?namespace=``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from .cli_common import Fail as _Fail
from .cli_common import print_table as _print_table
from .cli_common import runtime_of as _runtime_of
from .errors import AsyncAcceptError, ConfigurationError, StoreError
from .job import TERMINAL, Job, JobStatus

__all__ = ["main"]

_ID_HELP = "the job id (one starting with '-' goes after '--': jobs show -- -AbC...)"
_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key"}
)


# -- helpers --------------------------------------------------------------------------------


def _time(ts: float | None) -> str:
    from .engine.responses import rfc3339

    return rfc3339(ts) or "-"


def _store(args: argparse.Namespace) -> tuple[Any, Any]:
    """(store, runtime or None) from --app, --store or ASYNC_ACCEPT_STORE."""
    if args.app:
        runtime = _runtime_of(args.app)
        return runtime.store, runtime
    url = args.store or os.environ.get("ASYNC_ACCEPT_STORE")
    if not url:
        raise ConfigurationError(
            "which store? give --store URL (e.g. redis://localhost:6379/0 or "
            "sqlite:///jobs.db), set ASYNC_ACCEPT_STORE, or --app mysite.asgi:application"
        )
    from .stores import resolve_store

    if args.namespace:
        if not url.startswith(("redis://", "rediss://", "unix://", "sqlite://")):
            raise ConfigurationError("--namespace applies to SQLite and Redis stores only")
        return resolve_store(url, namespace=args.namespace), None
    return resolve_store(url), None


def _job_row(job: Job) -> dict[str, Any]:
    error = (job.error or {}).get("type")
    return {
        "id": job.id,
        "status": job.status.value,
        "created_at": _time(job.created_at),
        "attempts": job.attempts,
        "route": job.route or "",
        # The problem type's last segment: "urn:async-accept:problem:worker-lost" -> worker-lost
        "error": str(error).replace("/", ":").rsplit(":", 1)[-1] if error else "",
    }


def _redacted(headers: list[tuple[bytes, bytes]], show: bool = False) -> list[list[str]]:
    out = []
    for k, v in headers:
        name = k.decode("latin-1")
        secret = name in _SECRET_HEADERS and not show
        out.append([name, "<redacted>" if secret else v.decode("latin-1")])
    return out


def _redacted_query(query: bytes, show: bool) -> str:
    """The query string with every value redacted (names kept), unless ``show``."""
    text = query.decode("latin-1")
    if show or not text:
        return text
    return "&".join(
        name + ("=<redacted>" if eq else "")
        for name, eq, _ in (part.partition("=") for part in text.split("&"))
    )


def _opened(runtime: Any, job_id: str, request: Any) -> Any:
    """The request with its sealed credentials opened (the app's or the environment's key)."""
    if runtime is not None:
        return runtime.engine.sealer.open(job_id, request)
    from .options import ENV_SECRET
    from .sealing import RequestSealer
    from .tokens import normalize_secrets

    env = os.environ.get(ENV_SECRET, "")
    keys = [k.strip() for k in env.split(",") if k.strip()]
    if not keys:
        raise ConfigurationError(
            f"--show-secrets opens the sealed credentials with the app's key: give --app, "
            f"or set {ENV_SECRET}"
        )
    return RequestSealer(normalize_secrets(keys)).open(job_id, request)


# -- worker -----------------------------------------------------------------------------------


class PrintedOnce(logging.Filter):
    """On the worker's root handler: let a record through only when no logger on
    its way up already prints it (Django's ``LOGGING`` gives ``django`` a console
    handler that propagates: without this, every Django line showed twice)."""

    def filter(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None and logger is not logging.getLogger():
            for handler in logger.handlers:
                if (
                    isinstance(handler, logging.StreamHandler)
                    and record.levelno >= handler.level
                    and handler.filter(record)
                ):
                    return False
            if not logger.propagate:
                break
            logger = logger.parent
        return True


def cmd_worker(args: argparse.Namespace) -> int:
    from . import worker

    logging.basicConfig(
        level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(PrintedOnce())
    app_paths = list(dict.fromkeys(args.app))
    runtime = worker.load_runtime(app_paths[0])
    if args.max_zombies is not None:
        from .zombies import check_max_zombies

        for path in app_paths:
            worker.load_runtime(path).zombies.limit = check_max_zombies(
                "--max-zombies", args.max_zombies
            )
    executor: Any = runtime.executor  # celery or rq (checked by name below): has .queue
    name = str(getattr(executor, "name", type(executor).__name__))
    if not getattr(executor, "out_of_process", False):
        raise ConfigurationError(
            f"{app_paths[0]} runs its jobs inside the web process (executor={name!r}); "
            "to use workers configure executor='celery' or executor='rq' (or executor='store': "
            "no broker) in its middleware"
        )
    if args.executor and args.executor != name:
        raise ConfigurationError(
            f"--executor {args.executor}, but {app_paths[0]} is configured with executor={name!r}"
        )
    if name == "store":  # the store is the queue: executors/store.py runs the loop
        from .executors.store import serve

        return _recycled_exit(
            app_paths,
            serve(
                app_paths,
                concurrency=args.concurrency,
                store_url=args.store,
                poll_interval=args.poll_interval,
                shutdown_timeout=runtime.options.shutdown_timeout,
            ),
        )
    if name not in ("celery", "rq"):
        raise ConfigurationError(
            f"executor={name!r} has no worker here: run the worker its own package provides"
        )
    queue = args.queue or executor.queue
    # A broker message can't make this process import anything else.
    worker.allow_only(app_paths)

    def stop_while_starting(signum: int, frame: Any) -> None:
        # Until Celery or RQ install their own handlers: stop cleanly, not mid-air.
        raise SystemExit(0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop_while_starting)
    try:
        # Fail fast on a broken app; ASGI lifespan startup, sweeper and worker heartbeat.
        for path in app_paths:
            worker.start_worker(path)
        if name == "rq":
            code = _rq_worker(executor, queue, args)
        else:
            code = _celery_worker(executor, queue, args)
    finally:
        worker.shutdown(runtime.options.shutdown_timeout)
    return _recycled_exit(app_paths, code)


def _recycled_exit(app_paths: list[str], code: int) -> int:
    """A worker that recycled itself (``max_zombies`` handlers past their deadline)
    exits with EXIT_RECYCLE for its supervisor to start a fresh one, and at once: a
    zombie in a thread would hold up the interpreter's exit (joined threads) for good.
    The drain and requeue ran already."""
    from . import worker
    from .zombies import EXIT_RECYCLE

    if code != EXIT_RECYCLE and not any(worker.load_runtime(path).recycling for path in app_paths):
        return code
    logging.getLogger("async_accept").warning(
        "async_accept: worker %d exits with status %d to be replaced: handlers past their "
        "deadline held its slots (max_zombies); its supervisor starts a fresh one",
        os.getpid(),
        EXIT_RECYCLE,
    )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_RECYCLE)


#: The longest wait between two attempts of a worker to reach its Redis again.
RECONNECT_CAP = 30.0


def _rq_worker(executor: Any, queue: str, args: argparse.Namespace) -> int:
    from redis.exceptions import RedisError
    from rq import Queue, SimpleWorker

    from .supervision import FailureStreak

    log = logging.getLogger("async_accept")
    stop: list[int] = []
    outage = FailureStreak("the RQ worker's Redis")

    def on_signal(signum: int, frame: Any) -> None:
        stop.append(signum)

    def wait(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not stop and time.monotonic() < deadline:
            time.sleep(0.1)

    delay = 0.5
    restarts = 0
    while True:
        # SimpleWorker: jobs run in this process, so the application, its event loop
        # and its lifespan resources are loaded once, not once per job in a fork.
        rq_worker: Any = None
        began = time.monotonic()
        try:
            # Built inside the try: building it talks to Redis, which may be down.
            q = Queue(queue, connection=executor.connection, serializer=executor.serializer)
            rq_worker = SimpleWorker(
                [q], connection=executor.connection, serializer=executor.serializer
            )
            worked = rq_worker.work(
                burst=args.burst, logging_level=args.loglevel.upper(), with_scheduler=False
            )
        except (RedisError, OSError) as exc:  # Redis went away where RQ doesn't retry
            outage.failed(f"{type(exc).__name__}: {exc}")
            worked = False
        # Asked to stop (SIGTERM/SIGINT: RQ notes when, whether it was busy or not).
        if args.burst or stop or getattr(rq_worker, "_shutdown_requested_date", None) is not None:
            return 0
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        # RQ's loop ended on its own (it quits on a Redis timeout or an error it does
        # not handle): start it again once Redis answers, however long that takes, with
        # a capped backoff. One line per streak, not one per attempt.
        if worked or time.monotonic() - began > 60:
            delay, restarts = 0.5, 0
        restarts += 1
        if restarts == 1:
            log.warning("async_accept: the RQ worker's loop ended; starting it again")
        while not stop:
            wait(delay)
            delay = min(delay * 2, RECONNECT_CAP)
            if stop:
                break
            try:
                executor.connection.ping()
            except (RedisError, OSError) as exc:
                outage.failed(f"{type(exc).__name__}: {exc}")
                continue
            outage.succeeded()
            break
        if stop:
            return 0


def _celery_worker(executor: Any, queue: str, args: argparse.Namespace) -> int:
    from .executors.celery import register_task

    app = executor.celery
    register_task(app)
    if "broker_connection_max_retries" not in app.conf.changes:
        # Celery gives up on its broker after 100 attempts by default: keep trying
        # (its backoff is capped), so an outage of any length needs no restart.
        app.conf.broker_connection_max_retries = None
    argv = [
        "worker",
        "--queues",
        queue,
        "--pool",
        args.pool,
        "--concurrency",
        str(args.concurrency),
        "--loglevel",
        args.loglevel.upper(),
        "--hostname",
        f"async-accept-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    app.worker_main(argv)
    return 0


# -- jobs -------------------------------------------------------------------------------------


def cmd_jobs_list(args: argparse.Namespace) -> int:
    store, _ = _store(args)
    status = JobStatus(args.status) if args.status else None
    jobs = store.list_jobs(status, args.limit, None)
    if args.json:
        for job in jobs:
            print(job.to_json())
        return 0
    if not jobs:
        print("no jobs" + (f" {args.status}" if args.status else ""))
        return 0
    _print_table(
        [_job_row(j) for j in jobs], ("id", "status", "created_at", "attempts", "route", "error")
    )
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    store, runtime = _store(args)
    show = bool(args.show_secrets)
    job = store.get(args.id, time.time())
    if job is None:
        raise _Fail(f"no job {args.id}")
    out: dict[str, Any] = {"job": job.to_dict()}
    request = store.get_request(job.id)
    if request is not None:
        if show:
            request = _opened(runtime, job.id, request)
        out["request"] = {
            "method": request.method,
            "path": request.root_path + request.path,
            "query": _redacted_query(request.query_string, show),
            "headers": _redacted(request.headers, show),
            "body_bytes": len(request.body),
        }
    result = store.get_result(job.id) if job.result_status is not None else None
    if result is not None:
        out["result"] = {
            "status": result.status,
            "headers": _redacted(result.headers),
            "body_bytes": len(result.body),
        }
    print(json.dumps(out, indent=2))
    return 0


def cmd_jobs_watch(args: argparse.Namespace) -> int:
    from .feed import ChangeFeed, signal_for

    store, _ = _store(args)
    job = store.get(args.id, time.time())
    if job is None:
        raise _Fail(f"no job {args.id}")
    feed = ChangeFeed(lambda job_id: store.get(job_id, time.time()), lambda: signal_for(store))
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    tty = sys.stdout.isatty()
    _show(job, tty)
    while not job.terminal:
        left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
        if left <= 0:
            print(file=sys.stdout)
            raise _Fail(f"job {job.id} is still {job.status.value} after {args.timeout:g} s")
        changed = feed.wait(job, left)
        if changed is None:
            raise _Fail(f"job {args.id} is gone")
        if changed is not job:
            job = changed
            _show(job, tty)
    if tty:
        print()
    error = job.error or {}
    detail = f": {error.get('title')}: {error.get('detail')}" if error else ""
    print(f"{job.id} {job.status.value}{detail}")
    return 0 if job.status is JobStatus.COMPLETED else 1


def _show(job: Job, tty: bool) -> None:
    """One line per change; on a terminal, one line redrawn in place."""
    pct = job.percent
    width = 30
    filled = 0 if pct is None else round(width * max(0.0, min(pct, 100.0)) / 100)
    bar = "#" * filled + "-" * (width - filled)
    text = f"[{bar}] {'' if pct is None else f'{pct:.0f}%'} {job.status.value}"
    if job.message:
        text += f" {job.message}"
    if tty:
        sys.stdout.write("\r" + text.ljust(79))
        sys.stdout.flush()
    else:
        print(text)


def cmd_jobs_retry(args: argparse.Namespace) -> int:
    store, runtime = _store(args)
    now = time.time()
    job = store.get(args.id, now)
    if job is None:
        raise _Fail(f"no job {args.id}")
    if job.status is not JobStatus.FAILED:
        raise _Fail(f"job {job.id} is {job.status.value}: only failed jobs are retried")
    if job.cancel_requested:
        raise _Fail(f"job {job.id} was canceled by its client: not retried")
    retry = getattr(store, "retry", None)
    if retry is None:
        raise _Fail(f"{type(store).__name__} can't put a failed job back in the queue")
    again = retry(job.id, now)
    if again is None:
        raise _Fail(f"job {job.id} changed meanwhile: not retried")
    executor: Any = getattr(runtime, "executor", None)
    if executor is not None and getattr(executor, "out_of_process", False):
        executor.start(runtime, None)
        try:
            executor.submit(job.id)
            handed = executor.flush(10.0)
        finally:
            executor.shutdown(5.0)
        if handed:
            print(f"job {job.id} queued again (attempt {again.attempts + 1}) and handed over")
            return 0
    print(
        f"job {job.id} queued again (attempt {again.attempts + 1}); a web process hands it "
        "over within its requeue_after"
    )
    return 0


def cmd_jobs_purge(args: argparse.Namespace) -> int:
    store, _ = _store(args)
    if args.expired:
        n = store.purge_expired(time.time())
        print(f"purged {n} expired job(s)")
        return 0
    status = JobStatus(args.status)
    n = 0
    while True:
        batch = store.list_jobs(status, 500, None)
        deleted = sum(1 for job in batch if store.delete(job.id))
        n += deleted
        if len(batch) < 500 or not deleted:
            break
    print(f"purged {n} {status.value} job(s)")
    return 0


# -- the parser -------------------------------------------------------------------------------


def _store_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where the jobs are")
    g.add_argument("--store", help="store URL (default: $ASYNC_ACCEPT_STORE)")
    g.add_argument(
        "--namespace",
        help="SQLite or Redis store namespace (default: the URL's ?namespace=, else none "
        "for SQLite and async_accept for Redis)",
    )
    g.add_argument("--app", help="take the store from this application, e.g. mysite.asgi:app")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="async-accept", description="Workers and job inspection for async_accept."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    w = sub.add_parser(
        "worker",
        help="run a worker for the application's executor (Celery or RQ)",
        description="Import the application, and consume its executor's queue.",
    )
    w.add_argument(
        "--app",
        required=True,
        action="append",
        help="dotted path, e.g. mysite.asgi:application; repeat it to also run the jobs of "
        "other apps on the same queue (the first one's executor settings apply)",
    )
    w.add_argument(
        "--executor", choices=("celery", "rq", "store"), help="check the app uses this one"
    )
    w.add_argument("--queue", help="consume this queue instead of the configured one")
    w.add_argument("--loglevel", default="info", help="debug, info (default), warning, error")
    w.add_argument(
        "--pool", default="threads", choices=("threads", "prefork", "solo"), help="Celery pool"
    )
    w.add_argument(
        "--concurrency", type=int, default=4, help="Celery and store workers: jobs at once (4)"
    )
    w.add_argument("--store", help="store workers: the queue (default: the app's store)")
    w.add_argument("--poll-interval", type=float, help="store workers: s between looks")
    w.add_argument("--burst", action="store_true", help="RQ: quit once the queue is empty")
    w.add_argument(
        "--max-zombies",
        type=int,
        help="exit (status 75, for the supervisor to start a fresh worker) once this many "
        "handlers run past their deadline here (default: the app's max_zombies option)",
    )
    w.set_defaults(func=cmd_worker)

    jobs = sub.add_parser("jobs", help="inspect, retry and purge jobs")
    jsub = jobs.add_subparsers(dest="action", required=True)
    p = jsub.add_parser("list", help="list jobs, oldest first")
    p.add_argument("--status", choices=[s.value for s in JobStatus])
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    _store_args(p)
    p.set_defaults(func=cmd_jobs_list)
    p = jsub.add_parser("show", help="one job, its request and result (secrets redacted)")
    p.add_argument("id", help=_ID_HELP)
    p.add_argument(
        "--show-secrets",
        action="store_true",
        help="print credentials and query values as captured (opened with the app's key)",
    )
    _store_args(p)
    p.set_defaults(func=cmd_jobs_show)
    p = jsub.add_parser("watch", help="follow a job's progress until it ends (exit 0: completed)")
    p.add_argument("id", help=_ID_HELP)
    p.add_argument("--timeout", type=float, help="give up after this many seconds (exit 1)")
    _store_args(p)
    p.set_defaults(func=cmd_jobs_watch)
    p = jsub.add_parser("retry", help="run a failed job again (a new attempt)")
    p.add_argument("id", help=_ID_HELP)
    _store_args(p)
    p.set_defaults(func=cmd_jobs_retry)
    p = jsub.add_parser("purge", help="delete finished jobs")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--status", choices=sorted(s.value for s in TERMINAL))
    what.add_argument("--expired", action="store_true", help="jobs past their TTL")
    _store_args(p)
    p.set_defaults(func=cmd_jobs_purge)

    from .cli_db import add_db_commands
    from .cli_webhooks import add_webhook_commands

    add_webhook_commands(sub)

    add_db_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``async-accept``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Like uvicorn and gunicorn: the application is importable from where you run.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return int(args.func(args))
    except BrokenPipeError:  # `async-accept jobs list | head`: the reader has had enough
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except _Fail as exc:
        print(f"async-accept: {exc}", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"async-accept: the store failed: {exc}", file=sys.stderr)
        return 1
    except (AsyncAcceptError, ImportError) as exc:
        print(f"async-accept: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover - python -m async_accept.cli
    sys.exit(main())
