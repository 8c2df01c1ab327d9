"""What both front doors share: building the runtime from options, and
deciding which requests are ours."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import Any

from .config import Options, build_options, check_route_webhook
from .engine import Engine
from .engine.responses import Response, problem_response
from .errors import ConfigurationError
from .executors import resolve_executor
from .routes import RouteOptions, RoutePattern, RouteTable
from .runtime import AppKind, Runtime
from .stores import resolve_store

#: Every front door built in this process: a remote worker finds the imported app's here.
FRONT_DOORS: weakref.WeakSet[FrontDoor] = weakref.WeakSet()


class FrontDoor:
    """Shared state of a middleware instance."""

    def __init__(self, app: Any, kind: AppKind, options: dict[str, Any]) -> None:
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
        self.runtime = Runtime(self.engine, self.store, self.executor, kind)
        self.runtime.app = app
        self.routes = RouteTable(self.options.routes)
        self.prefix = self.options.prefix
        self.prefix_len = len(self.prefix)
        self.prefer_async = self.options.prefer_async
        self.max_body = self.options.max_body_size
        self.default_route: RouteOptions = self.options.default_route
        self._discovered = False
        self._discover_lock = threading.Lock()
        FRONT_DOORS.add(self)

    # -- marked routes --------------------------------------------------------------

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
                from .starlette import discover_routes

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
