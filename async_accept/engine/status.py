"""Status URLs: what a job looks like to its client, and the answers served
below the prefix (status, result, cancel; health in health.py). The deadman
switch lives here too: every status read applies it."""

from __future__ import annotations

import contextlib
import logging
import marshal
import math
import time
from collections.abc import Callable
from typing import Any

from werkzeug.http import parse_date, parse_etags, unquote_etag

from ..cookie_rules import CookieReader
from ..errors import ExecutorError, StoreError
from ..identity import (
    DEFAULT_IDENTITY_HEADERS,
    NOBODY,
    Identity,
    check_identity_result,
    encode_parts,
    owner_cookie_material,
    read_identity,
)
from ..job import ACTIVE, CapturedRequest, Headers, Job, JobStatus
from ..options import Options
from ..sealing import RequestSealer
from ..timings import RunTime, RunTimes
from ..tokens import TokenError, TokenExpired, TokenSigner
from ..tracing import Tracing
from . import ops, waiting
from .beats import BeatWatch
from .health import serve_health
from .listing import serve_list
from .liveness import Liveness
from .ops import Gen
from .responses import (
    JSON,
    NO_STORE,
    Response,
    deadline_error,
    headers_dict,
    json_body,
    method_not_allowed,
    not_found,
    problem_dict,
    problem_response,
    rebase_problem_type,
    rfc3339,
    unavailable,
    worker_lost_error,
)

#: a plain status read that lands this many seconds (or fewer) before a job's
#: learned end is held until the job changes: ``Retry-After`` counts whole
#: seconds, so the poll it schedules lands up to one second early
LEARNED_END_HOLD = 1.0
#: how long past the learned end such a read is still held (the end's write)
LEARNED_END_GRACE = 0.5

log = logging.getLogger("async_accept")


#: what a 304 carries of the response it stands for (RFC 9110 section 15.4.5)
_NOT_MODIFIED_KEEPS = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary", b"last-modified"}
)


def not_modified(request: CapturedRequest, status: int, headers: Headers) -> bool:
    """Whether a GET/HEAD of the stored ``200`` response with these validators
    answers ``304``: ``If-None-Match`` against its ``ETag`` (weak comparison),
    else ``If-Modified-Since`` against its ``Last-Modified`` (RFC 9110 section 13)."""
    if status != 200 or request.method not in ("GET", "HEAD"):
        return False
    asked = headers_dict(request)
    stored = {k: v.decode("latin-1") for k, v in headers}
    inm = asked.get("if-none-match")
    if inm is not None:
        etag = stored.get(b"etag")
        if etag is None:
            return False
        tag, _weak = unquote_etag(etag)
        return tag is not None and parse_etags(inm).contains_weak(tag)
    ims = parse_date(asked.get("if-modified-since"))
    last = parse_date(stored.get(b"last-modified"))
    return ims is not None and last is not None and last <= ims


def _same_origin_path(location: str | None) -> bool:
    """A Location that is a path on this origin (``/posts``), not another site's URL."""
    return location is not None and location.startswith("/") and not location.startswith("//")


_STATUSES = {s.value: s for s in JobStatus}


class _Decoy:
    """What an unknown job id is read as, so it costs what a job found costs.

    A store that finds a job turns its record into a :class:`Job` (fields,
    status, meta); a store that finds nothing returns at once. On an unknown
    id the engine does that same rebuilding on a copy of the first job it
    read, so "a signed, unknown id" and "another caller's job" take the same
    work as well as the same path and answer (``benchmarks/owner_timing.py``).
    """

    __slots__ = ("meta", "names", "status", "values")

    def __init__(self, job: Job) -> None:
        fields = dict(job.__dict__)
        self.names = tuple(fields)
        self.values = tuple(fields.values())
        self.status = JobStatus(job.status).value
        self.meta = marshal.dumps(job.meta)

    def read(self) -> Job:
        d = dict(zip(self.names, self.values, strict=True))
        d["status"] = _STATUSES[self.status]
        d["meta"] = marshal.loads(self.meta)
        job: Job = object.__new__(Job)
        job.__dict__ = d
        return job


_TEMPLATE_DECOY = _Decoy(
    Job(
        id="0" * 22,
        status=JobStatus.QUEUED,
        owner=NOBODY,
        created_at=0.0,
        updated_at=0.0,
        expires_at=0.0,
        deadline_at=0.0,
        sla=0.0,
    )
)


def may_retry(job: Job) -> bool:
    """Whether ``job``'s route allows it another run (``retries`` in its meta)."""
    retries = job.meta.get("retries", 0)
    return isinstance(retries, int) and max(1, job.attempts) <= retries


