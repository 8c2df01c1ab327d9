"""Waiting for a change on the status URL (PROTOCOL.md 2): a long-poll with
``Prefer: wait=N``, and Server-Sent Events with ``Accept: text/event-stream``.

Both wait through one op, :class:`~.ops.WaitChange`, which the runtime answers
from its per-process change feed; nothing here polls the store.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import StoreError
from ..feed import change_id
from ..job import CapturedRequest, Job
from ..prefer import parse_prefer, parse_wait
from . import ops
from .ops import Gen
from .responses import NO_STORE, Response, json_body, not_found


class Status(Protocol):
    """What waiting needs of the engine (its base, ``status.Status``)."""

    status_wait_cap: float
    stream_limit: float | None
    clock: Callable[[], float]

    def apply_deadman(self, job: Job, now: float) -> Gen[Job]: ...

    def status_json(self, job: Job, root_path: str, token: str, now: float) -> dict[str, Any]: ...

    def status_response(
        self, job: Job, root_path: str, token: str, now: float, code: int | None = None
    ) -> Response: ...


#: how long a browser waits before reconnecting a dropped stream (ms)
SSE_RETRY_MS = 2000
#: a comment line this often keeps proxies from closing a quiet stream (s)
SSE_KEEPALIVE = 15.0

_EVENT_STREAM = (b"content-type", b"text/event-stream; charset=utf-8")


def wants_events(request: CapturedRequest) -> bool:
    """Whether the client asked for an event stream (``Accept: text/event-stream``)."""
    accept = request.header(b"accept")
    return accept is not None and b"text/event-stream" in accept.lower()


def asked_wait(engine: Status, request: CapturedRequest) -> tuple[float, bytes] | None:
    """The seconds a ``Prefer: wait=N`` status read may be held (capped), and the
    ``Preference-Applied`` value; None when the client didn't ask."""
    values = [v.decode("latin-1") for k, v in request.headers if k == b"prefer"]
    if not values:
        return None
    prefs: Mapping[str, str | None] = parse_prefer(values)
    if "wait" not in prefs:
        return None
    asked = parse_wait(prefs.get("wait"))
    if asked is None:
        return None
    wait = min(float(asked), engine.status_wait_cap)
    if wait < 1:
        return None
    return wait, f"wait={math.floor(wait)}".encode()


def fresh(engine: Status, job: Job) -> Gen[Job]:
    """``job`` after the deadman switch had its say (a wait may pass a deadline)."""
    if job.terminal:
        return job
    with contextlib.suppress(StoreError):
        job = yield from engine.apply_deadman(job, engine.clock())
    return job


def long_poll(
    engine: Status, request: CapturedRequest, token: str, job: Job, wait: float, applied: bytes
) -> Gen[tuple[Job, Response]]:
    """Answer as soon as the job changes, else after ``wait`` seconds: the job as the
    answer saw it (the changed record the feed handed over, outcome included), and
    the answer."""
    if not job.terminal:
        changed = yield from ops.wait_change(job, wait)
        if changed is None:
            return job, not_found()  # deleted meanwhile
        job = yield from fresh(engine, changed)
    response = engine.status_response(job, request.root_path, token, engine.clock())
    response.headers.append((b"preference-applied", applied))
    response.headers.append((b"vary", b"Prefer"))
    return job, response


@dataclass
class EventStream(Response):
    """An open event stream: the front door sends ``status`` and ``headers``, then
    drives :meth:`next_chunk` and sends each chunk until it yields None."""

    engine: Status | None = None
    job: Job | None = None
    token: str = ""
    root_path: str = ""
    #: the id of the last event the client has (``Last-Event-ID``, then ours)
    sent_id: str | None = None
    sent_status: str | None = None
    #: seconds the stream may stay open (None: until the job ends); WSGI caps it
    limit: float | None = None
    started: bool = field(default=False)
    done: bool = field(default=False)

    def next_chunk(self, wait: float = SSE_KEEPALIVE) -> Gen[bytes | None]:
        """The next bytes to send: the job's next change as an event, a keep-alive
        comment after ``wait`` quiet seconds, or None once the final event is out."""
        engine, job = self.engine, self.job
        if self.done or engine is None or job is None:
            return None
        prelude = b""
        if not self.started:
            self.started = True
            prelude = f"retry: {SSE_RETRY_MS}\n\n".encode()
        if change_id(job) == self.sent_id:
            changed = yield from ops.wait_change(job, wait)
            if changed is None:
                self.done = True
                return None  # deleted: the client's next read says 404
            job = self.job = yield from fresh(engine, changed)
            if change_id(job) == self.sent_id:
                return prelude + b": keep-alive\n\n"
        return prelude + self._event(engine, job)

    def _event(self, engine: Status, job: Job) -> bytes:
        eid = change_id(job)
        if job.terminal:
            name = "done"
            self.done = True
        elif job.status.value != self.sent_status:
            name = "status"
        else:
            name = "progress"
        self.sent_id, self.sent_status = eid, job.status.value
        data = engine.status_json(job, self.root_path, self.token, engine.clock())
        return f"event: {name}\nid: {eid}\ndata: ".encode() + json_body(data) + b"\n\n"


def open_stream(engine: Status, request: CapturedRequest, token: str, job: Job) -> Response:
    """The answer to ``Accept: text/event-stream``: a stream from the job's current
    state, or 204 when the client already has the final event (so that an
    ``EventSource`` stops reconnecting)."""
    last = request.header(b"last-event-id")
    last_id = last.decode("latin-1").strip() if last else None
    if job.terminal and last_id == change_id(job):
        return Response(204, [NO_STORE])
    return EventStream(
        200,
        [_EVENT_STREAM, NO_STORE, (b"x-accel-buffering", b"no")],
        b"",
        engine=engine,
        job=job,
        token=token,
        root_path=request.root_path,
        sent_id=last_id,
        limit=engine.stream_limit,
    )
