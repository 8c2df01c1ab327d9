"""Run jobs on RQ workers.

The web process enqueues ``async_accept.worker.run_job(app_path, job_id)`` from
a background thread, many jobs per Redis round trip (``Queue.enqueue_many`` in
one pipeline); the accept path never waits on Redis for it. Workers:
``async-accept worker --app mysite.asgi:application`` (an RQ ``SimpleWorker``
on the right queue, with the JSON serializer: nothing is pickled).

RQ is optional: ``pip install 'async-accept[rq]'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, MissingDependencyError
from .remote import RemoteExecutor, RemoteOptions, queue_name

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["GROUP_JOB_FUNCTION", "JOB_FUNCTION", "RQExecutor"]

#: What every RQ job calls, by name (the worker imports it).
JOB_FUNCTION = "async_accept.worker.run_job"
#: What an RQ job carrying several async_accept jobs calls (``jobs_per_message`` > 1).
GROUP_JOB_FUNCTION = "async_accept.worker.run_jobs"


def _rq() -> tuple[Any, Any, Any]:
    try:
        import redis
        import rq
        from rq.serializers import JSONSerializer
    except ImportError as exc:
        raise MissingDependencyError("The RQ executor", "rq", "rq") from exc
    return rq, redis, JSONSerializer


class RQExecutor(RemoteExecutor):
    """Jobs run on RQ workers; the web process only enqueues references.

    ``app``
        Dotted path of the web application (``"mysite.asgi:application"``),
        which workers import. Required.
    ``redis_url`` / ``connection``
        The Redis RQ uses (a URL, or a ``redis.Redis`` client).
    ``queue``
        The RQ queue name (workers listen on it).
    ``job_timeout``
        RQ's hard limit per job in seconds; ``-1`` (default) leaves the limit
        to async_accept's deadman switch (2 x the route's sla).
    ``result_ttl`` / ``failure_ttl``
        How long RQ keeps its own record of a job (the result lives in the
        async_accept store regardless).

    ``batch_size``, ``flush_interval``, ``redispatch_after``, ``max_buffer`` and
    ``jobs_per_message`` tune the hand-over (see
    :class:`~async_accept.executors.remote.RemoteExecutor`).
    """

    name = "rq"

    def __init__(
        self,
        app: str | None = None,
        redis_url: str | None = None,
        queue: str = "async_accept",
        *,
        connection: Any = None,
        job_timeout: int = -1,
        result_ttl: int = 0,
        failure_ttl: int = 7 * 86400,
        **tuning: Unpack[RemoteOptions],
    ) -> None:
        rq, redis, json_serializer = _rq()
        super().__init__(app, **tuning)
        queue = queue_name(queue)
        for opt, value in (("job_timeout", job_timeout), ("result_ttl", result_ttl)):
            if isinstance(value, bool) or not isinstance(value, int) or value < -1:
                raise ConfigurationError(f"{opt}={value!r} must be whole seconds (-1: no limit)")
        if connection is None:
            if not redis_url or not isinstance(redis_url, str):
                raise ConfigurationError(
                    "the RQ executor needs its Redis: redis_url='redis://localhost:6379/0' "
                    "(or connection=redis.Redis(...))"
                )
            try:
                # No I/O here; short timeouts so a Redis outage can't wedge the sender.
                connection = redis.Redis.from_url(
                    redis_url, socket_timeout=5, socket_connect_timeout=5
                )
            except ValueError as exc:
                raise ConfigurationError(f"redis_url={redis_url!r}: {exc}") from exc
            self._owns_connection = True
        elif redis_url is not None:
            raise ConfigurationError("give either redis_url or connection, not both")
        else:
            self._owns_connection = False
        if not isinstance(connection, redis.Redis):
            raise ConfigurationError(f"connection={connection!r} must be a redis.Redis client")
        self.redis_url = redis_url
        self.connection = connection
        self.queue = queue
        self.job_timeout = job_timeout
        self.result_ttl = result_ttl
        self.failure_ttl = failure_ttl
        self.serializer = json_serializer
        self.rq_queue = rq.Queue(queue, connection=connection, serializer=json_serializer)

    def __repr__(self) -> str:
        return f"<RQExecutor app={self.app_path!r} queue={self.queue!r}>"

    def _publish(self, job_ids: list[str]) -> None:
        self._enqueue([(JOB_FUNCTION, job_id, f"async_accept job {job_id}") for job_id in job_ids])

    def _publish_groups(self, groups: list[list[str]]) -> None:
        self._enqueue(
            [
                (GROUP_JOB_FUNCTION, group, f"async_accept jobs {', '.join(group)}")
                for group in groups
            ]
        )

    def _enqueue(self, messages: list[tuple[str, Any, str]]) -> None:
        q = self.rq_queue
        datas = [
            q.prepare_data(
                function,
                args=(self.app_path, arg),
                timeout=self.job_timeout,
                result_ttl=self.result_ttl,
                failure_ttl=self.failure_ttl,
                description=description,
            )
            for function, arg, description in messages
        ]
        with self.connection.pipeline() as pipe:
            q.enqueue_many(datas, pipeline=pipe)
            pipe.execute()

    def _close_connections(self) -> None:
        if self._owns_connection:
            self.connection.close()

    def _reset_connections(self) -> None:
        # redis-py notices the fork itself and opens new connections in the child.
        pass
