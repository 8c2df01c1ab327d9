"""Django: a middleware class for ``MIDDLEWARE``, configured from settings;
``@long_running`` views are found through Django's URL resolver.

What a Django project adds (two lines, plus the decorator on slow views)::

    # settings.py
    MIDDLEWARE = [
        "django.middleware.security.SecurityMiddleware",
        "async_accept.django.AsyncAcceptMiddleware",   # near the top
        ...
    ]
    ASYNC_ACCEPT = {"store": "sqlite:///async_accept_jobs.db"}  # optional

    # views.py
    from async_accept import long_running, report_progress

    class ReportView(View):
        @long_running(sla=30)
        def post(self, request): ...

It works unchanged under ``get_wsgi_application()`` (gunicorn, mod_wsgi, ...)
and ``get_asgi_application()`` (uvicorn, daphne, ...): the middleware is sync
and async capable and, under ASGI, never blocks the event loop on store I/O.

``ASYNC_ACCEPT`` holds the middleware options (``secret_key``, ``store``,
``executor``, ``routes``, ``prefix``, ``ttl``, ``sla``, ``wait``, ...; lower-
or upper-case keys). Without ``secret_key`` (and without the
``ASYNC_ACCEPT_SECRET_KEY`` environment variable) Django's ``SECRET_KEY`` is
used, with ``SECRET_KEY_FALLBACKS`` as older keys still accepted. Options are
checked when Django loads its middleware (``get_wsgi_application()``,
``get_asgi_application()``), so a bad one stops the start-up with a
ConfigurationError.

Jobs run in threads of the web process (``executor="thread"``, the default)
and replay the captured request through a Django WSGI handler: the whole
middleware stack runs again (sessions, authentication, CSRF) and the replay
marker lets the request through this middleware. That holds for both
deployments.

Marks are found on the first request: function views (under any decorator
that uses ``functools.wraps``: marking one marks every method but OPTIONS, or
only those Django's ``@require_http_methods``/``@require_POST`` lets through),
class-based views (the class: all its methods; or ``get``/``post``/...),
Django REST framework ``APIView`` classes or their methods, viewsets (the
class, or the actions a router maps: ``create``, ``list``, ``@action``
methods) and ``@api_view`` functions. ``path()`` converters and ``re_path()``
regexes match exactly as Django matches them; ``include()`` and
``i18n_patterns()`` prefixes are followed.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from .cookie_rules import django_asgi_cookies, django_cookies
from .django_auth import acaller_principal, caller_principal, capture
from .engine.ops import Gen
from .engine.responses import Response
from .engine.waiting import EventStream
from .errors import ConfigurationError, JobCanceled, MissingDependencyError
from .frontdoor import Accept, FrontDoor, Pass, Serve, blocking_stream
from .job import CapturedRequest
from .options import ENV_SECRET, build_options
from .precheck import accept_signal, open_gate
from .replay import REPLAY_KEY
from .routes import RouteOptions, RoutePattern, marker_of, method_marks
from .wsgi import latin1

try:
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.signals import setting_changed
except ImportError as exc:  # pragma: no cover - exercised in an environment without Django
    raise MissingDependencyError("The Django integration", "django", "django") from exc

__all__ = [
    "AsyncAcceptMiddleware",
    "discover_urlconf",
    "get_front_door",
    "options_from_settings",
    "reset",
]

log = logging.getLogger("async_accept")

SETTING = "ASYNC_ACCEPT"
_OPTION_NAMES = frozenset(inspect.signature(build_options).parameters)
#: what a function view answers when it is marked (any method, unless Django's
#: ``@require_http_methods``/``require_POST``/... limits them)
_FUNCTION_VIEW_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")

# --- settings -> options -----------------------------------------------------------


def options_from_settings() -> dict[str, Any]:
    """Middleware options from ``settings.ASYNC_ACCEPT`` (and Django's secret)."""
    raw = getattr(settings, SETTING, None)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigurationError(
            f"settings.{SETTING} must be a dict of options, e.g. "
            f"{SETTING} = {{'store': 'sqlite:///async_accept_jobs.db'}}"
        )
    opts: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).lower()
        if name not in _OPTION_NAMES:
            raise ConfigurationError(
                f"settings.{SETTING}: unknown option {key!r} "
                f"(known: {', '.join(sorted(_OPTION_NAMES))})"
            )
        opts[name] = value
    if opts.get("secret_key") is None and not os.environ.get(ENV_SECRET):
        opts.pop("secret_key", None)
        try:
            secret = settings.SECRET_KEY
        except ImproperlyConfigured:  # Django refuses an empty SECRET_KEY
            secret = None
        if secret:
            fallbacks = [k for k in getattr(settings, "SECRET_KEY_FALLBACKS", ()) or () if k]
            opts["secret_key"] = [secret, *fallbacks] if fallbacks else secret
    executor = opts.get("executor")
    if isinstance(executor, str) and executor.strip().lower().startswith("asyncio"):
        raise ConfigurationError(
            f"settings.{SETTING}['executor']={executor!r}: Django jobs replay through "
            "Django's WSGI handler, in threads; use executor='thread' (the default, "
            "'thread?max_workers=N' to size it) or an out-of-process executor"
        )
    return opts


