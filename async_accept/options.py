"""Every option of the middleware, declared once: each field of :class:`Options` has
its default, check and doc line (:func:`option`); :func:`build_options` validates the
keyword arguments and :class:`OptionsKwargs` types them (a test pins it to the fields)."""

from __future__ import annotations

import inspect
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypedDict

from .errors import ConfigurationError
from .problem_types import PROBLEM_BASE, check_problem_base
from .routes import (
    RouteOptions,
    RoutePattern,
    RouteSpecs,
    check_deadlines,
    parse_routes,
    retry_window_warning,
)
from .tokens import normalize_secrets
from .webhook_settings import check_route_webhook as check_route_webhook
from .webhook_settings import webhook_settings
from .zombies import check_max_zombies

#: identity(headers) -> credentials material (None or "" = anonymous)
IdentityFunc = Callable[[Mapping[str, str]], "str | bytes | None"]
DiscoverFunc = Callable[[], Iterable[RoutePattern]]
#: on_event(event, **fields): "accepted", "completed", "failed", "canceled" (see metrics.py)
EventListener = Callable[..., None]
#: "off", "on", "auth" (Bearer health_token) or check(headers) -> bool
HealthMode = Literal["off", "on", "auth"] | Callable[[Mapping[str, str]], bool]
DashboardMode = Literal["off", "auth"] | Callable[[Mapping[str, str]], bool]
Check = Callable[[str, Any], Any]

ENV_SECRET = "ASYNC_ACCEPT_SECRET_KEY"


def option(
    default: Any, doc: str, check: Check | None = None, *, arg: str | None = None
) -> dict[str, Any]:
    """One option's field metadata: its default, its doc line, ``check(name, value)
    -> normalized value`` (raising ConfigurationError naming the fix) and, when it
    differs from the field's name, the keyword argument it is given as."""
    return {"default": default, "doc": doc, "check": check, "arg": arg}


