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

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import logging
import random as _random
import secrets as _secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias
from urllib.parse import unquote, urlsplit

from .client import parse_retry_after
from .errors import AsyncAcceptError, ConfigurationError, MissingDependencyError
from .outbox import (
    DEFAULT_LEASE,
    Delivery,
    DisabledEndpoint,
    MemoryOutbox,
    Outbox,
    new_message_id,
    resolve_outbox,
)

if TYPE_CHECKING:
    import httpx

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

log = logging.getLogger("async_accept.webhooks")

Secret: TypeAlias = "str | bytes"
Secrets: TypeAlias = "str | bytes | Sequence[str | bytes]"
#: resolver(host, port) -> addresses: IP strings, or ``socket.getaddrinfo`` 5-tuples.
Resolver: TypeAlias = Callable[[str, int], Iterable[Any]]
Timestamp: TypeAlias = "float | datetime"

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE = 300
USER_AGENT = "async-accept-webhooks/0.1"
_PIN = "async_accept.pinned_address"
#: Never retry sooner than this, whatever the jitter draws or the receiver says.
_MIN_RETRY_DELAY = 1.0


class WebhookError(AsyncAcceptError):
    """Root of the webhook errors."""


class WebhookVerificationError(WebhookError):
    """A received webhook is not authentic: missing or malformed headers, a
    timestamp outside the tolerance, or no matching signature."""


class WebhookTargetError(WebhookError):
    """The policy refuses to send to ``url``; ``reason`` says why."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"webhook target {url!r} refused: {reason}")


class WebhookResolveError(WebhookError):
    """The target's host name could not be resolved (possibly a passing fault)."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"webhook target {url!r} could not be resolved: {reason}")


# -- signing ------------------------------------------------------------------


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


# -- targets ------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    url: str
    scheme: str
    host: str
    port: int
    path: str


@dataclass(frozen=True)
class ResolvedTarget:
    """A target that passed the policy, with the addresses its host resolved to.

    The dispatcher connects to ``address`` (the first one), not to a fresh
    lookup, so what was checked is what is reached.
    """

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]

    @property
    def address(self) -> str:
        return self.addresses[0]


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _norm_host(host: str) -> str:
    return host.lower().rstrip(".")


def _parse_target(url: str) -> _Target:
    if not isinstance(url, str) or not url:
        raise WebhookTargetError(str(url), "not a URL")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F or c == "\\" for c in url):
        raise WebhookTargetError(url, "whitespace, control characters or backslashes in the URL")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookTargetError(url, f"malformed URL ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise WebhookTargetError(url, f"scheme {parts.scheme!r} is not http or https")
    if "@" in parts.netloc:
        raise WebhookTargetError(url, "credentials (userinfo) in the URL are not allowed")
    host = parts.hostname
    if not host:
        raise WebhookTargetError(url, "no host")
    if not host.isascii():
        raise WebhookTargetError(url, "non-ASCII host: use its punycode (xn--) form")
    if port == 0:
        raise WebhookTargetError(url, "port 0")
    return _Target(
        url=url,
        scheme=scheme,
        host=_norm_host(host),
        port=port if port is not None else _DEFAULT_PORTS[scheme],
        path=parts.path or "/",
    )


@dataclass(frozen=True)
class _AllowRule:
    kind: Literal["host", "suffix", "prefix"]
    host: str
    port: int | None = None
    scheme: str | None = None
    path: str = "/"

    def matches(self, t: _Target) -> bool:
        if self.kind == "suffix":
            return t.host.endswith("." + self.host)
        if t.host != self.host or (self.port is not None and t.port != self.port):
            return False
        if self.kind == "host":
            return True
        if t.scheme != self.scheme:
            return False
        # "/hooks" allows "/hooks" and "/hooks/...", never "/hooksx"; dot
        # segments could climb out of the prefix on the receiving server.
        if any(unquote(seg) in (".", "..") for seg in t.path.split("/")):
            return False
        prefix = self.path
        if prefix.endswith("/"):
            return t.path.startswith(prefix)
        return t.path == prefix or t.path.startswith(prefix + "/")


def _parse_rule(entry: str) -> _AllowRule:
    if not isinstance(entry, str) or not entry.strip():
        raise ConfigurationError(f"webhook allow-list entry {entry!r} is empty")
    entry = entry.strip()
    if "://" in entry:
        try:
            t = _parse_target(entry)
        except WebhookTargetError as exc:
            raise ConfigurationError(f"webhook allow-list entry {entry!r}: {exc.reason}") from exc
        if urlsplit(entry).query or urlsplit(entry).fragment:
            raise ConfigurationError(
                f"webhook allow-list entry {entry!r}: a URL prefix takes no query or fragment"
            )
        return _AllowRule("prefix", t.host, t.port, t.scheme, t.path)
    if entry.startswith("*."):
        suffix = _norm_host(entry[2:])
        if not suffix or any(c in suffix for c in "/:@*"):
            raise ConfigurationError(f"webhook allow-list entry {entry!r} is not '*.domain'")
        return _AllowRule("suffix", suffix)
    if any(c in entry for c in "/@*"):
        raise ConfigurationError(
            f"webhook allow-list entry {entry!r}: give a host, 'host:port', '*.domain' "
            "or a URL prefix such as 'https://hooks.example.com/async/'"
        )
    try:
        parts = urlsplit("//" + entry)
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"webhook allow-list entry {entry!r}: {exc}") from exc
    if not parts.hostname:
        raise ConfigurationError(f"webhook allow-list entry {entry!r} has no host")
    return _AllowRule("host", _norm_host(parts.hostname), port)


