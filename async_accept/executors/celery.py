"""Run jobs on Celery workers.

The web process publishes one message per job, ``async_accept.run_job(app_path,
job_id)``, from a background thread (see :class:`~async_accept.executors.remote.RemoteExecutor`):
the accept path never waits on the broker. A worker started with
``async-accept worker --app mysite.asgi:application`` (or any Celery worker of
an app that called :func:`register_task`) imports the application by that
path and replays the stored request against it.

Celery is optional: ``pip install 'async-accept[celery]'``.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from .._imports import import_from_string
from ..errors import ConfigurationError, MissingDependencyError
from .remote import RemoteExecutor, RemoteOptions, queue_name

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["GROUP_TASK_NAME", "TASK_NAME", "CeleryExecutor", "register_task"]

#: The name of the task every async_accept message calls.
TASK_NAME = "async_accept.run_job"
#: The task of a message carrying several jobs (``jobs_per_message`` > 1).
GROUP_TASK_NAME = "async_accept.run_jobs"

#: kombu's reconnect policy for one publish round; the sender thread retries after it.
_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5}


def _celery() -> Any:
    try:
        import celery
    except ImportError as exc:
        raise MissingDependencyError("The Celery executor", "celery", "celery") from exc
    return celery


def run_async_accept_job(app_path: str, job_id: str) -> str | None:
    """The task body: replay job ``job_id`` of the application at ``app_path``."""
    from ..worker import run_job

    return run_job(app_path, job_id)


def run_async_accept_jobs(app_path: str, job_ids: list[str]) -> list[str | None]:
    """The task body of a grouped message: the jobs, one after another."""
    from ..worker import run_jobs

    return run_jobs(app_path, job_ids)


def _require_allow_list(**_kw: Any) -> None:
    """Celery's ``worker_init``: stop the worker when it has no allow-list.

    Celery logs and swallows an ``Exception`` from a signal handler, so the
    ConfigurationError leaves as the ``SystemExit`` that ends the start-up.
    """
    from ..worker import allowed_apps

    try:
        allowed_apps()
    except ConfigurationError as exc:
        raise SystemExit(f"async_accept: {exc}") from exc


def register_task(celery_app: Any) -> Any:
    """Register the ``async_accept.run_job`` and ``async_accept.run_jobs`` tasks on
    ``celery_app`` (idempotent); returns the first.

    ``async-accept worker`` does it; call it in your Celery module when you
    start workers with ``celery -A proj worker -Q async_accept`` instead.
    """
    from celery.signals import worker_init

    # A worker started with Celery's own command refuses to start without its
    # allow-list (ASYNC_ACCEPT_WORKER_APPS), not at its first message.
    worker_init.connect(_require_allow_list, weak=False, dispatch_uid="async_accept.allow_list")
    celery_app.task(name=GROUP_TASK_NAME, ignore_result=True, shared=False)(run_async_accept_jobs)
    return celery_app.task(name=TASK_NAME, ignore_result=True, shared=False)(run_async_accept_job)


def default_celery_app(broker_url: str, queue: str) -> Any:
    """A Celery app for async_accept's own messages: JSON only, no result backend."""
    celery = _celery()
    app = celery.Celery("async_accept", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=queue,
        # Handlers run for a while: don't let one worker hoard messages others could run.
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        # A broker outage of any length: keep reconnecting (with Celery's capped
        # backoff) instead of giving up after 100 attempts.
        broker_connection_max_retries=None,
        broker_transport_options={"socket_timeout": 5, "socket_connect_timeout": 5},
        worker_hijack_root_logger=False,
    )
    register_task(app)
    return app


