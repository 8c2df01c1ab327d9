"""Accepting a request: record it as a job, hand it to the executor, answer
202 (or the handler's own answer when it ends within the wait)."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping

from ..errors import ExecutorError, StoreError
from ..identity import new_owner_cookie, owner_cookie_header, owner_cookie_material
from ..job import EXECUTOR_META, CapturedRequest, Headers, Job, JobStatus, new_job_id
from ..options import route_retry_warning
from ..prefer import parse_prefer, parse_wait
from ..routes import PREFER_META, RouteOptions
from ..tracing import TRACE_META, AcceptSpan
from . import ops
from .idempotency import idempotency_scope, never_dispatched
from .ops import Gen
from .responses import (
    JSON,
    NO_STORE,
    Response,
    json_body,
    problem_dict,
    problem_response,
    unavailable,
)
from .status import Status

log = logging.getLogger("async_accept")


def origin_of(request: CapturedRequest) -> str:
    """``scheme://host[:port]`` the client reached (the Host header, else the
    server address): webhook bodies carry absolute URLs built on it."""
    host = request.header(b"host")
    if host:
        name = host.decode("latin-1")
    elif request.server:
        name = f"{request.server[0]}:{request.server[1]}"
    else:
        name = "localhost"
    return f"{request.scheme}://{name}"


class Accepting(Status):
    """The accept side of the engine."""

    #: The name of the executor accepted jobs are handed to, noted in their meta
    #: (:data:`~async_accept.job.EXECUTOR_META`); None: not noted. The front door sets it.
    executor_name: str | None = None

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

        who = self.identify(request)
        if not who.material:
            if opts.anonymous == "deny":
                return problem_response(
                    401,
                    "identity-required",
                    "Unauthorized",
                    "This endpoint accepts jobs from identified callers only: send your "
                    "credentials.",
                    headers=extra,
                )
            self._warn_anonymous(request, route)
        if route.retries:
            self._warn_retry_window(request, route)
        owner = self.signer.owner_hash(who.material)
        scope = idempotency_scope(request, route, owner, extra)
        if isinstance(scope, Response):
            return scope
        idem_key, fingerprint = scope
        # Only the 202 carries it: a direct answer is the handler's own response.
        set_owner: Headers = []
        if who.session_only:
            # Known by a session cookie alone, which the app may rewrite: the
            # owner cookie (one per browser, reused) keeps this caller's access.
            cookie = who.cookie or new_owner_cookie()
            owner += " " + self.signer.owner_hash(owner_cookie_material(cookie))
            if who.cookie is None:
                set_owner.append((b"set-cookie", self._owner_cookie(request, cookie)))

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
        job.meta.update(route.retry_meta())
        if self.executor_name is not None:
            job.meta[EXECUTOR_META] = self.executor_name
        if route is opts.default_route:  # no marked route: Prefer: respond-async took it
            job.meta[PREFER_META] = True
        carrier = span.carrier()
        if carrier is not None:
            job.meta[TRACE_META] = carrier
        if opts.webhooks_enabled:
            refused = self._webhook_targets(job, request, route)
            if refused is not None:
                refused.headers.extend(extra)
                return refused
        span.job(job)
        # Credentials never reach the store in clear text (sealing.py).
        sealed = self.sealer.seal(job.id, request)
        for attempt in (1, 2):
            try:
                stored, created = yield from ops.create(job, sealed)
            except StoreError:
                # The write may have landed with only its answer lost (a timeout past
                # the commit): this 503 promises no job, so it must not exist or run.
                with contextlib.suppress(StoreError):
                    yield from self._unpromise(job, now)
                return unavailable(
                    "store-unavailable",
                    "The job store cannot take the request right now; retry later.",
                    self.retry_later(),
                    extra,
                )
            if created:
                break
            if attempt == 1 and never_dispatched(stored) and stored.fingerprint == fingerprint:
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
            return unavailable(
                "executor-unavailable",
                "The job executor cannot take the request right now; retry later.",
                self.retry_later(),
                extra,
            )

        if wait > 0:
            try:
                done = yield from ops.wait_for(job.id, wait)
            except StoreError:
                done = None
            if done is not None and done.terminal:
                direct = yield from self._direct_answer(done)
                if direct is not None:
                    # Answered synchronously: respond-async was not applied, wait was.
                    direct.headers.append((b"vary", b"Prefer"))
                    if wait_applied is not None:
                        direct.headers.append((b"preference-applied", wait_applied))
                    return direct
            if done is not None:
                job = done
        return self.accepted(job, request.root_path, self.clock(), [*extra, *set_owner])

    def _owner_cookie(self, request: CapturedRequest, value: bytes) -> bytes:
        # Path: the app's mount, not the prefix: the browser must send it back at
        # its next accept too, so that one owner cookie serves all its jobs.
        return owner_cookie_header(
            value,
            request.root_path or "/",
            int(self.options.ttl),
            request.scheme == "https",
        )

    def _warn_retry_window(self, request: CapturedRequest, route: RouteOptions) -> None:
        """Once per route marked in the app (``routes=[...]`` were checked at start-up):
        retries that a lost worker is noticed too late for."""
        key = id(route)
        warned = self._retry_window_checked
        if key in warned or len(warned) > 1000:
            return
        warned.add(key)
        if any(route is p.options for p in self.options.routes):
            return
        label = f"{request.method} {request.path}"
        warning = route_retry_warning(self.options, label, route)
        if warning is not None:
            log.warning("%s", warning)

    def _warn_anonymous(self, request: CapturedRequest, route: RouteOptions) -> None:
        """Once per route: a job with no caller identity is a bearer capability."""
        key = (request.method, id(route))
        warned = self._anonymous_warned
        if key in warned or len(warned) > 1000:
            return
        warned.add(key)
        log.warning(
            "async_accept: %s %s accepted a job from an anonymous caller (no credentials, "
            "no identity): whoever holds its status URL can read and cancel it. If callers "
            "authenticate, tell the middleware how (identity=..., identity_headers=[...], "
            "session_cookies=[...]); to refuse such requests, pass anonymous='deny'.",
            request.method,
            request.path,
        )

    def accepted(self, job: Job, root_path: str, now: float, extra: Headers) -> Response:
        token = self.token_for(job)
        url = self.status_url(root_path, token)
        body = self.status_json(job, root_path, token, now)
        body["status_url"] = url
        headers: Headers = [
            (b"location", url.encode("latin-1")),
            (b"retry-after", str(self.retry_after(job, now)).encode()),
            JSON,
            NO_STORE,
        ]
        headers.extend(extra)
        return Response(202, headers, json_body(body))

    def _unpromise(self, job: Job, now: float) -> Gen[None]:
        """Take back a job whose create may have been written though its accept
        answers 503. Without an idempotency key nobody else can find it: it is
        deleted. With one, a repeat of the request may have found it and answered
        its 202 meanwhile: it ends failed, never run (what that 202 then shows),
        and the next repeat takes the key over (``never_dispatched``)."""
        if job.idempotency_key is None:
            yield from ops.delete(job.id)
            return
        error = problem_dict(
            503,
            "store-unavailable",
            "Store unavailable",
            "The job store did not confirm this job; retry with the same Idempotency-Key.",
        )
        yield from ops.fail(job.id, frozenset({JobStatus.QUEUED}), now, error)

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
            reason = opts.webhook_policy.refusal(url)
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
            job.meta["origin"] = origin_of(request)
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
