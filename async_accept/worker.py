"""Beyond one machine: running jobs in a worker process.

A broker message is only a reference, ``(app path, job id)``; the captured
request stays in the store.

**Web side** -- :class:`~async_accept.executors.remote.RemoteExecutor` (in
``executors/remote.py``, importable from here too), the base of the Celery and
RQ executors. ``submit`` appends the id to an in-process buffer and returns (the
accept path never waits on the broker: the store write is the commit point). A
sender thread hands the buffer over in batches. Before publishing, it marks
the jobs dispatched in the store (``Store.mark_dispatched``, compare-and-set),
so that the sweepers of all web processes, which hand back every queued job
older than ``requeue_after`` that they don't hold themselves, re-send a job
only when nobody dispatched it within ``redispatch_after`` seconds. A job
recorded and never published (its process died in between) is therefore
handed over by another live process's sweeper; one legitimately waiting in a
busy broker is not duplicated on every sweep. Duplicates that still happen are
harmless: the store's claim runs a job once.

**Worker side** -- :func:`load_runtime` imports the application by its dotted
path (``"mysite.asgi:application"``), finds the async_accept middleware in it
and returns its :class:`~async_accept.runtime.Runtime`, whose replay target is
the whole application: replayed requests carry a marker that the middleware
lets through. :func:`run_job` is what the Celery task and the RQ job call.
ASGI applications get one long-lived event loop thread per process: their
lifespan startup runs there once (so what it creates, such as connection
pools, is there for the jobs) and every job replays on that loop. WSGI
applications replay in the calling thread. Heartbeats, progress and cancel go
through the store exactly as in a web process, so a worker killed with
``kill -9`` leaves a job that turns ``failed`` (``worker-lost``) within
``worker_lost_after``.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ._imports import import_from_string
from .errors import ClaimFailed, ConfigurationError
from .executors.remote import RemoteExecutor, check_app_path

if TYPE_CHECKING:
    from .frontdoor import FrontDoor
    from .job import Job
    from .runtime import Runtime

__all__ = [
    "RemoteExecutor",
    "allow_only",
    "allowed_apps",
    "find_front_door",
    "import_app",
    "load_runtime",
    "run_job",
    "run_jobs",
    "shutdown",
    "start_job",
    "start_worker",
]

log = logging.getLogger("async_accept")

#: How long a worker keeps trying to claim a job whose claim the store failed.
CLAIM_PATIENCE = 60.0

#: How long a worker waits for an ASGI application's lifespan startup.
STARTUP_TIMEOUT = 60.0

# -- the worker side: import the application, find its runtime, run jobs ------------------------


def import_app(path: str) -> Any:
    """The object ``"package.module:attribute"`` names (dots allowed after the colon)."""
    return import_from_string(check_app_path(path, "worker"), "app")


# Attributes through which frameworks and middleware reach the app they wrap.
_LINKS = ("middleware_stack", "_door", "app", "wsgi_app", "application", "_app", "handler")


def _walk(root: Any) -> FrontDoor | None:
    from .frontdoor import FrontDoor

    seen: set[int] = set()
    todo = [root]
    while todo and len(seen) < 500:
        node = todo.pop(0)
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, FrontDoor):
            return node
        for name in _LINKS:
            try:
                child = getattr(node, name, None)
            except Exception:  # a property that can't be read here
                continue
            if child is not None and not isinstance(child, (str, bytes, int, float)):
                todo.append(child)
    return None


def _build_lazy_stack(app: Any) -> None:
    """Starlette (and FastAPI) build their middleware stack on the first call: build it."""
    build = getattr(app, "build_middleware_stack", None)
    if callable(build) and getattr(app, "middleware_stack", "") is None:
        app.middleware_stack = build()


def find_front_door(app: Any, created: Iterable[FrontDoor] = ()) -> FrontDoor:
    """The async_accept middleware inside ``app``: found by walking the wrapped
    apps, else the one front door built in this process (``created``: those
    built while importing the app, preferred)."""
    from .frontdoor import FRONT_DOORS

    door = _walk(app)
    if door is None:
        _build_lazy_stack(app)
        door = _walk(app)
    if door is not None:
        return door
    candidates = list(created) or list(FRONT_DOORS)
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ConfigurationError(
            f"no async_accept middleware found in {app!r}: add AsyncAcceptMiddleware to the "
            "application the worker imports (the same one the web server runs)"
        )
    raise ConfigurationError(
        f"{len(candidates)} async_accept middlewares were built in this process and none "
        f"is reachable from {app!r}: point the worker at the application object that "
        "wraps the one the web server uses"
    )


def _kind(app: Any) -> str:
    """ "asgi" when calling ``app`` gives a coroutine, else "wsgi"."""
    call: Any = app
    if not inspect.isroutine(app):
        # Looked up on the class, as Python does: `app.__call__` would be a bound method.
        call = next(
            (c.__dict__["__call__"] for c in type(app).__mro__ if "__call__" in c.__dict__), None
        )
    return "asgi" if inspect.iscoroutinefunction(call) else "wsgi"


def _find(app_path: str) -> tuple[Any, FrontDoor]:
    from .frontdoor import FRONT_DOORS

    before = set(FRONT_DOORS)
    app = import_app(app_path)
    door = find_front_door(app, [d for d in list(FRONT_DOORS) if d not in before])
    return app, door


class _Loaded:
    """One imported application in this process: its runtime, and for ASGI the loop."""

    def __init__(self, app_path: str) -> None:
        self.app_path = app_path
        self.app, self.door = _find(app_path)
        self.runtime = self.door.runtime
        self.runtime.role = "worker"
        if _kind(self.app) == self.door.kind:
            # The whole application: outer middleware (sessions, auth) runs again on replay.
            self.runtime.app = self.app
        self.host: _LoopHost | None = None
        self.started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self.started:
                return
            if self.door.kind == "asgi":
                host = _LoopHost(self.runtime, lifespan=self.runtime.app is self.app)
                host.start(STARTUP_TIMEOUT)
                self.host = host
            else:
                self.runtime.start()
            self.started = True

    def run(self, job_id: str) -> Job | None:
        """Run ``job_id`` here. A claim the store fails (down, restarting) is tried again
        with a capped backoff for up to ``CLAIM_PATIENCE`` seconds, or until this process
        drains: the broker already handed this message over and won't again, so giving
        up at once would leave the job queued until a sweeper re-sends it
        (``redispatch_after``)."""
        self.start()
        give_up = time.monotonic() + CLAIM_PATIENCE
        delay = 0.25
        while True:
            try:
                if self.host is not None:
                    return self.host.run(job_id)
                return self.runtime.run_job(job_id, claim_errors=True)
            except ClaimFailed as exc:
                if time.monotonic() + delay > give_up or self.runtime.draining:
                    log.warning("async_accept: job %s not claimed, left queued: %s", job_id, exc)
                    return None
                log.info("async_accept: claim of job %s failed (%s); trying again", job_id, exc)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def submit(self, job_id: str) -> Future[Job | None] | None:
        """An ASGI application's job started on its loop, not waited for; None for WSGI."""
        self.start()
        return None if self.host is None else self.host.submit(job_id)

    def stop(self, timeout: float) -> None:
        with self._lock:
            if not self.started:
                return
            self.started = False
            if self.host is not None:
                self.host.stop(timeout)
                self.host = None
            else:
                self.runtime.shutdown()