# --- the front door, built once per process from settings --------------------------


class _DjangoWSGIApp:
    """The replay target: a Django WSGI handler, made on first use.

    Made lazily because building it loads the middleware, and loading this
    middleware is what builds the front door: made eagerly, it would recurse.
    """

    def __init__(self) -> None:
        self._handler: Any = None
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        handler = self._handler
        if handler is None:
            with self._lock:
                if self._handler is None:
                    from django.core.handlers.wsgi import WSGIHandler

                    self._handler = WSGIHandler()
                handler = self._handler
        return handler(environ, start_response)


_door: FrontDoor | None = None
_door_lock = threading.Lock()


def get_front_door() -> FrontDoor:
    """The process's front door, built from settings on first use (thread-safe).

    Raises ConfigurationError for bad settings, so the middleware's
    construction (Django's start-up) fails with the reason.
    """
    global _door
    door = _door
    if door is not None:
        return door
    with _door_lock:
        if _door is None:
            opts = options_from_settings()
            extra = opts.pop("discover", None)

            def discover() -> list[RoutePattern]:
                # Runs on the first request: the URLconf is importable by then.
                return [*discover_urlconf(), *(extra() if extra is not None else ())]

            _door = FrontDoor(_DjangoWSGIApp(), "wsgi", {**opts, "discover": discover})
            _door.engine.cookie_reader = django_asgi_cookies if _asgi[0] else django_cookies
        return _door


#: whether the middleware runs under Django's ASGI handler (its cookie reading differs)
_asgi = [False]


def reset() -> None:
    """Forget the front door built from settings, stopping its threads and
    closing its store; the next request builds a new one. Called when a test
    changes ``ASYNC_ACCEPT``, ``SECRET_KEY`` or ``ROOT_URLCONF`` with
    ``override_settings``."""
    global _door
    with _door_lock:
        door, _door = _door, None
    if door is not None:
        door.runtime.shutdown()
        door.store.close()


_WATCHED = frozenset({SETTING, "SECRET_KEY", "SECRET_KEY_FALLBACKS", "ROOT_URLCONF"})


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in _WATCHED:
        reset()


setting_changed.connect(_on_setting_changed, dispatch_uid="async_accept.django.reset")

# --- discovery -----------------------------------------------------------------------

_INLINE_FLAGS = re.compile(r"^\(\?([aiLmsux]+)\)")
_GROUP_NAME = re.compile(r"\(\?P([<=])([A-Za-z_][A-Za-z0-9_]*)")


