"""What a handler sees inside a job: progress reporting and cancellation."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import math
import threading
import weakref
from collections.abc import Callable

from .errors import JobCanceled

_current: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar(
    "async_accept_job", default=None
)


class JobContext:
    """The running job, as the handler sees it.

    ``percent``/``message``/``eta`` hold the latest reported progress; the
    runner's heartbeat writes them to the store (at once when they change,
    coalescing bursts). ``cancel_requested`` turns true when a client asked to
    cancel; handlers in threads and workers check it and stop cooperatively.
    """

    __slots__ = (
        "_lock",
        "_wake",
        "attempt",
        "cancel_raised",
        "cancel_requested",
        "dirty",
        "eta",
        "handler_done",
        "id",
        "last_beat",
        "last_progress",
        "lost",
        "message",
        "on_cancel",
        "percent",
        "response_started",
    )

    def __init__(self, job_id: str) -> None:
        self.id = job_id
        self.cancel_requested = False
        #: report_progress raised JobCanceled (the app may have turned it into a 500)
        self.cancel_raised = False
        self.lost = False
        #: 1 on the first run, counting up when the job runs again (requeue, retry)
        self.attempt = 1
        #: runtime bookkeeping: when the lease was last written; whether the handler
        #: returned or raised (a cancel then comes too late); whether it began answering
        self.last_beat = 0.0
        self.last_progress = 0.0
        self.handler_done = False
        self.response_started = False
        self.percent: float | None = None
        self.message: str | None = None
        self.eta: float | None = None
        self.dirty = False
        self._lock = threading.Lock()
        self._wake: Callable[[], None] | None = None
        #: called once when cancel is requested (asyncio: cancels the task)
        self.on_cancel: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return (
            f"<JobContext {self.id} attempt={self.attempt} "
            f"cancel_requested={self.cancel_requested}>"
        )

    def set_waker(self, wake: Callable[[], None] | None) -> None:
        self._wake = wake

    def report(self, percent: float | None, message: str | None, eta: float | None) -> None:
        with self._lock:
            if percent is not None:
                self.percent = percent
            if message is not None:
                self.message = message
            if eta is not None:
                self.eta = eta
            self.dirty = True
        wake = self._wake
        if wake is not None:
            wake()

    def mark_started(self) -> None:
        """The handler began sending its response: a cancel now loses the race."""
        self.response_started = True

    def restore_progress(
        self, percent: float | None, message: str | None, eta: float | None
    ) -> None:
        """Put back progress whose write failed, unless a newer report came meanwhile."""
        with self._lock:
            if not self.dirty:
                self.percent, self.message, self.eta = percent, message, eta
                self.dirty = True

    def take_progress(self) -> tuple[float | None, str | None, float | None] | None:
        """The progress to write, once (None when nothing changed)."""
        with self._lock:
            if not self.dirty:
                return None
            self.dirty = False
            return self.percent, self.message, self.eta

    def request_cancel(self) -> None:
        if self.cancel_requested:
            return
        self.cancel_requested = True
        cb = self.on_cancel
        if cb is not None:
            cb()


def current_job() -> JobContext | None:
    """The job the calling handler runs in, or None outside a job."""
    return _current.get()


def set_current(ctx: JobContext | None) -> contextvars.Token[JobContext | None]:
    return _current.set(ctx)


def reset_current(token: contextvars.Token[JobContext | None]) -> None:
    _current.reset(token)


def report_progress(
    percent: float | None = None, *, message: str | None = None, eta: float | None = None
) -> None:
    """Report progress from inside a job: ``percent`` 0-100, a ``message``,
    ``eta`` seconds remaining. A no-op outside a job (its arguments unchecked
    there, so a helper shared with non-job code never raises for them).

    It is also a cancellation point: in a job whose cancel was requested it
    raises :class:`~async_accept.JobCanceled` and the job ends ``canceled``.
    """
    ctx = _current.get()
    if ctx is None:
        return  # outside a job: nothing to report, whatever the arguments
    if percent is not None:
        if (
            isinstance(percent, bool)
            or not isinstance(percent, (int, float))
            or not (0 <= percent <= 100)
        ):
            raise ValueError(f"percent={percent!r} must be a number from 0 to 100")
        percent = float(percent)
    if eta is not None:
        if (
            isinstance(eta, bool)
            or not isinstance(eta, (int, float))
            or eta < 0
            or (not math.isfinite(eta))
        ):
            raise ValueError(f"eta={eta!r} must be a number of seconds >= 0")
        eta = float(eta)
    if message is not None and not isinstance(message, str):
        raise ValueError("message must be a string")
    if ctx.cancel_requested or ctx.lost:
        ctx.cancel_raised = True
        raise JobCanceled(ctx.id)
    ctx.report(percent, message, eta)


def thread_waker(event: threading.Event) -> Callable[[], None]:
    return event.set


#: events a loop's waker sets per loop iteration; the rest wait for the next one
WAKE_BATCH = 16


class _LoopWakeups:
    """The events to set on one loop, set ``WAKE_BATCH`` per loop iteration.

    One job's end may wake thousands of waiters at once. Set together, their
    tasks all run before the loop next polls its sockets, and a request to any
    other route waits behind every one of them; set a batch per iteration, the
    loop polls between batches and a new request waits for one batch at most."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weak: the table below is keyed by the loop, and a closed loop must go.
        self._loop = weakref.ref(loop)
        self._lock = threading.Lock()
        self._pending: collections.deque[asyncio.Event] = collections.deque()
        self._scheduled = False

    def add(self, event: asyncio.Event) -> None:
        with self._lock:
            self._pending.append(event)
            if self._scheduled:
                return
            self._scheduled = True
        loop = self._loop()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        try:
            if loop is None:
                raise RuntimeError("the loop is gone")
            if running is loop:
                loop.call_soon(self._drain)
            else:
                loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: its waiters are gone with it
            with self._lock:
                self._pending.clear()
                self._scheduled = False

    def _drain(self) -> None:
        with self._lock:
            batch = [self._pending.popleft() for _ in range(min(WAKE_BATCH, len(self._pending)))]
            more = bool(self._pending)
            if not more:
                self._scheduled = False
        for event in batch:
            event.set()
        loop = self._loop()
        if more and loop is not None and not loop.is_closed():
            loop.call_soon(self._drain)


_WAKEUPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWakeups] = (
    weakref.WeakKeyDictionary()
)
_WAKEUPS_LOCK = threading.Lock()


def loop_waker(loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> Callable[[], None]:
    """A waker callable from any thread that sets an asyncio.Event on ``loop``
    (in batches per loop iteration: see :class:`_LoopWakeups`)."""
    with _WAKEUPS_LOCK:
        wakeups = _WAKEUPS.get(loop)
        if wakeups is None:
            wakeups = _WAKEUPS[loop] = _LoopWakeups(loop)

    def wake() -> None:
        wakeups.add(event)

    return wake
