"""What the dashboard shows, read from the store through the engine's typed ops.

Everything comes from the store protocol as every backend implements it
(``count_by_status``, ``list_jobs``, ``list_workers``) and, when webhooks are
on, the outbox's dead letters. Per-route figures and the last hour's chart are
computed from the newest finished jobs the store holds (up to ``SAMPLE`` of each
terminal state), so they cost one bounded read per state rather than a second
bookkeeping path on every job.

Nothing of a captured request is read here: no headers, body or query string
ever reaches the page. A job's ``route`` is its method and path; with the app's
marked routes given (``Marked``), each job counts under the pattern it matches
(``POST /reports/{id}``) and each route's sla is the one configured now, so a
route shows even before its first job.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from ..engine import ops
from ..engine.ops import Gen, StoreCall
from ..errors import StoreError
from ..job import Job, JobStatus

#: Finished jobs of each state read for the per-route figures and the chart.
SAMPLE = 2000
#: Rows shown in the queued, running and failure tables.
ROWS = 50
#: The chart: one bar per BUCKET seconds over the last WINDOW seconds.
WINDOW = 3600.0
BUCKET = 300.0


class DeadLetters(Protocol):
    """The webhook dispatcher's dead-letter face (``WebhookDispatcher``)."""

    def list_dead(self, limit: int = 100) -> list[Any]: ...
    def replay(self, delivery_id: str, now: float | None = None) -> Any: ...


@dataclass(frozen=True, slots=True)
class RouteStats:
    """Run-time figures of one route (``METHOD /path``) over the finished jobs held."""

    route: str
    active: int
    completed: int
    failed: int
    p50: float | None
    p95: float | None
    p99: float | None
    sla: float | None

    @property
    def finished(self) -> int:
        return self.completed + self.failed

    @property
    def failure_rate(self) -> float | None:
        return None if not self.finished else self.failed / self.finished

    @property
    def p99_of_sla(self) -> float | None:
        """p99 as a fraction of the route's sla (1.0: at the sla; 2.0: the deadman line)."""
        if self.p99 is None or not self.sla:
            return None
        return self.p99 / self.sla


