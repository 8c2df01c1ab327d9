"""The webhook options checked together (PROTOCOL.md 8): the signing secret, the
targets, the outbox, the dispatcher's settings and the client callback header.
:mod:`async_accept.options` runs these checks; they live here to keep it one
sitting long."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import ConfigurationError
from .routes import RouteOptions

__all__ = ["check_route_webhook", "webhook_settings"]

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


def webhook_settings(
    webhook_secret: Any,
    webhook_url: str | None,
    webhook_outbox: Any,
    webhook_allow: Iterable[str],
    webhook_allow_private: bool,
    webhook_policy: Any,
    webhook_dispatcher_options: Mapping[str, Any] | None,
    callback_header: str | None,
) -> dict[str, Any]:
    """Validate the webhook options; build the target policy they describe."""
    secret, url, outbox, allow = webhook_secret, webhook_url, webhook_outbox, webhook_allow
    allow_private, policy = webhook_allow_private, webhook_policy
    dispatcher_options = webhook_dispatcher_options
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
    from .webhooks import WebhookPolicy, WebhookTargetError
    from .webhooks.signing import check_secret

    if secret is not None:
        if isinstance(secret, (str, bytes)):
            check_secret(secret)
        elif isinstance(secret, Sequence) and secret:
            for s in secret:
                check_secret(s)
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
