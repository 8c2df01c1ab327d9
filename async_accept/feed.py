"""One change feed per process: every waiter on a job (a long-poll, an event
stream, a hybrid accept) is woken through it, however many there are.

Changes reach the feed two ways. This process's own store calls hand every job
they return to :meth:`ChangeFeed.saw` (the runtime does it for each engine op
and each progress write), so a job run here wakes its waiters at once, with the
fresh job in hand and no read. Writes made by other processes (remote workers,
the other workers of a web server) arrive through the store's change signal,
watched by one thread per process (:class:`ChangeSignal`): SQLite's
``PRAGMA data_version`` polled on one connection, Redis pub/sub. On a signal
the feed reads each *watched job* once and hands that copy to all of its
waiters, so store reads grow with the jobs being watched, never with the
number of waiters.

Waiters on *any* job (the dashboard's live updates) wait for :attr:`ChangeFeed.version`
to move: it moves when a store call of this process returns a job whose visible
state this feed had not seen, and when the store's signal reports a write of
another process (:data:`ANY` in the watched ids asks the signal for any change).
The version is kept moving for ``ANY_LINGER`` seconds after the last such waiter
left (or :meth:`ChangeFeed.touch_any`), so a client that reconnects with the
version it had misses nothing in between; with nobody interested it costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any, Protocol

from .context import loop_waker
from .job import Job

log = logging.getLogger("async_accept")

#: what a client can see change on a job (heartbeats aren't changes)
Signature = tuple[Any, ...]

#: among the watched ids: a waiter on any job listens (never a job id: ids hold no "*")
ANY = "*"
#: jobs whose last seen state the feed keeps for its waiters on any job
ANY_SEEN = 4096
#: seconds the feed keeps counting changes after the last waiter on any job left
ANY_LINGER = 10.0


def signature(job: Job) -> Signature:
    """The parts of a job a status read shows; a change of any is a change."""
    return (
        job.status.value,
        job.percent,
        job.message,
        job.eta,
        job.cancel_requested,
        job.result_status,
        job.attempts,
    )


def change_id(job: Job) -> str:
    """An opaque id of the job's visible state (an SSE ``id:``): equal ids, no change."""
    digest = hashlib.blake2s(repr(signature(job)).encode(), digest_size=6).hexdigest()
    return digest


class ChangeSignal(Protocol):
    """A store's cross-process change signal, read by the feed's one thread."""

    def changed(
        self, watched: Collection[str], timeout: float, wake: threading.Event
    ) -> Collection[str]:
        """Block up to ``timeout`` s (less once ``wake`` is set); the watched ids
        that may have changed."""
        ...

    def close(self) -> None: ...


class DataVersionSignal:
    """SQLite: ``PRAGMA data_version`` on one connection per process changes when
    any other connection commits; only then are the watched jobs read."""

    interval = 0.02

    def __init__(self, path: str) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._version: int | None = None

    def changed(
        self, watched: Collection[str], timeout: float, wake: threading.Event
    ) -> Collection[str]:
        deadline = time.monotonic() + timeout
        while True:
            version = self._read()
            if version != self._version:
                self._version = version
                return watched
            left = deadline - time.monotonic()
            if left <= 0 or wake.wait(min(self.interval, left)):
                return ()

    def _read(self) -> int | None:
        try:
            if self._conn is None:
                self._conn = sqlite3.connect(self._path, check_same_thread=False, timeout=1.0)
            row = self._conn.execute("PRAGMA data_version").fetchone()
            return int(row[0])
        except sqlite3.Error:
            self.close()
            return None

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None