def _seconds(name: str, value: Any, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigurationError(f"{name}={value!r} must be a number of seconds")
    if value < 0 or (value == 0 and not allow_zero) or math.isinf(value):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{name}={value!r} must be a finite number {bound}")
    return float(value)


_positive: Check = _seconds


def _non_negative(name: str, value: Any) -> float:
    return _seconds(name, value, allow_zero=True)


def _optional_non_negative(name: str, value: Any) -> float | None:
    return None if value is None else _seconds(name, value, allow_zero=True)


def _optional_positive(name: str, value: Any) -> float | None:
    return None if value is None else _seconds(name, value)


def _callable_or_none(message: str) -> Check:
    def check(name: str, value: Any) -> Any:
        if value is not None and not callable(value):
            raise ConfigurationError(message)
        return value

    return check


def _secrets(name: str, value: Any) -> list[bytes]:
    if value is None:
        env = os.environ.get(ENV_SECRET)
        if env:
            value = [k.strip() for k in env.split(",") if k.strip()]
    return normalize_secrets(value)


def _prefix(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or value == "/":
        raise ConfigurationError(
            f"prefix={value!r} must be a path such as '/_jobs' (leading slash, not '/')"
        )
    return value.rstrip("/")


def _max_body_size(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{name}={value!r} must be a whole number of bytes >= 0")
    return value


def _session_cookies(name: str, value: Any) -> tuple[str, ...]:
    cookies = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(c, str) and c for c in cookies):
        raise ConfigurationError("session_cookies must be a list of cookie names")
    return cookies


def _identity_headers(name: str, value: Any) -> tuple[bytes, ...]:
    names = (value,) if isinstance(value, (str, bytes)) else tuple(value)
    out: list[bytes] = []
    for n in names:
        raw = n.encode("latin-1") if isinstance(n, str) else n
        if not isinstance(raw, bytes) or not raw.strip() or b":" in raw:
            raise ConfigurationError("identity_headers must be a list of header names")
        out.append(raw.strip().lower())
    return tuple(out)


def _anonymous(name: str, value: Any) -> Literal["allow", "deny"]:
    if value not in ("allow", "deny"):
        raise ConfigurationError(
            f"anonymous={value!r} must be 'allow' (a job with no caller identity is reachable "
            "by whoever holds its URL; warned once per route) or 'deny' (401)"
        )
    return "allow" if value == "allow" else "deny"


def _status_code_running(name: str, value: Any) -> Literal[200, 202]:
    if value not in (200, 202):
        raise ConfigurationError(
            f"status_code_running={value!r} must be 200 (default) or 202 "
            "(the OData / Durable Functions style)"
        )
    return 200 if value == 200 else 202


def _tracer_provider(name: str, value: Any) -> Any:
    if value is not None and not callable(getattr(value, "get_tracer", None)):
        raise ConfigurationError(
            "tracer_provider must be an OpenTelemetry TracerProvider (or None for the global one)"
        )
    return value


def _health(name: str, value: Any) -> Any:
    if value not in ("off", "on", "auth") and not callable(value):
        raise ConfigurationError(
            f"health={value!r} must be 'off', 'on', 'auth' (Authorization: Bearer "
            "<health_token>) or a callable(headers) -> bool"
        )
    return value


def _health_token(name: str, value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or len(value) < 16):
        raise ConfigurationError(
            "health_token must be a string of at least 16 characters (a random one: "
            "python -c 'import secrets; print(secrets.token_urlsafe(24))')"
        )
    return value


def _bool(name: str, value: Any) -> bool:
    return bool(value)


def _as_is(name: str, value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Options:
    """Every option of the middleware, validated (the README documents each).

    Build one with :func:`build_options`; the fields are listed in the order
    they are checked.
    """

    secrets: list[bytes] = field(
        metadata=option(
            None,
            "signing key(s) for status URLs, newest first (else $ASYNC_ACCEPT_SECRET_KEY)",
            _secrets,
            arg="secret_key",
        )
    )
    store: Any = field(
        metadata=option("sqlite:///async_accept_jobs.db", "job store: a URL or a Store", _as_is)
    )
    executor: Any = field(
        metadata=option(None, "executor: a name, 'module:attr' or an Executor", _as_is)
    )
    prefix: str = field(metadata=option("/_jobs", "path prefix of the status URLs", _prefix))
    ttl: float = field(
        metadata=option(86400.0, "seconds a finished job and its URL live", _positive)
    )
    sla: float = field(
        metadata=option(60.0, "default seconds a job may run before it is late", _positive)
    )
    wait: float | None = field(
        metadata=option(
            None,
            "default seconds to wait for a result before answering 202",
            _optional_non_negative,
        )
    )
    max_wait: float = field(
        metadata=option(25.0, "longest Prefer: wait honoured, in seconds", _non_negative)
    )
    wsgi_max_wait: float = field(
        metadata=option(
            5.0,
            "WSGI: longest a status read or event stream holds its thread, in seconds",
            _non_negative,
        )
    )
    max_body_size: int = field(
        metadata=option(
            10 * 1024 * 1024, "largest request body accepted as a job, in bytes", _max_body_size
        )
    )
    max_result_size: int = field(metadata=option(50 << 20, "largest result, bytes", _max_body_size))
    identity: IdentityFunc | None = field(
        metadata=option(
            None,
            "identity(headers) -> the caller's credentials material",
            _callable_or_none(
                "identity must be a callable taking the request headers (a dict of lower-case "
                "names to values) and returning the caller's identity, or None"
            ),
        )
    )
    session_cookies: tuple[str, ...] = field(
        metadata=option(
            ("session", "sessionid"), "cookies that identify the caller", _session_cookies
        )
    )
    identity_headers: tuple[bytes, ...] = field(
        metadata=option(
            (),
            "more request headers that identify the caller (besides Authorization, "
            "Proxy-Authorization, X-API-Key, Api-Key)",
            _identity_headers,
        )
    )
    anonymous: Literal["allow", "deny"] = field(
        metadata=option(
            "allow", "a marked route called with no identity: 'allow' or 'deny' (401)", _anonymous
        )
    )
    prefer_async: bool = field(
        metadata=option(
            False, "accept any request with Prefer: respond-async on a marked route", _bool
        )
    )
    poll_interval: float = field(
        metadata=option(1.0, "Retry-After hint for pollers, in seconds", _positive)
    )
    max_retry_after: float = field(
        metadata=option(30.0, "largest Retry-After sent, in seconds", _positive)
    )
    heartbeat_interval: float = field(
        metadata=option(2.0, "seconds between a worker's heartbeats", _positive)
    )
    worker_lost_after: float = field(
        metadata=option(
            10.0, "seconds a job's heartbeat stays unchanged before it is worker-lost", _positive
        )
    )
    sweep_interval: float | None = field(
        metadata=option(
            5.0,
            "seconds between sweeps for lost jobs (None or 0: no sweeper)",
            lambda name, value: None if value in (None, 0) else _seconds(name, value),
        )
    )
    requeue_after: float = field(
        metadata=option(
            10.0, "seconds a queued job waits before the sweeper requeues it", _non_negative
        )
    )
    status_code_running: Literal[200, 202] = field(
        metadata=option(
            200, "status of a running job's status URL: 200 or 202", _status_code_running
        )
    )
    problem_base: str = field(metadata=option(PROBLEM_BASE, "<base><name>", check_problem_base))
    debug: bool = field(
        metadata=option(False, "put tracebacks in failed jobs' problem details", _bool)
    )
    discover: DiscoverFunc | None = field(
        metadata=option(
            None,
            "discover() -> route patterns found in the wrapped app",
            _callable_or_none("discover must be a callable returning route patterns"),
        )
    )
    shutdown_timeout: float = field(
        metadata=option(10.0, "seconds shutdown waits for running jobs", _non_negative)
    )
    max_zombies: int | None = field(
        metadata=option(
            None,
            "recycle the process (drain, requeue, exit) once this many handlers run past "
            "their deadline in it (None: never)",
            check_max_zombies,
        )
    )
    routes: list[RoutePattern] = field(
        metadata=option(
            None,
            "long-running routes: 'POST /path' specs or a mapping to their options",
            lambda name, value: parse_routes(value),
        )
    )
    # Webhooks (PROTOCOL.md 8): checked together by _webhook_settings.
    webhook_secret: Any = field(
        metadata=option(None, "'whsec_...' key(s) signing webhooks; None: no webhooks")
    )
    webhook_url: str | None = field(metadata=option(None, "URL notified of every finished job"))
    webhook_outbox: Any = field(
        metadata=option(None, "webhook outbox: a URL or an Outbox (default: the store's)")
    )
    webhook_allow: tuple[str, ...] = field(
        metadata=option((), "hosts or networks callbacks may target")
    )
    webhook_allow_private: bool = field(
        metadata=option(False, "let callbacks target private addresses")
    )
    webhook_policy: Any = field(metadata=option(None, "a WebhookPolicy instead of webhook_allow*"))
    webhook_dispatcher_options: dict[str, Any] = field(
        metadata=option(None, "options of the WebhookDispatcher (max_attempts, timeout, ...)")
    )
    callback_header: str | None = field(
        metadata=option(
            "Callback-URL", "request header naming a client's callback URL (None: read none)"
        )
    )
    # Health (PROTOCOL.md 10)
    health: HealthMode = field(
        metadata=option("auth", "health endpoint: 'off', 'on', 'auth' or check(headers)", _health)
    )
    health_token: str | None = field(
        metadata=option(None, "Bearer token of health='auth'", _health_token)
    )
    health_stall_after: float | None = field(
        metadata=option(
            None, "seconds without progress before health reports a stall", _optional_positive
        )
    )
    dashboard: DashboardMode = field(metadata=option("off", "'off', 'auth' or check(headers)"))
    # Observability
    on_event: EventListener | None = field(
        metadata=option(
            None,
            "on_event(event, **fields) listener (metrics)",
            _callable_or_none(
                "on_event must be a callable taking (event: str, **fields), e.g. a metrics listener"
            ),
        )
    )
    tracer_provider: Any = field(
        metadata=option(None, "OpenTelemetry TracerProvider", _tracer_provider)
    )
    # Derived from sla, wait and max_wait.
    default_route: RouteOptions = field(default_factory=RouteOptions)

    @property
    def webhooks_enabled(self) -> bool:
        return self.webhook_secret is not None


class OptionsKwargs(TypedDict, total=False):
    """The middlewares' keyword arguments, typed (each is a field of Options,
    which holds its default, check and doc; a test pins the two together)."""

    secret_key: str | bytes | Sequence[str | bytes] | None
    store: Any
    executor: Any
    prefix: str
    ttl: float
    sla: float
    wait: float | None
    max_wait: float
    wsgi_max_wait: float
    max_body_size: int
    max_result_size: int
    identity: IdentityFunc | None
    session_cookies: Iterable[str]
    identity_headers: Iterable[str]
    anonymous: Literal["allow", "deny"]
    prefer_async: bool
    poll_interval: float
    max_retry_after: float
    heartbeat_interval: float
    worker_lost_after: float
    sweep_interval: float | None
    requeue_after: float
    status_code_running: int
    problem_base: str
    debug: bool
    discover: DiscoverFunc | None
    shutdown_timeout: float
    max_zombies: int | None
    routes: RouteSpecs | None
    webhook_secret: Any
    webhook_url: str | None
    webhook_outbox: Any
    webhook_allow: Iterable[str]
    webhook_allow_private: bool
    webhook_policy: Any
    webhook_dispatcher_options: Mapping[str, Any] | None
    callback_header: str | None
    health: HealthMode
    health_token: str | None
    health_stall_after: float | None
    dashboard: DashboardMode
    on_event: EventListener | None
    tracer_provider: Any


#: (keyword argument, field name) of every option, in the order they are checked.
_ARGS: tuple[tuple[str, str], ...] = tuple(
    (f.metadata["arg"] or f.name, f.name) for f in fields(Options) if "doc" in f.metadata
)
#: The keyword arguments the middlewares take.
OPTION_NAMES: tuple[str, ...] = tuple(arg for arg, _ in _ARGS)
#: Each keyword argument's default.
DEFAULTS: dict[str, Any] = {
    (f.metadata["arg"] or f.name): f.metadata["default"]
    for f in fields(Options)
    if "doc" in f.metadata
}
#: Each keyword argument's doc line.
DOCS: dict[str, str] = {
    (f.metadata["arg"] or f.name): f.metadata["doc"] for f in fields(Options) if "doc" in f.metadata
}


def _check_lost(values: dict[str, Any], given: Mapping[str, Any]) -> None:
    if values["worker_lost_after"] <= values["heartbeat_interval"]:
        raise ConfigurationError(
            f"worker_lost_after={given['worker_lost_after']!r} must be larger than "
            f"heartbeat_interval={given['heartbeat_interval']!r} (3x or more is usual)"
        )


def _check_webhooks(values: dict[str, Any], given: Mapping[str, Any]) -> None:
    values.update(webhook_settings(**{name: values[name] for name in _WEBHOOK_FIELDS}))
    for pattern in values["routes"]:
        check_route_webhook(values["webhook_secret"], pattern.options, pattern.spec)


def _check_health_token(values: dict[str, Any], given: Mapping[str, Any]) -> None:
    if values["health_token"] is not None and values["health"] != "auth":
        raise ConfigurationError(
            f"health_token is only used with health='auth' (health={values['health']!r})"
        )


def _check_dashboard(values: dict[str, Any], given: Mapping[str, Any]) -> None:
    mode, health = values["dashboard"], values["health"]
    guarded = callable(health) or (health == "auth" and values["health_token"])
    if not (mode == "off" or callable(mode) or (mode == "auth" and guarded)):
        raise ConfigurationError(  # never open without a guard
            f"dashboard={mode!r}: 'off', check(headers), or 'auth' with health_token/health=check"
        )


#: Checks of several options together, run once the named field is checked.
_CHECKS_AFTER: dict[str, Callable[[dict[str, Any], Mapping[str, Any]], None]] = {
    "routes": lambda v, _: check_deadlines(v["ttl"], v["sla"], v["routes"]),
    "worker_lost_after": _check_lost,
    "callback_header": _check_webhooks,
    "health_token": _check_health_token,
    "dashboard": _check_dashboard,
}


def build_options(**kwargs: Any) -> Options:
    """Validate every option; raise ConfigurationError naming the fix."""
    unknown = [name for name in kwargs if name not in DEFAULTS]
    if unknown:
        raise TypeError(f"build_options() got an unexpected keyword argument {unknown[0]!r}")
    given = {**DEFAULTS, **kwargs}
    values: dict[str, Any] = {}
    for f in fields(Options):
        if "doc" not in f.metadata:
            continue
        arg = f.metadata["arg"] or f.name
        check = f.metadata["check"]
        values[f.name] = given[arg] if check is None else check(arg, given[arg])
        after = _CHECKS_AFTER.get(f.name)
        if after is not None:
            after(values, given)
    values["default_route"] = RouteOptions(
        sla=values["sla"], wait=values["wait"], max_wait=values["max_wait"]
    )
    options = Options(**values)
    for pattern in options.routes:
        warning = route_retry_warning(options, f"routes[{pattern.spec!r}]", pattern.options)
        if warning is not None:
            logging.getLogger("async_accept").warning("%s", warning)
    return options


def route_retry_warning(options: Options, label: str, route: RouteOptions) -> str | None:
    """Why ``route``'s retries can't run after a lost worker under ``options``, or None."""
    return retry_window_warning(
        label,
        route,
        options.sla,
        options.worker_lost_after,
        options.heartbeat_interval,
        options.sweep_interval,
    )


setattr(  # noqa: B010 - the keyword arguments, for inspect.signature() callers
    build_options,
    "__signature__",
    inspect.Signature(
        [
            inspect.Parameter(arg, inspect.Parameter.KEYWORD_ONLY, default=DEFAULTS[arg])
            for arg in OPTION_NAMES
        ],
        return_annotation=Options,
    ),
)


_WEBHOOK_FIELDS = (
    "webhook_secret",
    "webhook_url",
    "webhook_outbox",
    "webhook_allow",
    "webhook_allow_private",
    "webhook_policy",
    "webhook_dispatcher_options",
    "callback_header",
)
