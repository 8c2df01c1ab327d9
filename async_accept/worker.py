"""Beyond one machine: handing jobs to a broker, and running them in a worker.

Two halves, one module, because they share one idea: a broker message is only
a reference, ``(app path, job id)``; the captured request stays in the store.

**Web side** -- :class:`RemoteExecutor`, the base of the Celery and RQ
executors. ``submit`` appends the id to an in-process buffer and returns (the
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
import collections
import inspect
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ._imports import import_from_string, split_import_path
from .errors import ConfigurationError, ExecutorError

if TYPE_CHECKING:
    from ._frontdoor import FrontDoor
    from .job import Job
    from .runtime import Runtime

__all__ = [
    "RemoteExecutor",
    "allow_only",
    "find_front_door",
    "import_app",
    "load_runtime",
    "run_job",
    "run_jobs",
    "shutdown",
    "start_worker",
]

log = logging.getLogger("async_accept")

#: How long a worker waits for an ASGI application's lifespan startup.
STARTUP_TIMEOUT = 60.0

# -- the web side: buffered hand-over to a broker --------------------------------------------


def check_app_path(app: Any, executor: str) -> str:
    """The dotted path a worker imports; ConfigurationError naming the fix otherwise."""
    if not isinstance(app, str) or not app.strip():
        raise ConfigurationError(
            f"the {executor} executor needs the dotted path of your web application, which "
            f"its workers import to replay requests: executor={executor.title()}Executor("
            f"app='mysite.asgi:application') or executor='{executor}?app=mysite.asgi:application'"
        )
    split_import_path(app, "app")
    return app.strip()


def _positive(name: str, value: Any, *, integer: bool = False, zero: bool = False) -> Any:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int if integer else (int, float))
        and (value > 0 or (zero and value == 0))
    )
    if not ok:
        what = "a whole number" if integer else "a number"
        raise ConfigurationError(f"{name}={value!r} must be {what} {'>= 0' if zero else '> 0'}")
    return value


class RemoteExecutor:
    """Hands job ids to a broker from a background thread, in batches.

    Subclasses implement :meth:`_publish` (one batch, one connection) and may
    implement :meth:`_send_cancels`. Options:

    ``batch_size``
        At most this many jobs per publish round.
    ``flush_interval``
        Seconds the sender waits after the first job of a burst, so that the
        jobs accepted meanwhile go out in the same round.
    ``redispatch_after``
        A queued job dispatched less than this many seconds ago is not sent
        again by a sweeper (the broker still holds it). Keep it well below
        2 x sla, so that a lost message is re-sent before the deadline.
    ``max_buffer``
        Jobs waiting for the broker in this process beyond which ``submit``
        refuses (the client then gets 503 instead of an ever-growing backlog).
    ``jobs_per_message``
        Up to this many jobs of one round share a broker message (default 1:
        a message per job). A worker runs a message's jobs one after another,
        so raise it for many short jobs, where the per-message cost of the
        broker client (~0.3-1 ms of the web process's CPU) dominates; keep 1
        for long jobs, which should spread over idle workers at once.
    """

    name = "remote"
    out_of_process = True
    supports = frozenset({"asgi", "wsgi"})

    def __init__(
        self,
        app: str | None,
        *,
        batch_size: int = 100,
        flush_interval: float = 0.005,
        redispatch_after: float = 60.0,
        max_buffer: int = 10000,
        jobs_per_message: int = 1,
    ) -> None:
        self.app_path = check_app_path(app, self.name)
        self.jobs_per_message: int = _positive("jobs_per_message", jobs_per_message, integer=True)
        self.batch_size: int = _positive("batch_size", batch_size, integer=True)
        self.flush_interval = float(_positive("flush_interval", flush_interval, zero=True))
        self.redispatch_after = float(_positive("redispatch_after", redispatch_after))
        self.max_buffer: int = _positive("max_buffer", max_buffer, integer=True)
        self._runtime: Runtime | None = None
        self._closed = True
        self._init_state()

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._buffer: collections.deque[str] = collections.deque()
        self._cancels: collections.deque[str] = collections.deque()
        #: in the buffer or being sent: the sweeper leaves these alone
        self._pending: set[str] = set()
        #: marked dispatched by this process but not yet published (a publish failed)
        self._owned: set[str] = set()
        self._thread: threading.Thread | None = None
        self._sending = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} app={self.app_path!r}>"

    # -- the Executor protocol -----------------------------------------------------------

    def start(self, runtime: Runtime, loop: asyncio.AbstractEventLoop | None) -> None:
        with self._lock:
            self._runtime = runtime
            self._closed = False
            self._stop.clear()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._send_forever,
                    name=f"async-accept-{self.name}-sender",
                    daemon=True,
                )
                self._thread.start()

    def after_fork(self) -> None:
        """A forked child: the parent's sender thread and buffer are not ours."""
        self._runtime = None
        self._closed = True
        self._init_state()
        self._reset_connections()

    def submit(self, job_id: str) -> None:
        """Buffer ``job_id`` for the sender thread; never touches the network."""
        if self._closed or self._runtime is None:
            raise ExecutorError(f"the {self.name} executor is not running")
        with self._lock:
            if job_id in self._pending:
                return
            if len(self._buffer) >= self.max_buffer:
                raise ExecutorError(
                    f"{len(self._buffer)} jobs are waiting to be handed to the {self.name} "
                    "broker: is it reachable?"
                )
            self._buffer.append(job_id)
            self._pending.add(job_id)
        self._wake.set()

    def is_pending(self, job_id: str) -> bool:
        return job_id in self._pending

    def cancel(self, job_id: str) -> None:
        """The job's cancel was requested: workers see it through their heartbeats.
        Subclasses that can also tell the broker do it from the sender thread."""
        if self._wants_cancels() and not self._closed:
            self._cancels.append(job_id)
            self._wake.set()

    def shutdown(self, timeout: float) -> None:
        """Stop taking jobs; hand over what is buffered within ``timeout`` seconds.

        What can't be handed over stays ``queued`` in the store, where another
        process's sweeper finds it.
        """
        self._closed = True
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        self._wake.set()
        if thread is not threading.current_thread():
            thread.join(max(0.0, timeout))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far has been handed over (True) or
        ``timeout`` passed (False)."""
        deadline = time.monotonic() + timeout
        while self._pending or self._cancels:
            if time.monotonic() >= deadline:
                return False
            self._wake.set()
            time.sleep(0.005)
        return True

    # -- for subclasses ------------------------------------------------------------------

    def _publish(self, job_ids: list[str]) -> None:  # pragma: no cover - abstract
        """One message per job, over one connection."""
        raise NotImplementedError

    def _publish_groups(self, groups: list[list[str]]) -> None:  # pragma: no cover - abstract
        """One message per group of jobs (``jobs_per_message`` > 1), over one connection."""
        raise NotImplementedError

    def _wants_cancels(self) -> bool:
        return False

    def _send_cancels(self, job_ids: list[str]) -> None:
        """Tell the broker (Celery: revoke); best effort."""

    def _reset_connections(self) -> None:
        """Drop connections inherited from a parent process."""

    def _close_connections(self) -> None:
        """Close what this executor opened (the sender thread, on its way out)."""

    # -- the sender thread -------------------------------------------------------------------

    def _take(self) -> list[str]:
        with self._lock:
            n = min(self.batch_size, len(self._buffer))
            return [self._buffer.popleft() for _ in range(n)]

    def _give_back(self, batch: list[str]) -> None:
        with self._lock:
            self._buffer.extendleft(reversed(batch))

    def _mark(self, job_ids: list[str]) -> list[str]:
        """The jobs this process may publish now (the store's dispatch compare-and-set)."""
        runtime = self._runtime
        if runtime is None:
            return []
        mark = getattr(runtime.store, "mark_dispatched", None)
        if mark is None:  # a store without dispatch marks: publish, the claim dedups
            return job_ids
        now = runtime.engine.clock()
        return list(mark(job_ids, now, now - self.redispatch_after))

    def _send(self, batch: list[str]) -> None:
        fresh = [j for j in batch if j not in self._owned]
        if fresh:
            self._owned.update(self._mark(fresh))
        ready = [j for j in batch if j in self._owned]
        per = self.jobs_per_message
        if len(ready) == 1 or (ready and per == 1):
            self._publish(ready)
        elif ready:
            # Even groups: 9 jobs at 4 per message go as 3 + 3 + 3, not 4 + 4 + 1.
            n = -(-len(ready) // per)
            self._publish_groups([ready[i::n] for i in range(n)])
        self._owned.difference_update(ready)
        with self._lock:
            # Published, or not ours to publish (dispatched recently elsewhere, canceled,
            # already running or gone): either way the sweeper may look at it again.
            self._pending.difference_update(batch)

    def _send_forever(self) -> None:
        backoff = 0.0
        while True:
            if backoff:
                self._stop.wait(backoff)
            else:
                self._wake.wait()
            self._wake.clear()
            closing = self._stop.is_set()
            if self.flush_interval and not closing and len(self._buffer) < self.batch_size:
                time.sleep(self.flush_interval)  # let the rest of a burst join this round
            failed = False
            while True:
                batch = self._take()
                if not batch:
                    break
                try:
                    self._send(batch)
                except Exception:
                    self._give_back(batch)
                    failed = True
                    backoff = min(max(backoff * 2, 0.1), 5.0)
                    log.warning(
                        "async_accept: could not hand %d job(s) to %s; retrying in %.1f s",
                        len(batch),
                        self.name,
                        backoff,
                        exc_info=True,
                    )
                    break
            if not failed:
                backoff = 0.0
            if self._cancels:
                ids = [self._cancels.popleft() for _ in range(len(self._cancels))]
                try:
                    self._send_cancels(ids)
                except Exception:
                    log.warning(
                        "async_accept: %s could not forward cancels", self.name, exc_info=True
                    )
            if closing and (failed or not self._buffer):
                try:
                    self._close_connections()
                except Exception:  # pragma: no cover - best effort on the way out
                    log.debug("async_accept: closing %s connections failed", self.name)
                return


# -- the worker side: import the application, find its runtime, run jobs ------------------------


def import_app(path: str) -> Any:
    """The object ``"package.module:attribute"`` names (dots allowed after the colon)."""
    return import_from_string(check_app_path(path, "worker"), "app")


# Attributes through which frameworks and middleware reach the app they wrap.
_LINKS = ("middleware_stack", "_door", "app", "wsgi_app", "application", "_app", "handler")


def _walk(root: Any) -> FrontDoor | None:
    from ._frontdoor import FrontDoor

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
    from ._frontdoor import FRONT_DOORS

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
    from ._frontdoor import FRONT_DOORS

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
        self.start()
        if self.host is not None:
            return self.host.run(job_id)
        return self.runtime.run_job(job_id)

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

    def run(self, job_id: str) -> Job | None:
        fut = asyncio.run_coroutine_threadsafe(self.runtime.arun_job(job_id), self.loop)
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


def _check_allowed(app_path: str) -> None:
    allowed = _allowed
    if allowed is None:
        env = os.environ.get(ALLOWED_ENV, "")
        if not env.strip():
            return
        allowed = frozenset(p.strip() for p in env.split(",") if p.strip())
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
