"""FastAPI: the ASGI middleware, and the 202 contract in the OpenAPI document.

Two lines on an existing app::

    from async_accept.fastapi import AsyncAcceptMiddleware, document_async_accept

    app.add_middleware(AsyncAcceptMiddleware, secret_key="...")
    document_async_accept(app)  # or document_async_accept(app, include_status_routes=True)

``@long_running`` endpoints (above or below ``@app.post``, in included
routers with prefixes, in mounted sub-apps) are found by the middleware
itself, like on Starlette. :func:`document_async_accept` makes the generated
OpenAPI document tell the truth about them: each marked operation gains its
``202 Accepted`` response with the ``Location`` and ``Retry-After`` headers
and the job's status JSON schema, plus the problem+json answers the
middleware can give (413, 503, and the Idempotency-Key errors); with
``include_status_routes=True`` the status, result and cancel endpoints are
documented too.

FastAPI itself is imported only when documenting (to say clearly when it is
missing); the routing tree is read duck-typed, as in :mod:`async_accept.starlette`.
"""

from __future__ import annotations

import copy
import importlib
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .asgi import AsyncAcceptMiddleware
from .engine.responses import PROBLEM_BASE
from .errors import MissingDependencyError
from .routes import RouteOptions, RoutePattern, marker_of, parse_routes
from .starlette import flat_routes

__all__ = [
    "JOB_SCHEMAS",
    "AsyncAcceptMiddleware",
    "add_async_accept_openapi",
    "document_async_accept",
]

_DEFAULT_PREFIX = "/_jobs"
_REF = "#/components/schemas/"
_PROBLEM_CT = "application/problem+json"
_WRAPPED = "_async_accept_openapi"

# --- schemas ----------------------------------------------------------------------


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_DATETIME: dict[str, Any] = {"type": "string", "format": "date-time"}

#: The component schemas added to the document (names are prefixed so they
#: can't collide with an app's own models).
JOB_SCHEMAS: dict[str, dict[str, Any]] = {
    "AsyncAcceptProblem": {
        "title": "Problem",
        "description": "An RFC 9457 problem details object.",
        "type": "object",
        "properties": {
            "type": {
                "type": "string",
                "format": "uri-reference",
                "description": f"Identifies the problem (``{PROBLEM_BASE}<name>``).",
            },
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
        },
        "required": ["type", "title", "status", "detail"],
        "additionalProperties": True,
    },
    "AsyncAcceptJobLinks": {
        "title": "JobLinks",
        "type": "object",
        "properties": {
            "self": {"type": "string", "description": "The status URL."},
            "result": {
                "type": "string",
                "description": "The final resource, once the job completed.",
            },
        },
        "required": ["self"],
    },
    "AsyncAcceptJob": {
        "title": "Job",
        "description": "The status of a long-running request.",
        "type": "object",
        "properties": {
            "id": {"type": "string", "description": "Random job id (not the token)."},
            "status": {
                "type": "string",
                "enum": ["queued", "processing", "completed", "failed", "canceled"],
            },
            "created_at": _DATETIME,
            "updated_at": _DATETIME,
            "started_at": _nullable(_DATETIME),
            "finished_at": _nullable(_DATETIME),
            "expires_at": _DATETIME,
            "percent_complete": _nullable({"type": "number", "minimum": 0, "maximum": 100}),
            "message": _nullable({"type": "string"}),
            "estimated_time_remaining": _nullable(
                {"type": "number", "minimum": 0, "description": "Seconds."}
            ),
            "result_status": _nullable(
                {
                    "type": "integer",
                    "minimum": 100,
                    "maximum": 599,
                    "description": "The handler's HTTP status, once the job has a response.",
                }
            ),
            "attempt": {
                "type": "integer",
                "minimum": 1,
                "description": "1 on the first run; counts up when the job runs again.",
            },
            "links": {"$ref": _REF + "AsyncAcceptJobLinks"},
            "cancel_requested": {
                "type": "boolean",
                "description": "Present (true) once a cancel of the running job was asked for.",
            },
            "error": {
                "$ref": _REF + "AsyncAcceptProblem",
                "description": "Why the job failed (only when failed).",
            },
        },
        "required": [
            "id",
            "status",
            "created_at",
            "updated_at",
            "started_at",
            "finished_at",
            "expires_at",
            "percent_complete",
            "message",
            "estimated_time_remaining",
            "result_status",
            "attempt",
            "links",
        ],
    },
    "AsyncAcceptJobAccepted": {
        "title": "JobAccepted",
        "description": "The job a 202 Accepted created, with its status URL.",
        "allOf": [
            {"$ref": _REF + "AsyncAcceptJob"},
            {
                "type": "object",
                "properties": {"status_url": {"type": "string"}},
                "required": ["status_url"],
            },
        ],
    },
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF + name}


