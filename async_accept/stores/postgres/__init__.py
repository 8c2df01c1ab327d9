"""The PostgreSQL store (``pip install 'async-accept[postgres]'``): jobs, their
webhook outbox and the queue that ``async-accept worker`` claims from, in one
database that every web and worker process on every machine shares."""

from __future__ import annotations

from .connection import SCHEMA_VERSION, PostgresSettings, ddl, parse_url, upgrade
from .outbox import PostgresOutbox
from .signals import PostgresChangeSignal, QueueListener
from .store import AsyncPostgresStore, PostgresStore

__all__ = [
    "SCHEMA_VERSION",
    "AsyncPostgresStore",
    "PostgresChangeSignal",
    "PostgresOutbox",
    "PostgresSettings",
    "PostgresStore",
    "QueueListener",
    "ddl",
    "parse_url",
    "upgrade",
]
