"""Marking routes long-running: the decorator, route patterns and the lookup table."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar, overload

from .errors import ConfigurationError

F = TypeVar("F")

MARKER = "__async_accept__"

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

    def __post_init__(self) -> None:
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
) -> Any:
    """Mark an endpoint long-running and return it unchanged.

    Works above or below a framework's route decorator (it only sets an
    attribute on the function object), on sync and async functions, on
    methods of class-based views and on the classes themselves. Usable bare
    (``@long_running``) or with options (``@long_running(sla=30, wait=5)``).

    ``sla`` is the expected duration in seconds (the deadman switch fails the
    job at 2 x sla); ``wait`` answers directly when the job finishes within
    that many seconds; ``max_wait`` caps a client's ``Prefer: wait=N``;
    ``idempotency`` is ``"optional"``, ``"required"`` or ``"ignore"``.
    """
    options = RouteOptions(
        sla=sla, wait=wait, max_wait=max_wait, idempotency=idempotency, webhook=webhook
    )

    def mark(target: F) -> F:
        try:
            setattr(target, MARKER, options)
        except (AttributeError, TypeError) as exc:
            raise ConfigurationError(
                f"@long_running cannot mark {target!r}: it does not accept attributes. "
                "Mark the route with a pattern in routes=[...] instead."
            ) from exc
        return target

    if func is not None:
        return mark(func)
    return mark


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
