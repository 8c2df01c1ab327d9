"""``GET {prefix}/``: the calling owner's own jobs (PROTOCOL.md section 12).

The same owner rule as a status URL: the caller's identity material, hashed
with the app's keys, names the owner; an anonymous caller (no identity at all)
sees no jobs, since anonymous jobs are bearer capabilities, not anybody's list.

Newest first (``created_at``, then the job id, both descending), as status JSON
items with their status URLs. Filters: ``status=``, ``route=`` (``METHOD
/path`` as the job recorded it), ``created_after=`` / ``created_before=`` (RFC
3339, compared at the millisecond precision the status JSON shows). Pages of
``limit`` jobs (1-100, default 20); the next page's URL is in ``Link: <...>;
rel="next"`` and ``next``, carrying an opaque cursor (the last job's creation
time and id). The store reads the owner's jobs through an owner index
(``Store.list_owned``), so a page costs the same whatever the total.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import math
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Protocol
from urllib.parse import parse_qs, urlencode

from ..errors import StoreError
from ..identity import Identity, owner_cookie_material
from ..job import CapturedRequest, Job, JobStatus
from ..options import Options
from ..stores.base import OwnedQuery
from ..tokens import TokenSigner
from . import ops
from .ops import Gen
from .responses import JSON, NO_STORE, Response, json_body, method_not_allowed, problem_response

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "serve_list"]

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


class Engine(Protocol):
    """What the list needs of the engine (the status side: identity, status JSON)."""

    options: Options
    signer: TokenSigner
    clock: Callable[[], float]

    def identify(self, request: CapturedRequest) -> Identity: ...
    def owns(self, job: Job | None, who: Identity) -> bool: ...
    def token_for(self, job: Job) -> str: ...
    def status_json(self, job: Job, root_path: str, token: str, now: float) -> dict[str, Any]: ...
    def apply_deadman(self, job: Job, now: float) -> Gen[Job]: ...
    def retry_later(self) -> int: ...


class _BadQuery(ValueError):
    pass


def _bad(detail: str) -> Response:
    return problem_response(400, "bad-request", "Bad Request", detail)


def _time(name: str, raw: str) -> float:
    try:
        dt = datetime.fromisoformat(raw.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise _BadQuery(f"{name} must be an RFC 3339 time such as 2026-11-28T12:00:00Z") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def encode_cursor(created_at: float, job_id: str) -> str:
    raw = f"{created_at!r}|{job_id}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        at, _, job_id = raw.partition("|")
        value = float(at)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _BadQuery("cursor is not one this server gave out") from None
    if not job_id or not math.isfinite(value):
        raise _BadQuery("cursor is not one this server gave out")
    return value, job_id


class Query:
    """The list's query string, validated."""

    def __init__(self, query_string: bytes) -> None:
        q = {k: v[0] for k, v in parse_qs(query_string.decode("latin-1")).items() if v}
        self.raw = q
        status = q.get("status")
        try:
            self.status = None if status is None else JobStatus(status)
        except ValueError:
            states = ", ".join(s.value for s in JobStatus)
            raise _BadQuery(f"status must be one of: {states}") from None
        self.route = q.get("route")
        after = q.get("created_after")
        before = q.get("created_before")
        # The status JSON shows milliseconds (rounded down): "after T" is from T + 1 ms.
        self.created_after = None if after is None else _time("created_after", after) + 0.001
        self.created_before = None if before is None else _time("created_before", before)
        raw_limit = q.get("limit", str(DEFAULT_LIMIT))
        try:
            self.limit = int(raw_limit)
        except ValueError:
            self.limit = 0
        if not 1 <= self.limit <= MAX_LIMIT:
            raise _BadQuery(f"limit must be a whole number from 1 to {MAX_LIMIT}")
        cursor = q.get("cursor")
        self.before = None if cursor is None else decode_cursor(cursor)

    def store_query(self) -> OwnedQuery:
        """What the store reads: one more job than a page, to know if another follows."""
        return OwnedQuery(
            self.limit + 1,
            self.before,
            self.status,
            self.route,
            self.created_after,
            self.created_before,
        )

    def next_query(self, cursor: str) -> str:
        params = {k: v for k, v in self.raw.items() if k != "cursor"}
        params["cursor"] = cursor
        return urlencode(params)


def serve_list(engine: Engine, request: CapturedRequest) -> Gen[Response]:
    """Answer ``GET {prefix}/`` (and ``HEAD``)."""
    if request.method not in ("GET", "HEAD"):
        return method_not_allowed(b"GET, HEAD")
    try:
        query = Query(request.query_string)
    except _BadQuery as exc:
        return _bad(str(exc))
    now = engine.clock()
    who = engine.identify(request)
    headers = [JSON, NO_STORE]
    # The owner rule of a status URL: the credential's hash, or the owner cookie's
    # (a session-cookie caller's jobs stay its own across session rewrites). Jobs
    # made before a key rotation carry an older key's hashes.
    owners = engine.signer.owner_hashes(who.material) if who.material else []
    if who.material and who.cookie:
        owners += engine.signer.owner_hashes(owner_cookie_material(who.cookie))
    if not owners:  # anonymous: its jobs are bearer capabilities, nobody's list
        return Response(200, headers, json_body({"jobs": [], "next": None}))
    found: dict[str, Job] = {}
    try:
        for owner in owners:
            for job in (yield from ops.list_owned(owner, now, query.store_query())):
                if engine.owns(job, who):  # exactly the status URL's check
                    found[job.id] = job
    except StoreError:
        return problem_response(
            503,
            "store-unavailable",
            "Service Unavailable",
            "The job store is unavailable; retry later.",
            retry_after=engine.retry_later(),
        )
    jobs = sorted(found.values(), key=lambda j: (j.created_at, j.id), reverse=True)
    page, more = jobs[: query.limit], len(jobs) > query.limit
    items = []
    for job in page:
        if not job.terminal:  # the deadman switch, as a status read applies it
            with contextlib.suppress(StoreError):
                job = yield from engine.apply_deadman(job, now)
        items.append(engine.status_json(job, request.root_path, engine.token_for(job), now))
    next_url = None
    if more:
        last = page[-1]
        cursor = encode_cursor(last.created_at, last.id)
        next_url = f"{request.root_path}{engine.options.prefix}/?{query.next_query(cursor)}"
        headers.append((b"link", f'<{next_url}>; rel="next"'.encode("latin-1")))
    return Response(200, headers, json_body({"jobs": items, "next": next_url}))
