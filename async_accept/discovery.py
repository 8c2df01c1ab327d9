"""Find ``@long_running`` endpoints in a Starlette or FastAPI routing tree.

Duck-typed on purpose (routes with ``path``/``endpoint``/``methods``, mounts
with ``path``/``routes``) so that importing this module never imports
Starlette; it walks routers, mounted sub-apps and included FastAPI routers.
"""

from __future__ import annotations

import inspect
from typing import Any

from .routes import RouteOptions, RoutePattern, marker_of, method_marks, parse_route

__all__ = ["discover_routes", "flat_routes"]

_HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _routes_of(app: Any) -> list[Any]:
    seen = 0
    while app is not None and seen < 20:
        routes = getattr(app, "routes", None)
        if isinstance(routes, list):
            return routes
        app = getattr(app, "app", None)
        seen += 1
    return []


def _endpoint_marks(route: Any) -> list[tuple[frozenset[str] | None, RouteOptions]]:
    endpoint = getattr(route, "endpoint", None)
    if endpoint is None:
        return []
    methods = {m.upper() for m in getattr(route, "methods", None) or ()}
    if inspect.isclass(endpoint):
        # HTTPEndpoint: the class, or one of its method handlers, carries the mark.
        def handler_of(method: str) -> Any:
            handler = getattr(endpoint, method.lower(), None)
            if handler is None and method == "HEAD":
                handler = getattr(endpoint, "get", None)  # HTTPEndpoint answers HEAD with get
            return handler

        served = methods or {m for m in _HTTP_METHODS if handler_of(m) is not None}
        marks = method_marks(served, marker_of(endpoint), handler_of)
    else:
        served = methods or {"GET", "HEAD"}  # Starlette's default for a function route
        marks = method_marks(served, marker_of(endpoint), lambda _m: endpoint)
    return [(frozenset(ms), opts) for opts, ms in marks.items()]


def flat_routes(routes: list[Any]) -> list[Any]:
    """``routes`` with FastAPI's lazily included routers expanded (FastAPI keeps
    ``include_router`` results as one entry whose ``effective_route_contexts()``
    yields the routes with their prefixes; older versions copied them in)."""
    out: list[Any] = []
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if callable(contexts):
            out.extend(getattr(ctx, "starlette_route", None) or ctx for ctx in contexts())
        else:
            out.append(route)
    return out


def discover_routes(app: Any, prefix: str = "") -> list[RoutePattern]:
    """Patterns for every marked endpoint under ``app`` (mounts included)."""
    found: list[RoutePattern] = []
    for route in flat_routes(_routes_of(app)):
        path = getattr(route, "path", None)
        if not isinstance(path, str):
            continue
        if getattr(route, "endpoint", None) is not None:
            for methods, opts in _endpoint_marks(route):
                spec_methods = ",".join(sorted(methods)) if methods else "*"
                full = (prefix + path) or "/"
                found.append(parse_route(f"{spec_methods} {full}", opts))
        else:
            sub = getattr(route, "app", None)
            if sub is not None or getattr(route, "routes", None):
                found.extend(discover_routes(route if sub is None else sub, prefix + path))
    return found
