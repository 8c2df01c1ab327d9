"""The executor contract: how accepted jobs get run."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..engine import Engine
    from ..job import Job
    from ..stores import Store


class JobHost(Protocol):
    """What an executor needs of the runtime that starts it (the runtime
    implements it; executors don't import the runtime, which holds them)."""

    engine: Engine
    store: Store

    @property
    def draining(self) -> bool:
        """True once the process is stopping: start no queued job."""
        ...

    def run_job(self, job_id: str) -> Job | None:
        """Run one job in the calling thread."""
        ...

    def is_zombie(self, job_id: str) -> bool:
        """Whether the job's handler runs past its deadline (its job ended; it keeps
        its slot until it returns, and a drain doesn't wait for it)."""
        ...

    async def arun_job(self, job_id: str) -> Job | None:
        """Run one job on the running event loop."""
        ...


@runtime_checkable
class Executor(Protocol):
    """Runs jobs by id. ``submit`` must never block on I/O: an executor that
    talks to a broker queues internally and hands over off the request path.
    A job may be submitted more than once (recovery); the store's claim
    guarantees it runs once."""

    #: short name for messages ("thread", "asyncio", "celery", ...)
    name: str
    #: True when jobs run in other processes (needs a shared store)
    out_of_process: bool
    #: which front doors it can serve: {"asgi", "wsgi"}
    supports: frozenset[str]

    def start(self, runtime: JobHost, loop: asyncio.AbstractEventLoop | None) -> None:
        """Begin taking jobs; ``loop`` is the server's loop on the ASGI path."""
        ...

    def submit(self, job_id: str) -> None:
        """Schedule ``job_id``; raise ExecutorError when it can't be taken."""
        ...

    def is_pending(self, job_id: str) -> bool:
        """True while ``job_id`` waits or runs here (the sweeper won't resubmit it)."""
        ...

    def cancel(self, job_id: str) -> None:
        """Best effort: the job's cancel was requested."""
        ...

    def shutdown(self, timeout: float) -> None:
        """Stop taking jobs; give running ones up to ``timeout`` seconds."""
        ...


class BaseExecutor:
    """What most executors share: runs in this process, serves both front
    doors, tracks nothing, ignores cancels and forks. Subclasses implement
    ``start``, ``submit`` and ``shutdown`` and override what differs."""

    name = "executor"
    out_of_process = False
    supports: frozenset[str] = frozenset({"asgi", "wsgi"})

    def start(self, runtime: JobHost, loop: asyncio.AbstractEventLoop | None) -> None:
        raise NotImplementedError  # pragma: no cover - abstract

    def submit(self, job_id: str) -> None:
        raise NotImplementedError  # pragma: no cover - abstract

    def shutdown(self, timeout: float) -> None:
        raise NotImplementedError  # pragma: no cover - abstract

    def is_pending(self, job_id: str) -> bool:
        return False

    def cancel(self, job_id: str) -> None:
        """Best effort; the running handler sees ``cancel_requested`` through the store."""

    def after_fork(self) -> None:
        """A forked child: drop what the parent's threads and connections held."""