def _job_content() -> dict[str, Any]:
    return {"application/json": {"schema": _ref("AsyncAcceptJob")}}


def _problem(description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {_PROBLEM_CT: {"schema": _ref("AsyncAcceptProblem")}},
    }
    if headers:
        out["headers"] = {k.replace("_", "-"): v for k, v in headers.items()}
    return out


_LOCATION_STATUS = {
    "description": "The job's status URL (signed, unguessable; same credentials required).",
    "schema": {"type": "string", "format": "uri-reference"},
}
_LOCATION_RESULT = {
    "description": "The final resource: the handler's own Location (201/3xx) or the "
    "stored response at {status URL}/result.",
    "schema": {"type": "string", "format": "uri-reference"},
}
_RETRY_AFTER = {
    "description": "Seconds to wait before polling again (an integer, at least 1).",
    "schema": {"type": "integer", "minimum": 1},
}
_PREFERENCE_APPLIED = {
    "description": "The Prefer preferences honoured (respond-async, wait=N).",
    "schema": {"type": "string"},
}


#: The Idempotency-Key header's value: a bare token or an RFC 8941 string of
#: printable ASCII (quoted and escaped: at most 2 x 255 + 2 characters).
_IDEMPOTENCY_KEY = {
    "type": "string",
    "minLength": 1,
    "maxLength": 512,
    "pattern": r'^(?:[!#-+\--:<-\[\]-~]{1,255}|"(?:[ !#-\[\]-~]|\\["\\]){1,255}")$',
}


def _any_content() -> dict[str, Any]:
    """A replayed response: any media type (bytes as sent; generated clients read a file)."""
    return {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "*/*": {"schema": {}},
    }


def _without_bodies(responses: dict[str, Any]) -> dict[str, Any]:
    """The responses of a HEAD operation: the same statuses and headers, no content."""
    return {code: {k: v for k, v in r.items() if k != "content"} for code, r in responses.items()}


def _accepted_response() -> dict[str, Any]:
    return {
        "description": "Accepted: the request runs as a background job. Poll the status URL "
        "in Location; once the job completes it answers 303 See Other to the result.",
        "headers": {
            "Location": copy.deepcopy(_LOCATION_STATUS),
            "Retry-After": copy.deepcopy(_RETRY_AFTER),
            "Preference-Applied": copy.deepcopy(_PREFERENCE_APPLIED),
        },
        "content": {"application/json": {"schema": _ref("AsyncAcceptJobAccepted")}},
    }


_NOT_FOUND = "No job at this URL for these credentials (bad or tampered token, unknown "
_NOT_FOUND += "job, or other credentials: all answered the same)."
_GONE = "The status URL has expired (past the job's time to live)."
_UNAVAILABLE = "The job store is unavailable; retry later."


