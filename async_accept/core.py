"""The core: HTTP decisions about jobs, written once for both front doors.

Every operation here is a generator that *yields* what it needs done (a store
call, a hand-over to the executor, a wait, a replay) and receives the result.
The WSGI front door and worker threads drive these generators with blocking
calls; the ASGI front door drives the same generators with ``await``, so the
event loop never blocks on store I/O and the HTTP logic exists exactly once.
No framework and no server is imported here.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import urljoin

from werkzeug.http import parse_cookie

from .config import Options
from .engine import ops
from .engine.ops import Gen
from .errors import ExecutorError, JobCanceled, StoreError
from .job import (
    ACTIVE,
    CapturedRequest,
    CapturedResponse,
    Headers,
    Job,
    JobStatus,
    new_job_id,
)
from .prefer import parse_prefer, parse_wait
from .problems import PROBLEM_CONTENT_TYPE, problem_body, problem_dict
from .routes import RouteOptions
from .tokens import TokenError, TokenExpired, TokenSigner
from .tracing import TRACE_META, AcceptSpan, ExecuteSpan, Tracing

T = TypeVar("T")


@dataclass
class Response:
    """What the middleware answers itself."""

    status: int
    headers: Headers = field(default_factory=list)
    body: bytes = b""


# --- helpers -------------------------------------------------------------------

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


def strip_hop_by_hop(headers: Headers) -> Headers:
    """Drop hop-by-hop headers, including those named by ``Connection``."""
    extra: set[bytes] = set()
    for k, v in headers:
        if k == b"connection":
            extra.update(p.strip().lower() for p in v.split(b",") if p.strip())
    return [(k, v) for k, v in headers if k not in HOP_BY_HOP and k not in extra]


def rfc3339(ts: float | None) -> str | None:
    """RFC 3339 UTC with milliseconds (``2026-11-28T12:00:00.123Z``)."""
    if ts is None:
        return None
    seconds = math.floor(ts)
    micros = round((ts - seconds) * 1e6)  # rounded as datetime.fromtimestamp does
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, 0
    return f"{_rfc3339_seconds(seconds)}.{micros // 1000:03d}Z"


@functools.lru_cache(maxsize=4096)
def _rfc3339_seconds(seconds: int) -> str:
    # Status reads format the same few timestamps over and over.
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode("utf-8")


_NO_STORE = (b"cache-control", b"no-store")
_JSON = (b"content-type", b"application/json")


def problem_response(
    status: int,
    name: str,
    title: str,
    detail: str,
    *,
    retry_after: int | None = None,
    headers: Headers | None = None,
    **ext: Any,
) -> Response:
    hdrs: Headers = [(b"content-type", PROBLEM_CONTENT_TYPE), _NO_STORE]
    if retry_after is not None:
        hdrs.append((b"retry-after", str(retry_after).encode()))
    if headers:
        hdrs.extend(headers)
    return Response(status, hdrs, problem_body(problem_dict(status, name, title, detail, **ext)))


_NOT_FOUND_BODY = problem_body(
    problem_dict(
        404, "not-found", "Not Found", "There is no job at this URL for these credentials."
    )
)


def not_found() -> Response:
    """The one 404 for bad token, unknown job and wrong caller: byte-identical."""
    return Response(404, [(b"content-type", PROBLEM_CONTENT_TYPE), _NO_STORE], _NOT_FOUND_BODY)


def deadline_error(job: Job) -> dict[str, Any]:
    return problem_dict(
        504,
        "deadline-exceeded",
        "Deadline exceeded",
        f"The job did not finish within 2 x its expected duration ({job.sla:g} s).",
    )


def worker_lost_error(
    detail: str = "The worker running the job stopped heartbeating.",
) -> dict[str, Any]:
    return problem_dict(500, "worker-lost", "Worker lost", detail)


def headers_dict(request: CapturedRequest) -> dict[str, str]:
    """Request headers as a dict of lower-case names (repeats joined per RFC 9110)."""
    out: dict[str, str] = {}
    for k, v in request.headers:
        name = k.decode("latin-1")
        value = v.decode("latin-1")
        if name in out:
            out[name] += ("; " if name == "cookie" else ", ") + value
        else:
            out[name] = value
    return out


# --- the engine ------------------------------------------------------------------


class Engine:
    """HTTP decisions about jobs. Pure: talks to the world only through yields."""

    def __init__(self, options: Options, clock: Callable[[], float] = time.time) -> None:
        self.options = options
        self.signer = TokenSigner(options.secrets, options.ttl, lambda: self.clock())
        self.clock = clock
        self.tracing = Tracing(options.tracer_provider)

    # -- identity ---------------------------------------------------------------

    def identity_material(self, request: CapturedRequest) -> bytes:
        """The credentials the job is bound to (hashed before storage)."""
        opts = self.options
        if opts.identity is not None:
            ident = opts.identity(headers_dict(request))
            if ident is None:
                return b""
            return ident.encode("utf-8") if isinstance(ident, str) else bytes(ident)
        parts: list[bytes] = []
        auth = request.header(b"authorization")
        if auth:
            parts.append(b"authorization=" + auth)
        if opts.session_cookies:
            cookie_values = [v for k, v in request.headers if k == b"cookie"]
            if cookie_values:
                cookies = parse_cookie(b"; ".join(cookie_values).decode("latin-1"))
                for name in opts.session_cookies:
                    value = cookies.get(name)
                    if value:
                        parts.append(f"cookie:{name}=".encode() + value.encode("utf-8"))
        return b"\n".join(parts)

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
        return None

    def retry_after(self, job: Job, now: float) -> int:
        """Integer seconds >= 1: from progress, else expected duration, else poll interval."""
        opts = self.options
        rem = self.remaining(job, now)
        if rem is None:
            expected_end = (job.started_at or job.created_at) + job.sla
            rem = expected_end - now if expected_end > now else None
            if rem is not None:
                # Poll a few times over the expected duration, not once at its end.
                rem = min(rem, max(opts.poll_interval, job.sla / 4))
        if rem is None:
            rem = opts.poll_interval
        return max(1, min(math.ceil(rem), math.ceil(opts.max_retry_after)))

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
            "links": links,
        }
        if job.cancel_requested and not job.terminal:
            data["cancel_requested"] = True
        if job.status is JobStatus.FAILED:
            data["error"] = job.error or problem_dict(
                500, "job-failed", "Job failed", "The job failed."
            )
        return data

    def status_response(
        self, job: Job, root_path: str, token: str, now: float, code: int | None = None
    ) -> Response:
        body = self.status_json(job, root_path, token, now)
        headers: Headers = [_JSON, _NO_STORE]
        if job.status is JobStatus.COMPLETED and code is None:
            code = 303
            headers.append((b"location", str(body["links"]["result"]).encode("latin-1")))
        elif job.status in ACTIVE:
            headers.append((b"retry-after", str(self.retry_after(job, now)).encode()))
            if code is None:
                code = self.options.status_code_running
                if code == 202:
                    headers.append((b"location", body["links"]["self"].encode("latin-1")))
        return Response(code or 200, headers, _json(body))

    # -- the deadman switch ------------------------------------------------------------

    def verdict(self, job: Job, now: float) -> tuple[frozenset[JobStatus], dict[str, Any]] | None:
        """Whether the deadman switch must fail ``job`` now, and from which states."""
        if job.terminal:
            return None
        if now >= job.deadline_at:
            return ACTIVE, deadline_error(job)
        if (
            job.status is JobStatus.PROCESSING
            and job.heartbeat_at is not None
            and now - job.heartbeat_at > self.options.worker_lost_after
        ):
            return frozenset({JobStatus.PROCESSING}), worker_lost_error()
        return None

    def apply_deadman(self, job: Job, now: float) -> Gen[Job]:
        v = self.verdict(job, now)
        if v is None:
            return job
        expected, error = v
        failed = yield from ops.fail(job.id, expected, now, error)
        if failed is not None:
            return failed
        fresh = yield from ops.get(job.id, now)
        return fresh if fresh is not None else job

    # -- accept -----------------------------------------------------------------------

    def effective_wait(
        self, route: RouteOptions, prefs: Mapping[str, str | None]
    ) -> tuple[float, bytes | None]:
        """Seconds to wait for a direct answer, and the Preference-Applied value."""
        opts = self.options
        asked = parse_wait(prefs.get("wait")) if "wait" in prefs else None
        if asked is not None:
            cap = route.max_wait
            if cap is None:
                cap = max(opts.max_wait, route.wait or 0.0)
            w = min(float(asked), cap)
            return w, f"wait={math.floor(w)}".encode()
        if "respond-async" in prefs:
            return 0.0, None
        w = route.wait if route.wait is not None else (opts.wait or 0.0)
        return w, None

    def accept(self, request: CapturedRequest, route: RouteOptions) -> Gen[Response]:
        """Record the request as a job, hand it over, answer 202 (or directly)."""
        span = self.tracing.start_accept(request)
        try:
            response = yield from self._accept(request, route, span)
        except BaseException as exc:
            span.end(None, exc)
            raise
        span.end(response.status)
        return response

    def _accept(
        self, request: CapturedRequest, route: RouteOptions, span: AcceptSpan
    ) -> Gen[Response]:
        opts = self.options
        now = self.clock()
        prefs = parse_prefer(v.decode("latin-1") for k, v in request.headers if k == b"prefer")
        wait, wait_applied = self.effective_wait(route, prefs)
        applied: list[bytes] = []
        if "respond-async" in prefs:
            applied.append(b"respond-async")
        if wait_applied is not None:
            applied.append(wait_applied)
        extra: Headers = [(b"vary", b"Prefer")]
        if applied:
            extra.append((b"preference-applied", b", ".join(applied)))

        owner = self.signer.owner_hash(self.identity_material(request))
        idem_key: str | None = None
        fingerprint: str | None = None
        if route.idempotency != "ignore":
            # Repeated headers are joined, which no valid key survives: 400, not a guess.
            raw_keys = [v for k, v in request.headers if k == b"idempotency-key"]
            raw_key = b", ".join(raw_keys) if raw_keys else None
            if raw_key is None:
                if route.idempotency == "required":
                    return problem_response(
                        400,
                        "idempotency-key-missing",
                        "Idempotency-Key required",
                        "This endpoint requires an Idempotency-Key header.",
                        headers=extra,
                    )
            else:
                key = parse_idempotency_key(raw_key)
                if key is None:
                    return problem_response(
                        400,
                        "idempotency-key-invalid",
                        "Invalid Idempotency-Key",
                        "Idempotency-Key must be a string of 1 to 255 characters "
                        '(quoted, like "abc", or a bare token).',
                        headers=extra,
                    )
                idem_key = _scoped_key(owner, request.method, request.path, key)
                fingerprint = _fingerprint(request)

        sla = route.sla if route.sla is not None else opts.sla
        job = Job(
            id=new_job_id(),
            status=JobStatus.QUEUED,
            owner=owner,
            created_at=now,
            updated_at=now,
            expires_at=now + opts.ttl,
            deadline_at=now + 2 * sla,
            sla=sla,
            route=f"{request.method} {request.path}",
            idempotency_key=idem_key,
            fingerprint=fingerprint,
            meta={"accepting_until": now + wait} if wait > 0 else {},
        )
        carrier = span.carrier()
        if carrier is not None:
            job.meta[TRACE_META] = carrier
        if opts.webhooks_enabled:
            refused = self._webhook_targets(job, request, route)
            if refused is not None:
                refused.headers.extend(extra)
                return refused
        span.job(job)
        for attempt in (1, 2):
            try:
                stored, created = yield from ops.create(job, request)
            except StoreError:
                return problem_response(
                    503,
                    "store-unavailable",
                    "Service Unavailable",
                    "The job store cannot take the request right now; retry later.",
                    retry_after=max(1, math.ceil(opts.poll_interval * 5)),
                    headers=extra,
                )
            if created:
                break
            if attempt == 1 and _never_dispatched(stored) and stored.fingerprint == fingerprint:
                # The first try got a 503 and no job was promised: this retry may
                # take the key over (the store's create still lets one racer win).
                with contextlib.suppress(StoreError):
                    yield from ops.delete(stored.id)
                continue
            return (yield from self._idempotent_repeat(stored, fingerprint, request, extra, now))

        try:
            yield from ops.submit(job.id)
        except ExecutorError:
            # If even this fails, the deadman switch fails it later; no 202 was sent.
            with contextlib.suppress(StoreError):
                yield from ops.fail(
                    job.id,
                    frozenset({JobStatus.QUEUED}),
                    self.clock(),
                    problem_dict(
                        503, "executor-unavailable", "Executor unavailable", "Not dispatched."
                    ),
                )
            return problem_response(
                503,
                "executor-unavailable",
                "Service Unavailable",
                "The job executor cannot take the request right now; retry later.",
                retry_after=max(1, math.ceil(opts.poll_interval * 5)),
                headers=extra,
            )

        if wait > 0:
            try:
                done = yield from ops.wait_for(job.id, wait)
            except StoreError:
                done = None
            if done is not None and done.terminal:
                direct = yield from self._direct_answer(done)
                if direct is not None:
                    direct.headers.extend(extra)
                    return direct
            if done is not None:
                job = done
        return self.accepted(job, request.root_path, self.clock(), extra)

    def accepted(self, job: Job, root_path: str, now: float, extra: Headers) -> Response:
        token = self.token_for(job)
        url = self.status_url(root_path, token)
        body = self.status_json(job, root_path, token, now)
        body["status_url"] = url
        headers: Headers = [
            (b"location", url.encode("latin-1")),
            (b"retry-after", str(self.retry_after(job, now)).encode()),
            _JSON,
            _NO_STORE,
        ]
        headers.extend(extra)
        return Response(202, headers, _json(body))

    def _webhook_targets(
        self, job: Job, request: CapturedRequest, route: RouteOptions
    ) -> Response | None:
        """Note where the job's end is notified; refuse a client callback the policy bars."""
        opts = self.options
        target = route.webhook or opts.webhook_url
        if target:
            job.meta["webhook"] = target
        header = opts.callback_header
        raw = request.header(header.encode("latin-1")) if header else None
        if raw is not None:
            url = raw.decode("latin-1").strip()
            reason = _callback_refusal(opts.webhook_policy, url)
            if reason is not None:
                return problem_response(
                    400,
                    "callback-refused",
                    "Callback URL refused",
                    f"The {header} header names a URL this server does not call: {reason}.",
                )
            job.meta["callback"] = url
        if "webhook" in job.meta or "callback" in job.meta:
            job.meta["root_path"] = request.root_path
        return None

    def _direct_answer(self, job: Job) -> Gen[Response | None]:
        """The handler's own response for a job that ended within the wait."""
        if job.result_status is not None:
            result = yield from ops.get_result(job.id)
            if result is not None:
                return Response(result.status, list(result.headers), result.body)
        if job.status is JobStatus.FAILED:
            detail = "The request failed."
            if self.options.debug and job.error:
                detail = str(job.error.get("detail", detail))
            return problem_response(500, "handler-error", "Internal Server Error", detail)
        return None

    def _idempotent_repeat(
        self,
        existing: Job,
        fingerprint: str | None,
        request: CapturedRequest,
        extra: Headers,
        now: float,
    ) -> Gen[Response]:
        if existing.fingerprint != fingerprint:
            return problem_response(
                422,
                "idempotency-key-reused",
                "Idempotency-Key reused",
                "This Idempotency-Key was already used with a different request payload.",
                headers=extra,
            )
        until = existing.meta.get("accepting_until")
        if isinstance(until, (int, float)) and now < until and not existing.terminal:
            return problem_response(
                409,
                "request-in-progress",
                "Request in progress",
                "A request with this Idempotency-Key is still being accepted.",
                retry_after=max(1, math.ceil(until - now)),
                headers=extra,
            )
        existing = yield from self.apply_deadman(existing, now)
        return self.accepted(existing, request.root_path, now, extra)

    # -- the status URL and friends ------------------------------------------------------

    def serve(self, request: CapturedRequest, subpath: str) -> Gen[Response]:
        """Answer a request below the prefix (``subpath`` starts with '/' or is '')."""
        parts = subpath.split("/")[1:] if subpath else []
        method = request.method
        if parts == ["health"]:  # no token is "health": tokens hold dots
            from .health import serve_health

            return (yield from serve_health(self, request))
        if len(parts) == 1 and parts[0]:
            if method in ("GET", "HEAD"):
                return (yield from self._status(request, parts[0]))
            if method == "DELETE":
                return (yield from self._cancel(request, parts[0]))
            return _method_not_allowed(b"GET, HEAD, DELETE")
        if len(parts) == 2 and parts[0]:
            if parts[1] == "result":
                if method in ("GET", "HEAD"):
                    return (yield from self._result(request, parts[0]))
                return _method_not_allowed(b"GET, HEAD")
            if parts[1] == "cancel":
                if method == "POST":
                    return (yield from self._cancel(request, parts[0]))
                return _method_not_allowed(b"POST")
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
            return problem_response(
                503,
                "store-unavailable",
                "Service Unavailable",
                "The job store is unavailable; retry later.",
                retry_after=max(1, math.ceil(self.options.poll_interval * 5)),
            )
        if job is None or not self.signer.owner_matches(job.owner, self.identity_material(request)):
            return not_found()
        if not job.terminal:
            with contextlib.suppress(StoreError):
                job = yield from self.apply_deadman(job, now)
        return job

    def _status(self, request: CapturedRequest, token: str) -> Gen[Response]:
        now = self.clock()
        job = yield from self._authorized_job(request, token, now)
        if isinstance(job, Response):
            return job
        return self.status_response(job, request.root_path, token, now)

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
        return Response(result.status, list(result.headers), result.body)

    def _cancel(self, request: CapturedRequest, token: str) -> Gen[Response]:
        now = self.clock()
        job = yield from self._authorized_job(request, token, now)
        if isinstance(job, Response):
            return job
        if job.terminal:
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

    # -- running a job (the worker side) ----------------------------------------------

    def run(self, job_id: str, worker_id: str) -> Gen[Job | None]:
        """Claim the job, replay its request, store the outcome."""
        now = self.clock()
        job = yield from ops.claim(job_id, worker_id, now)
        if job is None:
            return None  # canceled, taken by another worker, or gone
        if now >= job.deadline_at:
            return (
                yield from ops.fail(
                    job_id, frozenset({JobStatus.PROCESSING}), now, deadline_error(job)
                )
            )
        request = yield from ops.get_request(job_id)
        if request is None:
            return (
                yield from ops.fail(
                    job_id,
                    frozenset({JobStatus.PROCESSING}),
                    now,
                    problem_dict(
                        500,
                        "request-missing",
                        "Request missing",
                        "The captured request is gone from the store.",
                    ),
                )
            )
        self.tracing.record_queue_wait(job, request)
        span = self.tracing.start_execute(job, request)
        try:
            return (yield from self._execute(job, worker_id, span))
        finally:
            span.end()

    def _execute(self, job: Job, worker_id: str, span: ExecuteSpan) -> Gen[Job | None]:
        """Replay the claimed job's request and store the outcome."""
        job_id = job.id
        request = span.request
        status = JobStatus.COMPLETED
        response: CapturedResponse | None = None
        error: dict[str, Any] | None = None
        location: str | None = None
        try:
            response = yield from ops.replay(request, job)
        except JobCanceled:
            status = JobStatus.CANCELED
        except WorkerShutdown as exc:
            status = JobStatus.FAILED
            error = worker_lost_error(str(exc))
        except Exception as exc:  # the handler's own error: the job fails
            status = JobStatus.FAILED
            detail = "The handler raised an exception."
            if self.options.debug:
                detail = f"{type(exc).__name__}: {exc}"
            error = problem_dict(500, "handler-error", "Handler error", detail)
        if response is not None:
            response.headers = strip_hop_by_hop(response.headers)
            if response.status >= 500:
                status = JobStatus.FAILED
                error = problem_dict(
                    response.status,
                    "handler-error",
                    "Handler error",
                    f"The handler answered {response.status}.",
                )
            elif response.status == 201 or 300 <= response.status < 400:
                loc = response.header(b"location")
                if loc:
                    base = request.root_path + request.path
                    location = urljoin(base, loc.decode("latin-1"))
        span.outcome(status, error)
        finished = yield from ops.finish(
            job_id, worker_id, self.clock(), status, response, error, location
        )
        return finished

    # -- housekeeping ---------------------------------------------------------------------

    def sweep(
        self,
        is_pending: Callable[[str], bool],
        *,
        requeue_before: float | None = None,
        purge: bool = True,
        batch: int = 500,
    ) -> Gen[dict[str, int]]:
        """Fail zombies, hand over queued jobs nobody is running, purge expired ones."""
        now = self.clock()
        report = {"failed": 0, "requeued": 0, "purged": 0}
        processing = yield from ops.list_jobs(JobStatus.PROCESSING, batch, None)
        for job in processing:
            v = self.verdict(job, now)
            if v is not None:
                done = yield from ops.fail(job.id, v[0], now, v[1])
                report["failed"] += done is not None
        cutoff = requeue_before if requeue_before is not None else now - self.options.requeue_after
        queued = yield from ops.list_jobs(JobStatus.QUEUED, batch, cutoff)
        for job in queued:
            v = self.verdict(job, now)
            if v is not None:
                done = yield from ops.fail(job.id, v[0], now, v[1])
                report["failed"] += done is not None
            elif not job.cancel_requested and not is_pending(job.id):
                try:
                    yield from ops.submit(job.id)
                    report["requeued"] += 1
                except ExecutorError:
                    break
        if purge:
            report["purged"] = yield from ops.purge_expired(now)
        return report