class PollSignal:
    """A store with no change signal: the watched jobs are read every ``interval``
    seconds (one read per watched job, shared by all its waiters)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval

    def changed(
        self, watched: Collection[str], timeout: float, wake: threading.Event
    ) -> Collection[str]:
        wake.wait(min(timeout, self.interval))
        return [w for w in watched if w != ANY]  # a read can't tell of other jobs

    def close(self) -> None:
        pass


class RedisSignal:
    """Redis: the store's scripts publish the id of every job they change on one
    channel; one subscription per process hears them."""

    def __init__(self, client: Any, channel: str) -> None:
        self._client = client
        self._channel = channel
        self._pubsub: Any = None

    def changed(
        self, watched: Collection[str], timeout: float, wake: threading.Event
    ) -> Collection[str]:
        if self._pubsub is None:
            self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            self._pubsub.subscribe(self._channel)
            # Subscribed only now: what changed before is read once, for all.
            return watched
        ids: set[str] = set()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            message = self._pubsub.get_message(timeout=max(0.0, min(0.05, left)))
            while message is not None:
                data = message.get("data")
                ids.add(data.decode() if isinstance(data, bytes) else str(data))
                message = self._pubsub.get_message(timeout=0)
            if ids or left <= 0 or wake.is_set():
                return ids

    def close(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                self._pubsub.close()
            self._pubsub = None


def signal_for(store: Any) -> ChangeSignal | None:
    """The change signal of ``store``: its own (``store.change_signal()``), else a
    shared poll for a store other processes write too, else None (in-process only)."""
    make = getattr(store, "change_signal", None)
    if make is not None:
        signal: ChangeSignal | None = make()
        return signal
    return PollSignal() if getattr(store, "shared", False) else None


class Waiter:
    """One waiter on one job: woken when the job's visible state differs from ``seen``."""

    __slots__ = ("_wake", "gone", "job_id", "latest", "seen")

    def __init__(self, job: Job, wake: Callable[[], None]) -> None:
        self.job_id = job.id
        self.seen = signature(job)
        self.latest: Job = job
        self.gone = False
        self._wake = wake

    def offer(self, job: Job | None) -> None:
        if job is None:
            self.gone = True
            self._wake()
        elif signature(job) != self.seen:
            self.latest = job
            self._wake()

    def result(self) -> Job | None:
        """The job as last seen changed, the job it started from, or None if gone."""
        return None if self.gone else self.latest


