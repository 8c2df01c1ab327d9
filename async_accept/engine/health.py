"""``GET {prefix}/health`` (PROTOCOL.md section 10).

The answer, ``application/json``, never cached::

    {"status": "ok",                       # or "stalled" (then HTTP 503)
     "queue_depth": 3,                     # jobs queued now
     "jobs": {"queued": 3, "processing": 1, "completed": 40, "failed": 2, "canceled": 0},
     "oldest_queued_age": 4.2,             # seconds, null when the queue is empty
     "stall_after": 30.0,
     "workers": [{"id": "host:pid:ab12", "role": "web", "consumes": true, "alive": true,
                  "last_heartbeat": "2026-...Z", "age": 0.8, "pid": 4242, "host": "host",
                  "executor": "thread", "running": 1, "zombies": 0}],
     "zombies": {"count": 1,               # handlers still running past their deadline
                 "jobs": [{"id": "...", "route": "POST /reports", "worker": "host:pid:ab12",
                           "past_deadline": 12.5}]},
     "checked_at": "2026-...Z"}

Every process that accepts or runs jobs records a heartbeat in the store's
worker registry (``Store.worker_heartbeat``) every ``heartbeat_interval``. The
answer is ``503`` when queued work is not being consumed: the oldest queued
job waits longer than ``stall_after`` (option ``health_stall_after``, default
``max(3 x requeue_after, 30 s)``) and no process that consumes the queue is
alive: its heartbeat changed within ``worker_lost_after`` by the answering
process's own monotonic clock, once it has watched that long (``beats.py``; a
worker's ``age`` is the registry's wall-clock age, shown as a figure). A queue
that is long while its consumers are alive is busy, not broken: that stays
``200`` (alert on ``oldest_queued_age`` for capacity).

``zombies`` lists, over the live processes, the jobs whose handler still runs
past its deadline (the job ended ``deadline-exceeded``; the handler, which
Python can't interrupt, keeps its executor slot until it returns): each with
its route, the process and how many seconds past the deadline it is. It does
not change ``status``: alert on ``zombies.count`` (slots lost), and see the
``max_zombies`` option, which recycles a process at that many. ``null`` when
the store keeps no worker registry.

Exposure (option ``health``): ``"off"`` answers the same ``404`` as an unknown
job; ``"on"`` answers anyone; ``"auth"`` (the default) wants
``Authorization: Bearer <health_token>`` and stays off until a
``health_token`` is configured; a callable ``check(headers) -> bool`` decides
itself (for example with the app's own identity function), ``403`` when it
says no.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import StoreError
from ..job import CapturedRequest, JobStatus
from ..options import Options
from . import ops
from .beats import BeatWatch
from .ops import Gen
from .responses import (
    Response,
    headers_dict,
    json_body,
    method_not_allowed,
    not_found,
    problem_response,
    rfc3339,
    unavailable,
)

__all__ = ["health_report", "serve_health", "stall_after"]


class Engine(Protocol):
    """What the health answer needs of the engine (its options, its clock and its
    watch over the worker registry)."""

    options: Options
    clock: Callable[[], float]
    beats: BeatWatch


def stall_after(engine: Engine) -> float:
    """Seconds the oldest queued job may wait before the queue counts as stalled."""
    opts = engine.options
    if opts.health_stall_after is not None:
        return opts.health_stall_after
    return max(opts.requeue_after * 3.0, 30.0)


def _authorized(engine: Engine, request: CapturedRequest) -> Response | None:
    """None when the caller may read the health answer, else the answer to give."""
    mode = engine.options.health
    if mode == "on":
        return None
    if mode == "off":
        return not_found()
    if mode == "auth":
        token = engine.options.health_token
        if not token:
            return not_found()  # "auth" without a token: off until one is configured
        raw = request.header(b"authorization") or b""
        scheme, _, given = raw.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(
            given.strip(), token.encode("utf-8")
        ):
            return None
        return problem_response(
            401,
            "unauthorized",
            "Unauthorized",
            "The health endpoint wants Authorization: Bearer <health_token>.",
            headers=[(b"www-authenticate", b'Bearer realm="async_accept health"')],
        )
    try:
        allowed = bool(mode(headers_dict(request)))
    except Exception:
        allowed = False
    if allowed:
        return None
    return problem_response(403, "forbidden", "Forbidden", "You may not read the health status.")


def health_report(
    engine: Engine,
    counts: dict[JobStatus, int],
    oldest_created_at: float | None,
    workers: list[dict[str, Any]] | None,
    now: float,
) -> dict[str, Any]:
    """The health JSON from what the store said."""
    limit = stall_after(engine)
    listed: list[dict[str, Any]] = []
    zombies: list[dict[str, Any]] = []
    consuming = False
    verdicts = engine.beats.alive(workers or [], now)
    for w in workers or []:
        last = float(w.get("last_heartbeat", 0.0))
        age = max(0.0, now - last)
        alive = verdicts[str(w.get("id"))]
        entry = {k: v for k, v in w.items() if k != "last_heartbeat"}
        undead = w.get("zombies") or []
        entry.update(
            last_heartbeat=rfc3339(last), age=round(age, 3), alive=alive, zombies=len(undead)
        )
        listed.append(entry)
        if alive:  # a dead process's handlers died with it
            zombies.extend(_zombie(z, w.get("id"), now) for z in undead)
        if alive and w.get("consumes", True):
            consuming = True
    oldest_age = None if oldest_created_at is None else max(0.0, now - oldest_created_at)
    stalled = oldest_age is not None and oldest_age > limit and not consuming
    return {
        "status": "stalled" if stalled else "ok",
        "queue_depth": counts.get(JobStatus.QUEUED, 0),
        "jobs": {s.value: int(counts.get(s, 0)) for s in JobStatus},
        "oldest_queued_age": None if oldest_age is None else round(oldest_age, 3),
        "stall_after": limit,
        "workers": listed if workers is not None else None,
        "zombies": {"count": len(zombies), "jobs": zombies} if workers is not None else None,
        "checked_at": rfc3339(now),
    }


def _zombie(z: dict[str, Any], worker: Any, now: float) -> dict[str, Any]:
    """One zombie as a process recorded it, with how late it is now."""
    deadline_at = float(z.get("deadline_at", now))
    return {
        "id": z.get("id"),
        "route": z.get("route"),
        "worker": worker,
        "past_deadline": round(max(0.0, now - deadline_at), 3),
    }


def serve_health(engine: Engine, request: CapturedRequest) -> Gen[Response]:
    """Answer ``GET {prefix}/health``."""
    refused = _authorized(engine, request)
    if refused is not None:
        return refused
    if request.method not in ("GET", "HEAD"):
        return method_not_allowed(b"GET, HEAD")
    now = engine.clock()
    try:
        counts = yield from ops.count_by_status()
        oldest = yield from ops.list_jobs(JobStatus.QUEUED, 1, None)
    except StoreError:
        return unavailable(
            "store-unavailable",
            "The job store is unavailable.",
            max(1, round(engine.options.poll_interval * 5)),
        )
    workers: list[dict[str, Any]] | None
    try:
        workers = yield from ops.list_workers(now)
    except (StoreError, AttributeError):  # a store without a worker registry
        workers = None
    report = health_report(engine, counts, oldest[0].created_at if oldest else None, workers, now)
    code = 503 if report["status"] == "stalled" else 200
    headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
    if code == 503:
        headers.append(
            (b"retry-after", str(max(1, round(engine.options.poll_interval * 5))).encode())
        )
    return Response(code, headers, json_body(report))
