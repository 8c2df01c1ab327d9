"""What a runtime does when a job is recorded or ends: metrics events and
completion webhooks.

Every change of a job's state goes through a store call the core yields
(``create``, ``finish``, ``fail``, ``cancel``), and those calls are
compare-and-set: exactly one process sees each job become terminal. So the
runtime hands each such call's result to :meth:`Observer.after_call`, which
reports the event and says whether the job has webhook deliveries to record.
That covers every way to an end: a worker's outcome, the deadman switch in a
sweep or a status read, the cancel of a queued job.

When the outbox is the store's own (``store.default_outbox()``, the default),
the store writes each ended job's deliveries in the very transaction (Lua
script, lock) that ends the job, with an empty payload: a crash right after the
end can't lose them. :meth:`Observer.deliver` then fills in the payload; after
a crash the dispatcher renders it when it claims the delivery
(:meth:`Observer.render`). With an outbox of its own (``webhook_outbox=``) the
deliveries are written after the end, as before. Outbox writes are disk writes
for SQLite, so the ASGI runtime calls :meth:`Observer.deliver` in a thread; the
dispatcher thread of any process that shares the outbox sends them, signed,
with retries.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

from . import metrics
from .errors import AsyncAcceptError, ConfigurationError
from .job import Job
from .stores.outbox_base import Delivery, delivery_id, notice_targets

if TYPE_CHECKING:
    from .engine import Engine
    from .engine.ops import JobEvent
    from .outbox import Outbox
    from .stores import Store
    from .webhooks import WebhookDispatcher

log = logging.getLogger("async_accept")

#: Dispatchers inherited from a parent process, kept alive on purpose (see after_fork).
_FORK_ORPHANS: list[Any] = []


def envelope(job: Job, status: dict[str, Any], now: float) -> dict[str, Any]:
    """The Standard Webhooks body: ``type`` (``job.completed``, ``job.failed``,
    ``job.canceled``), ``timestamp`` and ``data``, the status JSON with its links
    made absolute (a receiver on another host can't follow relative ones)."""
    origin = job.meta.get("origin")
    links = status.get("links")
    if isinstance(origin, str) and origin and isinstance(links, dict):
        status = {**status, "links": {k: urljoin(origin, str(v)) for k, v in links.items()}}
    when = datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds")
    return {
        "type": f"job.{job.status.value}",
        "timestamp": when.replace("+00:00", "Z"),
        "data": status,
    }


def derive_outbox(spec: Any, store: Store) -> tuple[Outbox, bool]:
    """The webhook outbox: ``spec`` when given, else one that lives where the jobs do;
    and whether the store writes ended jobs' deliveries into it itself."""
    from .outbox import MemoryOutbox, resolve_outbox

    if spec is not None:
        return resolve_outbox(spec), False
    default_outbox = getattr(store, "default_outbox", None)
    outbox: Outbox | None = default_outbox() if callable(default_outbox) else None
    if outbox is not None:
        return outbox, True
    if not getattr(store, "shared", False):
        return MemoryOutbox(), False
    raise ConfigurationError(
        f"webhooks need a durable outbox that every process shares, and none is known for "
        f"store={store!r}: pass webhook_outbox='sqlite:////var/lib/app/webhooks.db' "
        "(or an async_accept.outbox.Outbox instance)"
    )


class Observer:
    """Metrics events and webhook deliveries for one runtime."""

    def __init__(self, engine: Engine, store: Store) -> None:
        self.engine = engine
        self.options = engine.options
        self._store = store
        self._listeners = () if self.options.on_event is None else (self.options.on_event,)
        self.dispatcher: WebhookDispatcher | None = None
        #: True when the store records ended jobs' deliveries with their end
        self.outbox_in_store = False
        if self.options.webhooks_enabled:
            self.dispatcher = self._make_dispatcher()

    def _make_dispatcher(self) -> WebhookDispatcher:
        from .webhooks import WebhookDispatcher

        opts = self.options
        outbox, self.outbox_in_store = derive_outbox(opts.webhook_outbox, self._store)
        try:
            dispatcher = WebhookDispatcher(
                opts.webhook_secret,
                outbox=outbox,
                policy=opts.webhook_policy,
                **opts.webhook_dispatcher_options,
            )
        except BaseException:
            outbox.close()
            raise
        dispatcher.render = self.render
        return dispatcher

    # -- events ---------------------------------------------------------------------

    def after_call(self, event: JobEvent) -> Job | None:
        """Report what a store call did to a job; the job when it has deliveries to record."""
        job = event.job
        if event.kind == "accepted":
            metrics.emit(self._listeners, "accepted", job_id=job.id, route=job.route)
            return None
        if not job.terminal:
            return None
        name, fields = metrics.job_fields(job)
        metrics.emit(self._listeners, name, **fields)
        if self.dispatcher is None or not notice_targets(job):
            return None  # (a job whose submit failed: its client got a 503, not a job)
        return job

    # -- webhooks ---------------------------------------------------------------------

    def _payload(self, job: Job) -> dict[str, Any]:
        engine = self.engine
        root_path = str(job.meta.get("root_path") or "")
        token = engine.token_for(job)
        now = engine.clock()
        return envelope(job, engine.status_json(job, root_path, token, now), now)

    def render(self, delivery: Delivery) -> str | None:
        """The payload of a delivery the store recorded with its job's end but whose
        process stopped before filling it in (the dispatcher asks when it claims it):
        rendered from the job as stored, None when the job is gone."""
        if delivery.job_id is None:
            return None
        job = self._store.get(delivery.job_id, self.engine.clock())
        if job is None or not job.terminal:
            return None
        return json.dumps(self._payload(job), separators=(",", ":"))

    def deliver(self, job: Job) -> None:
        """Record the job's notifications in the outbox, or fill in the payload of
        those the store recorded with the job's end (blocking; never raises)."""
        dispatcher = self.dispatcher
        if dispatcher is None:
            return
        payload = self._payload(job)
        for url, client_supplied in notice_targets(job):
            try:
                dispatcher.enqueue(
                    url,
                    payload,
                    job_id=job.id,
                    msg_id=delivery_id(job.id, url),
                    client_supplied=client_supplied,
                    recorded=self.outbox_in_store,
                )
            except AsyncAcceptError as exc:
                log.warning(
                    "async_accept: webhook for job %s to %s not recorded: %s", job.id, url, exc
                )
            except Exception:
                log.exception("async_accept: webhook for job %s to %s not recorded", job.id, url)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self.dispatcher is not None:
            self.dispatcher.stop(timeout)

    def after_fork(self) -> None:
        """A forked child: the parent's dispatcher thread and connections are not ours."""
        if self.dispatcher is not None:
            # Never closed here, not even by the garbage collector: closing a SQLite
            # connection inherited through fork() can drop this process's file locks.
            _FORK_ORPHANS.append(self.dispatcher)
            self.dispatcher = self._make_dispatcher()

    def close(self) -> None:
        """Stop the dispatcher and release its outbox and HTTP client."""
        dispatcher, self.dispatcher = self.dispatcher, None
        if dispatcher is not None:
            dispatcher.close()
            dispatcher.outbox.close()
