"""The SQLite store's group commit: writes that arrive while one transaction is
being written wait, then go in together (one ``BEGIN IMMEDIATE ... COMMIT``
for the lot, each in its own savepoint); point reads queued meanwhile run in
one I/O-thread hop."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from ...errors import StoreError

T = TypeVar("T")

#: Writes committed together in one transaction at most (bounds how long one
#: batch holds SQLite's write lock).
GROUP_COMMIT_MAX = 64


def _store_error(store: object, exc: sqlite3.Error) -> StoreError:
    return StoreError(f"{store!r}: {type(exc).__name__}: {exc}")


class _Op(Generic[T]):
    """One queued store call (a write for the group commit, or a point read), and
    then its outcome."""

    __slots__ = ("done", "error", "fn", "future", "loop", "result", "store")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], T],
        store: object,
        loop: asyncio.AbstractEventLoop | None = None,
        future: asyncio.Future[T] | None = None,
    ) -> None:
        self.fn = fn
        self.store = store
        self.loop = loop
        self.future = future
        self.done = False
        self.result: T | None = None
        self.error: BaseException | None = None

    def run(self, conn: sqlite3.Connection) -> None:
        try:
            self.result = self.fn(conn)
        except Exception as exc:
            self.error = exc
        self.done = True

    def fail(self, exc: BaseException) -> None:
        """Failed with ``exc`` (its own, more precise error is kept if it had one)."""
        if self.error is None:
            self.error = exc
            self.result = None
        self.done = True

    def exception(self) -> BaseException | None:
        error = self.error
        if isinstance(error, sqlite3.Error):
            wrapped = _store_error(self.store, error)
            wrapped.__cause__ = error
            return wrapped
        return error

    def outcome(self) -> T:
        error = self.exception()
        if error is not None:
            raise error
        return self.result  # type: ignore[return-value]


def _notify(batch: list[_Op[Any]]) -> None:
    """Hand the outcomes of queued awaited writes to their loops, one wake-up per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Op[Any]]] = {}
    for op in batch:
        if op.loop is not None:
            by_loop.setdefault(op.loop, []).append(op)
    for loop, ops in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
            loop.call_soon_threadsafe(_resolve, ops)


def _resolve(ops: list[_Op[Any]]) -> None:
    for op in ops:
        future = op.future
        if future is None or future.done():  # cancelled: the write stands anyway
            continue
        error = op.exception()
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(op.result)


