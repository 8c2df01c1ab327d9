"""Litestar: wrap the app; ``@long_running`` route handlers are found by themselves.

::

    from litestar import Litestar, post
    from async_accept import long_running
    from async_accept.litestar import AsyncAcceptMiddleware

    @post("/reports")
    @long_running(sla=30)
    async def create_report(data: dict[str, str]) -> dict[str, str]: ...

    app = AsyncAcceptMiddleware(Litestar([create_report]), secret_key="...")

The mark may sit above or below ``@post`` and on controller methods. The app
is wrapped whole rather than listed in ``Litestar(middleware=[...])``:
Litestar runs its middleware only for requests that matched a route, so the
status URLs under the prefix could not be answered from there.

Read duck-typed (``app.routes``, each with ``path`` and ``route_handlers``
carrying ``http_methods`` and ``fn``): importing this module never imports
Litestar.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from . import asgi
from ._integrations import path_template
from .routes import RoutePattern, marker_of, method_marks, parse_route

__all__ = ["AsyncAcceptMiddleware", "discover_routes"]

_KNOWN = frozenset({"str", "int", "float", "path", "uuid"})
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z_][A-Za-z0-9_]*))?\}")


def _template(path: str) -> str:
    """Litestar's ``{id:int}`` as a route pattern (types we can't match: any segment)."""

    return path_template(path, _PARAM, _KNOWN)


def _method_names(methods: Iterable[Any]) -> list[str]:
    return sorted(str(getattr(m, "value", m)).upper() for m in methods)


def discover_routes(app: Any) -> list[RoutePattern]:
    """Patterns for the ``@long_running`` handlers of a Litestar app."""
    found: list[RoutePattern] = []
    for route in getattr(app, "routes", None) or ():
        path = getattr(route, "path", None)
        handlers = getattr(route, "route_handlers", None)
        if not isinstance(path, str) or not handlers:
            continue
        for handler in handlers:
            fn = getattr(handler, "fn", None)
            whole = marker_of(handler) or marker_of(fn)
            if whole is None:
                continue
            served = _method_names(getattr(handler, "http_methods", None) or ())
            for opts, methods in method_marks(served, whole, _constant(fn)).items():
                found.append(parse_route(f"{','.join(sorted(methods))} {_template(path)}", opts))
    return found


def _constant(value: Any) -> Callable[[str], Any]:
    return lambda _method: value


class AsyncAcceptMiddleware(asgi.AsyncAcceptMiddleware):
    """The ASGI middleware around a Litestar app, finding its marked handlers.

    Same options as :class:`async_accept.asgi.AsyncAcceptMiddleware`; patterns
    in ``routes=[...]`` and a ``discover=`` callable add to what is found.
    """

    def __init__(self, app: Any, **options: Any) -> None:
        extra = options.pop("discover", None)

        def discover() -> list[RoutePattern]:
            return [*discover_routes(app), *(extra() if extra is not None else ())]

        super().__init__(app, discover=discover, **options)