class ChangeFeed:
    """The waiters of this process, per job, and the thread that watches the store."""

    def __init__(
        self,
        read: Callable[[str], Job | None],
        make_signal: Callable[[], ChangeSignal | None],
        linger: float = 2.0,
    ) -> None:
        self._read = read
        self._make_signal = make_signal
        self._signal: ChangeSignal | None = None
        self._linger = linger
        self._lock = threading.Lock()
        self._waiters: dict[str, set[Waiter]] = {}
        self._latest: dict[str, Job] = {}
        self._dirty: set[str] = set()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        #: moves on every change seen while someone waits on any job
        self.version = 0
        self._any: set[Callable[[], None]] = set()
        self._any_seen: dict[str, Signature] = {}
        self._any_until = 0.0

    # -- waiters ------------------------------------------------------------------------

    def add(self, waiter: Waiter) -> None:
        with self._lock:
            self._reset_if_forked()
            waiters = self._waiters.setdefault(waiter.job_id, set())
            waiters.add(waiter)
            latest = self._latest.get(waiter.job_id)
            if latest is None:
                # First waiter on this job: one read closes the gap between the
                # waiter's own read and now (a change in between isn't missed).
                self._dirty.add(waiter.job_id)
                self._wake.set()
            self._ensure_thread()
        if latest is not None:
            waiter.offer(latest)

    def remove(self, waiter: Waiter) -> None:
        with self._lock:
            waiters = self._waiters.get(waiter.job_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[waiter.job_id]
                    self._latest.pop(waiter.job_id, None)

    def wait(self, job: Job, timeout: float) -> Job | None:
        """Block up to ``timeout`` s for ``job`` to change as a client sees it: the
        changed job, ``job`` itself after the timeout, or None once it is gone."""
        event = threading.Event()
        waiter = Waiter(job, event.set)
        self.add(waiter)
        try:
            event.wait(timeout)
        finally:
            self.remove(waiter)
        return waiter.result()

    async def await_change(self, job: Job, timeout: float) -> Job | None:
        """:meth:`wait`, awaited on the running loop."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        waiter = Waiter(job, loop_waker(loop, event))
        self.add(waiter)
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        finally:
            self.remove(waiter)
        return waiter.result()

    # -- waiters on any job -----------------------------------------------------------

    def wait_any(self, since: int, timeout: float) -> int:
        """Block up to ``timeout`` s for :attr:`version` to move from ``since``; the
        version then."""
        event = threading.Event()
        self._add_any(event.set)
        try:
            if self.version == since:
                event.wait(timeout)
        finally:
            self._remove_any(event.set)
        return self.version

    async def await_any(self, since: int, timeout: float) -> int:
        """:meth:`wait_any`, awaited on the running loop."""
        event = asyncio.Event()
        wake = loop_waker(asyncio.get_running_loop(), event)
        self._add_any(wake)
        try:
            if self.version == since:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(event.wait(), timeout)
        finally:
            self._remove_any(wake)
        return self.version

    def touch_any(self) -> int:
        """Count changes for the next ``ANY_LINGER`` s (a page about to open its
        stream); the version now."""
        self._add_any(None)
        return self.version

    def _interested(self) -> bool:
        return bool(self._any_until) and (bool(self._any) or time.monotonic() < self._any_until)

    def _add_any(self, wake: Callable[[], None] | None) -> None:
        with self._lock:
            self._reset_if_forked()
            if wake is not None:
                self._any.add(wake)
            self._any_until = time.monotonic() + ANY_LINGER
            self._ensure_thread()

    def _remove_any(self, wake: Callable[[], None]) -> None:
        with self._lock:
            self._any.discard(wake)
            self._any_until = time.monotonic() + ANY_LINGER

    def _moved(self, job: Job | None = None) -> None:
        """Something changed (``job``, when known): wake the waiters on any job."""
        with self._lock:
            if job is not None:
                sig = signature(job)
                if self._any_seen.get(job.id) == sig:
                    return  # a read, or a heartbeat: nothing a page shows moved
                self._any_seen.pop(job.id, None)
                self._any_seen[job.id] = sig
                if len(self._any_seen) > ANY_SEEN:
                    del self._any_seen[next(iter(self._any_seen))]
            self.version += 1
            wakes = list(self._any)
        for wake in wakes:
            wake()

    # -- changes ------------------------------------------------------------------------

    def saw(self, job: Job | None) -> None:
        """A job as a store call of this process returned it: wake its waiters."""
        if job is None:
            return
        if self._any_until and self._interested():
            self._moved(job)
        if job.id in self._waiters:
            self._deliver(job.id, job)

    def saw_result(self, result: Any) -> None:
        """``saw`` for any store call's result (a Job, or a tuple starting with one)."""
        if isinstance(result, Job):
            self.saw(result)
        elif isinstance(result, tuple) and result and isinstance(result[0], Job):
            self.saw(result[0])

    def poke(self, job_id: str) -> None:
        """The job changed here but the caller has no copy: read it once, for all."""
        if self._any_until and self._interested():
            self._moved()
        if job_id in self._waiters:
            with self._lock:
                self._dirty.add(job_id)
                self._wake.set()

    def _deliver(self, job_id: str, job: Job | None) -> None:
        with self._lock:
            waiters = list(self._waiters.get(job_id, ()))
            if not waiters:
                return
            if job is None:
                self._latest.pop(job_id, None)
            else:
                self._latest[job_id] = job
        for w in waiters:
            w.offer(job)

    # -- the watching thread ----------------------------------------------------------

    def _reset_if_forked(self) -> None:
        if self._pid != os.getpid():
            # A forked child: the parent's thread is gone, its signal's connection
            # is the parent's (dropped, never closed from here).
            self._pid = os.getpid()
            self._signal = None
            self._thread = None
            self._waiters.clear()
            self._latest.clear()
            self._dirty.clear()
            self._any.clear()
            self._any_seen.clear()
            self._any_until = 0.0

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._watch, name="async-accept-feed", daemon=True
            )
            self._thread.start()

    def _watch(self) -> None:
        if self._signal is None:
            self._signal = self._make_signal()
        idle_since: float | None = None
        while True:
            with self._lock:
                watched = list(self._waiters)
                if self._interested():
                    watched.append(ANY)
                if not watched:
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since > self._linger:
                        self._thread = None
                        if self._signal is not None:
                            self._signal.close()
                            self._signal = None
                        return
                else:
                    idle_since = None
                dirty = self._dirty
                self._dirty = set()
                self._wake.clear()
            ids: set[str] = set(dirty)
            if watched and not ids:
                if self._signal is not None:
                    try:
                        changed = self._signal.changed(watched, 0.5, self._wake)
                        if changed and self._interested():
                            self._moved()  # another process wrote
                        ids.update(changed)
                    except Exception:  # a broken signal must not stop the waits
                        log.exception("async_accept: the store's change signal failed")
                        time.sleep(0.5)
                else:
                    self._wake.wait(0.5)
            elif not watched:
                self._wake.wait(0.5)
            self._read_all(ids)

    def _read_all(self, ids: Iterable[str]) -> None:
        for job_id in ids:
            if job_id not in self._waiters:
                continue
            try:
                job = self._read(job_id)
            except Exception:  # the store is down: the waits time out instead
                log.warning("async_accept: change feed could not read job %s", job_id)
                continue
            self._deliver(job_id, job)
