"""``{prefix}/dashboard``: the operator's page and its three actions.

``serve_dashboard(engine, request)`` is an engine generator like
``serve_health``: it yields typed ops (``engine/ops.py``) and the front door's
runtime drives it, blocking or awaited. The URLs below ``{prefix}/dashboard``:

- ``GET`` ``/``: the page (``401`` with a sign-in form, or ``403``, to a caller
  the guard refuses; ``404`` when the dashboard is off);
- ``POST /login`` (token guard): ``token=...``; the right one sets the session
  cookie and redirects to the page, a wrong one is ``401``; an address with too
  many wrong ones is ``429`` with ``Retry-After`` (``gate.SignInLimiter``);
- ``GET /events``: the page's live updates, an event stream (``live.py``);
- ``POST /logout``: ends the session;
- ``POST /jobs/<id>/cancel``, ``POST /jobs/<id>/retry``,
  ``POST /dead/<delivery id>/replay``: each wants the form field ``csrf`` of
  the caller's session, is logged (logger ``async_accept``, with the client
  address) and redirects back (``303``) with what happened.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Protocol
from urllib.parse import parse_qs

from ..engine import ops
from ..engine.beats import BeatWatch
from ..engine.ops import Gen
from ..engine.responses import (
    NO_STORE,
    Response,
    method_not_allowed,
    not_found,
    problem_response,
    unavailable,
)
from ..errors import StoreError
from ..job import CapturedRequest, Headers, Job, JobStatus
from ..options import Options
from .data import DeadLetters, Marked, replay_dead, snapshot
from .gate import (
    Guard,
    Sessions,
    SignInLimiter,
    bearer_matches,
    check_allows,
    guard_for,
    token_matches,
)
from .live import Feed, mark, open_live
from .page import dashboard_page, login_page

log = logging.getLogger("async_accept")

__all__ = ["serve_dashboard"]


class Engine(Protocol):
    """What the dashboard needs of the engine: options, clock, the ETA rule, the
    watch over the worker registry."""

    options: Options
    clock: Callable[[], float]
    beats: BeatWatch
    #: seconds an event stream may stay open (WSGI caps it; None: no cap)
    stream_limit: float | None

    def remaining(self, job: Job, now: float) -> float | None: ...


def _security_headers(nonce: str) -> Headers:
    csp = (
        "default-src 'none'; "
        f"script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "connect-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    return [
        (b"content-type", b"text/html; charset=utf-8"),
        NO_STORE,
        (b"content-security-policy", csp.encode("ascii")),
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
    ]


def _form(request: CapturedRequest) -> dict[str, str]:
    """The urlencoded form of a POST (first value of each field)."""
    ctype = (request.header(b"content-type") or b"").split(b";")[0].strip().lower()
    if ctype != b"application/x-www-form-urlencoded":
        return {}
    try:
        fields = parse_qs(request.body.decode("utf-8"), max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in fields.items() if v}


def _who(request: CapturedRequest) -> str:
    return request.client[0] if request.client else "unknown client"


def _redirect(location: str, cookie: bytes | None = None) -> Response:
    headers: Headers = [(b"location", location.encode("latin-1")), NO_STORE]
    if cookie is not None:
        headers.append((b"set-cookie", cookie))
    return Response(303, headers)


def _wants_html(request: CapturedRequest) -> bool:
    accept = (request.header(b"accept") or b"").lower()
    return b"text/html" in accept


def _too_many(request: CapturedRequest, base: str, retry_after: int) -> Response:
    """429 to an address with too many wrong tokens: the form again for a browser,
    problem+json for anything else; either way with ``Retry-After``."""
    wait = (b"retry-after", str(retry_after).encode())
    if _wants_html(request):
        nonce = secrets.token_urlsafe(12)
        body = login_page(base + "/login", nonce, False, retry_after=retry_after)
        return Response(429, [*_security_headers(nonce), wait], body)
    return problem_response(
        429,
        "too-many-sign-ins",
        "Too Many Requests",
        f"Too many wrong dashboard tokens from this address; try again in {retry_after} s.",
        retry_after=retry_after,
    )


def _sign_in(
    request: CapturedRequest,
    guard: Guard,
    sessions: Sessions,
    limiter: SignInLimiter | None,
    base: str,
    secure: bool,
) -> Response:
    """``POST /login``: the token form, its session cookie, and its rate limit."""
    assert guard.token is not None
    who = _who(request)
    wait = None if limiter is None else limiter.retry_after(who)
    if wait is not None:
        log.warning("async_accept dashboard: sign-in refused (rate limit) from %s", who)
        return _too_many(request, base, wait)
    if not token_matches(_form(request).get("token", ""), guard.token):
        if limiter is not None:
            limiter.failed(who)
        log.warning("async_accept dashboard: wrong token from %s", who)
        return _refused(guard, request, base, wrong=True)
    if limiter is not None:
        limiter.succeeded(who)
    _sid, value = sessions.new()
    log.info("async_accept dashboard: sign-in from %s", who)
    return _redirect(base + "/", sessions.cookie(value, base, secure))


def _refused(guard: Guard, request: CapturedRequest, base: str, wrong: bool = False) -> Response:
    """The answer to a caller the guard refuses: 401 (token) or 403 (check)."""
    if guard.token is None:
        return problem_response(403, "forbidden", "Forbidden", "You may not use the dashboard.")
    challenge = (b"www-authenticate", b'Bearer realm="async_accept dashboard"')
    if request.method in ("GET", "HEAD") or wrong:
        nonce = secrets.token_urlsafe(12)
        return Response(
            401, [*_security_headers(nonce), challenge], login_page(base + "/login", nonce, wrong)
        )
    return problem_response(
        401,
        "unauthorized",
        "Unauthorized",
        "The dashboard wants Authorization: Bearer <health_token> or its session cookie.",
        headers=[challenge],
    )


def serve_dashboard(
    engine: Engine,
    request: CapturedRequest,
    dead_letters: DeadLetters | None = None,
    guard: Guard | None = None,
    mount: str | None = None,
    *,
    feed: Feed | None = None,
    routes: Callable[[], Marked] | None = None,
    limiter: SignInLimiter | None = None,
) -> Gen[Response]:
    """Answer a request below ``{prefix}/dashboard``.

    ``guard`` defaults to the one the options describe (``dashboard=``);
    ``dead_letters`` is the webhook dispatcher when webhooks are on;
    ``mount`` is where the dashboard lives below the root path (default
    ``{prefix}/dashboard``; the Django admin view mounts it elsewhere);
    ``feed`` the process's change feed (live updates; without it the page
    refreshes every few seconds); ``routes()`` the app's marked routes now;
    ``limiter`` counts wrong sign-in tokens per client address.
    """
    opts = engine.options
    if guard is None:
        guard = guard_for(opts.dashboard, opts.health, opts.health_token)
    if guard is None:
        return not_found()  # off, or "auth" with nothing to check: never open
    if mount is None:
        mount = f"{opts.prefix}/dashboard"
    base = f"{request.root_path}{mount}"
    sub = request.path[len(mount) :]
    if not request.path.startswith(mount) or (sub and sub[0] != "/"):
        return not_found()
    sessions = Sessions(opts.secrets, guard)
    sid = sessions.read(request)
    secure = request.scheme == "https"
    method = request.method

    if sub == "/login":
        if guard.token is None:
            return not_found()
        if method != "POST":
            return method_not_allowed(b"POST")
        return _sign_in(request, guard, sessions, limiter, base, secure)

    if guard.token is not None:
        allowed = sid is not None or bearer_matches(request, guard.token)
    else:
        assert guard.check is not None
        allowed = check_allows(guard.check, request)
    if not allowed:
        return _refused(guard, request, base)

    if sub in ("", "/"):
        if method not in ("GET", "HEAD"):
            return method_not_allowed(b"GET, HEAD")
        marked = routes() if routes is not None else None
        return (
            yield from _page(
                engine, request, base, sessions, sid, dead_letters, secure, feed, marked
            )
        )

    if sub == "/events":
        if feed is None:
            return not_found()
        if method != "GET":
            return method_not_allowed(b"GET")
        return open_live(feed, request, engine.stream_limit)

    if sub == "/logout":
        if method != "POST":
            return method_not_allowed(b"POST")
        if not sessions.csrf_ok(sid, _form(request).get("csrf")):
            return _csrf_refused(request, "logout")
        return _redirect(base + "/", sessions.cookie("", base, secure, max_age=0))

    parts = sub.split("/")[1:]
    if len(parts) != 3 or parts[0] not in ("jobs", "dead") or not parts[1]:
        return not_found()
    kind, target, verb = parts
    action = f"{kind}/{verb}"
    if action not in ("jobs/cancel", "jobs/retry", "dead/replay"):
        return not_found()
    if method != "POST":
        return method_not_allowed(b"POST")
    if not sessions.csrf_ok(sid, _form(request).get("csrf")):
        return _csrf_refused(request, f"{verb} {target}")
    now = engine.clock()
    try:
        if action == "jobs/cancel":
            done = yield from _cancel(target, now)
        elif action == "jobs/retry":
            done = yield from _retry(target, now)
        else:
            if dead_letters is None:
                return not_found()
            done = (
                "replayed" if (yield from replay_dead(dead_letters, target, now)) else "unchanged"
            )
    except StoreError:
        return unavailable("store-unavailable", "The job store is unavailable.", 5)
    log.info(
        "async_accept dashboard: %s %s %s -> %s (from %s)",
        verb,
        "job" if kind == "jobs" else "delivery",
        target,
        done,
        _who(request),
    )
    return _redirect(f"{base}/?done={done}")


def _csrf_refused(request: CapturedRequest, what: str) -> Response:
    log.warning("async_accept dashboard: %s refused, bad CSRF token from %s", what, _who(request))
    return problem_response(
        403,
        "csrf",
        "Forbidden",
        "The form's CSRF token does not match this dashboard session; reload the page.",
    )


def _cancel(job_id: str, now: float) -> Gen[str]:
    after, changed = yield from ops.cancel(job_id, now)
    if after is None or not changed:
        return "unchanged"
    if after.status is JobStatus.PROCESSING:
        yield from ops.cancel_local(after.id)  # asyncio handlers stop now
        return "cancel-requested"
    return "canceled"


def _retry(job_id: str, now: float) -> Gen[str]:
    again = yield from ops.retry(job_id, now)
    if again is None:
        return "unchanged"
    yield from ops.submit(again.id)
    return "retried"


def _page(
    engine: Engine,
    request: CapturedRequest,
    base: str,
    sessions: Sessions,
    sid: str | None,
    dead_letters: DeadLetters | None,
    secure: bool,
    feed: Feed | None,
    marked: Marked | None,
) -> Gen[Response]:
    now = engine.clock()
    since = mark(feed) if feed is not None else None  # before the read: nothing missed
    try:
        snap = yield from snapshot(
            now, engine.options.worker_lost_after, dead_letters, engine.remaining, marked
        )
    except StoreError:
        return unavailable("store-unavailable", "The job store is unavailable.", 5)
    if snap.workers is not None:
        snap.alive = engine.beats.alive(snap.workers, now)
    cookie: bytes | None = None
    if sid is None:  # the session the CSRF token is bound to
        sid, value = sessions.new()
        cookie = sessions.cookie(value, base, secure)
    done = parse_qs(request.query_string.decode("latin-1")).get("done", [None])[0]
    nonce = secrets.token_urlsafe(12)
    body = dashboard_page(
        snap, base, sessions.csrf(sid), nonce, done, webhooks=dead_letters is not None, live=since
    )
    headers = _security_headers(nonce)
    if cookie is not None:
        headers.append((b"set-cookie", cookie))
    return Response(200, headers, body)
