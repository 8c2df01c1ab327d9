"""The engine: HTTP decisions about jobs, written once for every front door.

Every operation here is a generator that *yields* what it needs done (a store
call, a hand-over to the executor, a wait, a replay; see ``ops``) and receives
the result. The WSGI front door and worker threads drive these generators with
blocking calls; the ASGI front door drives the same generators with ``await``,
so the event loop never blocks on store I/O and the HTTP logic exists exactly
once. No framework and no server is imported here.

The engine is one object for its callers, composed from what it decides:
``status`` (the base: identity, status URLs, the deadman switch, the answers
below the prefix), ``accept`` (recording a request as a job) and ``running``
(running a job, sweeping the lost ones). Each side only needs the base, so the
two are siblings rather than a chain, and a reader of one never reads the other.
"""

from __future__ import annotations

from .accept import Accepting
from .ops import Gen
from .responses import Response
from .running import Running, WorkerShutdown

__all__ = ["Engine", "Gen", "Response", "WorkerShutdown"]


class Engine(Accepting, Running):
    """HTTP decisions about jobs. Pure: talks to the world only through yields."""
