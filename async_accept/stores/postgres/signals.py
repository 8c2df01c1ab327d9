"""The PostgreSQL store's two ``LISTEN`` connections: queued jobs for the store
workers, and job changes for the change feed (long-polls, event streams)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Collection
from typing import Any

import psycopg

from ...errors import StoreError
from . import connection as pg
from .connection import PostgresSettings


class _Listening:
    """One autocommit connection of its own, ``LISTEN``\\ ing on ``channel``."""

    def __init__(self, settings: PostgresSettings, channel: str) -> None:
        self.settings = settings
        self.channel = channel  # "<schema>.<what>": the schema is a checked identifier
        self._conn: psycopg.Connection[Any] | None = None

    def _connect(self) -> tuple[psycopg.Connection[Any], bool]:
        """The connection, and whether it was opened just now."""
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn, False
        conn = pg.connect(self.settings)
        conn.execute(f'LISTEN "{self.channel}"')
        self._conn = conn
        return conn, True

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()


class QueueListener(_Listening):
    """Wakes a store worker when jobs are queued for it (a trigger of schema 4 sends
    the ``NOTIFY`` in the transaction that queues them, since schema 5 only for jobs
    of the store executor; ``PostgresStore.notify_queued`` sends one on demand).

    :meth:`wait` returns True when a notification came within ``timeout``. A lost
    connection is reopened on the next :meth:`wait` (notifications sent meanwhile
    are lost: the worker's fallback poll covers them).
    """

    def __init__(self, settings: PostgresSettings) -> None:
        super().__init__(settings, settings.channel)

    def wait(self, timeout: float) -> bool:
        """True when woken by a notification, False when ``timeout`` passed."""
        try:
            conn, _ = self._connect()
            for _ in conn.notifies(timeout=timeout, stop_after=1):
                return True
            return False
        except psycopg.Error as exc:
            self.close()
            raise StoreError(f"PostgreSQL store ({self.settings.schema}): {exc}") from exc


class PostgresChangeSignal(_Listening):
    """The change feed's signal: a trigger on the jobs table announces the id of
    every job whose visible state changed (migration 2), from any process."""

    def __init__(self, settings: PostgresSettings) -> None:
        super().__init__(settings, f"{settings.schema}.changed")

    def changed(
        self, watched: Collection[str], timeout: float, wake: threading.Event
    ) -> Collection[str]:
        try:
            conn, fresh = self._connect()
        except psycopg.Error:
            wake.wait(min(timeout, 0.5))
            return watched  # unreachable: read the watched jobs (they answer 503 or not)
        if fresh:
            return watched  # listening only now: what changed before is read once, for all
        ids: set[str] = set()
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                for note in conn.notifies(timeout=max(0.0, min(0.05, left))):
                    ids.add(note.payload)
                if ids or left <= 0 or wake.is_set():
                    return ids
        except psycopg.Error:
            self.close()
            return watched
