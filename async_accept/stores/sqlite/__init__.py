"""The SQLite backend: the job store (:mod:`.store`) and the webhook outbox
(:mod:`.outbox`), on one connection setup (:mod:`.connection`: pragmas and
fork safety)."""

from .groupcommit import GROUP_COMMIT_MAX
from .outbox import SQLiteOutbox
from .schema import SCHEMA_VERSION
from .store import HAS_RETURNING, PURGE_BATCH, AsyncSQLiteStore, SQLiteStore

__all__ = [
    "GROUP_COMMIT_MAX",
    "HAS_RETURNING",
    "PURGE_BATCH",
    "SCHEMA_VERSION",
    "AsyncSQLiteStore",
    "SQLiteOutbox",
    "SQLiteStore",
]
