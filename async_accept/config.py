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
#: on_event(event, **fields): "accepted", "completed", "failed", "canceled" (see metrics.py)
EventListener = Callable[..., None]
#: "off", "on", "auth" (Bearer health_token) or check(headers) -> bool
HealthMode = Literal["off", "on", "auth"] | Callable[[Mapping[str, str]], bool]

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
    # Webhooks (PROTOCOL.md 8): see webhook_options() for what they build.
    webhook_secret: Any = None
    webhook_url: str | None = None
    webhook_outbox: Any = None
    webhook_allow: tuple[str, ...] = ()
    webhook_allow_private: bool = False
    webhook_policy: Any = None
    webhook_dispatcher_options: dict[str, Any] = field(default_factory=dict)
    callback_header: str | None = "callback-url"
    # Health (PROTOCOL.md 10)
    health: HealthMode = "auth"
    health_token: str | None = None
    health_stall_after: float | None = None
    # Observability
    tracer_provider: Any = None
    on_event: EventListener | None = None

    @property
    def webhooks_enabled(self) -> bool:
        return self.webhook_secret is not None


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
    webhook_secret: Any = None,
    webhook_url: str | None = None,
    webhook_outbox: Any = None,
    webhook_allow: Iterable[str] = (),
    webhook_allow_private: bool = False,
    webhook_policy: Any = None,
    webhook_dispatcher_options: Mapping[str, Any] | None = None,
    callback_header: str | None = "Callback-URL",
    health: HealthMode = "auth",
    health_token: str | None = None,
    health_stall_after: float | None = None,
    tracer_provider: Any = None,
    on_event: EventListener | None = None,
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
    hooks = _webhook_settings(
        webhook_secret,
        webhook_url,
        webhook_outbox,
        webhook_allow,
        webhook_allow_private,
        webhook_policy,
        webhook_dispatcher_options,
        callback_header,
    )
    for pattern in patterns:
        check_route_webhook(hooks["webhook_secret"], pattern.options, pattern.spec)
    health_settings = _health_settings(health, health_token, health_stall_after)
    if on_event is not None and not callable(on_event):
        raise ConfigurationError(
            "on_event must be a callable taking (event: str, **fields), e.g. a metrics listener"
        )
    if tracer_provider is not None and not callable(getattr(tracer_provider, "get_tracer", None)):
        raise ConfigurationError(
            "tracer_provider must be an OpenTelemetry TracerProvider (or None for the global one)"
        )
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
        tracer_provider=tracer_provider,
        on_event=on_event,
        **hooks,
        **health_settings,
    )


_DISPATCHER_KEYS = frozenset(
    {
        "max_attempts",
        "schedule",
        "backoff_base",
        "backoff_cap",
        "max_retry_after",
        "timeout",
        "batch_size",
        "lease",
        "interval",
        "verify_tls",
        "user_agent",
    }
)
_HEADER_NAME = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")
_NO_SECRET = (
    "pass webhook_secret='whsec_...' (make one with "
    "python -c 'from async_accept.webhooks import generate_secret; print(generate_secret())')"
)


