"""The Redis job store: shared by every process that reaches the same Redis.

Layout, under a namespace ``ns`` (default ``async_accept``):

``{ns}:job:{id}``
    A hash per job: one field per :class:`~async_accept.job.Job` attribute
    (strings; floats in ``repr`` form so they round-trip exactly; dicts as
    JSON; absent field = ``None``), plus ``req_meta``/``req_body`` and
    ``res_meta``/``res_body`` (bodies kept as raw bytes, never pickled) and
    ``_m``, the job's member in the index sets below.
``{ns}:status:{status}``
    A sorted set per state, scored by ``created_at``. Members are
    ``<16-digit sequence>:<id>`` so jobs created in the same instant keep
    their creation order (``list_jobs`` is oldest first).
``{ns}:expiry``
    A sorted set of the same members scored by ``expires_at``
    (``purge_expired``).
``{ns}:owner:{owner}``
    A sorted set per owner hash of its job ids, scored by ``created_at`` (a job
    whose owner holds two hashes, the credential's and the owner cookie's, is
    in both): ``list_owned`` reads one owner's jobs newest first (equal times
    in id order, as Redis orders equal scores). Entries whose job Redis
    already expired are dropped as a read meets them.
``{ns}:idem:{key}``
    Idempotency key -> job id, living as long as the job.
``{ns}:seq``
    The creation counter.

Every write is one Lua script (EVALSHA through redis-py ``Script`` objects,
which reload a script the server forgot after a restart), so each state
change is atomic and checks the state it expects. Job keys also carry a Redis
TTL at their ``expires_at``, so an abandoned namespace cleans itself up;
reads honour ``expires_at`` against the caller's ``now`` regardless.

:attr:`RedisStore.aio` is the native asyncio twin (``redis.asyncio``, same
scripts and layout) that the ASGI front door awaits instead of hopping to a
thread. Every failure of Redis itself surfaces as
:class:`~async_accept.errors.StoreError`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

from ...errors import ConfigurationError, MissingDependencyError, StoreError
from ...feed import RedisSignal
from ...job import CapturedRequest, CapturedResponse, Job, JobStatus
from ..base import EVERY, Outcome, OwnedQuery, Progress, StoreBase
from ..outbox_base import Outbox
from .aio import AsyncRedisStore
from .connection import (
    DEFAULT_ASYNC_MAX_CONNECTIONS,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_NAMESPACE,
    DEFAULT_SOCKET_TIMEOUT,
    _async_twin_factory,
    _blocking_pool_from_url,
    _refuse_decoding,
    split_namespace,
)
from .layout import _Call, _Layout, _store_error
from .outbox import RedisOutbox
from .scripts import SOURCES

try:
    import redis
    import redis.asyncio as aioredis
    from redis.commands.core import Script
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover - exercised only without redis installed
    raise MissingDependencyError("The Redis store", "redis", "redis") from exc

__all__ = ["AsyncRedisStore", "RedisStore"]

T = TypeVar("T")

# -- the synchronous store ----------------------------------------------------------------


class RedisStore(StoreBase):
    """Jobs in Redis, shared by every process (and machine) that reaches it.

    Build it with :meth:`from_url` (``redis://``, ``rediss://``, ``unix://``)
    or from a client: ``RedisStore(redis.Redis(...), async_client=...)``. The
    clients must not decode responses (bodies are bytes). :attr:`aio` is the
    awaitable twin; :meth:`close` releases both.
    """

    shared = True
    blocking = True

    def __init__(
        self,
        client: redis.Redis,
        *,
        async_client: aioredis.Redis | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        _async_factory: Callable[[], aioredis.Redis] | None = None,
    ) -> None:
        if not isinstance(client, redis.Redis):
            raise ConfigurationError(f"RedisStore needs a redis.Redis client, not {client!r}")
        _refuse_decoding(client)
        if async_client is not None:
            _refuse_decoding(async_client)
        self._layout = _Layout(namespace)
        self._client = client
        self._scripts: dict[str, Script] = {
            name: client.register_script(src) for name, src in SOURCES.items()
        }
        self._closed = False
        if async_client is not None:
            fixed = async_client
            factory: Callable[[], aioredis.Redis] = lambda: fixed  # noqa: E731
        elif _async_factory is not None:
            factory = _async_factory
        else:
            factory = _async_twin_factory(client)
        #: The native asyncio face (``redis.asyncio``), picked up by ``as_async()``.
        self.aio = AsyncRedisStore(self._layout, factory)

    @classmethod
    def from_url(cls, url: str, *, namespace: str | None = None, **kwargs: Any) -> RedisStore:
        """A store on ``redis://``, ``rediss://`` or ``unix://`` ``url``.

        Its keys live under ``namespace``: the keyword's, else the URL's
        ``?namespace=``, else ``async_accept``; apps sharing one Redis database
        each take their own. ``kwargs`` go to both redis-py clients
        (``redis.Redis.from_url`` and ``redis.asyncio.Redis.from_url``). Socket
        timeouts default to 5 seconds.
        """
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigurationError(
                f"RedisStore.from_url({url!r}): use a redis://, rediss:// or unix:// URL"
            )
        url, namespace = split_namespace(url, namespace)
        if kwargs.get("decode_responses"):
            raise ConfigurationError(
                "RedisStore stores bodies as bytes: do not pass decode_responses=True"
            )
        kwargs.setdefault("socket_timeout", DEFAULT_SOCKET_TIMEOUT)
        kwargs.setdefault("socket_connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        try:
            client = redis.Redis.from_url(url, **kwargs)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"RedisStore.from_url({url!r}): {exc}") from exc

        akwargs = dict(kwargs)
        akwargs.setdefault("max_connections", DEFAULT_ASYNC_MAX_CONNECTIONS)

        def factory() -> aioredis.Redis:
            return aioredis.Redis.from_pool(_blocking_pool_from_url(url, akwargs))

        return cls(client, namespace=namespace, _async_factory=factory)

    @property
    def namespace(self) -> str:
        return self._layout.ns

    @property
    def client(self) -> redis.Redis:
        """The synchronous redis-py client (shared by the webhook outbox)."""
        return self._client

    def __repr__(self) -> str:
        return f"<RedisStore namespace={self._layout.ns!r} client={self._client!r}>"

    def _run(self, call: _Call[T]) -> T:
        if self._closed:
            raise StoreError("Redis store: the store was closed")
        try:
            if call.script is None:
                raw = self._client.hmget(call.keys[0], call.args)
            else:
                raw = self._scripts[call.script](keys=call.keys, args=call.args)
        except (RedisError, OSError) as exc:
            raise _store_error(exc) from exc
        return call.parse(raw)

    def create(self, job: Job, request: CapturedRequest) -> tuple[Job, bool]:
        return self._run(self._layout.create(job, request))

    def get(self, job_id: str, now: float) -> Job | None:
        return self._run(self._layout.get(job_id, now))

    def get_request(self, job_id: str) -> CapturedRequest | None:
        return self._run(self._layout.get_request(job_id))

    def get_result(self, job_id: str) -> CapturedResponse | None:
        return self._run(self._layout.get_result(job_id))

    def claim(self, job_id: str, worker_id: str, now: float) -> Job | None:
        return self._run(self._layout.claim(job_id, worker_id, now))

    def claim_with_request(
        self, job_id: str, worker_id: str, now: float
    ) -> tuple[Job, CapturedRequest | None] | None:
        return self._run(self._layout.claim_with_request(job_id, worker_id, now))

    def heartbeat(self, job_id: str, worker_id: str, now: float) -> Job | None:
        return self._run(self._layout.heartbeat(job_id, worker_id, now))

    def _set_progress(
        self, job_id: str, worker_id: str, now: float, progress: Progress
    ) -> Job | None:
        return self._run(self._layout.set_progress(job_id, worker_id, now, progress))

    def _finish(self, job_id: str, worker_id: str, now: float, outcome: Outcome) -> Job | None:
        return self._run(self._layout.finish(job_id, worker_id, now, outcome))

    def fail(
        self,
        job_id: str,
        expected: Collection[JobStatus],
        now: float,
        error: dict[str, Any],
        lease: float | None = None,
    ) -> Job | None:
        return self._run(self._layout.fail(job_id, expected, now, error, lease))

    def cancel(self, job_id: str, now: float) -> tuple[Job | None, bool]:
        return self._run(self._layout.cancel(job_id, now))

    def requeue(
        self, job_id: str, worker_id: str, now: float, lease: float | None = None
    ) -> Job | None:
        return self._run(self._layout.requeue(job_id, worker_id, now, lease))

    def mark_dispatched(self, job_ids: Sequence[str], now: float, stale_before: float) -> list[str]:
        if not job_ids:
            return []
        return self._run(self._layout.mark_dispatched(job_ids, now, stale_before))

    def retry(self, job_id: str, now: float) -> Job | None:
        return self._run(self._layout.retry(job_id, now))

    def list_jobs(
        self,
        status: JobStatus | None = None,
        limit: int = 100,
        created_before: float | None = None,
        newest: bool = False,
    ) -> list[Job]:
        return self._run(self._layout.list_jobs(status, limit, created_before, newest))

    def list_owned(self, owner: str, now: float, query: OwnedQuery = EVERY) -> list[Job]:
        if query.limit <= 0:
            return []
        return self._run(self._layout.list_owned(owner, now, query))

    def count_by_status(self) -> dict[JobStatus, int]:
        return self._run(self._layout.count_by_status())

    def purge_expired(self, now: float) -> int:
        total, more = 0, True
        while more:  # batches keep each script short, so Redis never stalls on a big purge
            purged, more = self._run(self._layout.purge_batch(now))
            total += purged
        return total

    def delete(self, job_id: str) -> bool:
        return self._run(self._layout.delete(job_id))

    def worker_heartbeat(self, worker_id: str, now: float, info: dict[str, Any]) -> None:
        self._run(self._layout.worker_heartbeat(worker_id, now, info))

    def list_workers(self, now: float) -> list[dict[str, Any]]:
        return self._run(self._layout.list_workers(now))

    def load_run_times(self) -> dict[str, str]:
        try:
            raw = self._client.hgetall(f"{self._layout.ns}:run_times")
        except (RedisError, OSError) as exc:
            raise _store_error(exc) from exc
        return {_text(k): _text(v) for k, v in raw.items()}

    def save_run_time(self, route: str, data: str) -> None:
        try:
            self._client.hset(f"{self._layout.ns}:run_times", route, data)
        except (RedisError, OSError) as exc:
            raise _store_error(exc) from exc

    def change_signal(self) -> RedisSignal:
        """The ids every state change publishes (the store's scripts), subscribed once."""
        return RedisSignal(self._client, f"{self._layout.ns}:changes")

    def default_outbox(self) -> Outbox:
        """The webhook outbox beside this store's keys, on the same client. From
        now on each script that ends a job writes its notices there too."""
        self._layout.notify = True
        return RedisOutbox.for_store(self)

    def close(self) -> None:
        """Disconnect both clients. The store is unusable afterwards.

        The asyncio connections are closed on the event loop that opened them:
        by then usually already done, when that loop shut down (see
        :class:`AsyncRedisStore`); await ``store.aio.aclose()`` to do it earlier.
        """
        if self._closed:
            return
        self._closed = True
        self.aio._close_from_sync()
        self._client.close()
        self._client.connection_pool.disconnect()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