class Pattern(Protocol):
    """A marked route as the route table holds it (``routes.RoutePattern``)."""

    @property
    def spec(self) -> str: ...
    @property
    def regex(self) -> Any: ...
    @property
    def methods(self) -> frozenset[str] | None: ...
    @property
    def options(self) -> Any: ...
    def matches(self, method: str, path: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class Marked:
    """The app's marked routes now, and the sla of a route that sets none."""

    patterns: Sequence[Pattern]
    default_sla: float

    def ordered(self) -> list[Pattern]:
        """As the route table looks them up: exact paths before templates, a route
        with methods before one for any method, else in the order marked."""
        return sorted(self.patterns, key=lambda p: (p.regex is not None, p.methods is None))

    def sla_of(self, pattern: Pattern | None) -> float:
        sla = None if pattern is None else pattern.options.sla
        return float(self.default_sla if sla is None else sla)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A webhook that kept failing, as the page shows it (URL without credentials
    or query)."""

    id: str
    target: str
    job_id: str | None
    attempts: int
    last: str
    created_at: float


@dataclass(slots=True)
class Snapshot:
    now: float
    counts: dict[JobStatus, int]
    oldest_queued_age: float | None
    queued: list[Job]
    running: list[Job]
    failures: list[Job]
    routes: list[RouteStats]
    #: (start, completed, failed) per bucket, oldest first
    buckets: list[tuple[float, int, int]]
    workers: list[dict[str, Any]] | None
    dead: list[DeadLetter] | None
    worker_lost_after: float
    eta: dict[str, float | None] = field(default_factory=dict)
    #: worker id -> alive, as this process's watch over the registry judged it
    alive: dict[str, bool] = field(default_factory=dict)


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def route_stats(
    active: list[Job], finished: list[Job], marked: Marked | None = None
) -> list[RouteStats]:
    """Per-route counts, run-time percentiles, failure rate and sla, busiest first.

    Without ``marked`` a route is a job's ``METHOD /path`` and its sla the one its
    newest job recorded; with it, jobs count under the pattern they match and the
    sla is the route's now (every marked route is listed, jobs or not)."""
    by_route: dict[str, dict[str, Any]] = {}
    patterns = marked.ordered() if marked is not None else []
    key_of: dict[str, tuple[str, float | None]] = {}

    def new(sla: float | None) -> dict[str, Any]:
        return {"active": 0, "completed": 0, "failed": 0, "times": [], "sla": sla, "at": -1.0}

    def entry(job: Job) -> dict[str, Any]:
        route = job.route or "(unknown)"
        if marked is None:
            e = by_route.setdefault(route, new(None))
            if job.created_at > e["at"]:
                e["sla"], e["at"] = job.sla, job.created_at
            return e
        if route not in key_of:
            method, _, path = route.partition(" ")
            hit = next((p for p in patterns if p.matches(method, path)), None)
            key_of[route] = (route if hit is None else hit.spec, marked.sla_of(hit))
        key, sla = key_of[route]
        return by_route.setdefault(key, new(sla))

    for p in patterns:
        by_route.setdefault(p.spec, new(marked.sla_of(p) if marked is not None else None))
    for job in active:
        entry(job)["active"] += 1
    for job in finished:
        e = entry(job)
        e["completed" if job.status is JobStatus.COMPLETED else "failed"] += 1
        if job.started_at is not None and job.finished_at is not None:
            e["times"].append(max(0.0, job.finished_at - job.started_at))
    out = []
    for route, e in by_route.items():
        times = sorted(e["times"])
        out.append(
            RouteStats(
                route=route,
                active=e["active"],
                completed=e["completed"],
                failed=e["failed"],
                p50=percentile(times, 0.50),
                p95=percentile(times, 0.95),
                p99=percentile(times, 0.99),
                sla=e["sla"],
            )
        )
    out.sort(key=lambda r: (-(r.active + r.finished), r.route))
    return out


def hour_buckets(finished: list[Job], now: float) -> list[tuple[float, int, int]]:
    """Completed and failed jobs per BUCKET over the last WINDOW, oldest first."""
    n = int(WINDOW // BUCKET)
    start = now - n * BUCKET
    done = [0] * n
    failed = [0] * n
    for job in finished:
        at = job.finished_at
        if at is None or at <= start or at > now:
            continue
        i = min(n - 1, int((at - start) // BUCKET))
        if job.status is JobStatus.COMPLETED:
            done[i] += 1
        else:
            failed[i] += 1
    return [(start + i * BUCKET, done[i], failed[i]) for i in range(n)]


def safe_target(url: str) -> str:
    """A webhook URL without user info, query or fragment (they may hold secrets)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparsable URL)"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def dead_letter(d: Any) -> DeadLetter:
    last = d.last_status if d.last_status is not None else (d.last_error or "")
    return DeadLetter(
        id=str(d.id),
        target=safe_target(str(d.url)),
        job_id=d.job_id,
        attempts=int(d.attempts),
        last=str(last),
        created_at=float(d.created_at),
    )


def _blocking(fn: Callable[[], Any]) -> Gen[Any]:
    """A blocking call outside the store (the outbox): in a thread when awaited."""

    async def in_thread(_store: Any) -> Any:
        return await asyncio.to_thread(fn)

    call: StoreCall[Any] = StoreCall(lambda _s: fn(), in_thread)
    yield call
    return call.result


def list_dead(dead: DeadLetters, limit: int) -> Gen[list[Any]]:
    result: list[Any] = yield from _blocking(lambda: dead.list_dead(limit))
    return result


def replay_dead(dead: DeadLetters, delivery_id: str, now: float) -> Gen[Any]:
    return (yield from _blocking(lambda: dead.replay(delivery_id, now)))


def snapshot(
    now: float,
    worker_lost_after: float,
    dead: DeadLetters | None,
    remaining: Callable[[Job, float], float | None],
    marked: Marked | None = None,
) -> Gen[Snapshot]:
    """Read everything the page shows (raises StoreError when the store is down)."""
    counts = yield from ops.count_by_status()
    queued = yield from ops.list_jobs(JobStatus.QUEUED, SAMPLE, None)
    running = yield from ops.list_jobs(JobStatus.PROCESSING, SAMPLE, None)
    # The newest finished jobs: the last hour's chart and the recent figures.
    completed = yield from ops.list_jobs(JobStatus.COMPLETED, SAMPLE, None, newest=True)
    failed = yield from ops.list_jobs(JobStatus.FAILED, SAMPLE, None, newest=True)
    workers: list[dict[str, Any]] | None
    try:
        workers = yield from ops.list_workers(now)
    except (StoreError, AttributeError):  # a store without a worker registry
        workers = None
    letters: list[DeadLetter] | None = None
    if dead is not None:
        try:
            letters = [dead_letter(d) for d in (yield from list_dead(dead, ROWS))]
        except Exception:  # the outbox is down: the rest of the page still helps
            letters = None
    finished = completed + failed
    failures = sorted(failed, key=lambda j: j.finished_at or j.updated_at, reverse=True)
    return Snapshot(
        now=now,
        counts=counts,
        oldest_queued_age=max(0.0, now - queued[0].created_at) if queued else None,
        queued=queued[:ROWS],
        running=running[:ROWS],
        failures=failures[:ROWS],
        routes=route_stats(queued + running, finished, marked),
        buckets=hour_buckets(finished, now),
        workers=workers,
        dead=letters,
        worker_lost_after=worker_lost_after,
        eta={j.id: remaining(j, now) for j in running[:ROWS]},
    )
