"""Options shared by both front doors, validated once at construction."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigurationError
from .routes import RouteOptions, RoutePattern, RouteSpecs, parse_routes
from .tokens import normalize_secrets

#: identity(headers) -> credentials material (None or "" = anonymous)
IdentityFunc = Callable[[Mapping[str, str]], "str | bytes | None"]
DiscoverFunc = Callable[[], Iterable[RoutePattern]]

ENV_SECRET = "ASYNC_ACCEPT_SECRET_KEY"


@dataclass
class Options:
    """Every option of the middleware (see the README for each)."""

    secrets: list[bytes]
    store: Any = "sqlite:///async_accept_jobs.db"
    executor: Any = None
    routes: list[RoutePattern] = field(default_factory=list)
    prefix: str = "/_jobs"
    ttl: float = 86400.0
    sla: float = 60.0
    wait: float | None = None
    max_wait: float = 25.0
    max_body_size: int = 10 * 1024 * 1024
    identity: IdentityFunc | None = None
    session_cookies: tuple[str, ...] = ("session", "sessionid")
    prefer_async: bool = False
    poll_interval: float = 1.0
    max_retry_after: float = 30.0
    heartbeat_interval: float = 2.0
    worker_lost_after: float = 10.0
    sweep_interval: float | None = 5.0
    requeue_after: float = 10.0
    status_code_running: Literal[200, 202] = 200
    debug: bool = False
    discover: DiscoverFunc | None = None
    shutdown_timeout: float = 10.0
    default_route: RouteOptions = field(default_factory=RouteOptions)


def _seconds(name: str, value: Any, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigurationError(f"{name}={value!r} must be a number of seconds")
    if value < 0 or (value == 0 and not allow_zero) or math.isinf(value):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{name}={value!r} must be a finite number {bound}")
    return float(value)


def build_options(
    *,
    secret_key: str | bytes | Sequence[str | bytes] | None = None,
    store: Any = "sqlite:///async_accept_jobs.db",
    executor: Any = None,
    routes: RouteSpecs | None = None,
    prefix: str = "/_jobs",
    ttl: float = 86400,
    sla: float = 60,
    wait: float | None = None,
    max_wait: float = 25,
    max_body_size: int = 10 * 1024 * 1024,
    identity: IdentityFunc | None = None,
    session_cookies: Iterable[str] = ("session", "sessionid"),
    prefer_async: bool = False,
    poll_interval: float = 1.0,
    max_retry_after: float = 30.0,
    heartbeat_interval: float = 2.0,
    worker_lost_after: float = 10.0,
    sweep_interval: float | None = 5.0,
    requeue_after: float = 10.0,
    status_code_running: int = 200,
    debug: bool = False,
    discover: DiscoverFunc | None = None,
    shutdown_timeout: float = 10.0,
) -> Options:
    """Validate every option; raise ConfigurationError naming the fix."""
    if secret_key is None:
        env = os.environ.get(ENV_SECRET)
        if env:
            secret_key = [k.strip() for k in env.split(",") if k.strip()]
    secrets = normalize_secrets(secret_key)

    if not isinstance(prefix, str) or not prefix.startswith("/") or prefix == "/":
        raise ConfigurationError(
            f"prefix={prefix!r} must be a path such as '/_jobs' (leading slash, not '/')"
        )
    prefix = prefix.rstrip("/")
    ttl_f = _seconds("ttl", ttl)
    sla_f = _seconds("sla", sla)
    wait_f = None if wait is None else _seconds("wait", wait, allow_zero=True)
    max_wait_f = _seconds("max_wait", max_wait, allow_zero=True)
    if isinstance(max_body_size, bool) or not isinstance(max_body_size, int) or max_body_size < 0:
        raise ConfigurationError(
            f"max_body_size={max_body_size!r} must be a whole number of bytes >= 0"
        )
    if identity is not None and not callable(identity):
        raise ConfigurationError(
            "identity must be a callable taking the request headers (a dict of lower-case "
            "names to values) and returning the caller's identity, or None"
        )
    if isinstance(session_cookies, str):
        session_cookies = (session_cookies,)
    cookies = tuple(session_cookies)
    if not all(isinstance(c, str) and c for c in cookies):
        raise ConfigurationError("session_cookies must be a list of cookie names")
    poll = _seconds("poll_interval", poll_interval)
    max_ra = _seconds("max_retry_after", max_retry_after)
    hb = _seconds("heartbeat_interval", heartbeat_interval)
    lost = _seconds("worker_lost_after", worker_lost_after)
    if lost <= hb:
        raise ConfigurationError(
            f"worker_lost_after={worker_lost_after!r} must be larger than "
            f"heartbeat_interval={heartbeat_interval!r} (3x or more is usual)"
        )
    sweep = None if sweep_interval in (None, 0) else _seconds("sweep_interval", sweep_interval)
    requeue = _seconds("requeue_after", requeue_after, allow_zero=True)
    if status_code_running not in (200, 202):
        raise ConfigurationError(
            f"status_code_running={status_code_running!r} must be 200 (default) or 202 "
            "(the OData / Durable Functions style)"
        )
    if discover is not None and not callable(discover):
        raise ConfigurationError("discover must be a callable returning route patterns")
    shutdown = _seconds("shutdown_timeout", shutdown_timeout, allow_zero=True)
    patterns = parse_routes(routes)
    default_route = RouteOptions(sla=sla_f, wait=wait_f, max_wait=max_wait_f)
    return Options(
        secrets=secrets,
        store=store,
        executor=executor,
        routes=patterns,
        prefix=prefix,
        ttl=ttl_f,
        sla=sla_f,
        wait=wait_f,
        max_wait=max_wait_f,
        max_body_size=max_body_size,
        identity=identity,
        session_cookies=cookies,
        prefer_async=bool(prefer_async),
        poll_interval=poll,
        max_retry_after=max_ra,
        heartbeat_interval=hb,
        worker_lost_after=lost,
        sweep_interval=sweep,
        requeue_after=requeue,
        status_code_running=200 if status_code_running == 200 else 202,
        debug=bool(debug),
        discover=discover,
        shutdown_timeout=shutdown,
        default_route=default_route,
    )
