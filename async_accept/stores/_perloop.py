"""One resource per event loop, closed with its loop: what the asyncio twins of
the shared stores (Redis, PostgreSQL) keep their connections in.

asyncio connections belong to the event loop that opened them, so each loop
that uses a store gets its own resource (a client, a pool). It is closed when
its loop shuts down (``asyncio.run``, uvicorn and AnyIO portals finalize async
generators then: an async generator parked in its first ``yield`` is the
hook), when :meth:`PerLoop.aclose` is awaited on that loop, or by
:meth:`PerLoop.close_all` from any thread, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

R = TypeVar("R")

__all__ = ["PerLoop"]


@dataclass
class _Entry(Generic[R]):
    loop: asyncio.AbstractEventLoop
    value: R
    guard: Any = None  # the async generator whose finalization closes ``value``


class PerLoop(Generic[R]):
    """The resource of each event loop: ``open(loop)`` builds one (without awaiting),
    ``close(resource)`` ends it.

    ``forked``, when given, is handed the resources inherited through ``fork()``
    (never closed by the child: they share the parent's sockets) and the child
    starts afresh; without it, inherited resources are kept as they are.
    """

    def __init__(
        self,
        open: Callable[[asyncio.AbstractEventLoop], R],
        close: Callable[[R], Awaitable[None]],
        *,
        closed_error: Callable[[], BaseException],
        forked: Callable[[list[R]], None] | None = None,
        close_timeout: float = 5.0,
    ) -> None:
        self._open = open
        self._close = close
        self._closed_error = closed_error
        self._forked = forked
        self._close_timeout = close_timeout
        self._lock = threading.Lock()
        self._entries: dict[asyncio.AbstractEventLoop, _Entry[R]] = {}
        self._pid = os.getpid()
        self._closing: set[asyncio.Task[None]] = set()
        #: set by :meth:`close_all`: no new resource is opened afterwards
        self.closed = False

    @property
    def by_loop(self) -> dict[asyncio.AbstractEventLoop, R]:
        """The open resources, by event loop (a copy)."""
        return {loop: e.value for loop, e in self._entries.items()}

    def _moved(self) -> bool:
        return self._forked is not None and self._pid != os.getpid()

    async def get(self) -> R:
        """The running loop's resource, opened on first use."""
        loop = asyncio.get_running_loop()
        entry = self._entries.get(loop)
        if entry is not None and not self._moved():
            return entry.value
        if self.closed:
            raise self._closed_error()
        with self._lock:
            if self._moved() and self._forked is not None:
                self._forked([e.value for e in self._entries.values()])
                self._entries = {}
                self._pid = os.getpid()
            stale = [e for e in self._entries.values() if e.loop.is_closed()]
            for e in stale:  # loops closed without finalizing: nothing left to await
                del self._entries[e.loop]
        entry = _Entry(loop, self._open(loop))
        with self._lock:
            self._entries[loop] = entry
        entry.guard = self._guard(entry)
        await entry.guard.__anext__()  # registers it with the loop's async-generator hooks
        return entry.value

    async def _guard(self, entry: _Entry[R]) -> AsyncIterator[None]:
        try:
            yield
        finally:
            with self._lock:
                if self._entries.get(entry.loop) is entry:
                    del self._entries[entry.loop]
            await self._close(entry.value)

    async def aclose(self) -> None:
        """Close the running loop's resource (other loops' close on their shutdown)."""
        entry = self._entries.get(asyncio.get_running_loop())
        if entry is not None and entry.guard is not None:
            await entry.guard.aclose()

    def close_all(self) -> None:
        """Close every loop's resource from any thread (or a coroutine on one of
        those loops); no new one is opened afterwards."""
        self.closed = True
        with self._lock:
            remaining = [] if self._moved() else list(self._entries.values())
        for entry in remaining:
            loop = entry.loop
            if loop.is_closed() or entry.guard is None:
                continue  # closed without finalizing its async generators: nothing to await
            coro = entry.guard.aclose()
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                # called from a coroutine on that very loop: finish it soon after
                task = loop.create_task(coro)
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            elif loop.is_running():
                fut = asyncio.run_coroutine_threadsafe(coro, loop)
                with contextlib.suppress(Exception):
                    fut.result(self._close_timeout)
            else:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(coro)
