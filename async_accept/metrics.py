"""Counters and timings through one small hook.

Every process that accepts or runs jobs reports four events to its listeners::

    listener(event, **fields)

=============  ============================================================
``accepted``   a job was recorded (``job_id``, ``route``)
``completed``  it ended ``completed``
``failed``     it ended ``failed``; ``reason`` is the last segment of the
               problem type: ``handler-error``, ``deadline-exceeded``,
               ``worker-lost``, ``executor-unavailable``, ...
``canceled``   it ended ``canceled``
=============  ============================================================

The three end events also carry ``queue_wait`` (seconds from acceptance to
start, ``None`` when it never started) and ``run_time`` (start to end,
``None`` likewise). ``route`` is ``"METHOD /path"`` as requested: mind its
cardinality before using it as a metric label.

Listeners come from the ``on_event=`` option of one middleware, or from
:func:`add_listener` for every middleware in the process. They run inline
(on the event loop for ASGI apps), so they must be quick, as a counter
increment is; an exception in one is logged and ignored.

Ready-made listeners: :class:`PrometheusListener` (needs ``prometheus-client``)
and :class:`OpenTelemetryListener` (needs ``opentelemetry-api``).
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from .errors import MissingDependencyError
from .job import Job, JobStatus

__all__ = [
    "EVENTS",
    "Listener",
    "OpenTelemetryListener",
    "PrometheusListener",
    "add_listener",
    "emit",
    "failure_reason",
    "job_fields",
    "remove_listener",
]

log = logging.getLogger("async_accept")

Listener = Callable[..., None]
EVENTS = ("accepted", "completed", "failed", "canceled")

_lock = threading.Lock()
_listeners: tuple[Listener, ...] = ()


def add_listener(listener: Listener) -> Callable[[], None]:
    """Call ``listener(event, **fields)`` on every event in this process.

    Returns a function that removes it again.
    """
    global _listeners
    if not callable(listener):
        raise TypeError(f"{listener!r} is not callable")
    with _lock:
        _listeners = (*_listeners, listener)

    def remove() -> None:
        remove_listener(listener)

    return remove


def remove_listener(listener: Listener) -> bool:
    """Stop calling ``listener``; True when it was registered."""
    global _listeners
    with _lock:
        if listener not in _listeners:
            return False
        items = list(_listeners)
        items.remove(listener)
        _listeners = tuple(items)
        return True


def emit(extra: Iterable[Listener], event: str, /, **fields: Any) -> None:
    """Hand ``event`` to the ``extra`` listeners, then to the registered ones."""
    for listener in (*extra, *_listeners):
        try:
            listener(event, **fields)
        except Exception:
            log.warning("async_accept: metrics listener %r failed", listener, exc_info=True)


def _duration(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, end - start)


def job_fields(job: Job) -> tuple[str, dict[str, Any]]:
    """The end event of a terminal ``job`` and its fields."""
    fields: dict[str, Any] = {
        "job_id": job.id,
        "route": job.route,
        "queue_wait": _duration(job.created_at, job.started_at),
        "run_time": _duration(job.started_at, job.finished_at or job.updated_at),
    }
    if job.status is JobStatus.FAILED:
        fields["reason"] = failure_reason(job.error)
    return job.status.value, fields


def failure_reason(error: dict[str, Any] | None) -> str:
    """The last segment of a problem ``type`` (``urn:...:worker-lost`` -> ``worker-lost``)."""
    kind = str((error or {}).get("type", ""))
    return kind.replace(":", "/").rsplit("/", 1)[-1] or "failed"


class PrometheusListener:
    """Prometheus metrics from the events (``pip install prometheus-client``).

    ``{namespace}_jobs_accepted_total``, ``{namespace}_jobs_finished_total``
    (labels ``status`` and ``reason``), and the histograms
    ``{namespace}_job_queue_wait_seconds`` and ``{namespace}_job_run_time_seconds``
    (label ``status``). No route label: paths with ids would make one series
    per job. Register it with ``on_event=`` or :func:`add_listener`.
    """

    def __init__(self, registry: Any = None, namespace: str = "async_accept") -> None:
        try:
            prom = importlib.import_module("prometheus_client")
        except ImportError as exc:
            raise MissingDependencyError(
                "PrometheusListener", "prometheus", "prometheus-client"
            ) from exc
        kw: dict[str, Any] = {"namespace": namespace}
        if registry is not None:
            kw["registry"] = registry
        self.accepted = prom.Counter("jobs_accepted", "Jobs accepted.", **kw)
        self.finished = prom.Counter(
            "jobs_finished", "Jobs that reached a terminal state.", ["status", "reason"], **kw
        )
        self.queue_wait = prom.Histogram(
            "job_queue_wait_seconds", "Seconds from acceptance to start.", ["status"], **kw
        )
        self.run_time = prom.Histogram(
            "job_run_time_seconds", "Seconds from start to end.", ["status"], **kw
        )

    def __call__(self, event: str, **fields: Any) -> None:
        if event == "accepted":
            self.accepted.inc()
            return
        if event not in EVENTS:
            return
        self.finished.labels(event, fields.get("reason") or "").inc()
        if fields.get("queue_wait") is not None:
            self.queue_wait.labels(event).observe(fields["queue_wait"])
        if fields.get("run_time") is not None:
            self.run_time.labels(event).observe(fields["run_time"])


class OpenTelemetryListener:
    """OpenTelemetry metrics from the events (``opentelemetry-api``; an SDK exports them).

    Counters ``async_accept.jobs.accepted`` and ``async_accept.jobs.finished``
    (attributes ``async_accept.job.status`` and ``async_accept.job.failure``),
    histograms ``async_accept.job.queue_wait`` and ``async_accept.job.run_time``
    in seconds. ``meter_provider`` defaults to the global one.
    """

    def __init__(self, meter_provider: Any = None) -> None:
        try:
            from opentelemetry import metrics
        except ImportError as exc:
            raise MissingDependencyError(
                "OpenTelemetryListener", "opentelemetry", "opentelemetry-api"
            ) from exc
        from . import __version__

        provider = meter_provider or metrics.get_meter_provider()
        meter = provider.get_meter("async_accept", __version__)
        self.accepted = meter.create_counter(
            "async_accept.jobs.accepted", unit="{job}", description="Jobs accepted."
        )
        self.finished = meter.create_counter(
            "async_accept.jobs.finished", unit="{job}", description="Jobs that ended."
        )
        self.queue_wait = meter.create_histogram(
            "async_accept.job.queue_wait", unit="s", description="Acceptance to start."
        )
        self.run_time = meter.create_histogram(
            "async_accept.job.run_time", unit="s", description="Start to end."
        )

    def __call__(self, event: str, **fields: Any) -> None:
        if event == "accepted":
            self.accepted.add(1)
            return
        if event not in EVENTS:
            return
        attrs = {"async_accept.job.status": event}
        if fields.get("reason"):
            attrs["async_accept.job.failure"] = str(fields["reason"])
        self.finished.add(1, attrs)
        if fields.get("queue_wait") is not None:
            self.queue_wait.record(fields["queue_wait"], attrs)
        if fields.get("run_time") is not None:
            self.run_time.record(fields["run_time"], attrs)
