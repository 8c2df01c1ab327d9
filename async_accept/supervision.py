"""What keeps a running job's end in one place: the handler's exceptions turned
into its outcome, outcome writes made durable, heartbeats from one thread per
process, and a graceful stop at the first signal.

The runtime (runtime.py) drives jobs; this module holds the pieces it leans on
that don't need the runtime itself, so each can be read (and tested) alone.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import math
import os
import signal
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from .context import JobContext
from .errors import StoreError
from .job import Job
from .zombies import ZombieWatch

log = logging.getLogger("async_accept")

T = TypeVar("T")

#: how long a job's outcome (finish, fail, requeue) is retried across store errors
#: before it is given up (the deadman switch then ends the job)
OUTCOME_RETRY_FOR = 60.0


class HandlerExit(Exception):
    """The handler raised a BaseException (SystemExit, KeyboardInterrupt, its own
    CancelledError, ...): for the job an ordinary handler error, for the process nothing."""

    @classmethod
    def of(cls, exc: BaseException) -> HandlerExit:
        return cls(f"the handler raised {type(exc).__name__}: {exc}")


def in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


#: coroutines that wait on a worker thread (anyio / Starlette, asyncio, asgiref / Django)
_THREAD_WAITS = frozenset({"run_sync_in_worker_thread", "to_thread", "run_in_threadpool"})


def waiting_on_thread(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` is suspended waiting for a sync function in a worker thread:
    the innermost coroutine of its await chain is a thread hop (``to_thread``,
    anyio's and Starlette's, asgiref's ``sync_to_async``), or it awaits the future
    of a concurrent.futures executor (``loop.run_in_executor``)."""
    if _executor_future(getattr(task, "_fut_waiter", None)):  # the future it waits on
        return True
    coro: Any = task.get_coro()
    last = None
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            last = frame.f_code
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    if last is None:
        return False
    return last.co_name in _THREAD_WAITS or last.co_filename.replace("\\", "/").endswith(
        "asgiref/sync.py"
    )


def _executor_future(awaited: Any) -> bool:
    """An asyncio future chained to a concurrent.futures one (``run_in_executor``,
    ``wrap_future``): asyncio marks it with its ``_call_check_cancel`` callback."""
    if not isinstance(awaited, asyncio.Future):
        return False
    callbacks = getattr(awaited, "_callbacks", None) or ()
    return any(
        getattr(entry[0] if isinstance(entry, tuple) else entry, "__name__", "")
        == "_call_check_cancel"
        for entry in callbacks
    )


class ThreadWatch:
    """The task a replayed app runs in, and whether its handler was seen in a worker
    thread: from then on it is past the point of no return (a thread can't be
    interrupted, its side effects happen), so a cancel must not throw its result away."""

    __slots__ = ("_on_thread", "_task")

    def __init__(self) -> None:
        self._task: asyncio.Task[Any] | None = None
        self._on_thread = False

    def set(self, task: asyncio.Task[Any]) -> None:
        self._task = task

    def past_no_return(self) -> bool:
        """True once the app's task was seen waiting on a thread (sticky; loop only)."""
        if not self._on_thread and self._task is not None and not self._task.done():
            self._on_thread = waiting_on_thread(self._task)
        return self._on_thread


def cancelled_from_outside(task: asyncio.Task[Any]) -> bool:
    """True when someone called ``task.cancel()`` (Python < 3.11 can't tell: assume so)."""
    cancelling: Callable[[], int] | None = getattr(task, "cancelling", None)
    return cancelling is None or cancelling() > 0


# -- outcome writes --------------------------------------------------------------------


def durable_call(run: Callable[[], T]) -> T:
    """``run()`` a job's outcome write, retried with backoff across transient store
    errors (a held lock, a blip) for up to OUTCOME_RETRY_FOR seconds."""
    give_up = time.monotonic() + OUTCOME_RETRY_FOR
    delay = 0.05
    while True:
        try:
            return run()
        except StoreError as exc:
            if time.monotonic() + delay > give_up:
                raise
            log.warning("async_accept: a job's outcome is not written yet (%s): retrying", exc)
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


