"""What every front door shares: building the runtime from options, and the
routing decision (``FrontDoor.plan``): pass the request on, serve a URL below
the prefix, accept it as a job, or answer now. Written once for the ASGI, WSGI
and Django middlewares, which only translate their framework's request into
the few facts the decision needs. No framework is imported here."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from .cookie_rules import reader_for_app
from .dashboard import Marked, SignInLimiter, guard_for, serve_dashboard
from .engine import Engine, Gen
from .engine.responses import Response, problem_response, rebase_problem
from .engine.waiting import SSE_KEEPALIVE, EventStream
from .errors import ConfigurationError
from .executors import resolve_executor
from .job import CapturedRequest
from .options import Options, build_options, check_route_webhook
from .ownership import RouteOwnership
from .routes import RouteOptions, RoutePattern, RouteTable
from .runtime import AppKind, Runtime
from .stores import resolve_store

_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class Pass:
    """Not ours: call the app (adding ``Vary: Prefer`` when ``prefer_async`` is on)."""

    vary_prefer: bool


@dataclass(frozen=True, slots=True)
class Serve:
    """Below the prefix: drive ``engine.serve(request, subpath)``."""

    subpath: str


@dataclass(frozen=True, slots=True)
class Accept:
    """A long-running route: read the body, drive ``engine.accept(request, route)``."""

    route: RouteOptions


#: What to do with a request; a Response is answered as it is (a bad Content-Length).
Plan = Pass | Serve | Accept | Response

#: Every front door built in this process: a remote worker finds the imported app's here.
FRONT_DOORS: weakref.WeakSet[FrontDoor] = weakref.WeakSet()


class FrontDoor:
    """Shared state of a middleware instance."""

    def __init__(self, app: Any, kind: AppKind, options: Mapping[str, Any]) -> None:
        if app is None or not callable(app):
            raise ConfigurationError(
                f"AsyncAcceptMiddleware needs the {kind.upper()} application to wrap as its "
                "first argument"
            )
        self.app = app
        self.kind: AppKind = kind
        try:
            self.options: Options = build_options(**options)
        except TypeError as exc:
            raise ConfigurationError(f"AsyncAcceptMiddleware: {exc}") from exc
        self.store = resolve_store(self.options.store)
        self.executor = resolve_executor(self.options.executor, kind)
        if getattr(self.executor, "out_of_process", False) and not getattr(
            self.store, "shared", False
        ):
            raise ConfigurationError(
                f"executor={getattr(self.executor, 'name', self.executor)!r} runs jobs in "
                "other processes, which can't see an in-memory store: use a shared store "
                "such as 'redis://localhost:6379/0'"
            )
        self.engine = Engine(self.options)
        # Noted in each job: a PostgreSQL store wakes its store workers only for theirs.
        self.engine.executor_name = str(
            getattr(self.executor, "name", type(self.executor).__name__)
        )
        if kind == "wsgi":
            # A held status read or event stream holds a server thread: its own cap.
            self.engine.status_wait_cap = min(self.options.max_wait, self.options.wsgi_max_wait)
            self.engine.stream_limit = self.options.wsgi_max_wait
        self.runtime = Runtime(self.engine, self.store, self.executor, kind)
        self.runtime.app = app
        self._mount_dashboard()
        self.routes = RouteTable(self.options.routes)
        #: the sweep and store-as-queue workers run only jobs of routes this app marks
        self.engine.owns_job = RouteOwnership(self).owns
        self.prefix = self.options.prefix
        self.prefix_len = len(self.prefix)
        self.prefer_async = self.options.prefer_async
        self.max_body = self.options.max_body_size
        self.default_route: RouteOptions = self.options.default_route
        self._pass = Pass(vary_prefer=self.prefer_async)
        self._discovered = False
        self._discover_lock = threading.Lock()
        FRONT_DOORS.add(self)

    def _mount_dashboard(self) -> None:
        """Route ``{prefix}/dashboard`` to the dashboard when it is on."""
        opts = self.options
        guard = guard_for(opts.dashboard, opts.health, opts.health_token)
        if guard is None:
            return
        engine, observer, feed = self.engine, self.runtime.observer, self.runtime.feed
        limiter = SignInLimiter()

        def dashboard(request: CapturedRequest) -> Gen[Response]:
            # The dispatcher is looked up per request: a forked child makes its own.
            return serve_dashboard(
                engine,
                request,
                observer.dispatcher,
                guard,
                feed=feed,
                routes=self.marked_routes,
                limiter=limiter,
            )

        engine.dashboard = dashboard

    # -- marked routes --------------------------------------------------------------

    def marked_routes(self) -> Marked:
        """The marked routes as configured now, and the sla of those that set none."""
        sla = self.default_route.sla
        return Marked(list(self.routes.patterns), self.options.sla if sla is None else sla)

    def add_routes(self, patterns: Iterable[RoutePattern]) -> None:
        for p in patterns:
            # A decorated route's webhook= is only seen now, at discovery.
            check_route_webhook(self.options.webhook_secret, p.options, p.spec)
            self.routes.add(p)

    def discover(self, app_hint: Any = None) -> None:
        """Find ``@long_running`` endpoints once (framework hooks, ``discover=``)."""
        with self._discover_lock:
            if self._discovered:
                return
            if self.options.discover is not None:
                self.add_routes(self.options.discover())
            if app_hint is not None and hasattr(app_hint, "routes"):
                from .discovery import discover_routes

                self.add_routes(discover_routes(app_hint))
            self._discovered = True

    def fast_methods(self) -> frozenset[str] | None:
        """Methods a request must have to possibly be ours outside the prefix,
        or None when every request needs the full check (any-method patterns,
        ``prefer_async``, discovery not done yet). The front doors use it to
        let everything else through with one set probe and one substring test."""
        if not self._discovered or self.prefer_async:
            return None
        methods: set[str] = set()
        for p in self.routes.patterns:
            if p.methods is None:
                return None
            methods.update(p.methods)
        return frozenset(methods)

    def route_for(self, method: str, path: str, prefer: bytes | None) -> RouteOptions | None:
        opts = self.routes.lookup(method, path) if self.routes else None
        if (
            opts is None
            and self.prefer_async
            and prefer is not None
            and b"respond-async" in (prefer.lower())
        ):
            from .prefer import parse_prefer

            if "respond-async" in parse_prefer([prefer.decode("latin-1")]):
                return self.default_route
        return opts

    def plan(
        self, method: str, path: str, prefer: bytes | None, content_length: str | None = None
    ) -> Plan:
        """The routing decision for a request (``path`` without the root path).

        ``prefer`` is the Prefer header, needed only when ``prefer_async`` is on;
        ``content_length`` the Content-Length header ("" when absent) for doors
        that refuse a bad or too large one before reading the body, None for
        doors that check the body as it streams in (ASGI).
        """
        if self.is_ours(path):
            if method == "POST" and content_length is not None:  # the dashboard's forms
                refused = self._length_refusal(content_length)
                if refused is not None:
                    return refused
            return Serve(path[self.prefix_len :])
        route = self.route_for(method, path, prefer)
        if route is None:
            return self._pass
        if content_length is not None:
            refused = self._length_refusal(content_length)
            if refused is not None:
                return refused
        return Accept(route)

    def _length_refusal(self, raw: str) -> Response | None:
        raw = raw.strip()
        if not raw:
            return None
        try:
            length = int(raw)
        except ValueError:
            return self.bad_request("Invalid Content-Length.")
        if length < 0:
            return self.bad_request("Invalid Content-Length.")
        if length > self.max_body:
            return self.too_large()
        return None

    def is_ours(self, path: str) -> bool:
        return path.startswith(self.prefix) and (
            len(path) == self.prefix_len or path[self.prefix_len] == "/"
        )

    def too_large(self) -> Response:
        return problem_response(
            413,
            "request-too-large",
            "Payload Too Large",
            f"The request body is larger than the {self.max_body} bytes this endpoint takes.",
        )

    def bad_request(self, detail: str) -> Response:
        return problem_response(400, "bad-request", "Bad Request", detail)

    def answer(self, response: _R) -> _R:
        """What goes to the client: a problem answer with its ``type`` under the
        app's ``problem_base`` (and its ``Link: rel="describedby"``)."""
        if isinstance(response, Response):
            return cast(_R, rebase_problem(response, self.options.problem_base))
        return response