def _embedded_v4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses that an IPv6 address leads to (6to4, Teredo, NAT64)."""
    out: list[ipaddress.IPv4Address] = []
    if ip.sixtofour is not None:
        out.append(ip.sixtofour)
    if ip.teredo is not None:
        out.extend(ip.teredo)
    if ip in _NAT64:
        out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return out


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _internal_reason(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why ``ip`` is not a public unicast address, or None when it is."""
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_site_local:
            return "site-local"
        for inner in _embedded_v4(ip):
            why = _internal_reason(inner)
            if why is not None:
                return f"embeds the {why} address {inner}"
    if not ip.is_global:
        return "not globally routable"
    return None


def _default_resolver(host: str, port: int) -> list[Any]:
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)


def _address_of(item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(item)
    if isinstance(item, tuple) and len(item) == 5 and isinstance(item[4], tuple):
        return str(item[4][0])  # a getaddrinfo entry: (family, type, proto, name, sockaddr)
    raise TypeError(f"resolver gave {item!r}, not an address")


class WebhookPolicy:
    """Where webhooks may go.

    ``allow`` lists what a *client-supplied* callback URL may name: a host
    (``"hooks.example.com"``, ``"hooks.example.com:8443"``), every subdomain
    (``"*.example.com"``), or a URL prefix (``"https://hooks.example.com/async/"``:
    same scheme, host and port, path at or below it). With an empty list no
    client-supplied URL is accepted; URLs configured by the app need no entry.

    Every target, configured or not, must be http(s) without userinfo, and
    each address its host resolves to must be public unicast. Private,
    loopback, link-local, reserved and shared addresses pass only with
    ``allow_private=True`` or inside one of ``allow_networks`` (CIDR strings,
    e.g. ``["10.1.2.0/24"]``). Multicast and unspecified addresses never pass.

    ``resolver(host, port)`` returns addresses (IP strings or getaddrinfo
    tuples); default :func:`socket.getaddrinfo`. It is called on each check.
    """

    def __init__(
        self,
        allow: Iterable[str] = (),
        *,
        allow_private: bool = False,
        allow_networks: Iterable[str] = (),
        resolver: Resolver | None = None,
    ) -> None:
        if isinstance(allow, str):
            allow = [allow]
        self.rules = tuple(_parse_rule(e) for e in allow)
        self.allow_private = bool(allow_private)
        networks = [allow_networks] if isinstance(allow_networks, str) else list(allow_networks)
        try:
            self.allow_networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        except ValueError as exc:
            raise ConfigurationError(f"allow_networks: {exc}") from exc
        self._resolver: Resolver = _default_resolver if resolver is None else resolver

    def allows(self, url: str) -> bool:
        """True when ``url`` is on the allow-list (for a client-supplied callback)."""
        try:
            target = _parse_target(url)
        except WebhookTargetError:
            return False
        return any(rule.matches(target) for rule in self.rules)

    def check_url(self, url: str, *, client_supplied: bool = False) -> None:
        """Refuse a URL on its face, without any DNS lookup (safe on a request path).

        Raises :class:`WebhookTargetError`.
        """
        self._check_url(url, client_supplied)

    def _check_url(self, url: str, client_supplied: bool) -> _Target:
        target = _parse_target(url)
        if client_supplied and not any(rule.matches(target) for rule in self.rules):
            raise WebhookTargetError(url, "a client-supplied callback URL not on the allow-list")
        return target

    def check_address(self, address: str, url: str = "") -> None:
        """Refuse one resolved address unless the policy allows it."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError as exc:
            raise WebhookTargetError(url, f"{address!r} is not an IP address") from exc
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:a.b.c.d reaches a.b.c.d
        if ip.is_unspecified:
            raise WebhookTargetError(url, f"resolves to the unspecified address {address}")
        if ip.is_multicast:
            raise WebhookTargetError(url, f"resolves to the multicast address {address}")
        if self.allow_private:
            return
        if any(ip.version == net.version and ip in net for net in self.allow_networks):
            return
        why = _internal_reason(ip)
        if why is not None:
            raise WebhookTargetError(url, f"resolves to {address}: {why}")

    def resolve(self, url: str, *, client_supplied: bool = False) -> ResolvedTarget:
        """Check ``url`` and every address its host resolves to.

        Raises :class:`WebhookTargetError` when refused and
        :class:`WebhookResolveError` when the name does not resolve.
        """
        target = self._check_url(url, client_supplied)
        try:
            literal = ipaddress.ip_address(target.host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [target.host]
        else:
            try:
                found = list(self._resolver(target.host, target.port))
                addresses = [_address_of(item) for item in found]
            except (OSError, UnicodeError) as exc:
                raise WebhookResolveError(url, str(exc) or type(exc).__name__) from exc
            except TypeError as exc:
                raise WebhookResolveError(url, str(exc)) from exc
            if not addresses:
                raise WebhookResolveError(url, "no address")
        unique = tuple(dict.fromkeys(addresses))
        for address in unique:
            # All of them: a client may connect to any, and an attacker needs only one.
            self.check_address(address, url)
        return ResolvedTarget(url, target.scheme, target.host, target.port, unique)


# -- delivery -----------------------------------------------------------------


def _httpx() -> Any:
    try:
        import httpx
    except ImportError as exc:
        raise MissingDependencyError("Webhooks", "client", "httpx") from exc
    return httpx


def _pinned_transport(verify_tls: bool | ssl.SSLContext) -> httpx.BaseTransport:
    import httpx

    class PinnedTransport(httpx.BaseTransport):
        """Sends each request to the address in its extensions, never to a
        fresh DNS answer; the URL's host stays in ``Host`` and the TLS SNI
        (and so in certificate checks)."""

        def __init__(self) -> None:
            # No keep-alive: a pooled connection is keyed by address, and two
            # host names on one address must not share a TLS session.
            self._inner = httpx.HTTPTransport(
                verify=verify_tls, retries=0, limits=httpx.Limits(max_keepalive_connections=0)
            )

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            address = request.extensions.get(_PIN)
            if not isinstance(address, str) or not address:
                raise httpx.ConnectError("no pinned address: refusing to connect", request=request)
            original = request.url
            # ``Host`` was set from the original URL when the request was built.
            request.url = original.copy_with(host=address)
            if original.host != address:
                request.extensions = {**request.extensions, "sni_hostname": original.host}
            return self._inner.handle_request(request)

        def close(self) -> None:
            self._inner.close()

    return PinnedTransport()


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(f"{name}={value!r} must be a number > 0")
    return float(value)


class WebhookDispatcher:
    """Sends the outbox's deliveries, signed, with retries and dead letters.

    Call :meth:`enqueue` when a job ends; deliveries go out on
    :meth:`deliver_due` (one pass, synchronous) or from the background thread
    of :meth:`start`. Several dispatchers (threads, processes) may share a
    SQLite outbox: each delivery is claimed by one at a time.

    Retries: after the n-th failed attempt the next waits a random time in
    ``[0, ceiling]`` (full jitter, at least one second) where ``ceiling`` is
    ``schedule[n-1]`` (the last entry repeating) or, without a schedule,
    ``backoff_base * 2**(n-1)`` capped at ``backoff_cap``. A ``Retry-After``
    from the receiver replaces that (capped at ``max_retry_after``). After
    ``max_attempts`` attempts the delivery is dead. 2xx is success; ``410``
    disables the endpoint for good (the delivery is dead and nothing is sent
    there again until :meth:`enable_endpoint`); anything else is a failure.
    Redirects are not followed.

    ``clock`` (POSIX seconds) and ``random`` (in [0, 1)) are injectable for tests.
    """

    def __init__(
        self,
        secret: Secrets,
        *,
        outbox: Outbox | str | None = None,
        policy: WebhookPolicy | None = None,
        max_attempts: int = 8,
        schedule: Sequence[float] | None = None,
        backoff_base: float = 5.0,
        backoff_cap: float = 3600.0,
        max_retry_after: float = 3600.0,
        timeout: float = 10.0,
        batch_size: int = 50,
        lease: float | None = None,
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        random: Callable[[], float] = _random.random,
        verify_tls: bool | ssl.SSLContext = True,
        user_agent: str = USER_AGENT,
    ) -> None:
        hx = _httpx()
        self._keys = _keys(secret)
        self.policy = WebhookPolicy() if policy is None else policy
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigurationError(f"max_attempts={max_attempts!r} must be an integer >= 1")
        self.max_attempts = max_attempts
        self.schedule = None if schedule is None else [float(s) for s in schedule]
        if self.schedule is not None and (
            not self.schedule or any(not s >= 0 for s in self.schedule)
        ):
            raise ConfigurationError(f"schedule={schedule!r} must be a non-empty list of seconds")
        self.backoff_base = _positive("backoff_base", backoff_base)
        self.backoff_cap = _positive("backoff_cap", backoff_cap)
        self.max_retry_after = _positive("max_retry_after", max_retry_after)
        self.timeout = _positive("timeout", timeout)
        self.interval = _positive("interval", interval)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size={batch_size!r} must be an integer >= 1")
        self.batch_size = batch_size
        # One claim covers one send; a send can take a few timeouts (connect,
        # write, read), so the lease must outlast that or two could overlap.
        self.lease = max(DEFAULT_LEASE, 6 * self.timeout) if lease is None else float(lease)
        if not self.lease > 4 * self.timeout:
            raise ConfigurationError(f"lease={lease!r} must exceed 4 x timeout ({self.timeout})")
        self._clock = clock
        self._random = random
        self._user_agent = user_agent
        # Resources last, once every option is known to be good.
        self._owns_outbox = outbox is None or isinstance(outbox, str)
        self.outbox: Outbox = MemoryOutbox() if outbox is None else resolve_outbox(outbox)
        self._http: httpx.Client = hx.Client(
            transport=_pinned_transport(verify_tls),
            timeout=self.timeout,
            follow_redirects=False,
            trust_env=False,  # an environment proxy would bypass the address check
        )
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- producing ----------------------------------------------------------

    def enqueue(
        self,
        url: str,
        payload: Mapping[str, Any] | str | bytes,
        *,
        job_id: str | None = None,
        msg_id: str | None = None,
        client_supplied: bool = False,
        now: float | None = None,
    ) -> Delivery:
        """Record a delivery of ``payload`` (the job's status JSON) to ``url``.

        The URL is checked on its face now (:meth:`WebhookPolicy.check_url`;
        raises :class:`WebhookTargetError`, so a bad client callback can be
        refused at accept time) and fully, with DNS, before every attempt.
        ``msg_id`` (the ``webhook-id``) defaults to a random one; passing a
        stable one makes a repeated enqueue a no-op.
        """
        self.policy.check_url(url, client_supplied=client_supplied)
        if isinstance(payload, bytes):
            body = payload.decode("utf-8")
        elif isinstance(payload, str):
            body = payload
        else:
            body = json.dumps(payload, separators=(",", ":"))
        t = self._clock() if now is None else now
        delivery = Delivery(
            id=msg_id or new_message_id(),
            url=url,
            payload=body,
            created_at=t,
            next_at=t,
            updated_at=t,
            job_id=job_id,
            client_supplied=client_supplied,
        )
        stored = self.outbox.enqueue(delivery)
        self._wake.set()
        return stored

    # -- operator -------------------------------------------------------------

    def list_dead(self, limit: int = 100) -> list[Delivery]:
        """Dead letters, oldest first."""
        return self.outbox.list_dead(limit)

    def replay(self, delivery_id: str, now: float | None = None) -> Delivery | None:
        """Send a dead letter again (with a fresh attempt budget); None when not dead."""
        out = self.outbox.replay(delivery_id, self._clock() if now is None else now)
        if out is not None:
            self._wake.set()
        return out

    def list_disabled(self) -> list[DisabledEndpoint]:
        """Endpoints that answered 410 Gone."""
        return self.outbox.list_disabled()

    def enable_endpoint(self, url: str) -> bool:
        """Allow deliveries to ``url`` again after a 410."""
        return self.outbox.enable_endpoint(url)

    # -- sending --------------------------------------------------------------

    def retry_delay(self, attempts: int, retry_after: str | None, now: float) -> float:
        """Seconds until the next attempt after ``attempts`` failed ones."""
        asked = parse_retry_after(retry_after, now)
        if asked is not None:
            return min(max(asked, _MIN_RETRY_DELAY), self.max_retry_after)
        if self.schedule is not None:
            ceiling = self.schedule[min(attempts, len(self.schedule)) - 1]
        else:
            ceiling = min(self.backoff_cap, self.backoff_base * 2.0 ** (attempts - 1))
        return max(_MIN_RETRY_DELAY, self._random() * ceiling)

    def deliver_due(self, now: float | None = None) -> int:
        """One pass: attempt up to ``batch_size`` due deliveries; how many were handled.

        ``now`` (POSIX seconds) fixes the time for the whole pass (tests);
        by default the clock is read before each delivery.
        """
        handled = 0
        while handled < self.batch_size:
            t = self._clock() if now is None else now
            claimed = self.outbox.due(t, 1, self.lease)
            if not claimed:
                break
            self._attempt(claimed[0], now)
            handled += 1
        return handled

    def _attempt(self, delivery: Delivery, now: float | None) -> None:
        t = self._clock() if now is None else now
        if self.outbox.endpoint_disabled(delivery.url):
            self.outbox.mark_dead(
                delivery,
                now=t,
                attempts=delivery.attempts,
                last_error="endpoint disabled: it answered 410 Gone",
            )
            return
        attempts = delivery.attempts + 1
        try:
            target = self.policy.resolve(delivery.url, client_supplied=delivery.client_supplied)
        except WebhookTargetError as exc:
            log.warning("webhook %s refused: %s", delivery.id, exc.reason)
            self.outbox.mark_dead(
                delivery, now=t, attempts=delivery.attempts, last_error=f"refused: {exc.reason}"
            )
            return
        except WebhookResolveError as exc:
            self._failed(delivery, t, attempts, f"resolve: {exc.reason}", None, None)
            return
        hx = _httpx()
        body = delivery.payload.encode("utf-8")
        headers = {
            "content-type": "application/json",
            "user-agent": self._user_agent,
            **webhook_headers(self._keys, delivery.id, t, body),
        }
        request = self._http.build_request(
            "POST", delivery.url, content=body, headers=headers, extensions={_PIN: target.address}
        )
        try:
            response = self._http.send(request, stream=True)
        except hx.HTTPError as exc:
            self._failed(delivery, t, attempts, f"{type(exc).__name__}: {exc}", None, None)
            return
        try:
            status = response.status_code
            retry_after = response.headers.get("retry-after")
        finally:
            response.close()
        if 200 <= status < 300:
            self.outbox.mark_sent(delivery, now=t, attempts=attempts, status=status)
        elif status == 410:
            log.warning("webhook endpoint %s answered 410 Gone: disabled", delivery.url)
            self.outbox.disable_endpoint(delivery.url, t, "410 Gone")
            self.outbox.mark_dead(
                delivery,
                now=t,
                attempts=attempts,
                last_error="410 Gone: endpoint disabled",
                status=status,
            )
        else:
            self._failed(delivery, t, attempts, f"HTTP {status}", status, retry_after)

    def _failed(
        self,
        delivery: Delivery,
        now: float,
        attempts: int,
        error: str,
        status: int | None,
        retry_after: str | None,
    ) -> None:
        if attempts >= self.max_attempts:
            log.warning("webhook %s to %s is a dead letter: %s", delivery.id, delivery.url, error)
            self.outbox.mark_dead(
                delivery, now=now, attempts=attempts, last_error=error, status=status
            )
            return
        delay = self.retry_delay(attempts, retry_after, now)
        self.outbox.mark_retry(
            delivery,
            now=now,
            next_at=now + delay,
            attempts=attempts,
            last_error=error,
            status=status,
        )

    # -- background -------------------------------------------------------------

    def start(self) -> None:
        """Deliver in a daemon thread until :meth:`stop`."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="async-accept-webhooks", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                handled = self.deliver_due()
            except Exception:  # keep delivering; the lease brings the row back
                log.exception("webhook delivery pass failed")
                handled = 0
            if handled == 0:
                self._wake.wait(self.interval)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the background thread (the delivery in flight finishes first)."""
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def close(self) -> None:
        """Stop, close the HTTP client, and the outbox when this dispatcher made it."""
        self.stop()
        self._http.close()
        if self._owns_outbox:
            self.outbox.close()

    def __enter__(self) -> WebhookDispatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