async def adurable_call(run: Callable[[], Awaitable[T]]) -> T:
    """The awaited twin of :func:`durable_call` (the loop is never blocked)."""
    give_up = time.monotonic() + OUTCOME_RETRY_FOR
    delay = 0.05
    while True:
        try:
            return await run()
        except StoreError as exc:
            if time.monotonic() + delay > give_up:
                raise
            log.warning("async_accept: a job's outcome is not written yet (%s): retrying", exc)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


# -- retries waiting for their backoff ---------------------------------------------------


class DelayedSubmits:
    """Jobs to hand to the executor after a delay (a retry's backoff) and once their
    previous run here is over; ``job_id in delayed`` keeps the sweeper off them."""

    def __init__(self, submit: Callable[[str], None], busy: Callable[[str], bool]) -> None:
        self._submit = submit
        self._busy = busy
        self._timers: dict[str, threading.Timer] = {}

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._timers

    def add(self, job_id: str, delay: float) -> None:
        timer = threading.Timer(delay, self._fire, (job_id,))
        timer.daemon = True
        self._timers[job_id] = timer
        timer.start()

    def _fire(self, job_id: str) -> None:
        if self._busy(job_id):
            self.add(job_id, 0.02)  # the previous run is still ending
            return
        self._timers.pop(job_id, None)
        try:
            self._submit(job_id)
        except Exception:
            log.warning("async_accept: retry of job %s not handed over", job_id, exc_info=True)


# -- heartbeats ------------------------------------------------------------------------


class FailureStreak:
    """Logs a repeating failure once per streak instead of once per attempt: the first
    failure with its traceback, then a count at most every ``every`` seconds while it
    goes on, and one line when it ends (a full disk or a store outage would otherwise
    log a traceback per job per heartbeat)."""

    def __init__(self, what: str, every: float = 60.0) -> None:
        self._what = what
        self._every = every
        self._failures = 0
        self._logged_at = 0.0

    def failed(self, detail: str) -> None:
        """One more failure (call from an ``except`` block: the first logs its traceback)."""
        self._failures += 1
        now = time.monotonic()
        if self._failures == 1:
            self._logged_at = now
            log.warning("async_accept: %s failed (%s)", self._what, detail, exc_info=True)
        elif now - self._logged_at >= self._every:
            self._logged_at = now
            log.warning(
                "async_accept: %s still failing: %d failures so far (%s)",
                self._what,
                self._failures,
                detail,
            )

    def succeeded(self) -> None:
        """A round without failure: the streak, if any, ends with a line saying so."""
        if self._failures:
            log.warning(
                "async_accept: %s works again after %d failures", self._what, self._failures
            )
            self._failures = 0


class BeatHost(Protocol):
    """What the heartbeat thread needs of the runtime."""

    worker_id: str

    def beat_write(
        self, job_id: str, progress: tuple[float | None, str | None, float | None] | None
    ) -> Job | None:
        """Refresh the job's lease, writing ``progress`` with it when given."""
        ...


#: Seconds the heartbeat thread waits for the next job once none is left, before it ends.
IDLE_LINGER = 1.0


