"""The Redis backend: the job store (:mod:`.store`, its asyncio twin in :mod:`.aio`)
and the webhook outbox (:mod:`.outbox`), on one client and pool setup and one
Lua prelude (:mod:`.connection`)."""

from .aio import AsyncRedisStore
from .connection import (
    DEFAULT_ASYNC_MAX_CONNECTIONS,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_SOCKET_TIMEOUT,
)
from .outbox import RedisOutbox
from .store import RedisStore

__all__ = [
    "DEFAULT_ASYNC_MAX_CONNECTIONS",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_SOCKET_TIMEOUT",
    "AsyncRedisStore",
    "RedisOutbox",
    "RedisStore",
]
