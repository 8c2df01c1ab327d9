"""RFC 9457 problem details, as produced by the middleware itself."""

from __future__ import annotations

import json
from typing import Any

PROBLEM_BASE = "urn:async-accept:problem:"

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


def problem_body(problem: dict[str, Any]) -> bytes:
    return json.dumps(problem, separators=(",", ":")).encode("utf-8")
