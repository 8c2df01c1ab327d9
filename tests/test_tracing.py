"""OpenTelemetry spans (accept, queue_wait, execute) and the metrics hook.

Spans go to an in-memory exporter of a TracerProvider handed to the
middleware (``tracer_provider=``), never to the global provider, so other
tests see no tracing at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from async_accept import metrics
from async_accept.errors import ConfigurationError, MissingDependencyError
from async_accept.job import CapturedRequest, Job, JobStatus
from async_accept.tracing import Tracing
from tests import apps
from tests.conftest import ALICE, COMBOS, Deployment, deploy

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """A private TracerProvider exporting to memory."""
    p = TracerProvider()
    p.add_span_processor(SimpleSpanProcessor(exporter))
    yield p
    p.shutdown()


@pytest.fixture(params=COMBOS, ids=["-".join(c) for c in COMBOS])
def traced(
    request: pytest.FixtureRequest, tmp_path: Path, provider: TracerProvider
) -> Iterator[Deployment]:
    """Every door x store x executor, tracing to the in-memory exporter."""
    apps.GATES = apps.Gates()
    door, store, executor = request.param
    with deploy(door, store, executor, tmp_path, tracer_provider=provider) as d:
        yield d


def spans_of(exporter: InMemorySpanExporter, job_id: str) -> dict[str, ReadableSpan]:
    out = {}
    for span in exporter.get_finished_spans():
        if (span.attributes or {}).get("async_accept.job.id") == job_id:
            out[span.name] = span
    return out


def wait_spans(exporter: InMemorySpanExporter, job_id: str, n: int = 3) -> dict[str, ReadableSpan]:
    import time

    deadline = time.monotonic() + 10
    while len(found := spans_of(exporter, job_id)) < n:
        assert time.monotonic() < deadline, [s.name for s in exporter.get_finished_spans()]
        time.sleep(0.01)
    return found


def hex_span(span_id: int) -> str:
    return format(span_id, "016x")


# -- spans -----------------------------------------------------------------------------------


def test_accept_queue_wait_and_execute_spans_form_one_trace(
    traced: Deployment, exporter: InMemorySpanExporter
) -> None:
    """accept (SERVER, under traceparent) -> queue_wait, execute (children + links) -> handler."""
    r = traced.post("/slow", headers={**ALICE, "traceparent": TRACEPARENT})
    job_id = r.json()["id"]
    done = traced.finished(r.headers["location"])
    spans = wait_spans(exporter, job_id)
    accept, wait, execute = (
        spans["async_accept.accept"],
        spans["async_accept.queue_wait"],
        spans["async_accept.execute"],
    )
    trace_id = int(TRACE_ID, 16)
    assert accept.kind is trace.SpanKind.SERVER
    assert accept.parent is not None and accept.parent.span_id == int(PARENT_ID, 16)
    assert accept.parent.is_remote
    assert accept.context.trace_id == trace_id
    assert (accept.attributes or {})["http.response.status_code"] == 202
    assert (accept.attributes or {})["http.request.method"] == "POST"
    for child in (wait, execute):
        assert child.context.trace_id == trace_id
        assert child.parent is not None and child.parent.span_id == accept.context.span_id
        assert [link.context.span_id for link in child.links] == [accept.context.span_id]
    assert execute.kind is trace.SpanKind.CONSUMER
    assert (execute.attributes or {})["async_accept.job.status"] == "completed"
    assert wait.start_time is not None and wait.end_time is not None
    assert wait.end_time >= wait.start_time
    assert execute.start_time is not None and wait.end_time <= execute.start_time
    # The handler saw the trace continue below the execute span.
    seen = traced.get(done.headers["location"]).json()["traceparent"]
    assert seen == f"00-{TRACE_ID}-{hex_span(execute.context.span_id)}-01"


def test_without_incoming_traceparent_accept_starts_the_trace(
    make_dep: Any, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """No traceparent: the accept span is a root and the job's spans share its trace."""
    d = make_dep("wsgi", "sqlite", tracer_provider=provider)
    r = d.post("/slow")
    d.finished(r.headers["location"])
    spans = wait_spans(exporter, r.json()["id"])
    accept = spans["async_accept.accept"]
    assert accept.parent is None
    assert {s.context.trace_id for s in spans.values()} == {accept.context.trace_id}


