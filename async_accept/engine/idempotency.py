"""Idempotency-Key: parsing the header, scoping the key to its caller and
route, and the request fingerprint a repeat must match."""

from __future__ import annotations

import hashlib

from ..job import CapturedRequest, Headers, Job, JobStatus
from ..routes import RouteOptions
from .responses import Response, problem_response


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


def scoped_key(owner: str, method: str, path: str, key: str) -> str:
    """The stored key: one caller's key on one route, never another's."""
    h = hashlib.sha256()
    for part in (owner, method, path, key):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


def never_dispatched(job: Job) -> bool:
    """A job whose accept answered 503 because the executor refused it, or because
    the store's answer to its create was lost."""
    kind = str((job.error or {}).get("type", ""))
    return (
        job.status is JobStatus.FAILED
        and job.started_at is None
        and kind.endswith(("executor-unavailable", "store-unavailable"))
    )


def fingerprint_of(request: CapturedRequest) -> str:
    """What a repeat with the same key must carry: method, path, query, type, body."""
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


def idempotency_scope(
    request: CapturedRequest, route: RouteOptions, owner: str, extra: Headers
) -> tuple[str | None, str | None] | Response:
    """The stored key and the request's fingerprint (both None when the route
    ignores keys or the request has none), or the 400 for a missing or bad key."""
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
            idem_key = scoped_key(owner, request.method, request.path, key)
            fingerprint = fingerprint_of(request)
    return idem_key, fingerprint
