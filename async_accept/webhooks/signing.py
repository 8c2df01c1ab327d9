"""Signing and verifying after the Standard Webhooks specification (PROTOCOL.md 8).

:func:`sign` makes ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``,
:func:`verify` checks the ``webhook-id`` / ``webhook-timestamp`` /
``webhook-signature`` headers a receiver got. Secrets are ``whsec_<base64>``
strings or raw bytes; a list of secrets signs with each (rotation) and
verifies against any.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _secrets
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeAlias

from ..errors import ConfigurationError
from .errors import WebhookVerificationError

Secret: TypeAlias = "str | bytes"
Secrets: TypeAlias = "str | bytes | Sequence[str | bytes]"
Timestamp: TypeAlias = "float | datetime"

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE = 300


def decode_secret(secret: Secret) -> bytes:
    """The HMAC key of ``secret``: ``whsec_<base64>`` (or bare base64) text, or raw bytes."""
    if isinstance(secret, bytes):
        key = secret
    elif isinstance(secret, str):
        text = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
        try:
            key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ConfigurationError(
                "a webhook secret must be 'whsec_<base64>' text or raw bytes; "
                "make one with async_accept.webhooks.generate_secret()"
            ) from exc
    else:
        raise ConfigurationError(f"a webhook secret must be str or bytes, not {type(secret)!r}")
    if not key:
        raise ConfigurationError("the webhook secret is empty")
    return key


#: the shortest webhook secret a middleware takes (Standard Webhooks: 24 to 64 bytes)
MIN_SECRET_BYTES = 24


def check_secret(secret: Secret) -> bytes:
    """The key of a middleware's ``webhook_secret``; ConfigurationError when under 24 bytes."""
    key = decode_secret(secret)
    if len(key) < MIN_SECRET_BYTES:
        raise ConfigurationError(
            f"the webhook secret is {len(key)} bytes: it must be at least {MIN_SECRET_BYTES} "
            "random bytes (Standard Webhooks); make one with "
            "async_accept.webhooks.generate_secret()"
        )
    return key


def generate_secret(nbytes: int = 32) -> str:
    """A new random secret in the ``whsec_<base64>`` form."""
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(nbytes)).decode("ascii")


def _keys(secret: Secrets) -> list[bytes]:
    if isinstance(secret, (str, bytes)):
        return [decode_secret(secret)]
    keys = [decode_secret(s) for s in secret]
    if not keys:
        raise ConfigurationError("no webhook secret given")
    return keys


def _as_bytes(body: bytes | str) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else bytes(body)


def _timestamp(timestamp: Timestamp) -> int:
    if isinstance(timestamp, datetime):
        return int(timestamp.timestamp())
    return int(timestamp)


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def sign(secret: Secret, msg_id: str, timestamp: Timestamp, body: bytes | str) -> str:
    """``v1,<base64>``: the Standard Webhooks signature of ``id.timestamp.body``.

    ``timestamp`` is POSIX seconds (or a timezone-aware datetime); fractions
    are dropped, as the header carries whole seconds.
    """
    key = decode_secret(secret)
    return "v1," + _signature(key, msg_id, _timestamp(timestamp), _as_bytes(body))


def signature_header(secret: Secrets, msg_id: str, timestamp: Timestamp, body: bytes | str) -> str:
    """The ``webhook-signature`` value: one ``v1,`` signature per secret, space separated."""
    ts = _timestamp(timestamp)
    data = _as_bytes(body)
    return " ".join("v1," + _signature(k, msg_id, ts, data) for k in _keys(secret))


def webhook_headers(
    secret: Secrets, msg_id: str, timestamp: Timestamp, body: bytes | str
) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt."""
    ts = _timestamp(timestamp)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signature_header(secret, msg_id, ts, body),
    }


class HeaderItems(Protocol):
    """Anything with ``items()`` of header pairs: dict, httpx/Starlette headers,
    ``http.server``'s message."""

    def items(self) -> Iterable[tuple[str | bytes, str | bytes]]: ...


def _header_map(headers: Any) -> dict[str, str]:
    items = headers.items() if hasattr(headers, "items") else headers
    out: dict[str, str] = {}
    for name, value in items:
        key = name.decode("latin-1") if isinstance(name, bytes) else str(name)
        val = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        out.setdefault(key.lower(), val)
    return out


def verify(
    secret: Secrets,
    headers: HeaderItems | Iterable[tuple[str | bytes, str | bytes]],
    body: bytes | str,
    *,
    tolerance: float | None = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> None:
    """Check a received webhook; raise :class:`WebhookVerificationError` unless authentic.

    ``headers`` is any mapping or list of (name, value) pairs (names in any
    case, str or bytes: a dict, ``http.server`` headers, ASGI raw headers).
    ``body`` must be the raw bytes as received. The timestamp must lie
    within ``tolerance`` seconds of ``now`` (default the wall clock; None
    disables the check). The ``webhook-signature`` header may carry several
    space-separated signatures; one valid ``v1`` signature by any of the
    given secrets is enough.
    """
    keys = _keys(secret)
    h = _header_map(headers)
    msg_id = h.get("webhook-id")
    ts_text = h.get("webhook-timestamp")
    sig_header = h.get("webhook-signature")
    for name, value in (
        ("webhook-id", msg_id),
        ("webhook-timestamp", ts_text),
        ("webhook-signature", sig_header),
    ):
        if not value:
            raise WebhookVerificationError(f"missing {name} header")
    assert msg_id is not None and ts_text is not None and sig_header is not None
    ts_text = ts_text.strip()
    if not (ts_text.isascii() and ts_text.isdigit()):
        raise WebhookVerificationError("malformed webhook-timestamp header")
    ts = int(ts_text)
    if tolerance is not None:
        current = time.time() if now is None else now
        if ts < current - tolerance:
            raise WebhookVerificationError("webhook timestamp too old")
        if ts > current + tolerance:
            raise WebhookVerificationError("webhook timestamp too new")
    data = _as_bytes(body)
    expected = [_signature(k, msg_id, ts, data).encode("ascii") for k in keys]
    for entry in sig_header.split(" "):
        version, _, value = entry.partition(",")
        if version != "v1" or not value.isascii():
            continue
        candidate = value.encode("ascii")
        # Compare the base64 text itself: a decoder would forgive changed
        # padding bits, and a forged header should never pass.
        if any(hmac.compare_digest(candidate, e) for e in expected):
            return
    raise WebhookVerificationError("no matching signature")
