"""The SQLite backend: the job store (:mod:`.store`) and the webhook outbox
(:mod:`.outbox`), on one connection setup (:mod:`.connection`: pragmas and
fork safety)."""

from .outbox import SQLiteOutbox
from .store import (
    GROUP_COMMIT_MAX,
    HAS_RETURNING,
    PURGE_BATCH,
    SCHEMA_VERSION,
    AsyncSQLiteStore,
    SQLiteStore,
)

__all__ = [
    "GROUP_COMMIT_MAX",
    "HAS_RETURNING",
    "PURGE_BATCH",
    "SCHEMA_VERSION",
    "AsyncSQLiteStore",
    "SQLiteOutbox",
    "SQLiteStore",
]