class _LoopHost:
    """An event loop thread for an ASGI application: lifespan once, every job on it."""

    def __init__(self, runtime: Runtime, *, lifespan: bool) -> None:
        self.runtime = runtime
        self.lifespan = lifespan
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="async-accept-loop", daemon=True)
        self._events: asyncio.Queue[dict[str, Any]] | None = None
        self._app_task: asyncio.Task[None] | None = None
        self._stopped: asyncio.Future[None] | None = None

    def _serve(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            try:
                # As asyncio.run() does: cancel what is left, let it finish, then close.
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def start(self, timeout: float) -> None:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._astart(), self.loop)
        try:
            fut.result(timeout)
        except BaseException:
            fut.cancel()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            raise

    async def _astart(self) -> None:
        if self.lifespan:
            await self._lifespan_startup()
        if not self.runtime.started:
            # No lifespan (or it doesn't pass through the middleware): start it ourselves.
            await self.runtime.astart()

    async def _lifespan_startup(self) -> None:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        started: asyncio.Future[None] = loop.create_future()
        stopped: asyncio.Future[None] = loop.create_future()
        self._events, self._stopped = events, stopped
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}

        async def receive() -> dict[str, Any]:
            return await events.get()

        async def send(message: dict[str, Any]) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.complete" and not started.done():
                started.set_result(None)
            elif kind == "lifespan.startup.failed" and not started.done():
                started.set_exception(
                    RuntimeError(f"lifespan startup failed: {message.get('message', '')}")
                )
            elif kind.startswith("lifespan.shutdown.") and not stopped.done():
                stopped.set_result(None)

        app = self.runtime.app

        async def main() -> None:
            try:
                await app(scope, receive, send)
            except Exception as exc:
                if not started.done():  # the app does not speak lifespan (as uvicorn's "auto")
                    log.info("async_accept: the application has no lifespan (%r)", exc)
            finally:
                if not started.done():
                    started.set_result(None)
                if not stopped.done():
                    stopped.set_result(None)

        self._app_task = loop.create_task(main())
        await events.put({"type": "lifespan.startup"})
        await started

    def submit(self, job_id: str, claim_errors: bool = False) -> Future[Job | None]:
        job = self.runtime.arun_job(job_id, claim_errors=claim_errors)
        return asyncio.run_coroutine_threadsafe(job, self.loop)

    def run(self, job_id: str) -> Job | None:
        fut = self.submit(job_id, claim_errors=True)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()  # the worker's own time limit or shutdown: the job ends worker-lost
            raise

    async def _astop(self, timeout: float) -> None:
        task = self._app_task
        if task is not None and not task.done() and self._events is not None:
            await self._events.put({"type": "lifespan.shutdown"})
            await asyncio.wait({task}, timeout=timeout)
            if not task.done():
                task.cancel()
        if self.runtime.started:
            await self.runtime.ashutdown()

    def stop(self, timeout: float) -> None:
        if not self._thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(self._astop(timeout), self.loop)
        try:
            fut.result(timeout + 10)
        except Exception:
            log.warning("async_accept: the worker's ASGI shutdown did not finish", exc_info=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout + 5)