def _unanchored_end(src: str) -> tuple[str, bool]:
    if src.endswith(r"\Z") and not src.endswith(r"\\Z"):
        return src[:-2], True
    if src.endswith("$") and not src.endswith(r"\$"):
        return src[:-1], True
    return src, False


def _piece(src: str, endpoint: bool, index: int) -> str:
    """One level's regex as a piece of the whole path's regex, with Django's semantics:
    ``^`` anchors at the start of what is left (else: found anywhere in it), an
    endpoint must end where its regex ends only when it ends with ``$``/``\\Z``."""
    flags = ""
    m = _INLINE_FLAGS.match(src)
    if m is not None:
        flags, src = m.group(1), src[m.end() :]
    anchored = src.startswith("^")
    if anchored:
        src = src[1:]
    closed = False
    if endpoint:
        src, closed = _unanchored_end(src)
    # Group names may repeat across levels (Django matches each level alone).
    src = _GROUP_NAME.sub(lambda g: f"(?P{g.group(1)}_l{index}_{g.group(2)}", src)
    body = f"(?{flags}:{src})" if flags else f"(?:{src})"
    if not anchored:
        body = ".*?" + body
    if endpoint and not closed:
        body += ".*"
    return body


def _level(pattern: Any, endpoint: bool, index: int) -> tuple[str, str, str | None]:
    """(regex piece, readable text, literal text or None) of one URL pattern level."""
    if hasattr(pattern, "prefix_default_language"):  # LocalePrefixPattern (i18n_patterns)
        codes = [code for code, _name in getattr(settings, "LANGUAGES", ())]
        default = settings.LANGUAGE_CODE
        options = [
            re.escape(f"{code}/")
            for code in codes
            if pattern.prefix_default_language or code != default
        ]
        if not pattern.prefix_default_language:
            options.append("")
        return f"(?:{'|'.join(options)})", "{lang}/", None
    text = str(pattern)
    if hasattr(pattern, "_route"):  # path()
        if not getattr(pattern, "converters", None):
            return re.escape(text), text, text  # without converters: a literal
        return _piece(pattern.regex.pattern, endpoint, index), text, None
    # re_path(): shown without its anchors
    shown = _INLINE_FLAGS.sub("", text).removeprefix("^")
    return _piece(pattern.regex.pattern, endpoint, index), _unanchored_end(shown)[0], None


