"""Quart: an extension in the Flask style; ``@long_running`` views are found
through the app's URL map.

::

    from quart import Quart
    from async_accept import long_running
    from async_accept.quart import AsyncAccept

    app = Quart(__name__)

    @app.post("/reports")
    @long_running(sla=30)
    async def create_report(): ...

    AsyncAccept(app)          # or: async_accept = AsyncAccept(); async_accept.init_app(app)

Options come from keyword arguments, then from ``app.config`` keys
``ASYNC_ACCEPT_<OPTION>`` (``ASYNC_ACCEPT_SECRET_KEY``, ``ASYNC_ACCEPT_STORE``,
``ASYNC_ACCEPT_ROUTES``, ...), then from the ``ASYNC_ACCEPT_SECRET_KEY``
environment variable; the secret falls back to the app's ``SECRET_KEY``.
``init_app`` wraps ``app.asgi_app`` (the way Quart and Flask apps take
middleware), so the status URLs answer before Quart routes anything.

Marks work on view functions (above or below the route decorator), on
blueprints' views and on ``MethodView`` classes or their methods. Quart's URL
map is werkzeug's, so it is read by the Flask integration's duck-typed
:func:`async_accept.flask.discover_url_map` (matching with each rule's own
converter regexes); importing this module never imports Quart or Flask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._imports import import_optional
from ._integrations import extension_options, options_from_config
from .asgi import AsyncAcceptMiddleware
from .errors import ConfigurationError
from .flask import discover_url_map

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .options import OptionsKwargs

__all__ = ["AsyncAccept", "AsyncAcceptMiddleware", "discover_url_map", "options_from_config"]


class AsyncAccept:
    """The Quart extension: ``AsyncAccept(app, **options)``, or
    ``AsyncAccept(**options)`` then ``init_app(app)`` (application factories).

    Keyword options win over ``app.config``. After ``init_app`` the extension
    is ``app.extensions["async_accept"]`` and ``app.asgi_app`` is the
    :class:`async_accept.asgi.AsyncAcceptMiddleware`.
    """

    def __init__(self, app: Any = None, **options: Unpack[OptionsKwargs]) -> None:
        import_optional("quart", "The Quart integration", "quart")
        self.options = options
        self._middleware: AsyncAcceptMiddleware | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Any) -> AsyncAcceptMiddleware:
        """Wrap ``app.asgi_app``; raise ConfigurationError now for a bad option."""
        if isinstance(app.asgi_app, AsyncAcceptMiddleware):
            raise ConfigurationError(f"AsyncAccept.init_app({app!r}) was already called")
        opts = extension_options(app, self.options, discover_url_map)
        middleware = AsyncAcceptMiddleware(app.asgi_app, **opts)
        app.asgi_app = middleware
        app.extensions["async_accept"] = self
        self._middleware = middleware
        return middleware

    @property
    def middleware(self) -> AsyncAcceptMiddleware:
        """The middleware of the (last) app this extension was initialized with."""
        if self._middleware is None:
            raise LookupError("AsyncAccept.init_app(app) has not been called yet")
        return self._middleware
