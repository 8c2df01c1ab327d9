"""Completion webhooks (PROTOCOL.md section 8).

Three parts, usable alone:

- **Signing** after the Standard Webhooks specification: :func:`sign` makes
  ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, :func:`verify` checks
  the ``webhook-id`` / ``webhook-timestamp`` / ``webhook-signature`` headers
  a receiver got. Secrets are ``whsec_<base64>`` strings or raw bytes; a list
  of secrets signs with each (rotation) and verifies against any.
- **Targets**: :class:`WebhookPolicy` decides where the server may send. Only
  http(s), no userinfo, a client-supplied callback only when on the
  allow-list, and never an address that is private, loopback, link-local,
  multicast, reserved or unspecified (every resolved address is checked,
  IPv4-mapped and other IPv4-in-IPv6 forms included) unless allowed.
- **Delivery**: :class:`WebhookDispatcher` sends what an :mod:`~async_accept.outbox`
  holds: POST of the JSON, retried with exponential backoff and full jitter
  (or the receiver's ``Retry-After``), ``410 Gone`` disables the endpoint,
  spent deliveries become dead letters to list and replay. It connects to the
  address the policy checked (so DNS can't be rebound between check and
  connect) while sending the real ``Host`` and TLS server name.

httpx is optional (``pip install 'async-accept[client]'``); only the
dispatcher needs it, and imports it when constructed.
"""

from __future__ import annotations

from .dispatcher import USER_AGENT as USER_AGENT
from .dispatcher import WebhookDispatcher
from .errors import (
    WebhookError,
    WebhookResolveError,
    WebhookTargetError,
    WebhookVerificationError,
)
from .policy import ResolvedTarget, WebhookPolicy
from .policy import Resolver as Resolver

# async_accept.core reads a callback URL with it (WebhookPolicy.refusal does it all).
from .policy import _parse_target as _parse_target
from .signing import DEFAULT_TOLERANCE as DEFAULT_TOLERANCE
from .signing import SECRET_PREFIX as SECRET_PREFIX
from .signing import Secret as Secret
from .signing import Secrets as Secrets
from .signing import Timestamp as Timestamp
from .signing import (
    decode_secret,
    generate_secret,
    sign,
    signature_header,
    verify,
    webhook_headers,
)

__all__ = [
    "ResolvedTarget",
    "WebhookDispatcher",
    "WebhookError",
    "WebhookPolicy",
    "WebhookResolveError",
    "WebhookTargetError",
    "WebhookVerificationError",
    "decode_secret",
    "generate_secret",
    "sign",
    "signature_header",
    "verify",
    "webhook_headers",
]