def blocking_stream(runtime: Runtime, stream: EventStream) -> Iterator[bytes]:
    """An event stream's chunks driven with blocking calls (WSGI, Django): it holds
    one thread, for at most ``stream.limit`` seconds; the client then reconnects
    with ``Last-Event-ID`` and goes on where it was."""
    deadline = None if stream.limit is None else time.monotonic() + stream.limit
    while True:
        wait = SSE_KEEPALIVE
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
            if wait <= 0:
                return
        chunk = runtime.drive(stream.next_chunk(wait))
        if chunk is None:
            return
        yield chunk


class DoorMiddleware:
    """What the ASGI and WSGI middleware classes hold: their front door, and
    the facts the hot path reads without an attribute chain."""

    def __init__(self, app: Any, kind: AppKind, options: Mapping[str, Any]) -> None:
        self._door = FrontDoor(app, kind, options)
        # The owner is the session cookie the app's framework reads (cookie_rules.py).
        self._door.engine.cookie_reader = reader_for_app(app)
        self.runtime = self._door.runtime
        self.options = self._door.options
        self.store = self._door.store
        #: set after discovery: a request with none of these methods and without
        #: the prefix in its path is passed on at once (see fast_methods)
        self._fast_methods: frozenset[str] | None = None
        #: the first request seen: discovery (unless the sweeper did it first), fast path
        self._first_seen = False
        self._prefix = self._door.prefix