class Heartbeats:
    """ONE thread per process beats for every local job, whatever runs it (threads,
    the event loop, a remote worker), so a handler blocking its loop or thread never
    reads as a lost worker while the process lives. Each ``interval`` it refreshes
    the lease of every job on ``board``, writing the job's latest progress instead
    when there is some: at most one progress write per job per interval, however
    often the handler reports (the first report at once; the runtime flushes the
    last one when the handler returns)."""

    def __init__(
        self,
        host: BeatHost,
        board: dict[str, JobContext],
        interval: float,
        deadlines: Callable[[], float] | None = None,
    ) -> None:
        self._host = host
        self._board = board
        self._interval = interval
        #: each round: handle the jobs past their deadline; seconds until the next is due
        self._deadlines = deadlines
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.wake = threading.Event()
        #: when the thread's current wait ends (monotonic; infinite while a round runs,
        #: which may have read the board already): see wake_within
        self._round_at = math.inf
        self._failing = FailureStreak("heartbeat")

    def ensure_running(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._forever, name="async-accept-heartbeat", daemon=True
                )
                self._thread.start()

    def _forever(self) -> None:
        interval = self._interval
        idle_since: float | None = None
        while True:
            with self._lock:
                if not self._board:
                    # Idle for a while: end (checked under the lock ensure_running takes,
                    # so a job registered meanwhile starts a new thread). Not at once: jobs
                    # one after another would each start a thread, on their way to run.
                    now = time.monotonic()
                    idle_since = now if idle_since is None else idle_since
                    if now - idle_since >= min(interval, IDLE_LINGER):
                        self._thread = None
                        return
                else:
                    idle_since = None
            if idle_since is not None:
                self._wait(min(interval, IDLE_LINGER))
                continue
            wait = interval
            failed = False
            if self._deadlines is not None:
                try:
                    wait = min(wait, self._deadlines())
                except Exception:  # pragma: no cover - the watch logs its own trouble
                    log.warning("async_accept: deadline watch failed", exc_info=True)
            for ctx in list(self._board.values()):
                try:
                    wait = min(wait, self.beat_one(ctx))
                except Exception as exc:  # the beater must outlive any store trouble
                    failed = True
                    self._failing.failed(f"job {ctx.id}: {exc}")
            if not failed:
                self._failing.succeeded()
            self._wait(max(wait, 0.005))

    def _wait(self, seconds: float) -> None:
        self._round_at = time.monotonic() + seconds
        self.wake.wait(seconds)
        self._round_at = math.inf  # a round is on its way
        self.wake.clear()

    def wake_within(self, seconds: float) -> None:
        """A new job that must be looked at within ``seconds`` (its deadline): wake the
        thread unless its next round comes soon enough anyway (no thread switch per job)."""
        if time.monotonic() + seconds < self._round_at:
            self.wake.set()

    def beat_one(self, ctx: JobContext) -> float:
        """Write for ``ctx`` if due; the seconds until it may need the next write."""
        interval = self._interval
        if ctx.lost:
            return interval  # the job was taken away (ended, past its deadline): no lease
        now_mono = time.monotonic()
        progress_due = ctx.dirty and now_mono >= ctx.last_progress + interval
        if not progress_due and now_mono < ctx.last_beat + interval:
            next_at = ctx.last_beat + interval
            if ctx.dirty:
                next_at = min(next_at, ctx.last_progress + interval)
            return next_at - now_mono
        ctx.last_beat = now_mono
        progress = ctx.take_progress() if progress_due else None
        if progress is not None:
            ctx.last_progress = now_mono
        try:
            job = self._host.beat_write(ctx.id, progress)
        except StoreError:
            if progress is not None:
                ctx.restore_progress(*progress)
            raise
        if ctx.id in self._board and not ctx.handler_done:
            if job is None:
                # Failed by the deadman switch (or otherwise taken away): stop the work.
                ctx.lost = True
                ctx.request_cancel()
            elif job.cancel_requested:
                ctx.request_cancel()
        return interval


# -- graceful stop -----------------------------------------------------------------------


class _DrainHost(Protocol):
    """What Draining needs of the runtime it is mixed into."""

    store: Any
    engine: Any
    options: Any
    worker_id: str
    _running: set[str]
    zombies: ZombieWatch


