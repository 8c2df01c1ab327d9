"""The store is the queue: workers claim queued jobs straight from it, no broker.

**Web side** -- :class:`StoreExecutor` (``executor="store"``). The store write
of the accept is the hand-over: a queued job *is* the message. ``submit`` only
wakes the workers, from a background thread, one signal per burst: a
PostgreSQL store sends ``NOTIFY``; stores without a signal (SQLite, Redis)
need nothing, their workers poll.

**Worker side** -- :class:`StoreWorker`, what ``async-accept worker --app
mysite.asgi:application`` runs for such an application. It keeps up to
``concurrency`` jobs running: it asks the store for queued jobs, and each one
goes through the same claim (compare-and-set) as in a web process, so a job
runs once however many workers race for it. Between rounds it waits for a
``LISTEN`` notification (PostgreSQL: the listening thread looks for the queued
jobs itself; a slow fallback poll covers a lost one) or polls (SQLite: several
worker processes on one file; Redis). An ASGI application's jobs are started on
its event loop, with no thread of the worker waiting for each. Heartbeats,
progress and cancel go through the store as always: a worker killed mid-job
leaves a job that turns ``failed`` (``worker-lost``) within ``worker_lost_after``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, ExecutorError, StoreError
from ..job import Job, JobStatus
from .base import BaseExecutor, JobHost

if TYPE_CHECKING:
    from ..stores import Store

__all__ = ["FALLBACK_POLL", "POLL_INTERVAL", "StoreExecutor", "StoreWorker", "serve"]

log = logging.getLogger("async_accept")

#: Seconds between polls of a store that can't signal new jobs (SQLite, Redis).
POLL_INTERVAL = 0.5
#: Seconds between polls of a store that signals them (a lost signal is found then).
FALLBACK_POLL = 5.0
#: Other apps' queued jobs a worker's look reaches past at most.
MAX_SKIPPED = 1000


class StoreExecutor(BaseExecutor):
    """Jobs wait in the store until an ``async-accept worker`` claims them.

    Needs a store that every process shares (PostgreSQL on any number of
    machines; SQLite on one; Redis). A store whose database announces queued
    jobs itself (``announces_queued``: PostgreSQL, a trigger in the transaction
    that queues the job) needs nothing more; with a store that can only be told
    (``notify_queued``) a thread of this executor tells it after submits, and
    ``notify=False`` leaves waking the workers to their polls instead.
    """

    name = "store"
    out_of_process = True
    supports = frozenset({"asgi", "wsgi"})

    def __init__(self, notify: bool | int = True) -> None:
        self.notify = bool(notify)
        self._runtime: JobHost | None = None
        self._closed = True
        self._init_state()

    def _init_state(self) -> None:
        self._wake = threading.Event()
        self._sent = threading.Condition()
        self._asked = 0  # submits so far
        self._done = 0  # submits covered by a signal already sent
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return "<StoreExecutor>"

    def _signal(self) -> Callable[[], None] | None:
        runtime = self._runtime
        if runtime is None or not self.notify:
            return None
        if getattr(runtime.store, "announces_queued", False):
            return None  # the database wakes the workers in the job's own transaction
        signal: Callable[[], None] | None = getattr(runtime.store, "notify_queued", None)
        return signal

    def start(self, runtime: JobHost, loop: asyncio.AbstractEventLoop | None) -> None:
        if not getattr(runtime.store, "shared", False):
            raise ConfigurationError(
                "executor='store' hands jobs to worker processes through the store, which "
                f"they must share: {runtime.store!r} is private to this process; use "
                "store='postgresql://...', 'sqlite:///jobs.db' or 'redis://...'"
            )
        self._runtime = runtime
        self._closed = False
        if self._signal() is not None and (self._thread is None or not self._thread.is_alive()):
            self._thread = threading.Thread(
                target=self._signal_forever, name="async-accept-store-notify", daemon=True
            )
            self._thread.start()

    def after_fork(self) -> None:
        """A forked child: the parent's signalling thread is not ours."""
        self._runtime = None
        self._closed = True
        self._init_state()

    def submit(self, job_id: str) -> None:
        """The job is in the store already: wake the workers, unless the store did
        (never touches the network)."""
        if self._closed or self._runtime is None:
            raise ExecutorError("the store executor is not running")
        if self._thread is not None:
            with self._sent:
                self._asked += 1
            if not self._wake.is_set():  # set: the thread has yet to read _asked
                self._wake.set()

    # is_pending (always False: queued in the store is all there is, the sweeper may
    # signal again) and cancel (workers see it through their heartbeats): BaseExecutor's.

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the workers were signalled for everything submitted so far."""
        deadline = time.monotonic() + timeout
        with self._sent:
            target = self._asked
            while self._done < target and self._thread is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._sent.wait(left)
        return True

    def shutdown(self, timeout: float) -> None:
        self._closed = True
        thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, timeout))
        self._thread = None

    def _signal_forever(self) -> None:
        backoff = 0.0
        while not self._closed:
            self._wake.wait(backoff or None)
            self._wake.clear()
            with self._sent:
                target = self._asked
            if target == self._done:
                continue
            signal = self._signal()
            try:
                if signal is not None:
                    signal()
            except StoreError:
                # The jobs are safe in the store; the workers' fallback poll finds them.
                backoff = min(max(backoff * 2, 0.1), 5.0)
                log.warning("async_accept: could not wake the workers", exc_info=True)
                self._wake.set()
                continue
            backoff = 0.0
            with self._sent:
                self._done = target
                self._sent.notify_all()


def _candidates(
    store: Any,
    limit: int,
    owns: Callable[[Job], bool] | None = None,
    skipped: list[int] | None = None,
) -> list[str]:
    """Ids of queued jobs to try, oldest first among twice as many, shuffled a little
    so that workers starting together don't all race for the same few.

    With ``owns`` (the application's rule: a job of a route it marks), another
    app's queued jobs are left alone; ``skipped[0]`` counts those met last time,
    so the next look reaches past them to this app's own."""
    now = time.time()
    queued_ids = getattr(store, "queued_ids", None)
    ids: list[str]
    if owns is not None:
        extra = 0 if skipped is None else min(skipped[0], MAX_SKIPPED)
        listed = store.list_jobs(JobStatus.QUEUED, 2 * limit + extra, None)
        live = [j for j in listed if not j.cancel_requested and j.expires_at > now]
        ids = [job.id for job in live if owns(job)]
        if skipped is not None:
            skipped[0] = len(listed) - len(ids)  # not this app's, or not claimable
    elif queued_ids is not None:
        ids = list(queued_ids(now, 2 * limit))
    else:
        ids = [
            job.id
            for job in store.list_jobs(JobStatus.QUEUED, 2 * limit, None)
            if not job.cancel_requested and job.expires_at > now
        ]
    if len(ids) > limit:
        head = ids[: 2 * limit]
        random.shuffle(head)
        ids = head[:limit]
    return ids


class StoreWorker:
    """Runs the queued jobs of one application, ``concurrency`` at a time.

    ``run_job(job_id)`` runs one job (claim, replay, finish); ``store`` is where
    the queued jobs are found. ``poll_interval`` (default: :data:`FALLBACK_POLL`
    when the store signals new jobs, else :data:`POLL_INTERVAL`) bounds how long
    a job can wait unseen. ``owns(job)``, when given, says which queued jobs are
    this application's (see ownership.py): the others are never claimed here.
    ``start_job(job_id)``, when given, starts a job without a thread of this worker
    waiting for it (an ASGI application's event loop runs it) and returns its future,
    or None to have it run by ``run_job`` on a thread of the pool.
    """

    def __init__(
        self,
        run_job: Callable[[str], Any],
        store: Store,
        *,
        concurrency: int = 4,
        poll_interval: float | None = None,
        owns: Callable[[Job], bool] | None = None,
        abandon: Callable[[str], bool] | None = None,
        start_job: Callable[[str], Future[Any] | None] | None = None,
    ) -> None:
        self.owns = owns
        self.start_job = start_job
        self._skipped = [0]
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(f"concurrency={concurrency!r} must be a whole number >= 1")
        self.run_job = run_job
        self.store = store
        self.concurrency = concurrency
        #: jobs not waited for at stop (handlers past their deadline: they may never return)
        self.abandon = abandon
        self.listens = callable(getattr(store, "listener", None))
        default = FALLBACK_POLL if self.listens else POLL_INTERVAL
        self.poll_interval = float(default if poll_interval is None else poll_interval)
        if not self.poll_interval > 0:
            raise ConfigurationError(f"poll_interval={poll_interval!r} must be > 0")
        self._wake = threading.Event()
        self._stop = threading.Event()
        #: job id -> its future (None: being started)
        self._running: dict[str, Future[Any] | None] = {}
        self._lock = threading.Lock()
        #: Whether a job's end should start a look for queued jobs: always for a store
        #: that can't signal them; for one that does, only while jobs may be waiting that
        #: found no free slot (a look came back full, or a signal came while all were busy).
        self._more = not self.listens
        self._looking = threading.Lock()  # one look at a time (the loop's, the listener's)
        self._pool: ThreadPoolExecutor | None = None

    def stop(self) -> None:
        """Take no more jobs; :meth:`run` returns once the running ones ended."""
        self._stop.set()
        self._wake.set()

    def _listen_forever(self) -> None:
        listener = self.store.listener()  # type: ignore[attr-defined]
        backoff = 0.0
        try:
            while not self._stop.is_set():
                try:
                    if listener.wait(min(self.poll_interval, 1.0)):
                        self._signalled()
                    backoff = 0.0
                except StoreError:
                    # Reconnects on the next wait; meanwhile the fallback poll runs.
                    backoff = min(max(backoff * 2, 0.2), 5.0)
                    self._wake.set()
                    self._stop.wait(backoff)
        finally:
            listener.close()

    def _signalled(self) -> None:
        """Jobs were queued: look for them in this thread, the listener's (a hop less
        on the way to the job than waking the loop of :meth:`run` for it)."""
        pool = self._pool
        if pool is None or self._stop.is_set():
            return
        try:
            again = self._round(pool)
        except Exception as exc:
            if not isinstance(exc, StoreError):
                log.exception("async_accept: looking for queued jobs failed")
            again = True  # the loop of run() tries again, with its backoff
        if again:
            self._wake.set()

    def _round(self, pool: ThreadPoolExecutor) -> bool:
        """Look for queued jobs and start those found, up to the free slots. True when
        it filled them all (more may be waiting: look again once a slot frees)."""
        with self._looking:
            with self._lock:
                free = self.concurrency - len(self._running)
                if free <= 0:
                    self._more = True  # woken while busy: look once a slot frees
                    return False
            ids = _candidates(self.store, free, self.owns, self._skipped)
            with self._lock:
                fresh = [j for j in ids if j not in self._running]
                self._running.update(dict.fromkeys(fresh))
                # Jobs of other apps met: this app's may be queued past them (the next
                # look reaches further), so an end looks again, as without a signal.
                self._more = not self.listens or len(ids) >= free or self._skipped[0] > 0
            for job_id in fresh:
                try:
                    future = self._start(pool, job_id)
                except Exception:
                    log.exception("async_accept: job %s failed to start", job_id)
                    self._ended(job_id)
                    continue
                with self._lock:
                    if job_id in self._running:  # not ended already
                        self._running[job_id] = future
            return bool(fresh) and len(fresh) == free

    def _run_one(self, job_id: str) -> None:
        try:
            self.run_job(job_id)
        except Exception:
            log.exception("async_accept: job %s failed to run", job_id)
        finally:
            self._ended(job_id)

    def _ended(self, job_id: str, future: Future[Any] | None = None) -> None:
        if future is not None and not future.cancelled():
            exc = future.exception()
            if isinstance(exc, Exception):
                log.error("async_accept: job %s failed to run", job_id, exc_info=exc)
        with self._lock:
            self._running.pop(job_id, None)
            look = self._more or not self.listens
        if look:
            self._wake.set()

    def _start(self, pool: ThreadPoolExecutor, job_id: str) -> Future[Any]:
        future = None if self.start_job is None else self.start_job(job_id)
        if future is None:
            return pool.submit(self._run_one, job_id)
        future.add_done_callback(lambda f: self._ended(job_id, f))
        return future

    def run(self, timeout: float = 30.0) -> None:
        """Claim and run jobs until :meth:`stop`; then wait up to ``timeout`` seconds
        for the running ones."""
        pool = self._pool = ThreadPoolExecutor(
            self.concurrency, thread_name_prefix="async-accept-job"
        )
        listener: threading.Thread | None = None
        if self.listens:
            listener = threading.Thread(
                target=self._listen_forever, name="async-accept-listen", daemon=True
            )
            listener.start()
        backoff = 0.0
        try:
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    again = self._round(pool)
                    backoff = 0.0
                except StoreError:
                    backoff = min(max(backoff * 2, 0.2), 5.0)
                    log.warning("async_accept: the store is unreachable; retrying")
                    self._stop.wait(backoff)
                    continue
                if again:
                    continue  # maybe more: look again as soon as a slot frees up
                self._wake.wait(self.poll_interval)
        finally:
            with self._looking:  # a round of the listener's is over before the pool is
                self._pool = None
            pool.shutdown(wait=False)
            deadline = time.monotonic() + timeout
            with self._lock:
                running = [
                    future
                    for job_id, future in self._running.items()
                    if future is not None and (self.abandon is None or not self.abandon(job_id))
                ]
            for future in running:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                # Errors were logged by _run_one; a job still running is left to the deadman.
                with contextlib.suppress(Exception):
                    future.result(left)
            if listener is not None:
                listener.join(2.0)


def _place(store: Any) -> tuple[str, str] | None:
    """Where a store keeps its jobs, when that can be told for sure: its backend and a
    name for the place (the database's own marker, a file's real path), or None."""
    kind = type(store).__name__
    # Two namespaces of one database or file are two places: jobs never cross them.
    namespace = getattr(store, "namespace", None)
    within = f" namespace={namespace}" if isinstance(namespace, str) else ""
    marker = getattr(store, "instance_id", None)
    if callable(marker):
        return kind, str(marker()) + within
    path = getattr(store, "path", None)
    if isinstance(path, str):
        return kind, os.path.realpath(path) + within
    return None


def check_same_store(app_store: Any, worker_store: Any, app_path: str, store_url: str) -> None:
    """Refuse a worker whose ``--store`` is not where ``app_path`` puts its jobs: it
    would wait for jobs that never come (or run another application's)."""
    if worker_store is app_store:
        return
    kinds = (type(app_store).__name__, type(worker_store).__name__)
    try:
        places = (_place(app_store), _place(worker_store))
    except StoreError as exc:  # not reachable now: the worker waits for it as usual
        log.warning(
            "async_accept: could not check --store %s against %s: %s", store_url, app_path, exc
        )
        return
    if kinds[0] == kinds[1] and (None in places or places[0] == places[1]):
        return  # the same place, or one this check can't tell apart (then trusted)
    raise ConfigurationError(
        f"--store {store_url} is not the store {app_path} accepts its jobs into "
        f"({app_store!r}): the worker would never see them. Drop --store (the worker "
        "then uses the application's own), or give the store URL the application is "
        "configured with (ASYNC_ACCEPT_STORE or its middleware's store=)"
    )


def serve(
    app_paths: list[str],
    *,
    concurrency: int = 4,
    store_url: str | None = None,
    poll_interval: float | None = None,
    shutdown_timeout: float = 30.0,
) -> int:
    """``async-accept worker`` for applications configured with ``executor="store"``:
    one :class:`StoreWorker` per application (its own store, or ``store_url``) until
    SIGTERM/SIGINT, then the running jobs get ``shutdown_timeout`` seconds.

    A runtime that recycles itself (``max_zombies`` handlers past their deadline)
    stops every worker here the same way; then the answer is ``EXIT_RECYCLE``
    instead of 0, for the caller to exit so that its supervisor starts a fresh one."""
    from .. import worker
    from ..zombies import EXIT_RECYCLE

    stores: list[Any] = []
    if store_url:
        from ..stores import resolve_store

        stores.append(resolve_store(store_url))
    workers: list[StoreWorker] = []
    runtimes: list[Any] = []

    def stop_all() -> None:
        for w in workers:
            w.stop()

    def on_signal(signum: int, frame: Any) -> None:
        stop_all()

    try:
        for path in app_paths:
            runtime = worker.start_worker(path)  # lifespan, sweeper, heartbeat
            runtime.zombies.on_recycle = stop_all  # max_zombies reached: stop, drain, exit
            runtimes.append(runtime)
            app_store = runtime.store
            store = stores[0] if stores else app_store
            if store_url:
                check_same_store(app_store, store, path, store_url)

            def run(job_id: str, path: str = path) -> Any:
                return worker.run_job(path, job_id)

            def start(job_id: str, path: str = path) -> Future[Any] | None:
                return worker.start_job(path, job_id)

            workers.append(
                StoreWorker(
                    run,
                    store,
                    concurrency=concurrency,
                    poll_interval=poll_interval,
                    owns=runtime.engine.owns_job,  # never another app's jobs
                    abandon=runtime.is_zombie,
                    start_job=start,
                )
            )
        worker.allow_only(app_paths)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        log.info(
            "async_accept: worker %d ready. It runs the queued jobs of %s, %d at a time",
            os.getpid(),
            ", ".join(app_paths),
            concurrency,
        )
        threads = [
            threading.Thread(
                target=w.run, args=(shutdown_timeout,), name="async-accept-store-worker"
            )
            for w in workers[1:]
        ]
        for t in threads:
            t.start()
        if workers:
            workers[0].run(shutdown_timeout)
        for t in threads:
            t.join()
        return EXIT_RECYCLE if any(rt.recycling for rt in runtimes) else 0
    finally:
        for s in stores:
            s.close()
        worker.shutdown(shutdown_timeout)
