"""The runtime: drives the core's generators (blocking or awaited), runs jobs
with heartbeats and progress, waits for changes (through the process's change
feed) and sweeps zombies.

One Runtime per middleware instance (per process). Remote workers build one
too, around the imported application.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

from ._observer import Observer
from .context import JobContext, reset_current, set_current
from .engine import Engine, WorkerShutdown
from .engine.ops import ExecutorCall, Gen, Op, Replay, StoreCall, WaitChange, WaitFor
from .errors import ClaimFailed, JobCanceled, StoreError
from .executors.base import Executor
from .feed import ChangeFeed, signal_for
from .job import CapturedResponse, Job
from .registry import RegistryBeat
from .replay import replay_asgi, replay_asgi_blocking, replay_wsgi
from .stores import AsyncStore, Store, as_async
from .supervision import (
    DelayedSubmits,
    Draining,
    HandlerExit,
    Heartbeats,
    ThreadWatch,
    adurable_call,
    cancelled_from_outside,
    durable_call,
    in_main_thread,
    watch_stop_signals,
)
from .timings import RunTimes
from .zombies import ZombieWatch

log = logging.getLogger("async_accept")

T = TypeVar("T")
AppKind = Literal["asgi", "wsgi"]


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Runtime(RegistryBeat, Draining):
    """Everything a process needs to accept, answer and run jobs."""

    def __init__(self, engine: Engine, store: Store, executor: Executor, kind: AppKind) -> None:
        self.engine = engine
        self.options = engine.options
        self.store = store
        self.executor = executor
        self.kind = kind
        self.app: Any = None  # the replay target, set by the front door
        self.lifespan_state: dict[str, Any] | None = None
        self.worker_id = make_worker_id()
        #: "web" for a server process, "worker" for a remote worker (health shows it)
        self.role = "web"
        #: metrics events and completion webhooks (builds the dispatcher: fails early)
        self.observer = Observer(engine, store)
        self._astore: AsyncStore | None = None
        self._local: dict[str, JobContext] = {}
        #: the jobs this process runs (claimed, not yet ended), for the drain
        self._running: set[str] = set()
        #: retries waiting for their backoff before they are handed to the executor
        self._delayed = DelayedSubmits(self._submit_retry, self._retry_busy)
        #: the running jobs' deadlines, and the handlers that outlive them (zombies.py)
        self.zombies = ZombieWatch(self, self.options.max_zombies)
        self.heartbeats = Heartbeats(
            self, self._local, self.options.heartbeat_interval, self.zombies.watch
        )
        #: set at the first stop signal: from then on no queued job starts here
        self._draining = threading.Event()
        #: every waiter of this process (long-polls, event streams, hybrid accepts)
        self.feed = ChangeFeed(lambda job_id: store.get(job_id, engine.clock()), self._signal)
        #: each route's learned run time, for Retry-After (the engine reads it)
        self.run_times = engine.run_times = RunTimes(store)
        self._started = False
        self._start_lock = threading.Lock()
        self._pid = os.getpid()
        self._stop = threading.Event()
        self._sweeper_thread: threading.Thread | None = None
        self._sweeper_task: asyncio.Task[None] | None = None
        self._sweeper_wake = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        watch_stop_signals(self)

    # -- store faces ---------------------------------------------------------------

    @property
    def astore(self) -> AsyncStore:
        if self._astore is None:
            self._astore = as_async(self.store)
        return self._astore

    def _signal(self) -> Any:
        return signal_for(self.store)

    # -- drivers ---------------------------------------------------------------------

    def drive(self, gen: Gen[T]) -> T:
        """Run an engine generator with blocking calls."""
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                op = gen.throw(error) if error is not None else gen.send(value)
            except StopIteration as stop:
                result: T = stop.value
                return result
            error = None
            try:
                value = self._do_sync(op)
            except Exception as exc:
                value, error = None, exc

    async def adrive(self, gen: Gen[T]) -> T:
        """Run an engine generator with awaited calls (never blocks the loop)."""
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                op = gen.throw(error) if error is not None else gen.send(value)
            except StopIteration as stop:
                result: T = stop.value
                return result
            error = None
            try:
                value = await self._do_async(op)
            except Exception as exc:
                value, error = None, exc

    def _store_call(self, op: StoreCall[Any]) -> Any:
        """A store op; a job's outcome is retried across transient store errors and
        held in memory until written (the job stays on the heartbeat board meanwhile)."""
        if op.durable:
            return durable_call(lambda: op.run(self.store))
        return op.run(self.store)

    async def _astore_call(self, op: StoreCall[Any]) -> Any:
        if op.durable:
            return await adurable_call(lambda: op.arun(self.astore))
        return await op.arun(self.astore)

    def _executor_call(self, op: ExecutorCall) -> None:
        if op.cancel:
            self.cancel_local(op.job_id)
            return None
        if op.after <= 0 and not self._executor_has(op.job_id):
            self.executor.submit(op.job_id)
            return None
        # A retry: the job waits queued for its backoff, and for its previous run to
        # be over here (is_pending keeps the sweeper off it meanwhile).
        self._delayed.add(op.job_id, op.after)
        return None

    def _submit_retry(self, job_id: str) -> None:
        self.executor.submit(job_id)

    def _retry_busy(self, job_id: str) -> bool:
        return job_id in self._running or self._executor_has(job_id)

    def _executor_has(self, job_id: str) -> bool:
        pending = getattr(self.executor, "is_pending", None)
        return bool(pending(job_id)) if pending is not None else False

    def _do_sync(self, op: Op) -> Any:
        if isinstance(op, StoreCall):
            op.result = result = self._store_call(op)
            self.feed.saw_result(result)
            event = op.event(result) if op.event is not None else None
            if event is not None:
                ended = self.observer.after_call(event)
                if ended is not None:
                    self.observer.deliver(ended)
            return None
        if isinstance(op, ExecutorCall):
            return self._executor_call(op)
        if isinstance(op, WaitChange):
            return self.feed.wait(op.job, op.timeout)
        if isinstance(op, WaitFor):
            return self._wait_sync(op.job_id, op.timeout)
        if isinstance(op, Replay):
            return self._replay_sync(op)
        raise TypeError(f"unknown op {op!r}")  # pragma: no cover

    async def _do_async(self, op: Op) -> Any:
        if isinstance(op, StoreCall):
            op.result = result = await self._astore_call(op)
            self.feed.saw_result(result)
            event = op.event(result) if op.event is not None else None
            if event is not None:
                ended = self.observer.after_call(event)
                if ended is not None:
                    await asyncio.to_thread(self.observer.deliver, ended)  # outbox I/O
            return None
        if isinstance(op, ExecutorCall):
            return self._executor_call(op)
        if isinstance(op, WaitChange):
            return await self.feed.await_change(op.job, op.timeout)
        if isinstance(op, WaitFor):
            return await self._wait_async(op.job_id, op.timeout)
        if isinstance(op, Replay):
            return await self._replay_async(op)
        raise TypeError(f"unknown op {op!r}")  # pragma: no cover

    # -- running jobs ------------------------------------------------------------------
    #
    # One supervisor per running job owns its end (the engine writes one outcome);
    # whatever the handler raises becomes handler-error, the process and pool go on.
    # The job stays on the heartbeat board until its outcome is durable.

    def run_job(self, job_id: str, claim_errors: bool = False) -> Job | None:
        """Run one job in this thread (thread executors, remote workers); with
        ``claim_errors`` a failed claim raises ClaimFailed instead of being logged."""
        job = None
        self._running.add(job_id)
        try:
            job = self.drive(self.engine.run(job_id, self.worker_id))
            return job
        except StoreError as exc:
            return self._store_failed(job_id, exc, claim_errors)
        finally:
            self._ran(job_id, job)
            self.run_times.learn(job)

    async def arun_job(self, job_id: str, claim_errors: bool = False) -> Job | None:
        """Run one job as a task on the running loop (asyncio executor)."""
        job = None
        self._running.add(job_id)
        try:
            job = await self.adrive(self.engine.run(job_id, self.worker_id))
            return job
        except StoreError as exc:
            return self._store_failed(job_id, exc, claim_errors)
        finally:
            self._ran(job_id, job)
            if job is not None and job.started_at is not None:
                if self.store.blocking and self.run_times.save_due(job.route):
                    await asyncio.to_thread(self.run_times.learn, job)
                else:  # in memory only (no store I/O on the loop): no thread needed
                    self.run_times.learn(job, save=not self.store.blocking)

    def _store_failed(self, job_id: str, exc: StoreError, claim_errors: bool) -> Job | None:
        if claim_errors and isinstance(exc, ClaimFailed):
            raise exc
        log.exception("async_accept: store error while running job %s", job_id)
        return None

    def _ran(self, job_id: str, job: Job | None) -> None:
        self._running.discard(job_id)
        self._local.pop(job_id, None)
        self.zombies.ended(job_id, recorded=job is not None)
        if job is None:  # a returned job reached its waiters with its write
            self.feed.poke(job_id)

    def cancel_local(self, job_id: str) -> None:
        ctx = self._local.get(job_id)
        if ctx is not None:
            ctx.request_cancel()
        cancel = getattr(self.executor, "cancel", None)
        if cancel is not None:
            cancel(job_id)

    def _outcome(self, ctx: JobContext, response: CapturedResponse) -> CapturedResponse:
        if ctx.cancel_raised:
            raise JobCanceled(ctx.id)
        return response

    def _register(self, job: Job) -> JobContext:
        """The running job's context, on the heartbeat board from now on."""
        ctx = JobContext(job.id)
        ctx.attempt = max(1, job.attempts)
        ctx.last_beat = time.monotonic()  # the claim just wrote the lease
        self._local[ctx.id] = ctx
        self.zombies.started(job)
        ctx.set_waker(self.heartbeats.wake.set)  # a progress report may be due at once
        self.heartbeats.ensure_running()
        # Its deadline may come before the next round.
        self.heartbeats.wake_within(job.deadline_at - self.engine.clock())
        return ctx

    def _replay_sync(self, op: Replay) -> CapturedResponse:
        ctx = self._register(op.job)
        token = set_current(ctx)
        try:
            limit = self.options.max_result_size
            if self.kind == "wsgi":
                response = replay_wsgi(self.app, op.request, ctx.id, limit)
            else:
                state = self.lifespan_state
                response = replay_asgi_blocking(self.app, op.request, ctx.id, state, limit)
        except Exception:
            if ctx.cancel_raised:
                raise JobCanceled(ctx.id) from None
            raise
        except BaseException as exc:  # SystemExit, KeyboardInterrupt, GeneratorExit, ...
            if ctx.cancel_raised:
                raise JobCanceled(ctx.id) from None
            if isinstance(exc, KeyboardInterrupt) and in_main_thread():
                # A worker running jobs in its main thread (RQ, Celery solo) got Ctrl-C:
                # the process is stopping, not the handler failing.
                raise WorkerShutdown(
                    "The worker was interrupted while the job was running."
                ) from None
            raise HandlerExit.of(exc) from exc
        finally:
            reset_current(token)
            ctx.handler_done = True
            self._flush_last_progress(ctx)
        return self._outcome(ctx, response)

    async def _replay_async(self, op: Replay) -> CapturedResponse:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        ctx = self._register(op.job)
        cancelled_by_us: list[bool] = []
        app_task = ThreadWatch()

        def cancel_job() -> None:
            def do() -> None:
                if task is None or task.done() or ctx.handler_done or ctx.response_started:
                    return  # the handler got there first: its result stands
                if app_task.past_no_return():
                    # A sync handler in a thread can't be interrupted and its side effects
                    # happen: cancelling would only throw its response away. The cancel
                    # loses, the job ends with the handler's outcome.
                    return
                cancelled_by_us.append(True)
                task.cancel()

            with contextlib.suppress(RuntimeError):  # loop closed: nothing left to cancel
                loop.call_soon_threadsafe(do)

        ctx.on_cancel = cancel_job
        token = set_current(ctx)
        try:
            if self.kind == "wsgi":  # pragma: no cover - refused at construction
                response = await asyncio.to_thread(replay_wsgi, self.app, op.request, ctx.id)
            else:
                limit = self.options.max_result_size
                state = self.lifespan_state
                response = await replay_asgi(
                    self.app, op.request, ctx.id, state, ctx.mark_started, limit, app_task.set
                )
        except asyncio.CancelledError:
            if cancelled_by_us and task is not None:
                # Our own cancel (a client asked): take it back, the job goes on to record it.
                uncancel: Callable[[], object] | None = getattr(task, "uncancel", None)
                if uncancel is not None:  # Python >= 3.11
                    for _ in cancelled_by_us:
                        uncancel()
                raise JobCanceled(ctx.id) from None
            if task is not None and not cancelled_from_outside(task):
                # The handler raised CancelledError itself: its own failure.
                raise HandlerExit("the handler raised CancelledError") from None
            # Cancelled from outside: the server is shutting down.
            raise WorkerShutdown("The server shut down while the job was running.") from None
        except Exception:
            if ctx.cancel_raised:
                raise JobCanceled(ctx.id) from None
            raise
        except BaseException as exc:  # SystemExit, KeyboardInterrupt, GeneratorExit, ...
            if ctx.cancel_raised:
                raise JobCanceled(ctx.id) from None
            raise HandlerExit.of(exc) from exc
        finally:
            reset_current(token)
            ctx.handler_done = True
        progress = ctx.take_progress()
        if progress is not None:
            try:
                self.feed.saw(
                    await self.astore.set_progress(
                        ctx.id, self.worker_id, self.engine.clock(), *progress
                    )
                )
            except StoreError:
                log.warning("async_accept: progress of job %s was not saved", ctx.id)
        return self._outcome(ctx, response)

    def beat_write(
        self, job_id: str, progress: tuple[float | None, str | None, float | None] | None
    ) -> Job | None:
        """One heartbeat (with the job's latest progress, when given), for Heartbeats."""
        now = self.engine.clock()
        if progress is not None:
            job = self.store.set_progress(job_id, self.worker_id, now, *progress)
            self.feed.saw(job)
            return job
        return self.store.heartbeat(job_id, self.worker_id, now)

    def _flush_last_progress(self, ctx: JobContext) -> None:
        """The last report lands before the finish (the beater may not have run)."""
        progress = ctx.take_progress()
        if progress is None:
            return
        try:
            self.feed.saw(
                self.store.set_progress(ctx.id, self.worker_id, self.engine.clock(), *progress)
            )
        except StoreError:
            log.warning("async_accept: progress of job %s was not saved", ctx.id, exc_info=True)

    # -- waiting for a hybrid answer ----------------------------------------------------

    def _wait_sync(self, job_id: str, timeout: float) -> Job | None:
        """The job once it has ended, or as it is after ``timeout`` s (None: gone)."""
        deadline = time.monotonic() + timeout
        job = self.store.get(job_id, self.engine.clock())
        while job is not None and not job.terminal:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            job = self.feed.wait(job, left)
        return job

    async def _wait_async(self, job_id: str, timeout: float) -> Job | None:
        deadline = time.monotonic() + timeout
        job = await self.astore.get(job_id, self.engine.clock())
        while job is not None and not job.terminal:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            job = await self.feed.await_change(job, left)
        return job

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._started and self._pid == os.getpid()

    def _reset_if_forked(self) -> None:
        if self._pid != os.getpid():
            # A forked child (gunicorn --preload): nothing of the parent's threads survived.
            self._pid = os.getpid()
            self._started = False
            self.worker_id = make_worker_id()
            self._stop = threading.Event()
            self._local.clear()
            self._running = set()
            self._delayed = DelayedSubmits(self._submit_retry, self._retry_busy)
            self.zombies = ZombieWatch(self, self.options.max_zombies)
            self.heartbeats = Heartbeats(
                self, self._local, self.options.heartbeat_interval, self.zombies.watch
            )
            self._draining = threading.Event()
            self.observer.after_fork()
            self.engine.liveness.after_fork()
            reset = getattr(self.executor, "after_fork", None)
            if reset is not None:
                reset()

    def start(self) -> None:
        """Start executor and sweeper threads (WSGI); idempotent and fork-aware."""
        with self._start_lock:
            self._reset_if_forked()
            if self._started:
                return
            self.executor.start(self, None)
            self.observer.start()
            self._load_run_times()
            self._started = True
            watch_stop_signals(self)
            self._stop.clear()  # a restart after shutdown()
            self._sweeper_thread = threading.Thread(
                target=self._sweep_forever, name="async-accept-sweeper", daemon=True
            )
            self._sweeper_thread.start()

    async def astart(self) -> None:
        """Start executor and sweeper on the running loop (ASGI)."""
        with self._start_lock:
            self._reset_if_forked()
            if self._started:
                return
            self.loop = asyncio.get_running_loop()
            self.executor.start(self, self.loop)
            self.observer.start()
            self._load_run_times()  # one small read, once per process
            self._started = True
            watch_stop_signals(self)
            self._stop.clear()  # a restart after ashutdown()
        self._sweeper_wake = asyncio.Event()
        self._sweeper_task = asyncio.ensure_future(self._asweep_forever())

    def _load_run_times(self) -> None:
        try:
            self.run_times.load()
        except StoreError:
            log.warning("async_accept: learned run times not loaded", exc_info=True)

    def is_zombie(self, job_id: str) -> bool:
        """Whether ``job_id``'s handler runs here past its deadline (its job ended)."""
        return self.zombies.is_zombie(job_id)

    def is_pending(self, job_id: str) -> bool:
        if job_id in self._local or job_id in self._delayed:
            return True
        pending = getattr(self.executor, "is_pending", None)
        return bool(pending(job_id)) if pending is not None else False

    # -- the worker registry (health) ----------------------------------------------------

    def worker_info(self, state: str = "running") -> dict[str, Any]:
        """What this process says about itself in the store's worker registry."""
        return {
            "role": self.role,
            "state": state,
            # A remote worker consumes its broker's queue; a web process handing jobs there doesn't.
            "consumes": self.role == "worker"
            or not getattr(self.executor, "out_of_process", False),
            "executor": str(getattr(self.executor, "name", type(self.executor).__name__)),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "running": len(self._local),
            "zombies": self.zombies.snapshot(),  # handlers past their deadline (zombies.py)
        }

    def _next_wake(self, next_sweep: float | None) -> float:
        step = self.options.heartbeat_interval
        if next_sweep is not None:
            step = min(step, max(0.0, next_sweep - time.monotonic()))
        return step

    def _sweep_forever(self) -> None:
        first = True
        started = self.engine.clock()
        next_sweep: float | None = time.monotonic()
        while not self._stop.is_set():
            self.beat()
            if next_sweep is not None and time.monotonic() >= next_sweep:
                try:
                    self.drive(
                        self.engine.sweep(
                            self.is_pending, requeue_before=started if first else None
                        )
                    )
                    first = False
                except Exception:
                    log.warning("async_accept: sweep failed", exc_info=True)
                interval = self.options.sweep_interval
                next_sweep = None if interval is None else time.monotonic() + interval
            self._stop.wait(self._next_wake(next_sweep))

    async def _asweep_forever(self) -> None:
        first = True
        started = self.engine.clock()
        next_sweep: float | None = time.monotonic()
        while not self._stop.is_set():
            await self.abeat()
            if next_sweep is not None and time.monotonic() >= next_sweep:
                try:
                    await self.adrive(
                        self.engine.sweep(
                            self.is_pending, requeue_before=started if first else None
                        )
                    )
                    first = False
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.warning("async_accept: sweep failed", exc_info=True)
                interval = self.options.sweep_interval
                next_sweep = None if interval is None else time.monotonic() + interval
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._sweeper_wake.wait(), self._next_wake(next_sweep))
            if self._stop.is_set():
                return

    def shutdown(self) -> None:
        self.begin_drain()
        self._stop.set()
        sweeper, self._sweeper_thread = self._sweeper_thread, None
        if sweeper is not None and sweeper is not threading.current_thread():
            # Its store calls must be over before anyone closes the store.
            sweeper.join(self.options.shutdown_timeout)
        if self._started:
            deadline = time.monotonic() + self.drain_timeout
            while self.busy and time.monotonic() < deadline:  # zombies are not waited for
                time.sleep(0.02)
            self.requeue_running()
            # Threads still in a handler can't be stopped; their jobs are requeued.
            self.executor.shutdown(max(0.1, deadline - time.monotonic()))
            self.observer.stop(self.options.shutdown_timeout)
            self.beat("stopped")
        self._started = False

    async def ashutdown(self) -> None:
        self.begin_drain()
        if self._sweeper_task is not None:
            # Ask first: a store call in a thread can't be cancelled, and must be over
            # before anyone closes the store.
            self._stop.set()
            self._sweeper_wake.set()
            await asyncio.wait({self._sweeper_task}, timeout=5)
            self._sweeper_task.cancel()
            # Bounded: a cancellation swallowed by a client library must not hang shutdown.
            await asyncio.wait({self._sweeper_task}, timeout=5)
            self._sweeper_task = None
        if self._started:
            timeout = self.drain_timeout
            deadline = time.monotonic() + timeout
            while self.busy and time.monotonic() < deadline:  # zombies are not waited for
                await asyncio.sleep(0.02)
            if self.busy:
                await asyncio.to_thread(self.requeue_running)
            left = max(0.1, deadline - time.monotonic())
            ashutdown = getattr(self.executor, "ashutdown", None)
            if ashutdown is not None:
                await _bounded(ashutdown(left), left + 5, "the executor")
            else:
                await _bounded(
                    asyncio.to_thread(self.executor.shutdown, left), left + 5, "the executor"
                )
            await _bounded(
                asyncio.to_thread(self.observer.stop, timeout), timeout + 5, "webhook delivery"
            )
            await _bounded(self.abeat("stopped"), 5, "the last worker heartbeat")
        self._started = False


async def _bounded(awaitable: Awaitable[Any], timeout: float, what: str) -> None:
    """Await a shutdown step, but never longer than ``timeout``: a server must stop."""
    try:
        await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        log.warning("async_accept: shutdown gave up waiting for %s after %.0f s", what, timeout)