class CeleryExecutor(RemoteExecutor):
    """Jobs run on Celery workers; the web process only publishes references.

    ``app``
        Dotted path of the web application (``"mysite.asgi:application"``),
        which workers import. Required.
    ``celery_app``
        Your Celery app (instance or ``"proj.celery:app"``); or give
        ``broker_url`` and async_accept makes a JSON-only app of its own.
    ``queue``
        The queue messages go to (workers consume it).
    ``revoke``
        Also revoke the task when a running job's cancel is requested, so that
        workers drop any other copy of its message unseen (the running handler
        stops cooperatively: it sees ``current_job().cancel_requested``).

    ``batch_size``, ``flush_interval``, ``redispatch_after``, ``max_buffer`` and
    ``jobs_per_message`` tune the hand-over (see
    :class:`~async_accept.executors.remote.RemoteExecutor`).
    Messages go out over one connection and producer that the sender thread keeps;
    with RabbitMQ, publishes don't wait for the broker, so a batch takes about one
    round trip.
    """

    name = "celery"

    def __init__(
        self,
        app: str | None = None,
        celery_app: Any = None,
        broker_url: str | None = None,
        queue: str = "async_accept",
        *,
        revoke: bool = True,
        **tuning: Unpack[RemoteOptions],
    ) -> None:
        celery = _celery()
        super().__init__(app, **tuning)
        queue = queue_name(queue)
        self.queue = queue
        self.revoke = bool(revoke)
        self._conn: Any = None
        self._producer_obj: Any = None
        if celery_app is None:
            if not broker_url or not isinstance(broker_url, str):
                raise ConfigurationError(
                    "the Celery executor needs a broker: broker_url='redis://localhost:6379/0' "
                    "(or 'amqp://guest@localhost//'), or your app: celery_app='proj.celery:app'"
                )
            self.celery = default_celery_app(broker_url, queue)
            self._owns_celery = True
        else:
            if broker_url is not None:
                raise ConfigurationError(
                    "give either celery_app (it has its broker) or broker_url, not both"
                )
            if isinstance(celery_app, str):
                celery_app = import_from_string(celery_app, "celery_app")
            if not isinstance(celery_app, celery.Celery):
                raise ConfigurationError(
                    f"celery_app={celery_app!r} is not a Celery app: pass one, or its "
                    "dotted path such as 'proj.celery:app'"
                )
            self.celery = celery_app
            self._owns_celery = False
            register_task(celery_app)

    def __repr__(self) -> str:
        return f"<CeleryExecutor app={self.app_path!r} queue={self.queue!r}>"

    # The sender thread's own connection and producer, reused for every round. Not
    # kombu's process-wide pools: what the executor opens, it closes when it stops.

    def _producer(self) -> Any:
        if self._producer_obj is None:
            self._conn = self.celery.connection_for_write()
            self._producer_obj = self.celery.amqp.Producer(self._conn)
        return self._producer_obj

    def _drop_connection(self, close: bool = True) -> None:
        conn, self._conn, self._producer_obj = self._conn, None, None
        if conn is not None and close:
            with contextlib.suppress(Exception):  # already broken: nothing to save
                conn.release()

    def _publish(self, job_ids: list[str]) -> None:
        # The task id is the job id: a revoke can name it without a lookup.
        self._send_tasks([(TASK_NAME, job_id, job_id) for job_id in job_ids])

    def _publish_groups(self, groups: list[list[str]]) -> None:
        # Unique (a job id is); a revoke by job id misses it, but a canceled job
        # is never claimed anyway.
        self._send_tasks([(GROUP_TASK_NAME, group, f"{group[0]}.group") for group in groups])

    def _send_tasks(self, messages: list[tuple[str, Any, str]]) -> None:
        """(task name, job id or ids, task id) each, over the sender's producer."""
        app = self.celery
        producer = self._producer()
        try:
            for task, arg, task_id in messages:
                app.send_task(
                    task,
                    args=(self.app_path, arg),
                    task_id=task_id,
                    queue=self.queue,
                    producer=producer,
                    retry=True,
                    retry_policy=_RETRY_POLICY,
                )
        except Exception:
            self._drop_connection()  # the next round starts on a fresh connection
            raise

    def _wants_cancels(self) -> bool:
        return self.revoke

    def _send_cancels(self, job_ids: list[str]) -> None:
        # Celery's control.revoke(), over our connection. No terminate: the handler
        # stops cooperatively and records `canceled` itself.
        self._producer()
        mailbox = self.celery.control.mailbox(self._conn)
        mailbox._producer_pool = None  # publish on this connection, not a pooled one
        try:
            mailbox._broadcast(
                "revoke", {"task_id": job_ids, "terminate": False, "signal": "SIGTERM"}
            )
        except Exception:
            self._drop_connection()
            raise

    def _close_connections(self) -> None:
        self._drop_connection()
        if self._owns_celery:  # your own app's pools are yours to close
            self.celery.close()

    def _reset_connections(self) -> None:
        # After a fork the parent's socket is not ours to close.
        self._drop_connection(close=False)
