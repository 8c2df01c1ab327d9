"""Redis clients and pools, and the Lua prelude, set up once for the job store
and its webhook outbox."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ...errors import ConfigurationError, MissingDependencyError
from ..namespaces import pick_namespace

try:
    import redis
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import ExponentialBackoff
except ImportError as exc:  # pragma: no cover - exercised only without redis installed
    raise MissingDependencyError("The Redis store", "redis", "redis") from exc

#: Socket timeouts applied by :meth:`RedisStore.from_url` unless given: a
#: Redis that stopped answering must turn into a 503 quickly, not hang requests.
DEFAULT_SOCKET_TIMEOUT = 5.0
DEFAULT_CONNECT_TIMEOUT = 5.0
#: Connections the asyncio client of a store opens at most. More concurrent
#: store calls than this wait (up to the socket timeout) for a free connection
#: instead of failing with ``MaxConnectionsError``: a burst of accepts must
#: queue, not turn into 503s. Pass ``max_connections=`` to change it.
DEFAULT_ASYNC_MAX_CONNECTIONS = 64


def async_retry() -> AsyncRetry:
    """The asyncio client's retry policy: a command whose connection died (Redis
    restarted, or dropped an idle connection: a ``ConnectionError``) is sent once
    more on a new connection after a short backoff; the asyncio client built on a
    pool of our own would otherwise fail it (a 503 on the first accepts after a Redis
    restart). While Redis stays down the retry fails too, and the caller gets its
    StoreError (503) at once. Not on a ``TimeoutError``: a command that timed out
    has most likely run, and sent again it could be refused (a second claim) where
    the runtime would have handled the error itself (redis-py's sync client, whose
    default policy retries both three times, is left as it is)."""
    return AsyncRetry(
        ExponentialBackoff(cap=0.5, base=0.05),
        retries=1,
        supported_errors=(redis.exceptions.ConnectionError,),
    )


#: The start of every script, the store's and the outbox's: ARGV[1] is always
#: the key prefix, and ``put`` writes one field (``=value``) or deletes it
#: (anything else). Keys other than the one passed are derived from the prefix
#: inside the scripts (fine on a standalone Redis or a replica set; not Redis Cluster).
PRELUDE = """
local P = ARGV[1]
local function put(k, f, v)
  if string.sub(v, 1, 1) == '=' then
    redis.call('HSET', k, f, string.sub(v, 2))
  else
    redis.call('HDEL', k, f)
  end
end
"""

# -- helpers ------------------------------------------------------------------------------


def _refuse_decoding(client: redis.Redis | aioredis.Redis) -> None:
    if client.get_connection_kwargs().get("decode_responses"):
        raise ConfigurationError(
            "RedisStore stores bodies as bytes: give it a client without decode_responses=True"
        )


_ASYNC_CLASSES = {
    redis.connection.Connection: aioredis.Connection,
    redis.connection.SSLConnection: aioredis.SSLConnection,
    redis.connection.UnixDomainSocketConnection: aioredis.UnixDomainSocketConnection,
}

# Connection settings that mean the same to both clients (objects such as a
# sync Retry policy do not carry over; pass async_client= to control those).
_PORTABLE = {
    "host",
    "port",
    "path",
    "db",
    "username",
    "password",
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "client_name",
    "health_check_interval",
    "credential_provider",
    "protocol",
}


def _async_twin_factory(client: redis.Redis) -> Callable[[], aioredis.Redis]:
    """Async clients reaching the same server as ``client`` does."""
    pool = client.connection_pool
    cls = _ASYNC_CLASSES.get(pool.connection_class)
    if cls is None:
        raise ConfigurationError(
            f"RedisStore cannot derive an asyncio client from {pool.connection_class!r}: "
            "pass async_client=redis.asyncio.Redis(...)"
        )
    kwargs = {
        k: v
        for k, v in pool.connection_kwargs.items()
        if (k in _PORTABLE or k.startswith("ssl_")) and v is not None
    }

    max_connections = pool.max_connections
    if not max_connections or max_connections >= 2**31 - 1:
        max_connections = DEFAULT_ASYNC_MAX_CONNECTIONS

    def factory() -> aioredis.Redis:
        apool = aioredis.BlockingConnectionPool(
            connection_class=cls,
            max_connections=max_connections,
            timeout=_pool_timeout(kwargs),
            retry=async_retry(),
            **kwargs,
        )
        return aioredis.Redis.from_pool(apool)

    return factory


def _pool_timeout(kwargs: dict[str, Any]) -> float:
    """How long a store call waits for a free pooled connection."""
    timeout = kwargs.get("socket_timeout")
    return float(timeout) if timeout else DEFAULT_SOCKET_TIMEOUT


def _blocking_pool_from_url(url: str, kwargs: dict[str, Any]) -> aioredis.BlockingConnectionPool:
    """An asyncio pool on ``url`` that waits for a free connection when full, and sends a
    command once more when its connection died (:func:`async_retry`, unless ``kwargs``
    bring a ``retry`` of their own)."""
    if "retry" not in kwargs:
        kwargs = {**kwargs, "retry": async_retry()}
    return aioredis.BlockingConnectionPool.from_url(url, timeout=_pool_timeout(kwargs), **kwargs)


#: The key prefix of a store or outbox given none (``?namespace=`` or ``namespace=``).
DEFAULT_NAMESPACE = "async_accept"


def split_namespace(url: str, namespace: str | None) -> tuple[str, str]:
    """``url`` without its ``?namespace=`` option, and the namespace to use: the
    keyword's, else the URL's, else :data:`DEFAULT_NAMESPACE`. Several apps share one
    Redis database by giving each its own namespace (the store's keys, its
    store-as-queue and its webhook outbox are all under it)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    from_url = [v for k, v in query if k == "namespace"]
    chosen = pick_namespace("Redis", _redacted(url), from_url, namespace, DEFAULT_NAMESPACE)
    if not from_url:
        return url, chosen
    rest = urlunsplit(
        parts._replace(query=urlencode([(k, v) for k, v in query if k != "namespace"]))
    )
    return rest, chosen


def _redacted(url: str) -> str:
    """``url`` with its password hidden, for an error message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
