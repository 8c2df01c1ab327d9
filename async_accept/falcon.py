"""Falcon: wrap the app (``falcon.asgi.App`` or WSGI ``falcon.App``); responders
marked ``@long_running`` are found through the app's router.

::

    import falcon.asgi
    from async_accept import long_running
    from async_accept.falcon import wrap

    class Reports:
        @long_running(sla=30)
        async def on_post(self, req, resp): ...

    app = falcon.asgi.App()
    app.add_route("/reports", Reports())
    app = wrap(app, secret_key="...")   # the ASGI or WSGI middleware, as fits

Mark a responder (``on_post``, ``on_post_item``, ...) or the resource class
(all its responders). ``wrap`` picks :class:`AsyncAcceptMiddleware` for
ASGI apps and :class:`AsyncAcceptWSGIMiddleware` for WSGI ones.

Falcon keeps its routing tree in the router's ``_roots`` (nodes with
``uri_template``, ``resource``, ``method_map`` and ``children``); it is read
duck-typed, so importing this module never imports Falcon. A custom router
without that tree is not walked: name its routes with ``routes=[...]``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable
from typing import Any

from . import asgi, wsgi
from ._integrations import path_template
from .routes import RoutePattern, marker_of, method_marks, parse_route

__all__ = ["AsyncAcceptMiddleware", "AsyncAcceptWSGIMiddleware", "discover_routes", "wrap"]

_KNOWN = frozenset({"int", "float", "path", "uuid"})
# {name}, {name:conv}, {name:conv(args)}
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z_][A-Za-z0-9_]*)(?:\([^{}]*\))?)?\}")


def _template(uri_template: str) -> str:
    """Falcon's ``{id:int(min=1)}`` as a route pattern (other converters: any text)."""

    return path_template(uri_template, _FIELD, _KNOWN)


def _nodes(nodes: Iterable[Any]) -> Iterable[Any]:
    for node in nodes:
        yield node
        yield from _nodes(getattr(node, "children", None) or ())


def discover_routes(app: Any) -> list[RoutePattern]:
    """Patterns for the marked responders (or marked resources) of a Falcon app."""
    router = getattr(app, "_router", None)
    found: list[RoutePattern] = []
    for node in _nodes(getattr(router, "_roots", None) or ()):
        template = getattr(node, "uri_template", None)
        resource = getattr(node, "resource", None)
        method_map = getattr(node, "method_map", None)
        if not isinstance(template, str) or resource is None or not method_map:
            continue
        whole = marker_of(resource)
        own = {
            str(method).upper(): responder
            for method, responder in method_map.items()
            # Falcon's default responders (405, OPTIONS) are not the resource's: never jobs
            if getattr(responder, "__self__", None) is resource
        }
        marks = method_marks(own, whole, own.get)
        for opts, methods in marks.items():
            found.append(parse_route(f"{','.join(sorted(methods))} {_template(template)}", opts))
    return found


def _discover(app: Any, options: dict[str, Any]) -> dict[str, Any]:
    extra = options.pop("discover", None)

    def discover() -> list[RoutePattern]:
        return [*discover_routes(app), *(extra() if extra is not None else ())]

    return {**options, "discover": discover}


class AsyncAcceptMiddleware(asgi.AsyncAcceptMiddleware):
    """The ASGI middleware around a ``falcon.asgi.App``, finding its marked responders."""

    def __init__(self, app: Any, **options: Any) -> None:
        super().__init__(app, **_discover(app, options))


class AsyncAcceptWSGIMiddleware(wsgi.AsyncAcceptMiddleware):
    """The WSGI middleware around a ``falcon.App``, finding its marked responders."""

    def __init__(self, app: Any, **options: Any) -> None:
        super().__init__(app, **_discover(app, options))


def wrap(app: Any, **options: Any) -> AsyncAcceptMiddleware | AsyncAcceptWSGIMiddleware:
    """The middleware that fits ``app``: ASGI for ``falcon.asgi.App``, else WSGI."""
    if inspect.iscoroutinefunction(getattr(app, "__call__", None)):  # noqa: B004
        return AsyncAcceptMiddleware(app, **options)
    return AsyncAcceptWSGIMiddleware(app, **options)