class WorkerShutdown(Exception):
    """The process running a job is shutting down before the job ended."""


def _method_not_allowed(allow: bytes) -> Response:
    return problem_response(
        405,
        "method-not-allowed",
        "Method Not Allowed",
        f"Use one of: {allow.decode()}.",
        headers=[(b"allow", allow)],
    )


def parse_idempotency_key(raw: bytes) -> str | None:
    """An RFC 8941 sf-string (``"key"``) or a bare token; None when invalid."""
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        out: list[str] = []
        i = 1
        while i < len(text) - 1:
            c = text[i]
            if c == "\\":
                if i + 1 >= len(text) - 1 or text[i + 1] not in '"\\':
                    return None
                out.append(text[i + 1])
                i += 2
                continue
            if c == '"' or not (" " <= c <= "~"):
                return None
            out.append(c)
            i += 1
        key = "".join(out)
    else:
        key = text
        if not key or any(not ("!" <= c <= "~") or c in '"\\,;' for c in key):
            return None
    if not key or len(key) > 255:
        return None
    return key


def _scoped_key(owner: str, method: str, path: str, key: str) -> str:
    h = hashlib.sha256()
    for part in (owner, method, path, key):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


def _never_dispatched(job: Job) -> bool:
    """A job whose accept answered 503 because the executor refused it."""
    return (
        job.status is JobStatus.FAILED
        and job.started_at is None
        and str((job.error or {}).get("type", "")).endswith("executor-unavailable")
    )


