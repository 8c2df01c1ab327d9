"""OpenTelemetry spans for a job's life, when ``opentelemetry-api`` is installed.

Three spans, one trace:

- ``async_accept.accept``: the accepting request. A ``SERVER`` span, child of
  the incoming ``traceparent`` (``tracestate`` too, through the global
  propagator); when an instrumented server already made a span current, an
  ``INTERNAL`` child of that one instead.
- ``async_accept.queue_wait``: from acceptance to the moment a worker claimed
  the job, recorded with those two timestamps once the job starts.
- ``async_accept.execute``: the replay of the request and the storing of its
  outcome, a ``CONSUMER`` span.

The accept span's context is kept with the job (``job.meta["trace"]``, a W3C
``traceparent``), so the other two can be made in any process, even one that
runs long after: each is a child of the accept span and carries a link to it.
While the execute span records, it is the current span of the replay, and the
replayed request's ``traceparent`` names it, so the handler's own spans (an
instrumented framework, database calls) nest below it.

Nothing here is imported by ``import async_accept``; without
``opentelemetry-api`` every call is a cheap no-op. Spans go to the global
tracer provider unless the ``tracer_provider`` option names another.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING, Any

from .job import CapturedRequest, Job, JobStatus

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

__all__ = ["AcceptSpan", "ExecuteSpan", "Tracing"]

log = logging.getLogger("async_accept")

TRACE_META = "trace"
_TRACER_NAME = "async_accept"


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def _headers(request: CapturedRequest) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in request.headers:
        name = k.decode("latin-1")
        value = v.decode("latin-1")
        out[name] = f"{out[name]},{value}" if name in out else value
    return out


class AcceptSpan:
    """The accept span (a no-op when tracing is off)."""

    __slots__ = ("_span",)

    def __init__(self, span: Span | None = None) -> None:
        self._span = span

    def carrier(self) -> dict[str, str] | None:
        """The span's context as W3C headers, to keep with the job; None when off."""
        span = self._span
        if span is None or not span.get_span_context().is_valid:
            return None
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier, trace.set_span_in_context(span))
        return carrier or None

    def job(self, job: Job) -> None:
        if self._span is not None:
            self._span.set_attribute("async_accept.job.id", job.id)

    def end(self, status: int | None, error: BaseException | None = None) -> None:
        span = self._span
        if span is None:
            return
        self._span = None
        try:
            from opentelemetry.trace import Status, StatusCode

            if status is not None:
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
            if error is not None:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        finally:
            span.end()


class ExecuteSpan:
    """The execute span, current while the replay runs (a no-op when tracing is off)."""

    __slots__ = ("_span", "_token", "request")

    def __init__(
        self, request: CapturedRequest, span: Span | None = None, token: object = None
    ) -> None:
        #: the request to replay: its traceparent names this span while it records
        self.request = request
        self._span = span
        self._token = token

    def outcome(self, status: JobStatus, error: dict[str, Any] | None) -> None:
        span = self._span
        if span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("async_accept.job.status", status.value)
        if status is JobStatus.FAILED:
            from .metrics import failure_reason

            kind = failure_reason(error)
            span.set_attribute("async_accept.job.failure", kind)
            span.set_status(Status(StatusCode.ERROR, kind))

    def end(self) -> None:
        span, token = self._span, self._token
        self._span = self._token = None
        if span is None:
            return
        try:
            if token is not None:
                from opentelemetry import context

                context.detach(token)  # type: ignore[arg-type]
        finally:
            span.end()


_OFF_ACCEPT = AcceptSpan()