def _closure_function(handler: Any) -> Any:
    """DRF's ``@api_view`` makes a class whose handlers call the function in a
    closure: that marked function (what the mark and the pre-check are on), or None."""
    if "api_view.<locals>" not in getattr(handler, "__qualname__", ""):
        return None
    for cell in getattr(handler, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # pragma: no cover - an empty cell
            continue
        if callable(value) and marker_of(value) is not None:
            return value
    return None


def _required_methods(view: Any) -> frozenset[str] | None:
    """The methods Django's ``@require_http_methods`` (``require_POST``, ``require_GET``,
    ``require_safe``) lets through to a function view, anywhere in its wrapper chain;
    None when nothing limits them."""
    allowed: frozenset[str] | None = None
    seen = 0
    while view is not None and seen < 10:
        code = getattr(view, "__code__", None)
        # functools.wraps copies the view's names onto the wrapper: know it by its code.
        if code is not None and code.co_name == "inner":
            cells = getattr(view, "__closure__", None) or ()
            for name, cell in zip(code.co_freevars, cells, strict=False):
                if name == "request_method_list":
                    try:
                        methods = frozenset(cell.cell_contents)  # compared as Django compares
                    except (ValueError, TypeError):  # pragma: no cover - an odd cell
                        break
                    allowed = methods if allowed is None else allowed & methods
        view = getattr(view, "__wrapped__", None)
        seen += 1
    return allowed


def _handlers(cls: Any, actions: Mapping[str, str] | None) -> Iterator[tuple[str, Any]]:
    """(HTTP method, handler) pairs a class-based view answers, OPTIONS excepted."""
    if actions is not None:  # a DRF viewset route: method -> action name
        mapping = dict(actions)
        if "get" in mapping and "head" not in mapping:
            mapping["head"] = mapping["get"]
        for method, action in mapping.items():
            if method != "options":
                yield method.upper(), getattr(cls, action, None)
        return
    for method in getattr(cls, "http_method_names", ()):
        if method == "options":
            continue
        handler = getattr(cls, method, None)
        if handler is None and method == "head":
            handler = getattr(cls, "get", None)  # View.setup() answers HEAD with get
        if handler is not None:
            yield method.upper(), handler


def view_marks(callback: Any) -> dict[RouteOptions, list[str]]:
    """Which HTTP methods of a URL pattern's view are long-running, by options
    (the marking rule of :func:`async_accept.routes.method_marks`)."""
    cls = getattr(callback, "view_class", None) or getattr(callback, "cls", None)
    whole = marker_of(callback)
    if cls is None:
        if whole is None:
            return {}
        allowed = _required_methods(callback)
        served = [m for m in _FUNCTION_VIEW_METHODS if allowed is None or m in allowed]
        return method_marks(served, whole, lambda _method: callback)
    handlers = dict(_handlers(cls, getattr(callback, "actions", None)))
    functions = {m: _closure_function(h) for m, h in handlers.items()}
    whole = whole or marker_of(cls)
    if whole is None:  # an @api_view function: the function is the view
        whole = next((marker_of(f) for f in functions.values() if f is not None), None)

    def handler_of(method: str) -> Any:
        return functions.get(method) or handlers.get(method)

    return method_marks(handlers, whole, handler_of)


def _walk(
    patterns: Iterable[Any], levels: list[tuple[str, str, str | None]]
) -> Iterator[RoutePattern]:
    for entry in patterns:
        if hasattr(entry, "url_patterns"):  # URLResolver (include())
            level = _level(entry.pattern, False, len(levels))
            yield from _walk(entry.url_patterns, [*levels, level])
            continue
        callback = getattr(entry, "callback", None)
        if callback is None:
            continue
        marks = view_marks(callback)
        if not marks:
            continue
        full = [*levels, _level(entry.pattern, True, len(levels))]
        text = "/" + "".join(t for _, t, _ in full)
        literal = all(lit is not None for _, _, lit in full)
        regex = None
        if not literal:
            try:
                regex = re.compile("/" + "".join(p for p, _, _ in full))
            except re.error as exc:
                log.warning(
                    "async_accept: can't match the URL pattern %r of %r (%s); name it in "
                    "%s['routes'] instead",
                    text,
                    callback,
                    exc,
                    SETTING,
                )
                continue
        for opts, methods in marks.items():
            names = sorted(methods)
            yield RoutePattern(f"{','.join(names)} {text}", frozenset(names), text, regex, opts)


def discover_urlconf(urlconf: str | None = None) -> list[RoutePattern]:
    """Patterns for every marked view under the URLconf (default: ROOT_URLCONF)."""
    from django.urls import get_resolver

    return list(_walk(get_resolver(urlconf).url_patterns, []))


# --- HttpRequest <-> the core ----------------------------------------------------------


class _RawCookie:
    """A Set-Cookie value kept byte for byte in ``HttpResponse.cookies``: Django's
    handlers emit each cookie with ``output(header="")``."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def output(self, attrs: Any = None, header: str = "Set-Cookie:") -> str:
        return f"{header} {self.value}"

    def OutputString(self, attrs: Any = None) -> str:
        return self.value


def _add_cookie(jar: Any, line: str) -> None:
    """One Set-Cookie line into ``HttpResponse.cookies``: as a Morsel when Django
    would write it back the same (the test client and middleware read those by
    name), else kept as it was sent: SimpleCookie.load drops what it can't parse
    (``Partitioned``, a raw JSON value) without a word."""
    from http.cookies import SimpleCookie

    parsed: SimpleCookie = SimpleCookie()
    with contextlib.suppress(Exception):
        parsed.load(line)
    if len(parsed) == 1:
        name, morsel = next(iter(parsed.items()))
        if name not in jar and morsel.output(header="").strip() == line:
            jar[name] = morsel
            return
    dict.__setitem__(jar, f"{line.split('=', 1)[0]}\x00{len(jar)}", _RawCookie(line))


def to_django(response: Response, method: str) -> Any:
    """The core's response as an HttpResponse (no body for HEAD, its length kept).

    Repeated headers are joined with commas, except Set-Cookie, which goes
    through the response's cookies (Django sends one header per cookie), each
    kept as it was sent.
    """
    from django.http import HttpResponse, StreamingHttpResponse

    if isinstance(response, EventStream):
        out: Any = StreamingHttpResponse(
            blocking_stream(get_front_door().runtime, response), status=response.status
        )
    else:
        out = HttpResponse(b"" if method == "HEAD" else response.body, status=response.status)
    del out["Content-Type"]  # only what the core (or the handler) said
    for k, v in response.headers:
        name, value = k.decode("latin-1"), v.decode("latin-1")
        if name.lower() == "set-cookie":
            _add_cookie(out.cookies, value.strip())
        elif name in out.headers:
            out.headers[name] = f"{out.headers[name]}, {value}"
        else:
            out.headers[name] = value
    if "Content-Length" not in out.headers and not isinstance(response, EventStream):
        out.headers["Content-Length"] = str(len(response.body))
    return out


def _logged(response: Any, request: Any) -> Any:
    """The middleware's own answer, logged as what it is. A 5xx here is a job's
    stored result replayed (or the store refusing): not this request failing in
    the app, so it is logged as a warning, never as Django's "Internal Server
    Error" (which reaches ``mail_admins`` and error trackers). 4xx stay Django's
    warnings."""
    if response.status_code >= 500:
        from django.utils.log import log_response

        log_response(
            "Job answer %s: %s",
            response.status_code,
            request.path,
            response=response,
            request=request,
            level="warning",
        )
    return response


def _is_replay(request: Any) -> bool:
    if REPLAY_KEY in request.META:
        return True
    scope = getattr(request, "scope", None)
    ext = scope.get("extensions") if isinstance(scope, Mapping) else None
    return isinstance(ext, Mapping) and REPLAY_KEY in ext


def _plan(door: FrontDoor, request: Any) -> Gen[Response] | Response | _Check | None:
    """The front door's decision as what this middleware does: None (pass the
    request on), an answer now, or an engine generator to drive."""
    if not door._discovered:
        door.discover()
    path: str = request.path_info
    meta = request.META
    prefer = meta.get("HTTP_PREFER") if door.prefer_async else None
    plan = door.plan(
        str(request.method).upper(),
        path,
        None if prefer is None else latin1(prefer),
        str(meta.get("CONTENT_LENGTH") or ""),
    )
    if isinstance(plan, Pass):
        return None
    if isinstance(plan, Serve):
        form: bytes = request.body if request.method == "POST" else b""  # dashboard forms
        return _Check(capture(request, path, form), plan.subpath)
    if isinstance(plan, Accept):
        body: bytes = request.body  # over DATA_UPLOAD_MAX_MEMORY_SIZE: Django answers 400
        if len(body) > door.max_body:
            return door.too_large()
        captured = capture(request, path, body)
        if plan.route.precheck:
            return _Check(captured)
        return door.engine.accept(captured, plan.route)
    return plan


class _Check:
    """Who is calling decides first. A marked view (no ``subpath``): the app
    decides (the rest of MIDDLEWARE and the view's decorators run; the view's
    wrapper stops the call with AcceptNow, which Django's
    ``convert_exception_to_response`` lets pass: it catches ``Exception``).
    Either way the caller's principal is established first, the same way
    for both, DRF's authenticators included (django_auth.py)."""

    __slots__ = ("request", "subpath")

    def __init__(self, request: CapturedRequest, subpath: str | None = None) -> None:
        self.request = request
        self.subpath = subpath


