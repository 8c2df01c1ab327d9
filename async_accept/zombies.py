"""Jobs whose handler outlives their deadline ("zombies"), and what a process does
about them.

Python can interrupt an async handler at an ``await`` (its task is cancelled); it
can't stop a sync handler in a thread, nor a blocking call (on the event loop or in
a thread), nor a handler that catches ``CancelledError`` and goes on. So at a job's
deadline (``2 x sla`` after it was accepted) the process running it:

- ends the job ``failed`` / ``deadline-exceeded`` in the store, if no status read or
  sweep did yet (the client reads that at once; the webhook goes out);
- asks the handler to stop: an async one is cancelled, a sync one sees
  ``current_job().cancel_requested`` and its next ``report_progress`` raises;
- a handler still running :data:`ZOMBIE_GRACE` seconds later is a *zombie*. It keeps
  its executor slot (``max_concurrency`` / ``max_workers`` / ``--concurrency``) until
  it returns, so a new job never starts on a slot it holds and the limits hold. It is
  logged when it appears and when it ends, and shown in health (``zombies``); its
  late outcome is never written (the job's end is a compare-and-set on the running
  job: the job had ended already).
- With ``max_zombies=N``, N zombies at once make the process recycle itself: it stops
  claiming, lets its other jobs finish within ``shutdown_timeout``, requeues what
  still runs and exits, for its process manager (gunicorn's arbiter, ``uvicorn
  --workers``, systemd, ``async-accept worker`` under a supervisor) to start a fresh
  one. The only way to get a thread back is to end its process.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .context import JobContext
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .job import Job

log = logging.getLogger("async_accept")

T = TypeVar("T")

#: seconds after its deadline a handler has to end (an async one was cancelled, a
#: cooperative sync one saw ``cancel_requested``) before it counts as a zombie
ZOMBIE_GRACE = 1.0
#: a recycling process still alive this long after its drain period is ended hard
#: (a zombie thread or a task that swallows every cancel can hold up an exit)
RECYCLE_EXIT_AFTER = 30.0
#: the exit status of a process that recycled itself (EX_TEMPFAIL: start me again)
EXIT_RECYCLE = 75


def check_max_zombies(name: str, value: Any) -> int | None:
    """The ``max_zombies`` option: None (never recycle) or a whole number >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(
            f"{name}={value!r} must be None (never recycle) or a whole number >= 1 (recycle "
            "the process once that many jobs past their deadline still run in it)"
        )
    return value


class ZombieHost(Protocol):
    """What the watch needs of the runtime."""

    store: Any
    engine: Any
    _local: dict[str, JobContext]

    @property
    def drain_timeout(self) -> float: ...

    def drive(self, gen: Generator[Any, Any, T]) -> T: ...

    def begin_drain(self) -> None: ...

    def beat(self, state: str = "running") -> None: ...


@dataclass
class _Run:
    """A job whose handler runs here."""

    route: str
    deadline_at: float
    #: monotonic time its deadline was handled (None: not yet)
    late_at: float | None = None
    zombie: bool = False


