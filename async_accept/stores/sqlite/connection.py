"""SQLite connections, set up once for the job store and its webhook outbox.

Every connection is opened the same way: autocommit (transactions are
explicit), WAL journal (readers never block the writer), a busy timeout for
concurrent writers and the ``synchronous`` level asked for. :class:`Connections`
keeps one per thread and per process: after a ``fork()`` the child drops (but
never closes) what it inherited and opens its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable

from ...errors import StoreError

__all__ = ["SYNCHRONOUS_LEVELS", "Connections", "connect"]

log = logging.getLogger("async_accept")

#: How often (seconds) a store checks that its file is still the one it opened.
FILE_CHECK_INTERVAL = 0.5

#: What ``PRAGMA synchronous`` accepts.
SYNCHRONOUS_LEVELS = ("OFF", "NORMAL", "FULL", "EXTRA")

#: Connections inherited through ``fork()``. Kept referenced for the life of the
#: process and never closed: closing a SQLite connection inherited from the parent
#: can release the POSIX locks this process holds on the same file.
_FORK_ORPHANS: list[sqlite3.Connection] = []
#: Every open set of connections in this process, for the at-fork hook below.
_OPEN: weakref.WeakSet[Connections] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Runs in the child before any other thread exists there, so no lock is needed.
    for conns in list(_OPEN):
        conns.forget_parent()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _create_private(path: str) -> None:
    """Create the database file mode 0600 if it does not exist yet.

    SQLite gives its ``-wal`` and ``-shm`` files the database file's mode, so
    the jobs (and whatever their requests hold) are readable by this user only.
    A file that already exists keeps the mode its operator gave it.
    """
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError:
        return  # a missing directory and the like: sqlite3.connect says what is wrong
    os.close(fd)


def connect(path: str, *, timeout: float, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """A connection to ``path`` with the pragmas every user of the file relies on."""
    _create_private(path)
    conn = sqlite3.connect(
        path,
        timeout=timeout,
        isolation_level=None,  # autocommit; transactions are explicit
        check_same_thread=False,  # only close() touches it from another thread
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        _wal(conn, timeout)
        conn.execute(f"PRAGMA synchronous = {synchronous}")
    except BaseException:
        conn.close()
        raise
    return conn


def _wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Switch ``conn``'s file to WAL. SQLite answers "database is locked" at once,
    without its busy handler, when another process changes the journal mode of a
    new file at the same moment (several server workers starting on one fresh
    file: seen 35 times in 40 with 4 processes), so the switch is tried again,
    backing off, for up to ``timeout`` seconds."""
    give_up = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            if not busy or time.monotonic() + delay > give_up:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


class Connections:
    """One connection per thread and per process to one SQLite file.

    ``closed_message`` is the :class:`~async_accept.errors.StoreError` a call
    gets after :meth:`close`; ``after_fork`` runs in a forked child once the
    parent's connections are dropped, for the owner to reset its own locks.
    """

    def __init__(
        self,
        path: str,
        *,
        timeout: float,
        synchronous: str = "NORMAL",
        closed_message: str,
        after_fork: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.synchronous = synchronous
        self._closed_message = closed_message
        self._after_fork = after_fork
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self.closed = False
        #: (device, inode) of the file once opened, and why it can't be used any more
        self._identity: tuple[int, int] | None = None
        self._checked_at = 0.0
        self._gone: str | None = None
        _OPEN.add(self)

    def forget_parent(self) -> None:
        """In a forked child: drop (but never close) the parent's connections."""
        _FORK_ORPHANS.extend(self._all)
        self._all = []
        self._lock = threading.Lock()  # another thread may have held it at fork time
        self._local = threading.local()
        self._pid = os.getpid()
        self._checked_at = 0.0
        if self._after_fork is not None:
            self._after_fork()

    def check_fork(self) -> None:
        """Catch a fork that bypassed Python's hooks (a C extension calling
        ``fork()`` itself); normally the at-fork hook has done it already."""
        if self._pid != os.getpid():
            self.forget_parent()

    def get(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        self.check_fork()
        self.check_file()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self.closed:
            raise StoreError(self._closed_message)
        conn = connect(self.path, timeout=self.timeout, synchronous=self.synchronous)
        self._local.conn = conn
        with self._lock:
            self._all.append(conn)
        if self._identity is None:
            self._identity = self._stat()
        return conn

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def check_file(self) -> None:
        """The file deleted or replaced under a running server: every call fails
        (503) instead of answering from an empty new file (404 for accepted jobs).
        Checked at most every FILE_CHECK_INTERVAL seconds."""
        if self._gone is not None:
            raise StoreError(self._gone)
        if self._identity is None:
            return
        now = time.monotonic()
        if now - self._checked_at < FILE_CHECK_INTERVAL:
            return
        self._checked_at = now
        identity = self._stat()
        if identity == self._identity:
            return
        what = "deleted" if identity is None else "replaced by another file"
        self._gone = (
            f"the SQLite file {self.path} was {what} while this process used it; "
            "restart the process (the jobs it held are gone with it)"
        )
        log.error("async_accept: %s", self._gone)
        raise StoreError(self._gone)

    def close(self) -> None:
        """Close every connection opened in this process, in any thread (best effort)."""
        self.closed = True
        _OPEN.discard(self)
        self.check_fork()  # a forked child: the parent's are not ours to close
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):  # closing is best effort
                conn.close()
        self._local = threading.local()