def _status_paths(
    prefix: str, tags: list[str], status_code_running: int
) -> dict[str, dict[str, Any]]:
    token = {
        "name": "token",
        "in": "path",
        "required": True,
        "description": "The signed job token from the 202's Location.",
        "schema": {"type": "string"},
    }

    def op(op_id: str, summary: str, responses: dict[str, Any], description: str) -> Any:
        return {
            "tags": list(tags),
            "summary": summary,
            "description": description + " Requires the credentials the job was created with.",
            "operationId": op_id,
            "parameters": [dict(token)],
            "responses": responses,
        }

    running: dict[str, Any] = {
        "description": "The job is queued or processing (or failed/canceled: see status).",
        "headers": {"Retry-After": copy.deepcopy(_RETRY_AFTER)},
        "content": _job_content(),
    }
    status_responses: dict[str, Any] = {
        "200": running,
        "303": {
            "description": "The job completed: Location is the final resource.",
            "headers": {"Location": copy.deepcopy(_LOCATION_RESULT)},
            "content": _job_content(),
        },
        "404": _problem(_NOT_FOUND),
        "410": _problem(_GONE),
        "503": _problem(_UNAVAILABLE, Retry_After=copy.deepcopy(_RETRY_AFTER)),
    }
    if status_code_running == 202:
        status_responses["202"] = {
            "description": "The job is queued or processing (OData style).",
            "headers": {
                "Retry-After": copy.deepcopy(_RETRY_AFTER),
                "Location": copy.deepcopy(_LOCATION_STATUS),
            },
            "content": _job_content(),
        }
        running["description"] = "The job failed or was canceled (see status)."

    def cancel_responses(delete: bool) -> dict[str, Any]:
        ended = {"204": {"description": "The job had ended: it is deleted (later reads 404)."}}
        return {
            **(ended if delete else {}),
            "200": {"description": "The queued job was canceled.", "content": _job_content()},
            "202": {
                "description": "Cancellation of the running job was requested "
                "(cancel_requested: true).",
                "content": _job_content(),
            },
            "404": _problem(_NOT_FOUND),
            "409": _problem("The job already finished (or ended while being canceled)."),
            "410": _problem(_GONE),
            "503": _problem(_UNAVAILABLE, Retry_After=copy.deepcopy(_RETRY_AFTER)),
        }

    def status_op(op_id: str, summary: str) -> Any:
        return op(
            op_id,
            summary,
            copy.deepcopy(status_responses),
            "The job's state and progress; 303 See Other to the result once completed.",
        )

    result_responses = {
        "200": {
            "description": "The handler's response, replayed as it was produced (status "
            "code, headers and body).",
            "content": _any_content(),
        },
        "304": {
            "description": "Not Modified: If-None-Match / If-Modified-Since matched the "
            "handler's own ETag / Last-Modified."
        },
        "default": {
            "description": "The handler's response with its own status (a 201, a 4xx, ...), "
            "replayed as it was produced.",
            "content": _any_content(),
        },
        "404": _problem(_NOT_FOUND),
        "409": _problem(
            "The job has not finished yet (Retry-After says when to look again), or it "
            "produced no response.",
            Retry_After=copy.deepcopy(_RETRY_AFTER),
        ),
        "410": _problem(_GONE),
        "503": _problem(_UNAVAILABLE, Retry_After=copy.deepcopy(_RETRY_AFTER)),
    }
    return {
        f"{prefix}/": {"get": _list_op(tags)},
        f"{prefix}/{{token}}": {
            "get": status_op("async_accept_job_status", "Job status"),
            "head": status_op("async_accept_job_status_head", "Job status (headers only)"),
            "delete": op(
                "async_accept_job_cancel",
                "Cancel the job",
                cancel_responses(delete=True),
                "Queued: canceled at once. Processing: cancellation is requested. "
                "Ended: the job and its result are deleted.",
            ),
        },
        f"{prefix}/{{token}}/result": {
            "get": op(
                "async_accept_job_result",
                "Job result",
                copy.deepcopy(result_responses),
                "The stored response of the finished job.",
            ),
            "head": op(
                "async_accept_job_result_head",
                "Job result (headers only)",
                _without_bodies(copy.deepcopy(result_responses)),
                "The stored response's status and headers, without its body.",
            ),
        },
        f"{prefix}/{{token}}/cancel": {
            "post": op(
                "async_accept_job_cancel_post",
                "Cancel the job",
                cancel_responses(delete=False),
                "Same as DELETE on the status URL, except that an ended job answers 409.",
            )
        },
    }


