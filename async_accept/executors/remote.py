"""Handing jobs to a broker: :class:`RemoteExecutor`, the base of the Celery and RQ
executors (the worker side that runs them is :mod:`async_accept.worker`).

``submit`` appends the id to an in-process buffer and returns (the accept path
never waits on the broker: the store write is the commit point). A sender
thread hands the buffer over in batches. Before publishing, it marks the jobs
dispatched in the store (``Store.mark_dispatched``, compare-and-set), so that
the sweepers of all web processes re-send a job only when nobody dispatched it
within ``redispatch_after`` seconds -- or when it was dispatched before a worker
died (the sender thread watches the worker registry: see
:mod:`~async_accept.executors.liveness`), since that worker may have taken its
message with it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, TypedDict

from .._imports import split_import_path
from ..errors import ConfigurationError, ExecutorError
from ..supervision import FailureStreak
from .base import BaseExecutor
from .liveness import WorkerWatch

if TYPE_CHECKING:
    from .base import JobHost

__all__ = ["RemoteExecutor", "RemoteOptions", "check_app_path"]

log = logging.getLogger("async_accept")


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


class RemoteOptions(TypedDict, total=False):
    """The hand-over tuning every remote executor takes (see RemoteExecutor)."""

    batch_size: int
    flush_interval: float
    redispatch_after: float
    max_buffer: int
    jobs_per_message: int


def queue_name(queue: Any) -> str:
    """A broker queue's name; ConfigurationError otherwise."""
    if not isinstance(queue, str) or not queue:
        raise ConfigurationError(f"queue={queue!r} must be a queue name")
    return queue


class RemoteExecutor(BaseExecutor):
    """Hands job ids to a broker from a background thread, in batches.

    Subclasses implement :meth:`_publish` (one batch, one connection) and may
    implement :meth:`_send_cancels`. Options:

    ``batch_size``
        At most this many jobs per publish round.
    ``flush_interval``
        Seconds the sender waits while a burst is forming (several jobs
        waiting, or a round sent just before), so that the jobs accepted
        meanwhile go out in the same round. A lone job to an idle sender goes
        at once.
    ``redispatch_after``
        A queued job dispatched less than this many seconds ago is not sent
        again by a sweeper (the broker still holds it), unless a worker died
        since: jobs dispatched before a worker stopped beating (for
        ``worker_lost_after``) are sent again at the next sweep, since the dead
        worker may have taken (prefetched) their messages. So this is only the
        safety net for a message lost otherwise (a broker that lost its data);
        keep it below 2 x sla.
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
        self._runtime: JobHost | None = None
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
        #: the worker registry, read by the sender thread (see liveness.py)
        self._watch: WorkerWatch | None = None
        self._next_look = 0.0
        self._look_streak = FailureStreak(f"reading the worker registry ({self.name})")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} app={self.app_path!r}>"

    # -- the Executor protocol -----------------------------------------------------------

    def start(self, runtime: JobHost, loop: asyncio.AbstractEventLoop | None) -> None:
        with self._lock:
            self._runtime = runtime
            self._closed = False
            self._stop.clear()
            opts = getattr(getattr(runtime, "engine", None), "options", None)
            if self._watch is None and opts is not None and hasattr(runtime.store, "list_workers"):
                self._watch = WorkerWatch(
                    self.name,
                    lost_after=opts.worker_lost_after,
                    beat_every=opts.heartbeat_interval,
                    forget_after=self.redispatch_after,
                )
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
        stale_before = now - self.redispatch_after
        cutoff = None if self._watch is None else self._watch.cutoff
        if cutoff is not None and cutoff > stale_before:
            # A worker died since: what was dispatched before may be in its hands.
            stale_before = min(cutoff, now)
        return list(mark(job_ids, now, stale_before))

    def _wait_time(self) -> float | None:
        """Seconds the idle sender sleeps: until the next look at the registry."""
        if self._watch is None:
            return None
        return max(0.0, self._next_look - time.monotonic())

    def _look(self) -> None:
        """Read the worker registry when a look is due (every heartbeat_interval)."""
        watch, runtime = self._watch, self._runtime
        if watch is None or runtime is None or time.monotonic() < self._next_look:
            return
        self._next_look = time.monotonic() + watch.beat_every
        try:
            now = runtime.engine.clock()
            watch.observe(runtime.store.list_workers(now), now)
        except Exception as exc:
            # The store is down or slow: the loss shows once it answers again.
            self._look_streak.failed(f"{type(exc).__name__}: {exc}")
        else:
            self._look_streak.succeeded()

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
        last_round = 0.0
        while True:
            if backoff:
                self._stop.wait(backoff)
            else:
                self._wake.wait(self._wait_time())
            self._wake.clear()
            closing = self._stop.is_set()
            if not closing:
                self._look()
            # A lone job to an idle sender goes at once (no batching delay); only a
            # burst already forming (several waiting, or a round just sent) waits
            # flush_interval for the rest of it to join this round.
            waiting = len(self._buffer)
            forming = waiting > 1 or time.monotonic() - last_round < self.flush_interval
            if forming and not closing and self.flush_interval > 0 and waiting < self.batch_size:
                time.sleep(self.flush_interval)
            failed = False
            took = False
            while True:
                batch = self._take()
                if not batch:
                    break
                took = True
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
            if took:
                last_round = time.monotonic()
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