_loaded: dict[str, _Loaded] = {}
_loaded_pid = os.getpid()
_load_lock = threading.Lock()
_atexit_registered = False
#: The applications run_job may load here; None: any (see allow_only).
_allowed: frozenset[str] | None = None
#: Comma-separated app paths, for workers started by Celery's or RQ's own command.
ALLOWED_ENV = "ASYNC_ACCEPT_WORKER_APPS"


def allow_only(app_paths: Iterable[str] | None) -> None:
    """Let :func:`run_job` load only ``app_paths`` (None: any).

    A broker message names the application to import; this makes sure a
    message can't make the worker import anything but what it was started for.
    ``async-accept worker`` sets it to its ``--app`` paths; a worker started with
    Celery's or RQ's own command reads ``ASYNC_ACCEPT_WORKER_APPS``.
    """
    global _allowed
    _allowed = None if app_paths is None else frozenset(app_paths)


def allowed_apps() -> frozenset[str]:
    """The applications this worker may run: :func:`allow_only`'s list, else
    ``ASYNC_ACCEPT_WORKER_APPS``. Neither: a ConfigurationError naming both
    (a worker never runs whatever a message names)."""
    if _allowed is not None:
        return _allowed
    env = os.environ.get(ALLOWED_ENV, "")
    allowed = frozenset(p.strip() for p in env.split(",") if p.strip())
    if not allowed:
        raise ConfigurationError(
            f"this worker was started without the list of the applications it runs: set "
            f"{ALLOWED_ENV}=module:app (comma-separated) in its environment, or start it "
            f"with async-accept worker --app module:app"
        )
    return allowed