def _list_op(tags: list[str]) -> dict[str, Any]:
    """``GET {prefix}/``: the caller's own jobs (PROTOCOL.md section 12)."""

    def query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": name,
            "in": "query",
            "required": False,
            "description": description,
            "schema": schema,
        }

    time = {"type": "string", "format": "date-time"}
    states = ["queued", "processing", "completed", "failed", "canceled"]
    return {
        "tags": list(tags),
        "summary": "My jobs",
        "description": "The jobs created with the caller's credentials, newest first (an "
        'anonymous caller sees none). Pages follow Link: <...>; rel="next".',
        "operationId": "async_accept_job_list",
        "parameters": [
            query("status", "Only jobs in this state.", {"type": "string", "enum": states}),
            query("route", "Only jobs of this route, as 'METHOD /path'.", {"type": "string"}),
            query("created_after", "Only jobs created after this time.", dict(time)),
            query("created_before", "Only jobs created before this time.", dict(time)),
            query(
                "limit",
                "Jobs per page.",
                {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
            ),
            query(
                "cursor",
                "Where the page starts (from the previous page's next link).",
                {"type": "string"},
            ),
        ],
        "responses": {
            "200": {
                "description": "A page of the caller's jobs.",
                "headers": {
                    "Link": {
                        "description": 'The next page: <url>; rel="next" (absent on the last).',
                        "schema": {"type": "string"},
                    }
                },
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["jobs", "next"],
                            "properties": {
                                "jobs": {"type": "array", "items": _ref("AsyncAcceptJob")},
                                "next": _nullable({"type": "string", "format": "uri-reference"}),
                            },
                        }
                    }
                },
            },
            "400": _problem("A filter, limit or cursor is not valid."),
            "503": _problem(_UNAVAILABLE, Retry_After=copy.deepcopy(_RETRY_AFTER)),
        },
    }


# --- which operations are long-running ----------------------------------------------

_PARAM = re.compile(r"\{[^{}]*\}")


def _shape(path: str) -> str:
    """``/reports/{id:int}`` and ``/reports/{report_id}`` both become ``/reports/{}``."""
    return _PARAM.sub("{}", path)


def _middleware_options(app: Any) -> dict[str, Any]:
    """The keyword arguments ``app.add_middleware(AsyncAcceptMiddleware, ...)`` was given."""
    for m in getattr(app, "user_middleware", None) or ():
        cls = getattr(m, "cls", None)
        if isinstance(cls, type) and issubclass(cls, AsyncAcceptMiddleware):
            kwargs = getattr(m, "kwargs", None)
            if kwargs is None:
                kwargs = getattr(m, "options", None)  # Starlette < 0.35
            return dict(kwargs or {})
    return {}


def _api_routes(app: Any) -> Iterable[Any]:
    # Included APIRouters carry their prefixes (flat_routes expands the lazy
    # ones of recent FastAPI); mounted sub-apps have their own OpenAPI
    # document, so they are not walked.
    for route in flat_routes(list(getattr(app, "routes", None) or ())):
        if isinstance(getattr(route, "path_format", None), str) and getattr(
            route, "include_in_schema", True
        ):
            yield route


def marked_operations(
    app: Any, patterns: Sequence[RoutePattern] = ()
) -> list[tuple[str, str, RouteOptions]]:
    """``(openapi_path, method, options)`` of each long-running operation of ``app``:
    endpoints marked with ``@long_running`` and routes named by ``patterns``."""
    out: list[tuple[str, str, RouteOptions]] = []
    for route in _api_routes(app):
        path: str = route.path_format
        methods = sorted(m.upper() for m in (getattr(route, "methods", None) or ()))
        endpoint = getattr(route, "endpoint", None)
        mark = marker_of(endpoint) if endpoint is not None else None
        for method in methods:
            opts = mark
            if opts is None:
                for p in patterns:
                    if (p.methods is None or method in p.methods) and _shape(p.path) == _shape(
                        path
                    ):
                        opts = p.options
                        break
            if opts is not None:
                out.append((path, method, opts))
    return out


# --- patching the document --------------------------------------------------------------


def _add_header_param(operation: dict[str, Any], param: dict[str, Any]) -> None:
    params: list[dict[str, Any]] = operation.setdefault("parameters", [])
    name = param["name"].lower()
    if not any(p.get("in") == "header" and str(p.get("name", "")).lower() == name for p in params):
        params.append(param)


