"""Which queued jobs a process may run: those of a route its app marks.

Two different apps given one store (two apps started in one directory share the
default ``sqlite:///async_accept_jobs.db``; two apps on one Redis database
without namespaces) see each other's queued jobs. A job replayed against the
wrong app runs the wrong handler, or none, with the caller's credentials. What
"the same app" is across processes, machines and rolling deploys can't be
derived (module paths, hostnames and code change while jobs wait), so the rule
is a fact each process knows: it marks a route or it doesn't. The sweep
(start-up recovery included) and store-as-queue workers hand over only jobs
whose recorded route (``"POST /reports/7"``) this app marks, or that it took
through ``Prefer: respond-async`` when it does so too. The others stay queued
for the app that accepted them; the deadman switch still ends them at their
deadline, so nothing waits forever. One warning per route names the fix: a
namespace of its own for each app (``?namespace=``), or a store of its own.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .job import Job
from .routes import PREFER_META

__all__ = ["RouteOwnership"]

log = logging.getLogger("async_accept")

#: Routes warned about at most (a process never holds an unbounded set).
MAX_WARNED = 1000


class RouteOwnership:
    """``owns(job)``: whether this app (its front door's marked routes) may run ``job``.

    Called from the sweeper and from store-as-queue workers, never on the request
    path. Until the app's routes were discovered (the first request does it), the
    first call discovers them with the app the runtime replays against.
    """

    def __init__(self, door: Any) -> None:
        self._door = door
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def owns(self, job: Job) -> bool:
        route = job.route
        if not route:
            return True  # written by something else than an accept: nothing to go by
        door = self._door
        if not door._discovered:
            door.discover(door.runtime.app)
        method, _, path = route.partition(" ")
        if door.routes.lookup(method, path) is not None:
            return True
        if door.prefer_async and job.meta.get(PREFER_META):
            return True
        self._warn(route, door.store)
        return False

    def _warn(self, route: str, store: Any) -> None:
        with self._lock:
            if route in self._warned or len(self._warned) >= MAX_WARNED:
                return
            self._warned.add(route)
        log.warning(
            "async_accept: queued jobs of %r in %r are left alone: this app marks no such "
            "route, so another app shares the store and accepted them (they are never "
            "replayed here; the app that accepted them runs them, else they fail at their "
            "deadline). Give each app its own namespace, e.g. "
            "store='sqlite:///async_accept_jobs.db?namespace=billing' or "
            "'redis://host:6379/0?namespace=billing', or a store of its own "
            "(store='sqlite:///billing_jobs.db')",
            route,
            store,
        )
