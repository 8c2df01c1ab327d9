"""Marking routes long-running: the decorator, route patterns and the lookup table."""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar, cast, overload

from .errors import ConfigurationError

F = TypeVar("F")

MARKER = "__async_accept__"
#: set on the wrapper ``@long_running`` puts around a handler (the app decides first)
WRAPPER = "__async_accept_wrapper__"

#: the methods a mark covers on a view that serves several (GET only when it is the only one)
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_HTTP_VERBS = ("get", "head", "post", "put", "patch", "delete")
#: DRF viewset actions a class mark covers (the unsafe ones; list/retrieve are GETs)
_UNSAFE_ACTIONS = ("create", "update", "partial_update", "destroy")

IdempotencyMode = Literal["optional", "required", "ignore"]
_IDEMPOTENCY_MODES = ("optional", "required", "ignore")


@dataclass(frozen=True)
class RouteOptions:
    """Per-route settings. ``None`` means "use the middleware's default"."""

    sla: float | None = None
    wait: float | None = None
    max_wait: float | None = None
    idempotency: IdempotencyMode = "optional"
    webhook: str | None = None
    #: the methods an explicit ``methods=[...]`` marks (None: the marking rule decides)
    methods: frozenset[str] | None = None
    #: the app decides first: run its stack in the request, accept at the handler
    precheck: bool = False
    #: how many times a job lost to a crashed worker (or failing with one of
    #: ``retry_on``) runs again; 0: never (at-most-once)
    retries: int = 0
    #: seconds before a retry after a handler exception, doubling per attempt
    retry_backoff: float = 0.0
    #: handler exception classes that make a job run again (up to ``retries``)
    retry_on: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigurationError(f"retries={self.retries!r} must be a whole number >= 0")
        if (
            isinstance(self.retry_backoff, bool)
            or not isinstance(self.retry_backoff, (int, float))
            or self.retry_backoff < 0
        ):
            raise ConfigurationError(f"retry_backoff={self.retry_backoff!r} must be >= 0 seconds")
        retry_on = self.retry_on
        if isinstance(retry_on, type):
            retry_on = (retry_on,)
        if not all(isinstance(c, type) and issubclass(c, BaseException) for c in retry_on):
            raise ConfigurationError(
                f"retry_on={self.retry_on!r} must be exception classes, e.g. (TimeoutError,)"
            )
        object.__setattr__(self, "retry_on", tuple(retry_on))
        self._check_numbers()

    def retry_meta(self) -> dict[str, Any]:
        """What a job of this route carries so that any worker can apply its retries."""
        if not self.retries:
            return {}
        return {
            "retries": self.retries,
            "retry_backoff": float(self.retry_backoff),
            "retry_on": [exception_name(c) for c in self.retry_on],
        }

    def _check_numbers(self) -> None:
        for name in ("sla", "wait", "max_wait"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigurationError(f"{name}={value!r} must be a number of seconds")
            if name == "sla" and value <= 0:
                raise ConfigurationError(f"sla={value!r} must be > 0 seconds")
            if value < 0:
                raise ConfigurationError(f"{name}={value!r} must be >= 0 seconds")
        if self.idempotency not in _IDEMPOTENCY_MODES:
            raise ConfigurationError(
                f"idempotency={self.idempotency!r} must be one of {', '.join(_IDEMPOTENCY_MODES)}"
            )

    def merged(self, **overrides: Any) -> RouteOptions:
        """A copy with the non-None ``overrides`` applied."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


@overload
def long_running(func: F, /) -> F: ...


@overload
def long_running(
    func: None = None,
    /,
    *,
    sla: float | None = ...,
    wait: float | None = ...,
    max_wait: float | None = ...,
    idempotency: IdempotencyMode = ...,
    webhook: str | None = ...,
    methods: Iterable[str] | None = ...,
    precheck: bool = ...,
    retries: int = ...,
    retry_backoff: float = ...,
    retry_on: tuple[type[BaseException], ...] | type[BaseException] = ...,
) -> Callable[[F], F]: ...


def long_running(
    func: Any = None,
    /,
    *,
    sla: float | None = None,
    wait: float | None = None,
    max_wait: float | None = None,
    idempotency: IdempotencyMode = "optional",
    webhook: str | None = None,
    methods: Iterable[str] | None = None,
    precheck: bool = True,
    retries: int = 0,
    retry_backoff: float = 0.0,
    retry_on: tuple[type[BaseException], ...] | type[BaseException] = (),
) -> Any:
    """Mark an endpoint long-running.

    Usable bare (``@long_running``) or with options (``@long_running(sla=30,
    wait=5)``), on sync and async functions, on methods of class-based views
    and on the classes themselves.

    ``sla`` is the expected duration in seconds (the deadman switch fails the
    job at 2 x sla); ``wait`` answers directly when the job finishes within
    that many seconds; ``max_wait`` caps a client's ``Prefer: wait=N``;
    ``idempotency`` is ``"optional"``, ``"required"`` or ``"ignore"``.

    Which methods: on a view that serves several, the unsafe ones (POST, PUT,
    PATCH, DELETE); GET only when it is the view's only method; HEAD follows
    GET; OPTIONS never. ``methods=["GET", "POST"]`` says exactly.

    The app decides first: the returned function is a wrapper that, in the
    request cycle, tells the middleware "accept now" instead of running the
    body, so the app's own stack (middleware, authentication, validation,
    decorators above the mark) answers first; the body runs in the job. Put the
    mark directly on the function, below the route decorator: above it, the
    framework keeps the bare function and the route is accepted on arrival.
    On a class, its handler methods (``get``/``post``/..., Falcon's
    ``on_<method>``, DRF's unsafe viewset actions) are wrapped in place.
    ``precheck=False`` accepts on arrival and returns the function unchanged.

    ``retries=N`` lets a job run again, up to N times, when its worker was lost
    (killed, crashed) or when the handler raised one of ``retry_on`` (after
    ``retry_backoff`` seconds, doubling per attempt); the handler sees the count
    in ``current_job().attempt``. Without it a job runs at most once.
    """
    explicit = None
    if methods is not None:
        if isinstance(methods, str):
            raise ConfigurationError(f"methods={methods!r} must be a list, e.g. [{methods!r}]")
        explicit = frozenset(str(m).upper() for m in methods)
        bad = [m for m in explicit if not _HTTP_TOKEN_METHOD.match(m)]
        if bad or not explicit:
            raise ConfigurationError(f"methods={list(methods)!r} is not a list of HTTP methods")
    options = RouteOptions(
        sla=sla,
        wait=wait,
        max_wait=max_wait,
        idempotency=idempotency,
        webhook=webhook,
        methods=explicit,
        precheck=bool(precheck),
        retries=retries,
        retry_backoff=retry_backoff,
        retry_on=retry_on if isinstance(retry_on, tuple) else (retry_on,),
    )

    def mark(target: F) -> F:
        try:
            setattr(target, MARKER, options)
        except (AttributeError, TypeError) as exc:
            raise ConfigurationError(
                f"@long_running cannot mark {target!r}: it does not accept attributes. "
                "Mark the route with a pattern in routes=[...] instead."
            ) from exc
        if not options.precheck:
            return target
        if inspect.isclass(target):
            _wrap_handlers(target, options)
            return target
        if inspect.isfunction(target):
            return _wrap(target, options)  # type: ignore[return-value]
        return target

    if func is not None:
        return mark(func)
    return mark


def _wrap(func: Callable[..., Any], options: RouteOptions) -> Callable[..., Any]:
    """``func`` behind the pre-check: in the request cycle (a middleware's gate
    open) it signals "accept now"; in a job, or with no middleware, it runs."""
    from .precheck import stop_here

    if getattr(func, WRAPPER, False):
        return func
    wrapper: Callable[..., Any]
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def awrapper(*args: Any, **kwargs: Any) -> Any:
            stop_here(options)
            return await func(*args, **kwargs)

        wrapper = awrapper
    else:

        @functools.wraps(func)
        def swrapper(*args: Any, **kwargs: Any) -> Any:
            stop_here(options)
            return func(*args, **kwargs)

        wrapper = swrapper
    # Frameworks that read the signature with the wrapper's globals (FastAPI before
    # 0.112) can't resolve string annotations from the handler's module: hand them
    # the handler's signature with its annotations already evaluated, where they can be.
    with contextlib.suppress(Exception):
        cast(Any, wrapper).__signature__ = inspect.signature(func, eval_str=True)
    setattr(wrapper, WRAPPER, True)
    setattr(wrapper, MARKER, options)
    return wrapper


def _handler_names(cls: type) -> dict[str, list[str]]:
    """HTTP method -> the names of the class's handlers for it (``get``, Falcon's
    ``on_get``/``on_get_item``, DRF's unsafe viewset actions)."""
    out: dict[str, list[str]] = {}
    for verb in _HTTP_VERBS:
        if callable(getattr(cls, verb, None)):
            out.setdefault(verb.upper(), []).append(verb)
    for name in dir(cls):
        if name.startswith("on_") and callable(getattr(cls, name, None)):
            verb = name[3:].split("_", 1)[0]
            if verb in _HTTP_VERBS or verb == "options":
                out.setdefault(verb.upper(), []).append(name)
    actions = {"create": "POST", "update": "PUT", "partial_update": "PATCH", "destroy": "DELETE"}
    for name in _UNSAFE_ACTIONS:
        if callable(getattr(cls, name, None)):
            out.setdefault(actions[name], []).append(name)
    return out


def _wrap_handlers(cls: type, options: RouteOptions) -> None:
    """Wrap, in place, the handler methods of ``cls`` that the mark covers."""
    names = _handler_names(cls)
    covered = marked_methods(names, options.methods)
    for method, attrs in names.items():
        if method not in covered:
            continue
        for attr in attrs:
            fn = getattr(cls, attr)
            if inspect.isfunction(fn) and marker_of(fn) is None:
                setattr(cls, attr, _wrap(fn, options))


def marked_methods(served: Iterable[str], explicit: frozenset[str] | None = None) -> frozenset[str]:
    """The methods a mark covers on a view serving ``served``: the unsafe ones;
    GET only when it is the only method; HEAD follows GET; OPTIONS never.
    ``explicit`` (``methods=[...]``) says exactly (HEAD still follows GET)."""
    have = {m.upper() for m in served}
    if explicit is not None:
        out = set(explicit)
    else:
        out = have & UNSAFE_METHODS
        if have - {"HEAD", "OPTIONS"} == {"GET"}:
            out.add("GET")
    if "GET" in out:
        out.add("HEAD")
    out.discard("OPTIONS")
    return frozenset(out)


def method_marks(
    served: Iterable[str], whole: RouteOptions | None, handler_of: Callable[[str], Any]
) -> dict[RouteOptions, list[str]]:
    """Which of the ``served`` methods of one view are long-running, by options.

    ``whole`` is the view's own mark (the function, or the class), covering
    what :func:`marked_methods` says; a mark on one method's handler
    (``post``, ``on_post``, an action) covers that method, HEAD following GET.
    ``handler_of(method)`` is what the framework calls for it: the options
    keep the pre-check only when a ``@long_running`` wrapper is on that way.
    """
    methods = sorted({m.upper() for m in served} - {"OPTIONS"})
    covered = marked_methods(methods, whole.methods) if whole is not None else frozenset()
    out: dict[RouteOptions, list[str]] = {}
    for method in methods:
        handler = handler_of(method)
        own = marker_of(handler) if handler is not None else None
        if own is not None and own is not whole:
            opts = own
        elif whole is not None and method in covered:
            opts = whole
        else:
            continue
        out.setdefault(for_handler(opts, handler), []).append(method)
    return out


def for_handler(options: RouteOptions, handler: Any) -> RouteOptions:
    """``options`` as they apply to a route whose framework calls ``handler``:
    without the pre-check when no ``@long_running`` wrapper is on its way (a
    mark above the route decorator, on an object that can't be wrapped)."""
    if not options.precheck:
        return options
    seen = 0
    obj = handler
    while obj is not None and seen < 10:
        if getattr(obj, WRAPPER, False):
            return options
        obj = getattr(obj, "__wrapped__", None) or getattr(obj, "__func__", None)
        seen += 1
    return replace(options, precheck=False)


def exception_name(cls: type[BaseException]) -> str:
    """``module.QualName`` of an exception class, as jobs carry it in ``retry_on``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def retry_matches(exc: BaseException, names: Any) -> bool:
    """Whether ``exc`` is an instance of a class named in ``names`` (its MRO counts)."""
    if not isinstance(names, list) or not names:
        return False
    wanted = set(names)
    return any(exception_name(c) in wanted for c in type(exc).__mro__)


def marker_of(obj: Any) -> RouteOptions | None:
    """The options ``@long_running`` put on ``obj`` (or on the function it wraps)."""
    seen = 0
    while obj is not None and seen < 10:
        opts = getattr(obj, MARKER, None)
        if isinstance(opts, RouteOptions):
            return opts
        obj = getattr(obj, "__wrapped__", None) or getattr(obj, "__func__", None)
        seen += 1
    return None


# --- route patterns ------------------------------------------------------------

#: ``job.meta`` key of a job accepted through ``Prefer: respond-async``
#: (``prefer_async=True``) rather than through a marked route (see ownership.py).
PREFER_META = "prefer"

_CONVERTORS: dict[str, str] = {
    "str": r"[^/]+",
    "int": r"[0-9]+",
    "float": r"[0-9]+(?:\.[0-9]+)?",
    "path": r".*",
    "uuid": r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
}
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z_][A-Za-z0-9_]*))?\}")
_METHOD = re.compile(r"^[A-Z][A-Z0-9_-]*$")
_HTTP_TOKEN_METHOD = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


@dataclass(frozen=True)
class RoutePattern:
    """``"POST /reports/{id}"``: methods (None = any) and a compiled path regex."""

    spec: str
    methods: frozenset[str] | None
    path: str
    regex: re.Pattern[str] | None
    options: RouteOptions

    def matches(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if self.regex is None:
            return path == self.path
        return self.regex.fullmatch(path) is not None


def compile_path(path: str, spec: str) -> re.Pattern[str] | None:
    """Compile a Starlette-style path template; None when it is a literal path."""
    if not path.startswith("/"):
        raise ConfigurationError(f"route {spec!r}: the path must start with '/'")
    pos = 0
    parts: list[str] = []
    names: set[str] = set()
    for m in _PARAM.finditer(path):
        literal = path[pos : m.start()]
        if "{" in literal or "}" in literal:
            raise ConfigurationError(f"route {spec!r}: malformed parameter near {literal!r}")
        parts.append(re.escape(literal))
        name, conv = m.group(1), m.group(2) or "str"
        if conv not in _CONVERTORS:
            raise ConfigurationError(
                f"route {spec!r}: unknown convertor {conv!r} "
                f"(known: {', '.join(sorted(_CONVERTORS))})"
            )
        if name in names:
            raise ConfigurationError(f"route {spec!r}: parameter {name!r} appears twice")
        names.add(name)
        parts.append(f"(?P<{name}>{_CONVERTORS[conv]})")
        pos = m.end()
    tail = path[pos:]
    if "{" in tail or "}" in tail:
        raise ConfigurationError(f"route {spec!r}: malformed parameter near {tail!r}")
    if not names:
        return None
    parts.append(re.escape(tail))
    return re.compile("".join(parts))


def parse_route(spec: str, options: RouteOptions | None = None) -> RoutePattern:
    """Parse ``"[METHOD[,METHOD...]] /path/{param[:conv]}"`` (``*`` or no method: any)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigurationError(f"route {spec!r}: expected a string like 'POST /reports/{{id}}'")
    text = spec.strip()
    methods: frozenset[str] | None
    if text.startswith("/"):
        methods, path = None, text
    else:
        head, sep, path = text.partition(" ")
        path = path.strip()
        if not sep or not path:
            raise ConfigurationError(
                f"route {spec!r}: expected 'METHOD /path', e.g. 'POST /reports/{{id}}'"
            )
        if head == "*":
            methods = None
        else:
            names = [m.strip().upper() for m in re.split(r"[,|]", head) if m.strip()]
            if not names or not all(_HTTP_TOKEN_METHOD.match(m) for m in names):
                raise ConfigurationError(f"route {spec!r}: {head!r} is not a list of HTTP methods")
            methods = frozenset(names)
    if " " in path:
        raise ConfigurationError(f"route {spec!r}: the path may not contain spaces")
    regex = compile_path(path, spec)
    return RoutePattern(spec, methods, path, regex, options or RouteOptions())


RouteSpecs = Iterable[str | RoutePattern] | Mapping[str, RouteOptions | Mapping[str, Any]]


def parse_routes(routes: RouteSpecs | None) -> list[RoutePattern]:
    """Accept a list of pattern strings or a mapping pattern -> options."""
    if routes is None:
        return []
    if isinstance(routes, str):
        raise ConfigurationError(
            f"routes={routes!r} must be a list of patterns, e.g. routes=[{routes!r}]"
        )
    out: list[RoutePattern] = []
    if isinstance(routes, Mapping):
        for spec, opts in routes.items():
            if isinstance(opts, RouteOptions):
                out.append(parse_route(spec, opts))
            elif isinstance(opts, Mapping):
                try:
                    ro = RouteOptions(**dict(opts))
                except TypeError as exc:
                    raise ConfigurationError(f"route {spec!r}: {exc}") from exc
                out.append(parse_route(spec, ro))
            else:
                raise ConfigurationError(
                    f"route {spec!r}: options must be a dict such as {{'sla': 30}}"
                )
        return out
    for item in routes:
        if isinstance(item, RoutePattern):
            out.append(item)
        else:
            out.append(parse_route(item))
    return out


class RouteTable:
    """Lookup of the long-running routes. The hot path for unmarked requests
    is a dict probe and, only when the method has patterns, a few regexes."""

    def __init__(self, patterns: Iterable[RoutePattern] = ()) -> None:
        self._exact: dict[tuple[str, str], RouteOptions] = {}
        self._exact_any: dict[str, RouteOptions] = {}
        self._regex: dict[str, list[RoutePattern]] = {}
        self._regex_any: list[RoutePattern] = []
        self.patterns: list[RoutePattern] = []
        for p in patterns:
            self.add(p)

    def add(self, pattern: RoutePattern) -> None:
        self.patterns.append(pattern)
        if pattern.regex is None:
            if pattern.methods is None:
                self._exact_any.setdefault(pattern.path, pattern.options)
            else:
                for m in pattern.methods:
                    self._exact.setdefault((m, pattern.path), pattern.options)
        elif pattern.methods is None:
            self._regex_any.append(pattern)
        else:
            for m in pattern.methods:
                self._regex.setdefault(m, []).append(pattern)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def lookup(self, method: str, path: str) -> RouteOptions | None:
        """Options of the first pattern matching, or None."""
        opts = self._exact.get((method, path))
        if opts is not None:
            return opts
        opts = self._exact_any.get(path)
        if opts is not None:
            return opts
        for p in self._regex.get(method, ()):
            if p.regex is not None and p.regex.fullmatch(path):
                return p.options
        for p in self._regex_any:
            if p.regex is not None and p.regex.fullmatch(path):
                return p.options
        return None


def check_deadlines(ttl: float, sla: float, patterns: Iterable[RoutePattern]) -> None:
    """A job must be able to reach its deadline (2 x sla) before its TTL purges it:
    the default sla and every route pattern's, checked at construction."""
    slas = [("sla", sla)] + [
        (f"routes[{p.spec!r}] sla", p.options.sla) for p in patterns if p.options.sla is not None
    ]
    for name, value in slas:
        if 2 * value >= ttl:
            raise ConfigurationError(
                f"{name}={value:g} is too long for ttl={ttl:g}: a job may run until 2 x sla, "
                f"so 2 x sla must be below ttl (raise ttl above {2 * value:g} or lower the sla)"
            )


def retry_window_warning(
    label: str,
    route: RouteOptions,
    default_sla: float,
    lost_after: float,
    beat_every: float,
    sweep_every: float | None,
) -> str | None:
    """Why a route's ``retries`` can't help when its worker dies, or None: a lost
    worker is noticed about ``worker_lost_after + heartbeat_interval +
    sweep_interval`` after it died, and a job past its deadline (2 x sla) ends
    ``deadline-exceeded`` instead of running again."""
    if not route.retries:
        return None
    sla = route.sla if route.sla is not None else default_sla
    notice = lost_after + beat_every + (sweep_every or 0.0)
    if notice < 2 * sla:
        return None
    return (
        f"async_accept: {label} has retries={route.retries}, but a job whose process dies "
        f"is noticed about {notice:g} s later (worker_lost_after + heartbeat_interval + "
        f"sweep_interval), after its deadline (2 x sla = {2 * sla:g} s): it ends "
        f"deadline-exceeded and never runs again. Raise the route's sla above {notice / 2:g} "
        "or lower worker_lost_after."
    )