class GroupCommit:
    """What :class:`~async_accept.stores.sqlite.SQLiteStore` runs its statements
    through: :meth:`_run` (blocking), :meth:`_submit` and :meth:`_submit_read`
    (for the awaitable face). The subclass provides :meth:`_conn`."""

    _pool: ThreadPoolExecutor | None

    def _conn(self) -> sqlite3.Connection:
        raise NotImplementedError

    def _init_group_commit(self) -> None:
        """(Re)set the queues, locks and I/O threads: at construction, and in a
        forked child, where another thread may have held a lock at fork time and
        the pool's threads did not survive."""
        self._pool_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pending: list[_Op[Any]] = []
        self._reads: list[_Op[Any]] = []
        self._pending_lock = threading.Lock()
        self._flush_scheduled = False
        self._reads_scheduled = False
        self._pool = None

    def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        if not write:
            try:
                return fn(self._conn())  # WAL: readers never wait for the writer
            except sqlite3.Error as exc:
                raise _store_error(self, exc) from exc
        # Writers of this process take turns on a lock rather than in SQLite's busy
        # handler, which sleeps in steps of milliseconds when connections of one
        # process collide (measured: ~1 ms per accepted job with 8 threads). The
        # one holding the lock also commits what the others queued meanwhile.
        op: _Op[T] = _Op(fn, self)
        with self._pending_lock:
            self._pending.append(op)
        with self._write_lock:
            while not op.done:
                self._commit_batch()
        return op.outcome()

    def _submit(
        self,
        fn: Callable[[sqlite3.Connection], T],
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[T],
    ) -> None:
        """Queue a write for the group commit without waiting: ``future`` (of
        ``loop``) gets its outcome once it is committed or has failed."""
        op: _Op[T] = _Op(fn, self, loop, future)
        with self._pending_lock:
            self._pending.append(op)
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        self._schedule(self._flush_all, op)

    def _submit_read(
        self,
        fn: Callable[[sqlite3.Connection], T],
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[T],
    ) -> None:
        """Queue a point read: the reads queued meanwhile run in one I/O-thread
        hop and their answers reach the loop in one wake-up."""
        op: _Op[T] = _Op(fn, self, loop, future)
        with self._pending_lock:
            self._reads.append(op)
            if self._reads_scheduled:
                return
            self._reads_scheduled = True
        self._schedule(self._flush_reads, op)

    def _schedule(self, flush: Callable[[], None], op: _Op[Any]) -> None:
        try:
            self._io().submit(flush)
        except RuntimeError:  # the pool was shut down: the store is closing
            with self._pending_lock:
                self._flush_scheduled = self._reads_scheduled = False
                queued = [*self._pending, *self._reads]
                self._pending, self._reads = [], []
            closed = StoreError(f"{self!r} is closed")
            for other in queued:
                other.fail(closed)
            _notify(queued)

    def _flush_reads(self) -> None:
        try:
            while True:
                with self._pending_lock:
                    if not self._reads:
                        self._reads_scheduled = False
                        return
                    batch = self._reads[:GROUP_COMMIT_MAX]
                    del self._reads[:GROUP_COMMIT_MAX]
                try:
                    conn = self._conn()
                except Exception as exc:
                    for op in batch:
                        op.fail(exc)
                else:
                    for op in batch:
                        op.run(conn)
                _notify(batch)
        except BaseException:
            with self._pending_lock:
                self._reads_scheduled = False
            raise

    def _flush_all(self) -> None:
        """Commit every queued write, a batch per transaction, releasing the lock
        between batches so threads waiting to write get their turn."""
        try:
            while True:
                with self._write_lock:
                    if not self._commit_batch():
                        return
        except BaseException:
            with self._pending_lock:  # let the next write schedule a flush again
                self._flush_scheduled = False
            raise

    def _commit_batch(self) -> bool:
        """Under the write lock: run up to :data:`GROUP_COMMIT_MAX` queued writes in
        one transaction. False when nothing was queued."""
        with self._pending_lock:
            if not self._pending:
                self._flush_scheduled = False
                return False
            batch = self._pending[:GROUP_COMMIT_MAX]
            del self._pending[:GROUP_COMMIT_MAX]
        try:
            conn = self._conn()
        except Exception as exc:  # closed, or the file can't be opened
            for op in batch:
                op.fail(exc)
            _notify(batch)
            return True
        if len(batch) == 1:
            batch[0].run(conn)
        else:
            self._run_together(conn, batch)
        _notify(batch)
        return True

    @staticmethod
    def _run_together(conn: sqlite3.Connection, batch: list[_Op[Any]]) -> None:
        """One ``BEGIN IMMEDIATE ... COMMIT`` around the batch; each operation in
        its own savepoint, so one that fails takes back only its own writes."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            for op in batch:
                op.fail(exc)
            return
        try:
            for op in batch:
                conn.execute("SAVEPOINT op")
                op.run(conn)
                if op.error is not None:
                    conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except BaseException as exc:
            # Nothing of the batch is committed: every operation failed.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            for op in batch:
                op.fail(exc)
            if not isinstance(exc, Exception):
                raise

    def _io(self) -> ThreadPoolExecutor:
        pool = self._pool
        if pool is None:
            with self._pool_lock:
                pool = self._pool
                if pool is None:
                    # Two threads: store calls are short, and more threads only
                    # fight over the GIL with the event loop.
                    pool = self._pool = ThreadPoolExecutor(
                        max_workers=2, thread_name_prefix="async-accept-sqlite"
                    )
        return pool
