"""What the middleware answers itself: RFC 9457 problem details, the JSON of
its own answers and the helpers they share (timestamps, header handling)."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..job import CapturedRequest, Headers, Job
from ..problem_types import PROBLEM_BASE as PROBLEM_BASE

PROBLEM_CONTENT_TYPE = b"application/problem+json"


def problem_type(name: str) -> str:
    """The ``type`` URI of one of our problems; the last segment is ``name``."""
    return PROBLEM_BASE + name


def problem_dict(
    status: int, name: str, title: str, detail: str, **extensions: Any
) -> dict[str, Any]:
    d: dict[str, Any] = {
        "type": problem_type(name),
        "title": title,
        "status": status,
        "detail": detail,
    }
    d.update(extensions)
    return d


def rebase_problem_type(problem: dict[str, Any], base: str) -> dict[str, Any]:
    """``problem`` with its ``type`` under ``base`` (the app's ``problem_base``)."""
    kind = problem.get("type")
    if base == PROBLEM_BASE or not isinstance(kind, str) or not kind.startswith(PROBLEM_BASE):
        return problem
    return {**problem, "type": base + kind[len(PROBLEM_BASE) :]}


def problem_body(problem: dict[str, Any]) -> bytes:
    return json.dumps(problem, separators=(",", ":")).encode("utf-8")


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


def json_body(data: Any) -> bytes:
    """Compact JSON, UTF-8."""
    return json.dumps(data, separators=(",", ":")).encode("utf-8")


NO_STORE = (b"cache-control", b"no-store")
JSON = (b"content-type", b"application/json")


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
    hdrs: Headers = [(b"content-type", PROBLEM_CONTENT_TYPE), NO_STORE]
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


def unavailable(
    name: str, detail: str, retry_after: int, headers: Headers | None = None
) -> Response:
    """503: something the answer needs (the store, the executor) is down; retry later."""
    return problem_response(
        503, name, "Service Unavailable", detail, retry_after=retry_after, headers=headers
    )


def not_found() -> Response:
    """The one 404 for bad token, unknown job and wrong caller: byte-identical."""
    return Response(404, [(b"content-type", PROBLEM_CONTENT_TYPE), NO_STORE], _NOT_FOUND_BODY)


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


def rebase_problem(response: Response, base: str) -> Response:
    """A problem answer's ``type`` under ``base``, with ``Link: <type>;
    rel="describedby"`` when ``base`` is a documentation URL (https)."""
    if base == PROBLEM_BASE or (b"content-type", PROBLEM_CONTENT_TYPE) not in response.headers:
        return response
    problem = rebase_problem_type(json.loads(response.body), base)
    link = f'<{problem["type"]}>; rel="describedby"'.encode()
    headers = [*response.headers, (b"link", link)]
    return Response(response.status, headers, problem_body(problem))


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


def method_not_allowed(allow: bytes) -> Response:
    return problem_response(
        405,
        "method-not-allowed",
        "Method Not Allowed",
        f"Use one of: {allow.decode()}.",
        headers=[(b"allow", allow)],
    )