def test_instrumented_server_span_is_the_parent(
    make_dep: Any, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """When a server span is already current, accept is an INTERNAL child of it."""
    d = make_dep("wsgi", "memory", tracer_provider=provider)
    inner = d.middleware
    tracer = provider.get_tracer("test-server")

    def instrumented(environ: dict[str, Any], start_response: Any) -> Any:
        with tracer.start_as_current_span("GET server", kind=trace.SpanKind.SERVER):
            return inner(environ, start_response)

    import httpx

    with httpx.Client(
        transport=httpx.WSGITransport(app=instrumented), base_url="http://testserver"
    ) as client:
        r = client.post("/slow", headers={**ALICE, "traceparent": TRACEPARENT})
    d.finished(r.headers["location"])
    spans = wait_spans(exporter, r.json()["id"])
    server = next(s for s in exporter.get_finished_spans() if s.name == "GET server")
    accept = spans["async_accept.accept"]
    assert accept.kind is trace.SpanKind.INTERNAL
    assert accept.parent is not None and accept.parent.span_id == server.context.span_id


def test_failed_job_marks_the_execute_span(
    make_dep: Any, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A handler that raises leaves an ERROR execute span naming the failure."""
    d = make_dep("asgi", "memory", tracer_provider=provider)
    r = d.post("/fail")
    d.finished(r.headers["location"])
    execute = wait_spans(exporter, r.json()["id"])["async_accept.execute"]
    assert execute.status.status_code is trace.StatusCode.ERROR
    assert (execute.attributes or {})["async_accept.job.failure"] == "handler-error"


def test_hybrid_direct_answer_is_traced(
    make_dep: Any, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A hybrid route answering directly still has its accept and execute spans."""
    d = make_dep("wsgi", "memory", tracer_provider=provider)
    r = d.post("/hybrid", headers={**ALICE, "traceparent": TRACEPARENT})
    assert r.status_code == 200
    accepts = [s for s in exporter.get_finished_spans() if s.name == "async_accept.accept"]
    assert len(accepts) == 1
    assert (accepts[0].attributes or {})["http.response.status_code"] == 200
    job_id = (accepts[0].attributes or {})["async_accept.job.id"]
    assert "async_accept.execute" in wait_spans(exporter, str(job_id))


def test_global_provider_without_sdk_changes_nothing(make_dep: Any) -> None:
    """With only the API's default provider the replayed traceparent is the client's own."""
    d = make_dep("asgi", "memory")
    r = d.post("/slow", headers={**ALICE, "traceparent": TRACEPARENT})
    done = d.finished(r.headers["location"])
    assert d.get(done.headers["location"]).json()["traceparent"] == TRACEPARENT


def test_idle_global_provider_makes_no_span_and_a_later_sdk_is_honoured() -> None:
    """No SDK: start_accept makes no span; a global SDK provider set later gets spans."""
    script = textwrap.dedent(
        f"""
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )
        from async_accept.job import CapturedRequest
        from async_accept.tracing import Tracing, _OFF_ACCEPT

        t = Tracing()
        request = CapturedRequest(
            "POST", "/x", headers=[(b"traceparent", {TRACEPARENT!r}.encode())]
        )
        assert t.tracer is None
        assert t.start_accept(request) is _OFF_ACCEPT
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        span = t.start_accept(request)
        assert span is not _OFF_ACCEPT
        span.end(202)
        (done,) = exporter.get_finished_spans()
        assert done.name == "async_accept.accept"
        assert done.context.trace_id == int({TRACE_ID!r}, 16)
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_without_opentelemetry_everything_is_a_no_op(
    make_dep: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without opentelemetry installed the spans are no-ops and jobs run the same."""
    for name in [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # makes the import fail
    t = Tracing()
    assert t.tracer is None
    request = CapturedRequest("POST", "/x", headers=[(b"traceparent", TRACEPARENT.encode())])
    span = t.start_accept(request)
    assert span.carrier() is None
    span.end(202)
    job = Job("j", JobStatus.PROCESSING, "o", 1.0, 1.0, 2.0, 3.0, 1.0, started_at=1.5)
    t.record_queue_wait(job, request)
    ex = t.start_execute(job, request)
    assert ex.request is request
    ex.outcome(JobStatus.COMPLETED, None)
    ex.end()
    d = make_dep("wsgi", "memory")
    r = d.post("/slow", headers={**ALICE, "traceparent": TRACEPARENT})
    done = d.finished(r.headers["location"])
    assert d.get(done.headers["location"]).json()["traceparent"] == TRACEPARENT


def test_bad_tracer_provider_fails_at_construction() -> None:
    """tracer_provider must be a TracerProvider."""
    from async_accept.options import build_options

    with pytest.raises(ConfigurationError, match="tracer_provider"):
        build_options(secret_key="k" * 32, tracer_provider="jaeger")


# -- metrics ---------------------------------------------------------------------------------


class Recorder:
    """A listener keeping every event (thread-safe: workers call it from their threads)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def __call__(self, event: str, **fields: Any) -> None:
        with self.lock:
            self.events.append((event, fields))

    def of(self, job_id: str) -> list[tuple[str, dict[str, Any]]]:
        with self.lock:
            return [(e, f) for e, f in self.events if f.get("job_id") == job_id]

    def wait(self, job_id: str, n: int = 2) -> list[tuple[str, dict[str, Any]]]:
        import time

        deadline = time.monotonic() + 10
        while len(got := self.of(job_id)) < n:
            assert time.monotonic() < deadline, self.events
            time.sleep(0.01)
        return got


@pytest.fixture(params=COMBOS, ids=["-".join(c) for c in COMBOS])
def counted(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Deployment, Recorder]]:
    """Every door x store x executor with an on_event recorder."""
    apps.GATES = apps.Gates()
    rec = Recorder()
    door, store, executor = request.param
    with deploy(door, store, executor, tmp_path, on_event=rec) as d:
        yield d, rec


def test_events_for_each_way_a_job_ends(counted: tuple[Deployment, Recorder]) -> None:
    """accepted, then completed / failed (with the reason) / canceled, with timings >= 0."""
    d, rec = counted
    ok = d.post("/slow").json()["id"]
    bad = d.post("/fail").json()["id"]
    r = d.post("/progress/metrics-cancel")
    assert apps.GATES.entered_event("metrics-cancel").wait(10)
    d.client.delete(r.headers["location"], headers=ALICE)
    gone = r.json()["id"]
    # Ended before the clock jumps past their deadlines (the process running a job
    # applies its deadline itself: a job still running then would end deadline-exceeded).
    for job_id in (ok, bad, gone):
        rec.wait(job_id)
    zombie = d.post("/gate/metrics-zombie")
    assert apps.GATES.entered_event("metrics-zombie").wait(10)
    d.clock.advance(61)
    d.get(zombie.headers["location"])
    apps.GATES.open_all()
    expected = {
        ok: ("completed", None),
        bad: ("failed", "handler-error"),
        gone: ("canceled", None),
        zombie.json()["id"]: ("failed", "deadline-exceeded"),
    }
    for job_id, (event, reason) in expected.items():
        (first, _), (last, fields) = rec.wait(job_id)
        assert first == "accepted"
        assert last == event
        assert fields.get("reason") == reason
        assert fields["route"].startswith("POST /")
        assert fields["queue_wait"] >= 0 and fields["run_time"] >= 0
    import time

    time.sleep(0.2)  # the zombie's late finish is not a second end event
    assert len(rec.of(zombie.json()["id"])) == 2


def test_global_listeners_and_a_broken_one(make_dep: Any, caplog: pytest.LogCaptureFixture) -> None:
    """add_listener() hears every middleware; a raising listener is logged, never fatal."""
    heard = Recorder()
    remove = metrics.add_listener(heard)

    def broken(event: str, **fields: Any) -> None:
        raise RuntimeError("statsd is down")

    remove_broken = metrics.add_listener(broken)
    try:
        d = make_dep("wsgi", "memory")
        r = d.post("/slow")
        assert r.status_code == 202
        d.finished(r.headers["location"])
        assert [e for e, _ in heard.wait(r.json()["id"])] == ["accepted", "completed"]
        assert "metrics listener" in caplog.text
    finally:
        remove()
        remove_broken()
    assert not metrics.remove_listener(heard)
    with pytest.raises(TypeError):
        metrics.add_listener("not callable")  # type: ignore[arg-type]


def test_idempotent_repeat_is_not_a_second_accept(make_dep: Any) -> None:
    """A replayed 202 (same Idempotency-Key) reports no new accepted event."""
    rec = Recorder()
    d = make_dep("asgi", "memory", on_event=rec)
    headers = {**ALICE, "Idempotency-Key": "m-1"}
    a = d.post("/slow", headers=headers).json()["id"]
    d.post("/slow", headers=headers)
    d.finished(d.post("/slow", headers=headers).headers["location"])
    assert [e for e, _ in rec.wait(a)] == ["accepted", "completed"]


def test_opentelemetry_metrics_listener() -> None:
    """OpenTelemetryListener turns events into counters and histograms."""
    reader = InMemoryMetricReader()
    listener = metrics.OpenTelemetryListener(MeterProvider(metric_readers=[reader]))
    listener("accepted", job_id="a", route="POST /x")
    listener("completed", job_id="a", route="POST /x", queue_wait=0.5, run_time=2.0)
    listener("failed", job_id="b", route="POST /x", queue_wait=None, run_time=None, reason="x")
    listener("something-else")
    data = reader.get_metrics_data()
    assert data is not None
    points: dict[str, list[Any]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                points[m.name] = list(m.data.data_points)
    assert [p.value for p in points["async_accept.jobs.accepted"]] == [1]
    finished = {
        p.attributes["async_accept.job.status"]: p.value
        for p in points["async_accept.jobs.finished"]
    }
    assert finished == {"completed": 1, "failed": 1}
    (wait,) = points["async_accept.job.queue_wait"]
    assert wait.count == 1 and wait.sum == 0.5


def test_prometheus_listener_needs_prometheus_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without prometheus-client, PrometheusListener names the package to install."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(MissingDependencyError, match="prometheus-client"):
        metrics.PrometheusListener()


def test_prometheus_listener_counts() -> None:
    """PrometheusListener keeps counters and histograms in the given registry."""
    prom = pytest.importorskip("prometheus_client")
    registry = prom.CollectorRegistry()
    listener = metrics.PrometheusListener(registry=registry)
    listener("accepted", job_id="a", route="POST /x")
    listener("failed", job_id="a", route="POST /x", queue_wait=1.0, run_time=2.0, reason="x")
    assert registry.get_sample_value("async_accept_jobs_accepted_total") == 1
    assert (
        registry.get_sample_value(
            "async_accept_jobs_finished_total", {"status": "failed", "reason": "x"}
        )
        == 1
    )


def test_bad_on_event_fails_at_construction() -> None:
    """on_event must be callable."""
    from async_accept.options import build_options

    with pytest.raises(ConfigurationError, match="on_event"):
        build_options(secret_key="k" * 32, on_event="prometheus")