class AsyncAcceptMiddleware:
    """Django middleware: long-running views answer ``202 Accepted`` with a
    signed status URL served under the prefix (``/_jobs``) by this middleware.

    Put it near the top of ``MIDDLEWARE`` (after SecurityMiddleware): what sits
    above it also processes the 202 and status answers; everything runs again
    when the job replays.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        _asgi[0] = self.async_mode  # which of Django's cookie readings the app has
        if self.async_mode:
            markcoroutinefunction(self)
        get_front_door()  # bad settings stop the start-up here

    def __call__(self, request: Any) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        if _is_replay(request):
            return self.get_response(request)  # a job replaying: let it through
        door = get_front_door()
        plan = _plan(door, request)
        if plan is None:
            return self._pass(door, self.get_response(request))
        if isinstance(plan, _Check):
            # Who is calling, found here as a status read finds it (DRF's authenticators
            # included): not from inside the view, where a status read can't look.
            plan.request.principal = caller_principal(request)
        if isinstance(plan, _Check) and plan.subpath is not None:
            plan = door.engine.serve(plan.request, plan.subpath)
        elif isinstance(plan, _Check):
            with open_gate():
                try:
                    return self.get_response(request)  # the app answered: no job
                except BaseException as exc:
                    signal = accept_signal(exc)
                    if signal is None:
                        raise
                    plan = door.engine.accept(plan.request, signal.options)
        if isinstance(plan, Response):
            return _logged(to_django(door.answer(plan), request.method), request)
        if not door.runtime.started:
            door.runtime.start()
        return _logged(to_django(door.answer(door.runtime.drive(plan)), request.method), request)

    async def __acall__(self, request: Any) -> Any:
        if _is_replay(request):
            return await self.get_response(request)
        door = get_front_door()
        plan = _plan(door, request)
        if plan is None:
            return self._pass(door, await self.get_response(request))
        if isinstance(plan, _Check):
            plan.request.principal = await acaller_principal(request)  # as in __call__
        if isinstance(plan, _Check) and plan.subpath is not None:
            plan = door.engine.serve(plan.request, plan.subpath)
        elif isinstance(plan, _Check):
            with open_gate():
                try:
                    return await self.get_response(request)  # the app answered: no job
                except BaseException as exc:
                    signal = accept_signal(exc)
                    if signal is None:
                        raise
                    plan = door.engine.accept(plan.request, signal.options)
        if isinstance(plan, Response):
            return _logged(to_django(door.answer(plan), request.method), request)
        if not door.runtime.started:
            # Threads (executor, sweeper): jobs replay through the WSGI handler.
            import asyncio

            from .supervision import watch_stop_signals

            # On the server's main thread: uvicorn set its signal handlers over ours.
            watch_stop_signals(door.runtime)
            await asyncio.to_thread(door.runtime.start)
        return _logged(
            to_django(door.answer(await door.runtime.adrive(plan)), request.method), request
        )

    def process_exception(self, request: Any, exception: Exception) -> Any:
        """A job's view stopped by a cancel (``report_progress`` raised JobCanceled):
        the job ends ``canceled``; Django must not log it as a server error."""
        if isinstance(exception, JobCanceled) and _is_replay(request):
            from django.http import HttpResponse

            response = HttpResponse(b"", status=409)
            response._has_been_logged = True  # the job's outcome says it: canceled
            return response
        return None

    @staticmethod
    def _pass(door: FrontDoor, response: Any) -> Any:
        if door.prefer_async:
            from django.utils.cache import patch_vary_headers

            patch_vary_headers(response, ("Prefer",))
        return response
