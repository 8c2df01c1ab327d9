"""Flask: an extension in the usual Flask shape; ``@long_running`` views are
found through the app's URL map.

::

    from flask import Flask
    from async_accept import long_running, report_progress
    from async_accept.flask import AsyncAccept

    app = Flask(__name__)
    app.config["ASYNC_ACCEPT_STORE"] = "sqlite:///jobs.db"   # optional

    @app.post("/reports")
    @long_running(sla=30)
    def create_report(): ...

    AsyncAccept(app)   # or: async_accept = AsyncAccept(); async_accept.init_app(app)

Options come from keyword arguments, then from ``app.config`` keys
``ASYNC_ACCEPT_<OPTION>`` (``ASYNC_ACCEPT_SECRET_KEY``, ``ASYNC_ACCEPT_STORE``,
``ASYNC_ACCEPT_EXECUTOR``, ``ASYNC_ACCEPT_ROUTES``, ``ASYNC_ACCEPT_PREFIX``,
``ASYNC_ACCEPT_TTL``, ... one per middleware option), then from the
``ASYNC_ACCEPT_SECRET_KEY`` environment variable; the secret finally falls
back to Flask's own ``SECRET_KEY``. Bad options raise ConfigurationError in
``init_app``, not on the first request.

``init_app`` wraps ``app.wsgi_app`` with the WSGI middleware (the way Flask
apps take WSGI middleware), so the status URLs answer before Flask routes
anything, and jobs replay through Flask itself (request hooks, error
handlers and all). Marks are found on the first request, so blueprints
registered after ``init_app`` count: view functions (``@long_running`` above
or below ``@app.route``), blueprints' views, ``MethodView`` / ``View``
classes or their ``get``/``post``/... methods.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ._imports import import_optional
from ._integrations import CONFIG_PREFIX as CONFIG_PREFIX
from ._integrations import extension_options, options_from_config
from .errors import ConfigurationError
from .routes import RouteOptions, RoutePattern, marker_of, method_marks, parse_route
from .wsgi import AsyncAcceptMiddleware

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .options import OptionsKwargs

__all__ = [
    "AsyncAccept",
    "AsyncAcceptMiddleware",
    "discover_url_map",
    "options_from_config",
    "rule_pattern",
]


#: werkzeug converters our route syntax knows by the same name
_KNOWN = {"int": "int", "float": "float", "path": "path", "uuid": "uuid"}
# werkzeug's own rule syntax: <name>, <conv:name>, <conv(args):name>
_RULE_PARAM = re.compile(
    r"<(?:(?P<conv>[A-Za-z_][A-Za-z0-9_]*)(?:\((?P<args>.*?)\))?:)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)>"
)


def _template(rule: str) -> str:
    """``/items/<int:id>/<path:rest>`` as a route pattern: ``/items/{id:int}/{rest:path}``."""

    def sub(m: re.Match[str]) -> str:
        conv = _KNOWN.get(m.group("conv") or "")
        if conv in ("int", "float") and "signed" in (m.group("args") or ""):
            conv = None  # a signed number: our int/float don't take the sign
        return f"{{{m.group('name')}:{conv}}}" if conv else f"{{{m.group('name')}}}"

    return _RULE_PARAM.sub(sub, rule)


def rule_pattern(rule: Any, methods: Iterable[str], options: RouteOptions) -> RoutePattern:
    """The route pattern of a werkzeug ``Rule`` for ``methods``.

    The spec reads in our syntax (``POST /items/{id:int}``); matching uses the
    regex of each converter the rule was bound with (``<string(length=2):c>``,
    ``<any(a,b):x>``, custom converters), so a job is made exactly where Flask
    would route.
    """
    text: str = rule.rule
    names = sorted(methods)
    spec = f"{','.join(names)} {_template(text)}"
    converters: Mapping[str, Any] = getattr(rule, "_converters", None) or {}
    params = list(_RULE_PARAM.finditer(text))
    # Werkzeug routes "//work" (merge_slashes) and, with strict_slashes=False,
    # "/work/" to the same view: the pattern matches them too, so no spelling
    # of the path reaches a marked view outside a job.
    merge = bool(getattr(rule, "merge_slashes", False))
    strict = getattr(rule, "strict_slashes", True) is not False
    if (not params and strict and not merge) or not all(
        isinstance(getattr(converters.get(m.group("name")), "regex", None), str) for m in params
    ):
        return parse_route(spec, options)

    def static(piece: str) -> str:
        escaped = re.escape(piece)
        return escaped.replace("/", "/+") if merge else escaped

    parts: list[str] = []
    pos = 0
    for m in params:
        parts.append(static(text[pos : m.start()]))
        parts.append(f"(?:{converters[m.group('name')].regex})")
        pos = m.end()
    parts.append(static(text[pos:]))
    source = "".join(parts)
    if not strict:
        source = source.rstrip("+").rstrip("/") + "/*"
    try:
        regex = re.compile(source)
    except re.error:
        return parse_route(spec, options)
    return RoutePattern(spec, frozenset(names), _template(text), regex, options)


def _view_marks(view: Any, methods: Iterable[str]) -> dict[RouteOptions, list[str]]:
    """Which of ``methods`` the view marks long-running, grouped by options."""
    view_class = getattr(view, "view_class", None)
    whole = marker_of(view)
    if whole is None and view_class is not None:
        # The class itself, or View.dispatch_request (a plain View has no get/post).
        whole = marker_of(view_class) or marker_of(getattr(view_class, "dispatch_request", None))

    def handler_of(method: str) -> Any:
        if view_class is None:
            return view
        handler = getattr(view_class, method.lower(), None)
        if handler is None and method == "HEAD":
            handler = getattr(view_class, "get", None)  # MethodView answers HEAD with get
        return handler or getattr(view_class, "dispatch_request", None)

    return method_marks(methods, whole, handler_of)


def discover_url_map(app: Any) -> list[RoutePattern]:
    """Patterns for the marked views of a Flask app (blueprints included).

    OPTIONS is never a job (CORS preflights and Flask's automatic answer).
    """
    found: list[RoutePattern] = []
    views: Mapping[str, Any] = getattr(app, "view_functions", None) or {}
    url_map = getattr(app, "url_map", None)
    if url_map is None:
        return found
    for rule in url_map.iter_rules():
        view = views.get(rule.endpoint)
        if view is None:
            continue
        methods = sorted(m for m in (rule.methods or ()) if m != "OPTIONS")
        for opts, marked in _view_marks(view, methods).items():
            found.append(rule_pattern(rule, marked, opts))
    return found


def _flask_login_principal(app: Any) -> Any:
    """principal(environ): Flask-Login's ``current_user.get_id()``, when the app uses it.

    The middleware answers before Flask routes the request, so the user is
    loaded in a request context of its own (the app's user loader runs once
    more for the job URLs and marked routes, never for other requests).
    """

    def principal(environ: dict[str, Any]) -> str | None:
        if getattr(app, "login_manager", None) is None:
            return None  # Flask-Login not set up (init_app may come later)
        try:
            from flask import g

            with app.request_context(environ):
                if "_login_user" not in g:  # what flask_login.current_user does
                    app.login_manager._load_user()
                user = g.get("_login_user")
                if not getattr(user, "is_authenticated", False):
                    return None
                ident = user.get_id()
        except Exception:  # a failing user loader: no principal, never a 500
            return None
        return None if ident in (None, "") else f"flask-login:{ident}"

    return principal


def _proxy_fix(wsgi_app: Any) -> Any:
    """Werkzeug's ``ProxyFix`` wrapping the app, or None (duck-typed: no import)."""
    cls = type(wsgi_app)
    if cls.__name__ == "ProxyFix" and cls.__module__.startswith("werkzeug."):
        return wsgi_app if callable(getattr(wsgi_app, "app", None)) else None
    return None


class AsyncAccept:
    """The Flask extension: ``AsyncAccept(app, **options)``, or
    ``AsyncAccept(**options)`` then ``init_app(app)`` (application factories).

    Keyword options win over ``app.config``. After ``init_app`` the extension
    is ``app.extensions["async_accept"]`` and ``app.wsgi_app`` is the
    :class:`async_accept.wsgi.AsyncAcceptMiddleware`.
    """

    def __init__(self, app: Any = None, **options: Unpack[OptionsKwargs]) -> None:
        import_optional("flask", "The Flask integration", "flask")
        self.options = options
        self._middlewares: weakref.WeakKeyDictionary[Any, AsyncAcceptMiddleware] = (
            weakref.WeakKeyDictionary()
        )
        self._last: AsyncAcceptMiddleware | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Any) -> AsyncAcceptMiddleware:
        """Wrap ``app.wsgi_app``; raise ConfigurationError now for a bad option."""
        if app in self._middlewares:
            raise ConfigurationError(f"AsyncAccept.init_app({app!r}) was already called")
        opts = extension_options(app, self.options, discover_url_map)
        proxy_fix = _proxy_fix(app.wsgi_app)
        if proxy_fix is not None:
            # ProxyFix applied first (the order Flask's docs show): go inside it, so
            # the URLs we emit see what the app sees (X-Forwarded-Prefix, -Proto, -Host).
            middleware = AsyncAcceptMiddleware(proxy_fix.app, **opts)
            middleware.principal = _flask_login_principal(app)
            proxy_fix.app = middleware
        else:
            middleware = AsyncAcceptMiddleware(app.wsgi_app, **opts)
            middleware.principal = _flask_login_principal(app)
            app.wsgi_app = middleware
        app.extensions["async_accept"] = self
        self._middlewares[app] = middleware
        self._last = middleware
        return middleware

    def middleware_for(self, app: Any = None) -> AsyncAcceptMiddleware:
        """The middleware of ``app`` (default: Flask's ``current_app``)."""
        if app is None:
            from flask import current_app

            app = current_app._get_current_object()  # type: ignore[attr-defined]
        try:
            return self._middlewares[app]
        except KeyError:
            raise LookupError(f"AsyncAccept.init_app() was not called for {app!r}") from None

    @property
    def middleware(self) -> AsyncAcceptMiddleware:
        """The middleware of the (last) app this extension was initialized with."""
        if self._last is None:
            raise LookupError("AsyncAccept.init_app(app) has not been called yet")
        return self._last
