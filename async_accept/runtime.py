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
from .context import JobContext, loop_waker, reset_current, set_current
from .engine import Engine, WorkerShutdown
from .engine.ops import ExecutorCall, Gen, Op, Replay, StoreCall, WaitChange, WaitFor
from .errors import JobCanceled, StoreError
from .executors.base import Executor
from .feed import ChangeFeed, signal_for
from .job import CapturedResponse, Job, JobStatus
from .replay import replay_asgi, replay_asgi_blocking, replay_wsgi
from .stores import AsyncStore, Store, as_async
from .timings import RunTimes

log = logging.getLogger("async_accept")

T = TypeVar("T")
AppKind = Literal["asgi", "wsgi"]


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _beat_due(
    ctx: JobContext, interval: float
) -> tuple[bool, tuple[float | None, str | None, float | None] | None]:
    """Whether the beater writes for ``ctx`` now, and the progress to write (None:
    a bare heartbeat). Due when progress was reported or a beat is almost late."""
    now_mono = time.monotonic()
    progress = ctx.take_progress()
    if progress is None and now_mono - ctx.last_beat < interval * 0.9:
        return False, None
    ctx.last_beat = now_mono
    return True, progress


class Runtime:
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
        self._sync_board: dict[str, JobContext] = {}
        self._async_board: dict[str, JobContext] = {}
        self._sync_wake = threading.Event()
        self._sync_beater: threading.Thread | None = None
        self._beater_lock = threading.Lock()
        self._async_beaters: dict[
            asyncio.AbstractEventLoop,
            tuple[asyncio.Future[None], asyncio.Event, Callable[[], None]],
        ] = {}
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

    def _do_sync(self, op: Op) -> Any:
        if isinstance(op, StoreCall):
            op.result = result = op.run(self.store)
            self.feed.saw_result(result)
            event = op.event(result) if op.event is not None else None
            if event is not None:
                ended = self.observer.after_call(event)
                if ended is not None:
                    self.observer.deliver(ended)
            return None
        if isinstance(op, ExecutorCall):
            if op.cancel:
                return self.cancel_local(op.job_id)
            return self.executor.submit(op.job_id)
        if isinstance(op, WaitChange):
            return self.feed.wait(op.job, op.timeout)
        if isinstance(op, WaitFor):
            return self._wait_sync(op.job_id, op.timeout)
        if isinstance(op, Replay):
            return self._replay_sync(op)
        raise TypeError(f"unknown op {op!r}")  # pragma: no cover

    async def _do_async(self, op: Op) -> Any:
        if isinstance(op, StoreCall):
            op.result = result = await op.arun(self.astore)
            self.feed.saw_result(result)
            event = op.event(result) if op.event is not None else None
            if event is not None:
                ended = self.observer.after_call(event)
                if ended is not None:
                    await asyncio.to_thread(self.observer.deliver, ended)  # outbox I/O
            return None
        if isinstance(op, ExecutorCall):
            if op.cancel:
                return self.cancel_local(op.job_id)
            return self.executor.submit(op.job_id)
        if isinstance(op, WaitChange):
            return await self.feed.await_change(op.job, op.timeout)
        if isinstance(op, WaitFor):
            return await self._wait_async(op.job_id, op.timeout)
        if isinstance(op, Replay):
            return await self._replay_async(op)
        raise TypeError(f"unknown op {op!r}")  # pragma: no cover

    # -- running jobs ------------------------------------------------------------------

    def run_job(self, job_id: str) -> Job | None:
        """Run one job in this thread (thread executors, remote workers)."""
        job = None
        try:
            job = self.drive(self.engine.run(job_id, self.worker_id))
            return job
        except StoreError:
            log.exception("async_accept: store error while running job %s", job_id)
            return None
        finally:
            self.feed.poke(job_id)
            self._learn(job)

    async def arun_job(self, job_id: str) -> Job | None:
        """Run one job as a task on the running loop (asyncio executor)."""
        job = None
        try:
            job = await self.adrive(self.engine.run(job_id, self.worker_id))
            return job
        except StoreError:
            log.exception("async_accept: store error while running job %s", job_id)
            return None
        finally:
            self.feed.poke(job_id)
            if job is not None and job.started_at is not None:
                if self.store.blocking:
                    await asyncio.to_thread(self._learn, job)
                else:
                    self._learn(job)

    def _learn(self, job: Job | None) -> None:
        """A job that ran to completion teaches its route's run time."""
        if job is None or job.started_at is None or job.finished_at is None:
            return
        if job.status is JobStatus.COMPLETED:
            try:
                self.run_times.record(job.route, job.finished_at - job.started_at)
            except StoreError:
                log.warning("async_accept: run time of job %s not saved", job.id, exc_info=True)

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

    # Heartbeats: ONE beater per process side (a thread for jobs running in
    # threads, a task for jobs on the loop), not one per job. It refreshes the
    # lease of every local job each heartbeat_interval and writes progress as
    # soon as a handler reports it (the waker), coalescing bursts.

    def _replay_sync(self, op: Replay) -> CapturedResponse:
        ctx = JobContext(op.job.id)
        ctx.last_beat = time.monotonic()
        self._local[ctx.id] = ctx
        self._sync_board[ctx.id] = ctx
        ctx.set_waker(self._ensure_sync_beater())
        token = set_current(ctx)
        try:
            if self.kind == "wsgi":
                response = replay_wsgi(self.app, op.request, ctx.id)
            else:
                response = replay_asgi_blocking(self.app, op.request, ctx.id, self.lifespan_state)
        except Exception:
            if ctx.cancel_raised:
                raise JobCanceled(ctx.id) from None
            raise
        finally:
            reset_current(token)
            self._sync_board.pop(ctx.id, None)
            self._local.pop(ctx.id, None)
            self._flush_last_progress(ctx)
        return self._outcome(ctx, response)

    def _ensure_sync_beater(self) -> Callable[[], None]:
        with self._beater_lock:
            if self._sync_beater is None or not self._sync_beater.is_alive():
                self._sync_beater = threading.Thread(
                    target=self._beat_sync_forever, name="async-accept-heartbeat", daemon=True
                )
                self._sync_beater.start()
        return self._sync_wake.set

    def _beat_sync_forever(self) -> None:
        interval = self.options.heartbeat_interval
        while True:
            self._sync_wake.wait(interval)
            self._sync_wake.clear()
            for ctx in list(self._sync_board.values()):
                due, progress = _beat_due(ctx, interval)
                if not due:
                    continue
                try:
                    now = self.engine.clock()
                    if progress is not None:
                        job = self.store.set_progress(ctx.id, self.worker_id, now, *progress)
                        self.feed.saw(job)
                    else:
                        job = self.store.heartbeat(ctx.id, self.worker_id, now)
                except StoreError:
                    log.warning("async_accept: heartbeat of job %s failed", ctx.id, exc_info=True)
                    continue
                if ctx.id in self._sync_board:
                    self._after_beat(ctx, job)

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

    def _after_beat(self, ctx: JobContext, job: Job | None) -> None:
        if job is None:
            # Failed by the deadman switch (or otherwise taken away): stop the work.
            ctx.lost = True
            ctx.request_cancel()
        elif job.cancel_requested:
            ctx.request_cancel()

    async def _replay_async(self, op: Replay) -> CapturedResponse:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        ctx = JobContext(op.job.id)
        ctx.last_beat = time.monotonic()
        ctx.loop_id = id(loop)
        self._local[ctx.id] = ctx
        self._async_board[ctx.id] = ctx
        ctx.set_waker(self._ensure_async_beater(loop))
        cancelled_by_us: list[bool] = []

        def cancel_job() -> None:
            def do() -> None:
                if task is not None and not task.done():
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
                response = await replay_asgi(self.app, op.request, ctx.id, self.lifespan_state)
        except asyncio.CancelledError:
            if cancelled_by_us and task is not None:
                # Our own cancel (a client asked): take it back, the job goes on to record it.
                uncancel: Callable[[], object] | None = getattr(task, "uncancel", None)
                if uncancel is not None:  # Python >= 3.11
                    for _ in cancelled_by_us:
                        uncancel()
                raise JobCanceled(ctx.id) from None
            # Cancelled from outside: the server is shutting down.
            raise WorkerShutdown("The server shut down while the job was running.") from None
        except Exception:
            if ctx.cancel_raised:
                raise JobCanceled(ctx.id) from None
            raise
        finally:
            reset_current(token)
            self._async_board.pop(ctx.id, None)
            self._local.pop(ctx.id, None)
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

    def _ensure_async_beater(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        beater = self._async_beaters.get(loop)
        if beater is None:
            event = asyncio.Event()
            task = asyncio.ensure_future(self._beat_async_while_busy(loop, event))
            beater = (task, event, loop_waker(loop, event))
            self._async_beaters[loop] = beater
        return beater[2]

    async def _beat_async_while_busy(
        self, loop: asyncio.AbstractEventLoop, event: asyncio.Event
    ) -> None:
        interval = self.options.heartbeat_interval
        try:
            while True:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(event.wait(), interval)
                event.clear()
                board = [c for c in self._async_board.values() if c.loop_id == id(loop)]
                if not board:
                    # Idle: stop (no await before the finally below, so no job can
                    # register in between); the next job on this loop starts a new one.
                    return
                for ctx in board:
                    due, progress = _beat_due(ctx, interval)
                    if not due:
                        continue
                    try:
                        now = self.engine.clock()
                        if progress is not None:
                            job = await self.astore.set_progress(
                                ctx.id, self.worker_id, now, *progress
                            )
                            self.feed.saw(job)
                        else:
                            job = await self.astore.heartbeat(ctx.id, self.worker_id, now)
                    except StoreError:
                        log.warning(
                            "async_accept: heartbeat of job %s failed", ctx.id, exc_info=True
                        )
                        continue
                    if ctx.id in self._async_board:
                        self._after_beat(ctx, job)
        finally:
            self._async_beaters.pop(loop, None)

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
            self._sync_board.clear()
            self._async_board.clear()
            self._async_beaters.clear()
            self._sync_wake = threading.Event()
            self._sync_beater = None
            self._beater_lock = threading.Lock()
            self.observer.after_fork()
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
            self._stop.clear()  # a restart after ashutdown()
        self._sweeper_wake = asyncio.Event()
        self._sweeper_task = asyncio.ensure_future(self._asweep_forever())

    def _load_run_times(self) -> None:
        try:
            self.run_times.load()
        except StoreError:
            log.warning("async_accept: learned run times not loaded", exc_info=True)

    def is_pending(self, job_id: str) -> bool:
        if job_id in self._local:
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
        }

    def beat(self, state: str = "running") -> None:
        """Record this process's heartbeat (the sweeper calls it every heartbeat_interval;
        a remote worker without the sweeper calls it itself)."""
        beat = getattr(self.store, "worker_heartbeat", None)
        if beat is None:
            return
        try:
            beat(self.worker_id, self.engine.clock(), self.worker_info(state))
        except StoreError:
            log.warning("async_accept: worker heartbeat failed", exc_info=True)

    async def abeat(self, state: str = "running") -> None:
        if getattr(self.store, "worker_heartbeat", None) is None:
            return
        try:
            await self.astore.worker_heartbeat(
                self.worker_id, self.engine.clock(), self.worker_info(state)
            )
        except StoreError:
            log.warning("async_accept: worker heartbeat failed", exc_info=True)

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
        self._stop.set()
        sweeper, self._sweeper_thread = self._sweeper_thread, None
        if sweeper is not None and sweeper is not threading.current_thread():
            # Its store calls must be over before anyone closes the store.
            sweeper.join(self.options.shutdown_timeout)
        if self._started:
            self.executor.shutdown(self.options.shutdown_timeout)
            self.observer.stop(self.options.shutdown_timeout)
            self.beat("stopped")
        self._started = False

    async def ashutdown(self) -> None:
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
            timeout = self.options.shutdown_timeout
            ashutdown = getattr(self.executor, "ashutdown", None)
            if ashutdown is not None:
                await _bounded(ashutdown(timeout), 2 * timeout + 5, "the executor")
            else:
                await _bounded(
                    asyncio.to_thread(self.executor.shutdown, timeout), timeout + 5, "the executor"
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