class Draining:
    """A runtime's graceful stop. A stop never fails a job: from the first signal no
    queued job starts here (they stay queued for the next process), running ones get
    ``shutdown_timeout`` to finish, and what still runs then is handed back to the
    queue (requeued), so another process, or this one restarted, runs it again
    (attempt + 1). The runtime provides the attributes below."""

    _running: set[str]
    _draining: threading.Event
    #: True once an ASGI lifespan startup went through: its shutdown drains
    lifespan_drain: bool = False
    zombies: ZombieWatch

    @property
    def draining(self) -> bool:
        """True from the first stop signal on: executors start no queued job."""
        return self._draining.is_set()

    def begin_drain(self) -> None:
        """Stop claiming jobs (a stop signal arrived, or shutdown began)."""
        self._draining.set()

    @property
    def busy(self) -> bool:
        """Whether jobs run here now that a drain waits for: a zombie (a handler past its
        deadline, its job ended) is not waited for, it may never return."""
        return any(not self.zombies.is_zombie(job_id) for job_id in list(self._running))

    @property
    def recycling(self) -> bool:
        """True once this process is recycling itself (``max_zombies`` reached)."""
        return self.zombies.recycling

    @property
    def drain_timeout(self: _DrainHost) -> float:
        """``shutdown_timeout``, cut to what is left of the server's own graceful
        timeout since its stop signal (gunicorn kills a worker that outlives it, and
        a killed worker requeues nothing), less a margin to requeue and exit."""
        timeout = float(self.options.shutdown_timeout)
        grace, since = _server_grace, _stop_signal_at
        if grace is None:
            return timeout
        elapsed = 0.0 if since is None else time.monotonic() - since
        left = grace - min(2.0, grace * 0.2) - elapsed
        return max(0.0, min(timeout, left))

    def requeue_running(self: _DrainHost) -> int:
        """Hand the jobs still running here back to the queue; how many were."""
        requeued = 0
        for job_id in list(self._running):
            if self.zombies.is_zombie(job_id):
                continue  # its job ended at its deadline: nothing to hand back
            try:
                job = self.store.requeue(job_id, self.worker_id, self.engine.clock())
            except StoreError:
                log.warning("async_accept: could not requeue job %s", job_id, exc_info=True)
                continue
            if job is not None:
                requeued += 1
                log.warning(
                    "async_accept: job %s still ran at the end of the drain: requeued", job_id
                )
        return requeued


class Drainable(Protocol):
    """A runtime as the stop-signal watcher sees it."""

    lifespan_drain: bool

    @property
    def started(self) -> bool: ...

    @property
    def busy(self) -> bool: ...

    @property
    def drain_timeout(self) -> float: ...

    def begin_drain(self) -> None: ...

    def requeue_running(self) -> int: ...


#: the runtimes of this process, drained at the first stop signal and at exit
_LIVE: weakref.WeakSet[Any] = weakref.WeakSet()
_watching_pid: int | None = None
_atexit_registered = False
#: the graceful timeout of the server whose SIGTERM handler we wrapped, if it has one
_server_grace: float | None = None
#: time.monotonic() of this process's first stop signal
_stop_signal_at: float | None = None


def server_graceful_timeout(handler: Any) -> float | None:
    """The graceful timeout of the server a signal handler belongs to: gunicorn's
    worker and arbiter handle signals with bound methods of objects holding their
    config (``cfg.graceful_timeout``); None for any other handler."""
    cfg = getattr(getattr(handler, "__self__", None), "cfg", None)
    value = getattr(cfg, "graceful_timeout", None)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    return float(value)