def _webhook_settings(
    secret: Any,
    url: str | None,
    outbox: Any,
    allow: Iterable[str],
    allow_private: bool,
    policy: Any,
    dispatcher_options: Mapping[str, Any] | None,
    callback_header: str | None,
) -> dict[str, Any]:
    """Validate the webhook options; build the target policy they describe."""
    allow_list = (allow,) if isinstance(allow, str) else tuple(allow)
    if secret is None:
        for name, value in (
            ("webhook_url", url),
            ("webhook_outbox", outbox),
            ("webhook_allow", allow_list),
            ("webhook_policy", policy),
            ("webhook_dispatcher_options", dispatcher_options),
        ):
            if value:
                raise ConfigurationError(f"{name} needs a webhook signing secret: {_NO_SECRET}")
        if allow_private:
            raise ConfigurationError(f"webhook_allow_private needs webhook_secret: {_NO_SECRET}")
    from .webhooks import WebhookPolicy, WebhookTargetError, decode_secret

    if secret is not None:
        if isinstance(secret, (str, bytes)):
            decode_secret(secret)
        elif isinstance(secret, Sequence) and secret:
            for s in secret:
                decode_secret(s)
        else:
            raise ConfigurationError(
                f"webhook_secret must be 'whsec_<base64>' text, bytes or a list of them "
                f"(newest first), not {type(secret).__name__}"
            )
    if policy is not None:
        if allow_list or allow_private:
            raise ConfigurationError(
                "give either webhook_policy=WebhookPolicy(...) or webhook_allow / "
                "webhook_allow_private, not both"
            )
        if not isinstance(policy, WebhookPolicy):
            raise ConfigurationError(
                "webhook_policy must be an async_accept.webhooks.WebhookPolicy"
            )
    elif secret is not None:
        policy = WebhookPolicy(allow_list, allow_private=bool(allow_private))
    if url is not None:
        if not isinstance(url, str):
            raise ConfigurationError(f"webhook_url={url!r} must be an http(s) URL")
        try:
            WebhookPolicy().check_url(url)
        except WebhookTargetError as exc:
            raise ConfigurationError(f"webhook_url={url!r}: {exc.reason}") from exc
    if (
        outbox is not None
        and not isinstance(outbox, str)
        and not callable(getattr(outbox, "enqueue", None))
    ):
        raise ConfigurationError(
            f"webhook_outbox={outbox!r} is not an outbox: pass 'sqlite:///webhooks.db', "
            "'memory://' or an async_accept.outbox.Outbox"
        )
    extra = dict(dispatcher_options or {})
    unknown = sorted(set(extra) - _DISPATCHER_KEYS)
    if unknown:
        raise ConfigurationError(
            f"webhook_dispatcher_options: unknown option(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(_DISPATCHER_KEYS))})"
        )
    header: str | None = None
    if callback_header is not None:
        if (
            not isinstance(callback_header, str)
            or not callback_header
            or any(c not in _HEADER_NAME for c in callback_header.lower())
        ):
            raise ConfigurationError(
                f"callback_header={callback_header!r} must be an HTTP header name "
                "such as 'Callback-URL', or None to read no client callback"
            )
        header = callback_header.lower()
    return {
        "webhook_secret": secret,
        "webhook_url": url,
        "webhook_outbox": outbox,
        "webhook_allow": allow_list,
        "webhook_allow_private": bool(allow_private),
        "webhook_policy": policy,
        "webhook_dispatcher_options": extra,
        "callback_header": header,
    }


def check_route_webhook(webhook_secret: Any, route: RouteOptions, spec: str) -> None:
    """A route's ``webhook=`` needs the signing secret and an http(s) URL."""
    if not route.webhook:
        return
    if webhook_secret is None:
        raise ConfigurationError(
            f"route {spec!r} notifies webhook={route.webhook!r} but no webhook secret is "
            f"configured: {_NO_SECRET}"
        )
    from .webhooks import WebhookPolicy, WebhookTargetError

    try:
        WebhookPolicy().check_url(route.webhook)
    except WebhookTargetError as exc:
        raise ConfigurationError(
            f"route {spec!r}: webhook={route.webhook!r}: {exc.reason}"
        ) from exc


def _health_settings(health: Any, token: str | None, stall_after: float | None) -> dict[str, Any]:
    if health not in ("off", "on", "auth") and not callable(health):
        raise ConfigurationError(
            f"health={health!r} must be 'off', 'on', 'auth' (Authorization: Bearer "
            "<health_token>) or a callable(headers) -> bool"
        )
    if token is not None:
        if not isinstance(token, str) or len(token) < 16:
            raise ConfigurationError(
                "health_token must be a string of at least 16 characters (a random one: "
                "python -c 'import secrets; print(secrets.token_urlsafe(24))')"
            )
        if health != "auth":
            raise ConfigurationError(
                f"health_token is only used with health='auth' (health={health!r})"
            )
    stall = None if stall_after is None else _seconds("health_stall_after", stall_after)
    return {"health": health, "health_token": token, "health_stall_after": stall}