def _document_operation(operation: dict[str, Any], opts: RouteOptions) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    accepted = responses.setdefault("202", {})
    fresh = _accepted_response()
    accepted.setdefault("description", fresh["description"])
    if accepted.get("description") in ("Successful Response", ""):
        accepted["description"] = fresh["description"]
    headers = accepted.setdefault("headers", {})
    for name, header in fresh["headers"].items():
        headers.setdefault(name, header)
    accepted.setdefault("content", fresh["content"])
    responses.setdefault(
        "413", _problem("The request body is larger than the configured limit; no job made.")
    )
    responses.setdefault(
        "503",
        _problem(
            "The job could not be recorded or dispatched; retry later (no job was made).",
            Retry_After=copy.deepcopy(_RETRY_AFTER),
        ),
    )
    _add_header_param(
        operation,
        {
            "name": "Prefer",
            "in": "header",
            "required": False,
            "description": "RFC 7240: `respond-async` to always get the 202, `wait=N` to "
            "get the direct response if the job finishes within N seconds.",
            "schema": {"type": "string"},
        },
    )
    if opts.idempotency == "ignore":
        return
    required = opts.idempotency == "required"
    _add_header_param(
        operation,
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": required,
            "description": "Repeats with the same key and payload get the same job: "
            "1 to 255 printable ASCII characters, as a bare token (no spaces, quotes, "
            'backslashes, commas or semicolons) or an RFC 8941 string such as "a b".',
            "schema": copy.deepcopy(_IDEMPOTENCY_KEY),
        },
    )
    responses.setdefault(
        "400",
        _problem(
            "Invalid Idempotency-Key" + (", or none given (required here)." if required else ".")
        ),
    )
    responses.setdefault(
        "409",
        _problem(
            "A request with this Idempotency-Key is still being accepted.",
            Retry_After=copy.deepcopy(_RETRY_AFTER),
        ),
    )
    reused = responses.setdefault(
        "422", {"description": "This Idempotency-Key was used with another payload."}
    )
    reused.setdefault("content", {}).setdefault(_PROBLEM_CT, {"schema": _ref("AsyncAcceptProblem")})


def add_async_accept_openapi(
    schema: dict[str, Any],
    app: Any,
    *,
    include_status_routes: bool = False,
    prefix: str | None = None,
    tags: Sequence[str] = ("async-accept",),
) -> dict[str, Any]:
    """Add the 202 contract of ``app``'s long-running routes to an OpenAPI
    ``schema`` (as ``app.openapi()`` or ``fastapi.openapi.utils.get_openapi``
    made it), in place; returns it. For apps that build their own document."""
    mw = _middleware_options(app)
    pfx = (prefix if prefix is not None else mw.get("prefix", _DEFAULT_PREFIX)).rstrip("/")
    patterns = parse_routes(mw.get("routes"))
    paths: dict[str, Any] = schema.setdefault("paths", {})
    for path, method, opts in marked_operations(app, patterns):
        operation = paths.get(path, {}).get(method.lower())
        if isinstance(operation, dict):
            _document_operation(operation, opts)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, component in JOB_SCHEMAS.items():
        components.setdefault(name, copy.deepcopy(component))
    if include_status_routes:
        running = 202 if mw.get("status_code_running") == 202 else 200
        for path, item in _status_paths(pfx, list(tags), running).items():
            paths.setdefault(path, {}).update(item)
    return schema


def _require_fastapi() -> None:
    try:
        importlib.import_module("fastapi")
    except ImportError as exc:
        raise MissingDependencyError("The FastAPI integration", "fastapi", "fastapi") from exc


def document_async_accept(
    app: Any,
    *,
    include_status_routes: bool = False,
    prefix: str | None = None,
    tags: Sequence[str] = ("async-accept",),
) -> None:
    """Make ``app.openapi()`` (and so ``/openapi.json`` and ``/docs``) show the
    202 contract of the long-running routes.

    Wraps ``app.openapi``; the document is built (and cached by FastAPI) on
    first use, so routes and routers added later are included. ``prefix``
    defaults to the one given to the middleware; ``include_status_routes``
    documents ``GET/HEAD/DELETE {prefix}/{token}``, ``GET {prefix}/{token}/result``
    and ``POST {prefix}/{token}/cancel`` under ``tags``. Calling it again
    replaces the earlier settings.
    """
    _require_fastapi()
    current: Callable[[], dict[str, Any]] = app.openapi
    original: Callable[[], dict[str, Any]] = getattr(current, _WRAPPED, current)

    patched: list[int] = []

    def openapi() -> dict[str, Any]:
        # FastAPI caches the document (and rebuilds it when routes change):
        # patch each document it builds once.
        schema = original()
        if not patched or patched[-1] != id(schema):
            add_async_accept_openapi(
                schema, app, include_status_routes=include_status_routes, prefix=prefix, tags=tags
            )
            patched[:] = [id(schema)]
        return schema

    setattr(openapi, _WRAPPED, original)
    app.openapi_schema = None  # a document built before this call lacks the 202s
    app.openapi = openapi