class Status:
    """The engine's base: identity, status URLs and their JSON, the deadman
    switch, and the answers below the prefix (status, result, cancel, health)."""

    #: Answers below ``{prefix}/dashboard``; set by the front door when the dashboard
    #: is on (the dashboard package sits above the engine, which never imports it).
    dashboard: Callable[[CapturedRequest], Gen[Response]] | None = None
    #: which value of a repeated cookie the app's framework reads (cookie_rules.py);
    #: set by the middleware for the framework it wraps; None: every value counts
    cookie_reader: CookieReader | None = None

    def __init__(self, options: Options, clock: Callable[[], float] = time.time) -> None:
        self.options = options
        self.signer = TokenSigner(options.secrets, options.ttl, lambda: self.clock())
        self.clock = clock
        self.tracing = Tracing(options.tracer_provider)
        defaults = [h.encode("latin-1") for h in DEFAULT_IDENTITY_HEADERS]
        self._identity_headers = tuple(dict.fromkeys([*defaults, *options.identity_headers]))
        self._session_cookies = tuple(c.encode("utf-8") for c in options.session_cookies)
        self.sealer = RequestSealer(options.secrets, self._identity_headers)
        #: what an unknown job id is read as (the first job found; see _Decoy)
        self._decoy = _TEMPLATE_DECOY
        #: (method, route) pairs already warned about anonymous jobs
        self._anonymous_warned: set[tuple[str, int]] = set()
        #: routes whose retries were checked against the lost-worker window
        self._retry_window_checked: set[int] = set()
        #: each route's learned run time (the runtime puts the store-backed one here)
        self.run_times = RunTimes(None)
        #: the longest a status read may be held (``Prefer: wait``); WSGI lowers it
        self.status_wait_cap = options.max_wait
        #: how long an event stream may stay open (None: until the job ends); WSGI caps it
        self.stream_limit: float | None = None
        #: this process's watch over running jobs' leases (worker-lost, liveness.py);
        #: the sweeper's own beats tell it when the store is writable
        self.liveness = Liveness(options.worker_lost_after, options.heartbeat_interval)
        #: this process's watch over the worker registry's beats (health, dashboard)
        self.beats = BeatWatch(options.worker_lost_after)

    # -- identity ---------------------------------------------------------------

    def identify(self, request: CapturedRequest) -> Identity:
        """Who is calling (see identity.py); never raises on malformed headers."""
        opts = self.options
        if opts.identity is not None:
            try:
                returned = opts.identity(headers_dict(request))
            except Exception:  # a token that doesn't decode: no identity, never a 500
                log.debug(
                    "async_accept: identity() raised; the caller has no identity", exc_info=True
                )
                returned = None
            given = check_identity_result(returned)
            material = encode_parts([(b"identity", given)]) if given else b""
            return Identity(material, principal=True, session_only=False, cookie=None)
        return read_identity(
            request.headers,
            request.principal,
            self._identity_headers,
            self._session_cookies,
            self.cookie_reader,
        )

    def identity_material(self, request: CapturedRequest) -> bytes:
        """The credentials the job is bound to (hashed before storage)."""
        return self.identify(request).material

    def owns(self, job: Job | None, who: Identity) -> bool:
        """Whether ``who`` owns ``job``: the same work (and time) for no job at all."""
        alt = owner_cookie_material(who.cookie) if who.cookie else None
        return self.signer.owner_matches(
            job.owner if job is not None else NOBODY, who.material, alt
        ) and (job is not None)

    # -- URLs -----------------------------------------------------------------------

    def status_url(self, root_path: str, token: str) -> str:
        return f"{root_path}{self.options.prefix}/{token}"

    def token_for(self, job: Job) -> str:
        return self.signer.sign(job.id, job.created_at)

    # -- status JSON ----------------------------------------------------------------

    def remaining(self, job: Job, now: float) -> float | None:
        """Seconds left, from the reported eta or the progress rate; None if unknown."""
        if job.status is not JobStatus.PROCESSING:
            return None
        if job.eta is not None:
            # A read can start just before the progress it returns was written.
            since = max(0.0, now - (job.progress_at or now))
            return max(0.0, job.eta - since)
        if job.percent and job.percent > 0 and job.started_at is not None:
            elapsed = max(0.0, (job.progress_at or now) - job.started_at)
            total = elapsed * 100.0 / job.percent
            return max(0.0, total - (now - job.started_at))
        return self.learned_remaining(job, now)

    def _learned_from(self, job: Job, now: float) -> tuple[RunTime, float] | None:
        """The route's learned run time and when the job's run counts from (its
        start; now for a queued job); None when nothing is learned or it ended."""
        learned = self.run_times.get(job.route)
        if learned is None:
            return None
        if job.status is JobStatus.QUEUED:
            return learned, now
        if job.status is not JobStatus.PROCESSING or job.started_at is None:
            return None
        return learned, job.started_at

    def learned_remaining(self, job: Job, now: float) -> float | None:
        """Seconds left by the route's learned run time: to its mean, or for a job
        past that, to its 90th percentile; None when nothing is learned or both passed."""
        found = self._learned_from(job, now)
        if found is None:
            return None
        learned, start = found
        if job.status is JobStatus.QUEUED:
            return learned.mean
        for total in (learned.mean, learned.high):
            left = start + total - now
            if left > 0:
                return left
        return None

    def learned_end_left(self, job: Job, now: float) -> float | None:
        """Seconds until the job ends by its route's learned high percentile (from
        its start; a queued job's whole run); None when nothing is learned."""
        found = self._learned_from(job, now)
        if found is None:
            return None
        learned, start = found
        return start + learned.high - now

    @staticmethod
    def progress_known(job: Job) -> bool:
        """Whether the handler reported an eta or a percentage to go by."""
        return job.status is JobStatus.PROCESSING and (
            job.eta is not None or bool(job.percent and job.percent > 0)
        )

    def hold_near_end(self, job: Job, now: float) -> float | None:
        """How long a plain status read of ``job`` is held for its end: when the
        learned end is at most ``LEARNED_END_HOLD`` s away (where the floored
        ``Retry-After`` lands a poll), until then plus a grace; else None."""
        if job.status is not JobStatus.PROCESSING or self.progress_known(job):
            return None
        left = self.learned_end_left(job, now)
        if left is None or left <= 0 or left > min(LEARNED_END_HOLD, self.status_wait_cap):
            return None
        return left + LEARNED_END_GRACE

    def retry_after(self, job: Job, now: float) -> int:
        """Integer seconds >= 1: from progress, else the learned run time, else
        a share of the sla, else the poll interval."""
        opts = self.options
        rem: float | None = None
        if self.progress_known(job):
            rem = self.remaining(job, now)
        elif self.run_times.get(job.route) is not None:
            left = self.learned_end_left(job, now)
            if left is not None and left > 0:
                # Whole seconds: the floor lands the poll within one second
                # before the learned end, where the read is held until the job
                # changes (hold_near_end); a ceiling would land up to a second
                # after it.
                rem = float(max(1, math.floor(left)))
            else:
                rem = opts.poll_interval  # overran what was learned: look again soon
        if rem is None:
            expected_end = (job.started_at or job.created_at) + job.sla
            rem = expected_end - now if expected_end > now else None
            if rem is not None:
                # Poll a few times over the expected duration, not once at its end.
                rem = min(rem, max(opts.poll_interval, job.sla / 4))
        if rem is None:
            rem = opts.poll_interval
        # Never past the deadman's deadline: by then the job has an answer.
        rem = min(rem, max(0.0, job.deadline_at - now))
        return max(1, min(math.ceil(rem), math.ceil(opts.max_retry_after)))

    def retry_later(self) -> int:
        """Retry-After of a 503: a few poll intervals, whole seconds."""
        return max(1, math.ceil(self.options.poll_interval * 5))

    def status_json(self, job: Job, root_path: str, token: str, now: float) -> dict[str, Any]:
        url = self.status_url(root_path, token)
        links: dict[str, str] = {"self": url}
        if job.status is JobStatus.COMPLETED:
            links["result"] = job.result_location or url + "/result"
        elif job.result_status is not None:
            links["result"] = url + "/result"
        rem = self.remaining(job, now)
        data: dict[str, Any] = {
            "id": job.id,
            "status": job.status.value,
            "created_at": rfc3339(job.created_at),
            "updated_at": rfc3339(job.updated_at),
            "started_at": rfc3339(job.started_at),
            "finished_at": rfc3339(job.finished_at),
            "expires_at": rfc3339(job.expires_at),
            "percent_complete": job.percent,
            "message": job.message,
            "estimated_time_remaining": None if rem is None else round(rem, 3),
            "result_status": job.result_status,
            "attempt": max(1, job.attempts),
            "links": links,
        }
        if job.cancel_requested and not job.terminal:
            data["cancel_requested"] = True
        if job.status is JobStatus.FAILED:
            data["error"] = rebase_problem_type(
                job.error or problem_dict(500, "job-failed", "Job failed", "The job failed."),
                self.options.problem_base,
            )
        return data

    def status_response(
        self, job: Job, root_path: str, token: str, now: float, code: int | None = None
    ) -> Response:
        body = self.status_json(job, root_path, token, now)
        headers: Headers = [JSON, NO_STORE]
        if job.status is JobStatus.COMPLETED and code is None:
            code = 303
            headers.append((b"location", str(body["links"]["result"]).encode("latin-1")))
        elif job.status in ACTIVE:
            headers.append((b"retry-after", str(self.retry_after(job, now)).encode()))
            if code is None:
                code = self.options.status_code_running
                if code == 202:
                    headers.append((b"location", body["links"]["self"].encode("latin-1")))
        return Response(code or 200, headers, json_body(body))

    # -- the deadman switch ------------------------------------------------------------

    def verdict(self, job: Job, now: float) -> tuple[frozenset[JobStatus], dict[str, Any]] | None:
        """Whether the deadman switch must fail ``job`` now, and from which states.

        The deadline is the client's promise, a wall-clock time read on this
        process's clock. A worker is lost when this process watched its lease stay
        unchanged for ``worker_lost_after`` seconds of writable time (liveness.py):
        no clock of another process is compared with ours."""
        if job.terminal:
            return None
        if now >= job.deadline_at:
            return ACTIVE, deadline_error(job)
        if self.liveness.lost(job):
            return frozenset({JobStatus.PROCESSING}), worker_lost_error()
        return None

    def deadman_end(
        self, job: Job, now: float, verdict: tuple[frozenset[JobStatus], dict[str, Any]]
    ) -> Gen[Job | None]:
        """End ``job`` as the deadman switch says: a job whose worker was lost on a
        route that allows retries is requeued (and handed to the executor) while
        attempts remain; else it fails. None when another process got there first,
        or, for a lost worker, when its lease changed after it was read (a heartbeat
        that landed late: the job lives on)."""
        expected, error = verdict
        lost = str(error.get("type", "")).endswith("worker-lost")
        lease = job.heartbeat_at if lost else None
        if lost and job.status is JobStatus.PROCESSING and job.worker_id and may_retry(job):
            again = yield from ops.requeue(job.id, job.worker_id, now, durable=False, lease=lease)
            if again is not None:
                self.liveness.forget(job.id)
                if again.status is JobStatus.QUEUED:
                    with contextlib.suppress(ExecutorError):
                        yield from ops.submit(job.id)
                return again
            if lease is not None:
                return None  # still ours to judge next time, if it is still the same
        ended = yield from ops.fail(job.id, expected, now, error, lease=lease)
        if ended is not None:
            self.liveness.forget(job.id)
        return ended

    def apply_deadman(self, job: Job, now: float) -> Gen[Job]:
        v = self.verdict(job, now)
        if v is None:
            return job
        failed = yield from self.deadman_end(job, now, v)
        if failed is not None:
            return failed
        fresh = yield from ops.get(job.id, now)
        return fresh if fresh is not None else job

    # -- the status URL and friends ------------------------------------------------------

    def serve(self, request: CapturedRequest, subpath: str) -> Gen[Response]:
        """Answer a request below the prefix (``subpath`` starts with '/' or is '')."""
        parts = subpath.split("/")[1:] if subpath else []
        method = request.method
        if parts == ["health"]:  # no token is "health" or "dashboard": tokens hold dots
            return (yield from serve_health(self, request))
        if parts == [""]:  # "{prefix}/" (the bare prefix stays a 404)
            return (yield from serve_list(self, request))
        if parts and parts[0] == "dashboard":
            if self.dashboard is None:
                return not_found()
            return (yield from self.dashboard(request))
        if len(parts) == 1 and parts[0]:
            if method in ("GET", "HEAD"):
                return (yield from self._status(request, parts[0]))
            if method == "DELETE":
                return (yield from self._cancel(request, parts[0]))
            return method_not_allowed(b"GET, HEAD, DELETE")
        if len(parts) == 2 and parts[0]:
            if parts[1] == "result":
                if method in ("GET", "HEAD"):
                    return (yield from self._result(request, parts[0]))
                return method_not_allowed(b"GET, HEAD")
            if parts[1] == "cancel":
                if method == "POST":
                    return (yield from self._cancel(request, parts[0]))
                return method_not_allowed(b"POST")
        return not_found()

    def _authorized_job(
        self, request: CapturedRequest, token: str, now: float
    ) -> Gen[Job | Response]:
        try:
            job_id = self.signer.unsign(token)
        except TokenExpired:
            return problem_response(
                410, "job-expired", "Gone", "This job's status URL has expired."
            )
        except TokenError:
            return not_found()
        try:
            job = yield from ops.get(job_id, now)
        except StoreError:
            return unavailable(
                "store-unavailable",
                "The job store is unavailable; retry later.",
                self.retry_later(),
            )
        # An unknown id and another caller's job take the same path: one store
        # read, a job rebuilt (the decoy's for an unknown id), the same HMAC
        # work, one constant-time compare, the same 404.
        if job is None:
            self._decoy.read()
        elif self._decoy is _TEMPLATE_DECOY:
            self._decoy = _Decoy(job)  # once: a job of this app's shape
        if not self.owns(job, self.identify(request)):
            return not_found()
        assert job is not None
        if not job.terminal:
            with contextlib.suppress(StoreError):
                job = yield from self.apply_deadman(job, now)
        return job

    def _status(self, request: CapturedRequest, token: str) -> Gen[Response]:
        now = self.clock()
        job = yield from self._authorized_job(request, token, now)
        if isinstance(job, Response):
            return job
        if request.method == "GET" and waiting.wants_events(request):
            return waiting.open_stream(self, request, token, job)
        asked = waiting.asked_wait(self, request)
        if asked is not None:
            job, response = yield from waiting.long_poll(self, request, token, job, *asked)
        else:
            hold = self.hold_near_end(job, now) if request.method == "GET" else None
            if hold is not None:
                # The poll a learned Retry-After scheduled: answer at the job's end.
                changed = yield from ops.wait_change(job, hold)
                if changed is None:
                    return not_found()  # deleted meanwhile
                job = yield from waiting.fresh(self, changed)
                now = self.clock()
            response = self.status_response(job, request.root_path, token, now)
        if response.status == 303 and _same_origin_path(job.result_location):
            # The 303 leads to the handler's own Location: it carries the handler's
            # cookies too (a flash-and-redirect flow), as the handler's 3xx would have.
            result = yield from ops.get_result(job.id)
            if result is not None:
                response.headers.extend((k, v) for k, v in result.headers if k == b"set-cookie")
        return response

    def _result(self, request: CapturedRequest, token: str) -> Gen[Response]:
        now = self.clock()
        job = yield from self._authorized_job(request, token, now)
        if isinstance(job, Response):
            return job
        if not job.terminal:
            return problem_response(
                409,
                "job-not-finished",
                "Job not finished",
                f"The job is {job.status.value}; poll its status URL.",
                retry_after=self.retry_after(job, now),
                headers=[(b"location", self.status_url(request.root_path, token).encode())],
            )
        if job.result_status is None:
            return problem_response(
                409,
                "no-result",
                "No result",
                f"The job is {job.status.value} and produced no response.",
            )
        result = yield from ops.get_result(job.id)
        if result is None:
            return problem_response(
                409, "no-result", "No result", "The job's stored response is gone."
            )
        # The result is one caller's: no shared cache may keep it, whatever the handler said.
        headers = [(k, v) for k, v in result.headers if k.lower() != b"cache-control"]
        headers.append(NO_STORE)
        if not_modified(request, result.status, result.headers):
            return Response(304, [(k, v) for k, v in headers if k in _NOT_MODIFIED_KEEPS], b"")
        return Response(result.status, headers, result.body)

    def _cancel(self, request: CapturedRequest, token: str) -> Gen[Response]:
        now = self.clock()
        job = yield from self._authorized_job(request, token, now)
        if isinstance(job, Response):
            return job
        if job.terminal:
            if request.method == "DELETE":
                # An ended job is deleted, its record and result (RFC 9110 section 9.3.5);
                # POST .../cancel, which only cancels, stays a conflict.
                yield from ops.delete(job.id)
                return Response(204, [NO_STORE], b"")
            return problem_response(
                409,
                "job-finished",
                "Job already finished",
                f"The job is {job.status.value} and can no longer be canceled.",
            )
        after, _changed = yield from ops.cancel(job.id, now)
        if after is None:
            return not_found()
        if after.status is JobStatus.PROCESSING:
            yield from ops.cancel_local(after.id)
            return self.status_response(after, request.root_path, token, now, code=202)
        if after.status is JobStatus.CANCELED and job.status is JobStatus.QUEUED:
            return self.status_response(after, request.root_path, token, now, code=200)
        return problem_response(
            409,
            "job-finished",
            "Job already finished",
            f"The job is {after.status.value} and can no longer be canceled.",
        )