def _check_allowed(app_path: str) -> None:
    allowed = allowed_apps()
    if app_path not in allowed:
        raise ConfigurationError(
            f"this worker runs jobs of {', '.join(sorted(allowed))} only, and a message "
            f"names {app_path!r}: start a worker for it (async-accept worker --app {app_path})"
        )


def _entry(app_path: str) -> _Loaded:
    global _loaded_pid, _atexit_registered
    with _load_lock:
        if _loaded_pid != os.getpid():
            # A forked child (Celery prefork, RQ's forking worker): the parent's loop
            # threads did not survive; the runtimes reset themselves when started again.
            _loaded_pid = os.getpid()
            _loaded.clear()
        entry = _loaded.get(app_path)
        if entry is None:
            entry = _loaded[app_path] = _Loaded(app_path)
            if not _atexit_registered:
                atexit.register(shutdown)
                _atexit_registered = True
        return entry


def load_runtime(app_path: str) -> Runtime:
    """Import the application at ``app_path`` (once per process) and return the
    runtime of the async_accept middleware in it, replaying against the whole app.

    Nothing is started: :func:`start_worker` (or the first :func:`run_job`) does that.
    """
    return _entry(app_path).runtime


def start_worker(app_path: str) -> Runtime:
    """Load the application and start its runtime here: for ASGI, the event loop
    thread and the lifespan startup; then the sweeper and the worker heartbeat."""
    entry = _entry(app_path)
    entry.start()
    return entry.runtime


def run_job(app_path: str, job_id: str) -> str | None:
    """Run one job of the application at ``app_path`` (the Celery task and the RQ
    job function). Returns the job's final state, or None when it was not ours to
    run (canceled while queued, claimed elsewhere, gone)."""
    _check_allowed(app_path)
    job = _entry(app_path).run(job_id)
    return None if job is None else job.status.value


def start_job(app_path: str, job_id: str) -> Future[Job | None] | None:
    """Start one job of the ASGI application at ``app_path`` on its event loop thread
    without waiting for it (``async-accept worker``: no thread blocks per running job):
    its future (the final job, or None as :func:`run_job`). None for a WSGI
    application, whose jobs run in the calling thread (:func:`run_job`)."""
    _check_allowed(app_path)
    return _entry(app_path).submit(job_id)


def run_jobs(app_path: str, job_ids: list[str]) -> list[str | None]:
    """Run several jobs, one after another (the task of a message that carries
    ``jobs_per_message`` > 1 jobs). One job's store error doesn't stop the
    others; the first such error is raised at the end, so the broker records a
    failed message (the job stays with the store's recovery: redispatch or the
    deadman switch)."""
    _check_allowed(app_path)
    entry = _entry(app_path)
    states: list[str | None] = []
    first: Exception | None = None
    for job_id in job_ids:
        try:
            job = entry.run(str(job_id))
        except Exception as exc:
            log.exception("async_accept: job %s of a grouped message failed to run", job_id)
            first = first or exc
            states.append(None)
        else:
            states.append(None if job is None else job.status.value)
    if first is not None:
        raise first
    return states


def shutdown(timeout: float = 10.0) -> None:
    """Stop every application this process loaded (lifespan shutdown for ASGI)."""
    with _load_lock:
        entries = list(_loaded.values()) if _loaded_pid == os.getpid() else []
        _loaded.clear()
    for entry in entries:
        try:
            entry.stop(timeout)
        except Exception:  # pragma: no cover - best effort at exit
            print(f"async_accept: stopping {entry.app_path} failed", file=sys.stderr)
