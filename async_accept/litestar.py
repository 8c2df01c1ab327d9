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
from .cookie_rules import litestar_cookies
from .identity import object_principal
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


def _auth_middlewares(app: Any) -> list[Any]:
    """The app's ``AbstractAuthenticationMiddleware`` instances (the app's, its
    routers' and controllers', the marked handlers' own), built to be asked
    ``authenticate_request`` for a status read: the first that knows the caller wins."""
    try:
        from litestar.middleware.authentication import AbstractAuthenticationMiddleware
    except ImportError:  # pragma: no cover - Litestar is what this module wraps
        return []
    found: list[Any] = list(getattr(app, "middleware", None) or ())
    for route in getattr(app, "routes", None) or ():
        for handler in getattr(route, "route_handlers", None) or ():
            if marker_of(handler) or marker_of(getattr(handler, "fn", None)):
                resolve = getattr(handler, "resolve_middleware", None)
                found.extend(resolve() if callable(resolve) else handler.middleware or ())
    out: list[Any] = []
    seen: set[int] = set()
    for entry in found:
        cls = getattr(entry, "middleware", entry)  # DefineMiddleware or the class
        if not (isinstance(cls, type) and issubclass(cls, AbstractAuthenticationMiddleware)):
            continue
        if id(entry) in seen:
            continue
        seen.add(id(entry))
        try:
            args, kwargs = getattr(entry, "args", ()), getattr(entry, "kwargs", {})
            out.append(cls(_no_app, *args, **kwargs))
        except Exception:  # a middleware we cannot build: its callers fall back
            continue  # to their credentials
    return out


async def _no_app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
    """The "next app" of an authentication middleware only asked to authenticate."""


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
        self._door.engine.cookie_reader = litestar_cookies
        self._litestar = app
        self._authenticators: list[Any] | None = None

    def _principal(self, scope: Any) -> str | None:
        """Litestar's ``scope["user"]``, set by its authentication middleware."""
        return object_principal("litestar", scope.get("user"))

    async def _status_principal(self, scope: Any) -> str | None:
        """A status read is answered before Litestar's own middleware: ask the app's
        authentication middlewares who the caller is, as they would for a route."""
        from litestar.connection import ASGIConnection

        if self._authenticators is None:
            self._authenticators = _auth_middlewares(self._litestar)
        for middleware in self._authenticators:
            try:
                result = await middleware.authenticate_request(ASGIConnection(scope))
            except Exception:  # NotAuthorizedException: not this one
                continue
            principal = object_principal("litestar", getattr(result, "user", None))
            if principal is not None:
                return principal
        return None