def _callback_refusal(policy: Any, url: str) -> str | None:
    """Why a client-supplied callback URL is refused at accept, or None.

    No DNS lookup here (this runs on the request path): the URL's form and the
    allow-list are checked now, an IP literal's address too; a host name's
    addresses are checked before every delivery attempt.
    """
    import ipaddress

    from .webhooks import WebhookError, WebhookTargetError, _parse_target

    try:
        target = _parse_target(url)
        policy.check_url(url, client_supplied=True)
        try:
            ipaddress.ip_address(target.host)
        except ValueError:
            return None
        policy.resolve(url, client_supplied=True)  # a literal: no lookup
    except WebhookTargetError as exc:
        return exc.reason
    except WebhookError as exc:  # pragma: no cover - literals do not resolve
        return str(exc)
    return None


def _fingerprint(request: CapturedRequest) -> str:
    h = hashlib.sha256()
    h.update(request.method.encode())
    h.update(b"\x00")
    h.update(request.path.encode("utf-8", "surrogatepass"))
    h.update(b"\x00")
    # The query is part of the payload: /export?year=2024 and ?year=2025 differ.
    h.update(request.query_string)
    h.update(b"\x00")
    h.update(request.header(b"content-type") or b"")
    h.update(b"\x00")
    h.update(request.body)
    return h.hexdigest()