class ZombieWatch:
    """The deadlines of the jobs running in this process, and their zombies.

    ``watch()`` runs on the heartbeat thread (one per process) each round; the
    runtime calls ``started`` when a handler starts and ``ended`` when it returned.
    """

    def __init__(
        self, host: ZombieHost, limit: int | None = None, grace: float = ZOMBIE_GRACE
    ) -> None:
        if limit is not None and not getattr(host.store, "shared", True):
            raise ConfigurationError(
                f"max_zombies={limit} recycles the process, and {host.store!r} keeps its jobs "
                "in this process only: a recycle would lose them; use a store that outlives "
                "the process (sqlite:///..., redis://..., postgresql://...)"
            )
        self._host = host
        self.limit = limit
        self.grace = grace
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        #: zombies seen in this process since it started
        self.seen = 0
        self._recycling = False
        #: what a recycle does instead of SIGTERM to this process (``async-accept worker``)
        self.on_recycle: Callable[[], None] | None = None

    # -- the runtime's calls -------------------------------------------------------------

    def started(self, job: Job) -> None:
        """``job``'s handler starts here."""
        with self._lock:
            self._runs[job.id] = _Run(job.route or "", job.deadline_at)

    def ended(self, job_id: str, recorded: bool) -> None:
        """``job_id``'s handler returned (``recorded``: its outcome was written)."""
        with self._lock:
            run = self._runs.pop(job_id, None)
            left = self._count()
        if run is None or not run.zombie:
            return
        past = max(0.0, self._host.engine.clock() - run.deadline_at)
        log.warning(
            "async_accept: zombie job %s (%s) ended %.1f s after its deadline and gave its "
            "executor slot back; %s; %d zombie(s) left here",
            job_id,
            run.route,
            past,
            "its outcome was recorded (the deadline's failure was not written)"
            if recorded
            else "its late outcome was discarded (the job had ended deadline-exceeded)",
            left,
        )
        self._beat()

    def is_zombie(self, job_id: str) -> bool:
        run = self._runs.get(job_id)
        return run is not None and run.zombie

    def __len__(self) -> int:
        with self._lock:
            return self._count()

    def _count(self) -> int:
        return sum(1 for run in self._runs.values() if run.zombie)

    def snapshot(self) -> list[dict[str, Any]]:
        """The zombies, for the worker registry (health computes how late each is)."""
        with self._lock:
            return [
                {"id": job_id, "route": run.route, "deadline_at": run.deadline_at}
                for job_id, run in self._runs.items()
                if run.zombie
            ]

    # -- the heartbeat thread's round ---------------------------------------------------------

    def watch(self) -> float:
        """End the jobs whose deadline passed, declare the zombies, recycle at the limit;
        the seconds until the next round is due here."""
        now = self._host.engine.clock()
        mono = time.monotonic()
        wake = float("inf")
        late: list[str] = []
        risen: list[tuple[str, _Run]] = []
        with self._lock:
            for job_id, run in self._runs.items():
                if run.zombie:
                    continue
                if run.late_at is None:
                    if now < run.deadline_at:
                        wake = min(wake, run.deadline_at - now)
                        continue
                    run.late_at = mono
                    late.append(job_id)
                left = run.late_at + self.grace - mono
                if left > 0:
                    wake = min(wake, left)
                else:
                    run.zombie = True
                    self.seen += 1
                    risen.append((job_id, run))
            count = self._count()
        for job_id in late:
            self._end_late(job_id)
        for job_id, run in risen:
            log.warning(
                "async_accept: job %s (%s) is past its deadline and its handler still runs "
                "(a zombie: it ended deadline-exceeded for its client, and keeps its "
                "executor slot until it returns; %d zombie(s) here now%s)",
                job_id,
                run.route,
                count,
                "" if self.limit is None else f", the process recycles at {self.limit}",
            )
        if risen:
            self._beat()
            if self.limit is not None and count >= self.limit:
                self.recycle(
                    f"{count} zombie job(s) hold executor slots (max_zombies={self.limit})"
                )
        return wake

    def _end_late(self, job_id: str) -> None:
        """The deadline passed: the job ends deadline-exceeded (unless a read or a sweep
        ended it already), and its handler is asked to stop."""
        host = self._host
        ended = False
        try:
            now = host.engine.clock()
            job = host.store.get(job_id, now)
            if job is not None and not job.terminal:
                job = host.drive(host.engine.apply_deadman(job, now))
            ended = job is None or job.terminal
        except Exception:  # the next status read or sweep applies the deadline too
            log.warning("async_accept: job %s past its deadline not ended", job_id, exc_info=True)
        ctx = host._local.get(job_id)
        if ended and ctx is not None and not ctx.handler_done:
            # Only once it ended: a cancel of a job still running would end it canceled.
            # (Not ended now: the heartbeat that finds it ended later asks the same.)
            ctx.lost = True  # taken away: report_progress raises, beats stop
            ctx.request_cancel()

    def _beat(self) -> None:
        """Tell the worker registry now (health shows zombies without waiting a beat)."""
        try:
            self._host.beat()
        except Exception:  # pragma: no cover - beat logs its own store errors
            log.warning("async_accept: worker heartbeat failed", exc_info=True)

    # -- recycling ------------------------------------------------------------------------------

    @property
    def recycling(self) -> bool:
        """True once this process decided to recycle itself."""
        return self._recycling

    def recycle(self, reason: str) -> None:
        """Stop claiming, and have the process exit gracefully (drain, requeue) so its
        process manager starts a fresh one: SIGTERM to itself, the signal every server
        and process manager reads as a graceful stop, or ``on_recycle`` when set."""
        with self._lock:
            if self._recycling:
                return
            self._recycling = True
        log.warning(
            "async_accept: recycling this process (pid %d): %s. It claims no more jobs, lets "
            "its other running jobs finish within shutdown_timeout (%.0f s), requeues what "
            "still runs, and exits; its process manager starts a fresh one",
            os.getpid(),
            reason,
            self._host.drain_timeout,
        )
        self._host.begin_drain()
        hook = self.on_recycle
        if hook is not None:
            hook()
            return
        _exit_later(self._host.drain_timeout + RECYCLE_EXIT_AFTER)
        os.kill(os.getpid(), signal.SIGTERM)


def _exit_later(after: float) -> None:
    """End the process ``after`` seconds from now if it is still there (a zombie
    thread, or a task that swallows every cancel, can hold a graceful exit up)."""

    def run() -> None:
        time.sleep(after)
        log.error(
            "async_accept: still running %.0f s after recycling began (a zombie holds the "
            "exit up): exiting now",
            after,
        )
        logging.shutdown()
        os._exit(EXIT_RECYCLE)

    threading.Thread(target=run, name="async-accept-recycle", daemon=True).start()