def watch_stop_signals(runtime: Drainable) -> None:
    """From the first SIGTERM/SIGINT on, ``runtime`` starts no queued job; at exit it
    drains. Called when the middleware is built (gunicorn loads the app in its worker's
    main thread, after installing its handlers), when it starts, and on the first
    request: a server that installs its handlers after loading the app (uvicorn)
    replaced ours, and they are wrapped again. The handler found in place (the
    server's own) still runs after ours."""
    global _watching_pid, _atexit_registered, _server_grace, _stop_signal_at
    _LIVE.add(runtime)
    if not _atexit_registered:
        _atexit_registered = True
        atexit.register(_drain_at_exit)
    if not in_main_thread():
        return
    pid = os.getpid()
    if _watching_pid != pid:
        _watching_pid = pid
        _server_grace, _stop_signal_at = None, None  # a forked child starts afresh
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous = signal.getsignal(sig)
            if previous is None:
                continue  # a handler installed outside Python (uWSGI, mod_wsgi): leave it be
            if isinstance(previous, functools.partial) and previous.func is _on_stop_signal:
                continue  # ours, around the handler in place
            if sig == signal.SIGTERM:
                _server_grace = server_graceful_timeout(previous)
            signal.signal(sig, functools.partial(_on_stop_signal, previous))
        except (ValueError, OSError):  # pragma: no cover - a subinterpreter
            continue


def _on_stop_signal(previous: Any, signum: int, frame: Any) -> None:
    global _stop_signal_at
    first = _stop_signal_at is None
    if first:
        _stop_signal_at = time.monotonic()
    for runtime in list(_LIVE):
        runtime.begin_drain()
    if first and _drain_before_the_server_stops(previous, signum):
        return
    if first and previous == signal.SIG_DFL:
        # The default action ends the process at once: no exit handler would drain.
        _drain_at_exit()
    _pass_on(previous, signum, frame)


#: drains under way before the server hears its stop signal (kept from the GC)
_PRE_STOP: set[asyncio.Task[None]] = set()


def _drain_before_the_server_stops(previous: Any, signum: int) -> bool:
    """Whether the server will hear this signal only after a drain, started now.

    An ASGI server whose app gets no lifespan shutdown (Django's ASGI handler,
    ``--lifespan off``) stops its event loop and then re-raises the signal with its
    default action: no exit handler runs, and running jobs would die with the
    process instead of being requeued. So when the signal arrives on a running
    event loop and a runtime with running jobs won't be drained by a lifespan
    shutdown, the drain runs first on that loop (requests are still answered),
    and the server's own handler is called after it. A second signal goes
    through at once."""
    busy = [rt for rt in list(_LIVE) if rt.started and rt.busy and not rt.lifespan_drain]
    if not busy:
        return False
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no loop here (a gunicorn sync worker): the exit handler drains
        return False
    task = loop.create_task(_drain_then(busy, functools.partial(_pass_on, previous, signum, None)))
    _PRE_STOP.add(task)
    task.add_done_callback(_PRE_STOP.discard)
    return True


async def _drain_then(busy: list[Any], stop: Callable[[], None]) -> None:
    """Let ``busy`` runtimes' jobs finish within their drain period, requeue the rest,
    then ``stop()`` (the server's own signal handler)."""
    try:
        deadline = time.monotonic() + max(rt.drain_timeout for rt in busy)
        while any(rt.busy for rt in busy) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for runtime in busy:
            if runtime.busy:
                await asyncio.to_thread(runtime.requeue_running)
    except Exception:
        log.warning("async_accept: drain before the server's stop failed", exc_info=True)
    finally:
        stop()


def _pass_on(previous: Any, signum: int, frame: Any) -> None:
    """Call the signal handler that was in place before ours."""
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _drain_at_exit() -> None:
    """At interpreter exit (a gunicorn worker leaving after its graceful stop): the
    runtimes still running jobs stop claiming, let them finish within their drain
    period (all at once, so exit waits at most the longest one), and requeue the rest."""
    busy = [rt for rt in list(_LIVE) if rt.started and rt.busy]
    if not busy:
        return
    for runtime in busy:
        runtime.begin_drain()
    deadline = time.monotonic() + max(rt.drain_timeout for rt in busy)
    while any(rt.busy for rt in busy) and time.monotonic() < deadline:
        time.sleep(0.02)
    for runtime in busy:
        try:
            runtime.requeue_running()
        except Exception:  # pragma: no cover - exiting anyway
            log.warning("async_accept: drain at exit failed", exc_info=True)