class Tracing:
    """Makes the three spans; resolves OpenTelemetry on first use.

    Without a ``tracer_provider`` option, spans go to the global provider, looked
    up on every span so a provider installed after start-up is honoured. While
    that is still OpenTelemetry's placeholder (no SDK configured) or its no-op
    provider, no span could record, so none is made: tracing costs one lookup.
    """

    def __init__(self, provider: Any = None) -> None:
        self._provider = provider
        self._tracer: Tracer | None = None
        self._resolved = False
        self._api: Any = None
        self._idle: tuple[type, ...] = ()
        self._seen: object = None
        self._unset_is_idle = False

    @property
    def tracer(self) -> Tracer | None:
        if not self._resolved:
            self._resolve()
        api = self._api
        if api is None:  # opentelemetry-api missing, or an explicit provider
            return self._tracer
        if self._unset_is_idle and api._TRACER_PROVIDER is None:
            # get_tracer_provider() would answer its placeholder (it checks the
            # environment on every call, ~1 us): nothing could record.
            return None
        provider = api.get_tracer_provider()
        if provider is not self._seen:
            from . import __version__

            self._seen = provider
            self._tracer = (
                None
                if isinstance(provider, self._idle)
                else provider.get_tracer(_TRACER_NAME, __version__)
            )
        return self._tracer

    def _resolve(self) -> None:
        self._resolved = True
        try:
            from opentelemetry import trace
        except ImportError:
            return
        from . import __version__

        if self._provider is not None:
            self._tracer = self._provider.get_tracer(_TRACER_NAME, __version__)
            return
        self._idle = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
        self._api = trace
        self._unset_is_idle = (
            hasattr(trace, "_TRACER_PROVIDER") and "OTEL_PYTHON_TRACER_PROVIDER" not in os.environ
        )

    def start_accept(self, request: CapturedRequest) -> AcceptSpan:
        """Start the accept span for ``request`` (not made current)."""
        tracer = self.tracer
        if tracer is None:
            return _OFF_ACCEPT
        from opentelemetry import propagate, trace

        attributes = {
            "http.request.method": request.method,
            "url.path": request.root_path + request.path,
            "url.scheme": request.scheme,
        }
        if trace.get_current_span().get_span_context().is_valid:
            # An instrumented server already has a span for this request.
            span = tracer.start_span(
                "async_accept.accept", kind=trace.SpanKind.INTERNAL, attributes=attributes
            )
        else:
            parent = propagate.extract(_headers(request))
            span = tracer.start_span(
                "async_accept.accept",
                context=parent,
                kind=trace.SpanKind.SERVER,
                attributes=attributes,
            )
        return AcceptSpan(span)

    def _accept_context(self, job: Job, request: CapturedRequest) -> tuple[Any, list[Any]]:
        """The parent context for the job's later spans, and the link to the accept span."""
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        carrier = job.meta.get(TRACE_META)
        if isinstance(carrier, dict) and carrier.get("traceparent"):
            ctx = TraceContextTextMapPropagator().extract(
                {str(k): str(v) for k, v in carrier.items()}
            )
            sc = trace.get_current_span(ctx).get_span_context()
            if sc.is_valid:
                return ctx, [trace.Link(sc, {"async_accept.link": "accept"})]
        # Accepted without tracing: continue from the request's own traceparent.
        from opentelemetry import propagate

        return propagate.extract(_headers(request)), []

    def record_queue_wait(self, job: Job, request: CapturedRequest) -> None:
        """The queue wait of a job just claimed: acceptance -> ``started_at``."""
        tracer = self.tracer
        if tracer is None or job.started_at is None:
            return
        try:
            ctx, links = self._accept_context(job, request)
            span = tracer.start_span(
                "async_accept.queue_wait",
                context=ctx,
                links=links,
                start_time=_ns(job.created_at),
                attributes={"async_accept.job.id": job.id, "async_accept.attempt": job.attempts},
            )
            span.end(end_time=_ns(max(job.started_at, job.created_at)))
        except Exception:  # tracing must never fail a job
            log.warning("async_accept: queue_wait span failed", exc_info=True)

    def start_execute(self, job: Job, request: CapturedRequest) -> ExecuteSpan:
        """Start the execute span, make it current, and point the replay at it."""
        tracer = self.tracer
        if tracer is None:
            return ExecuteSpan(request)
        try:
            from opentelemetry import context, trace
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )

            ctx, links = self._accept_context(job, request)
            span = tracer.start_span(
                "async_accept.execute",
                context=ctx,
                kind=trace.SpanKind.CONSUMER,
                links=links,
                attributes={
                    "async_accept.job.id": job.id,
                    "async_accept.attempt": job.attempts,
                    "http.request.method": request.method,
                    "url.path": request.root_path + request.path,
                },
            )
            current = trace.set_span_in_context(span)
            token = context.attach(current)
            replayed = request
            if span.is_recording():
                carrier: dict[str, str] = {}
                TraceContextTextMapPropagator().inject(carrier, current)
                if carrier:
                    names = {n.encode("latin-1") for n in carrier}
                    headers = [(k, v) for k, v in request.headers if k not in names]
                    headers.extend(
                        (k.encode("latin-1"), v.encode("latin-1")) for k, v in carrier.items()
                    )
                    replayed = dataclasses.replace(request, headers=headers)
            return ExecuteSpan(replayed, span, token)
        except Exception:
            log.warning("async_accept: execute span failed", exc_info=True)
            return ExecuteSpan(request)
