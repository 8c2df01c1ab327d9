"""Where webhooks may go: :class:`WebhookPolicy` (PROTOCOL.md 8, SSRF).

Only http(s), no userinfo, a client-supplied callback only when on the
allow-list, and never an address that is private, loopback, link-local,
multicast, reserved or unspecified (every resolved address is checked,
IPv4-mapped and other IPv4-in-IPv6 forms included) unless allowed.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias
from urllib.parse import unquote, urlsplit

from ..errors import ConfigurationError
from .errors import WebhookError, WebhookResolveError, WebhookTargetError

#: resolver(host, port) -> addresses: IP strings, or ``socket.getaddrinfo`` 5-tuples.
Resolver: TypeAlias = Callable[[str, int], Iterable[Any]]


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
        if any(_climbs(seg) for seg in t.path.split("/")):
            return False
        prefix = self.path
        if prefix.endswith("/"):
            return t.path.startswith(prefix)
        return t.path == prefix or t.path.startswith(prefix + "/")


def _climbs(segment: str) -> bool:
    """Whether a path segment could mean "." or ".." (or hide a slash) to some server.

    Decoded as often as a server might (``%252e``), with a ``;`` parameter
    dropped as Tomcat and others do (``..;``), with a decoded ``/`` or ``\\``.
    """
    seen = segment
    for _ in range(3):
        if "/" in seen or "\\" in seen or seen.split(";", 1)[0] in (".", ".."):
            return True
        decoded = unquote(seen)
        if decoded == seen:
            return False
        seen = decoded
    return True  # still encoded after three rounds: refuse rather than guess


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

    def refusal(self, url: str) -> str | None:
        """Why a client-supplied callback URL is refused at accept, or None.

        No DNS lookup here (this runs on the request path): the URL's form and
        the allow-list are checked now, an IP literal's address too; a host
        name's addresses are checked before every delivery attempt.
        """
        try:
            target = self._check_url(url, True)
            try:
                ipaddress.ip_address(target.host)
            except ValueError:
                return None
            self.resolve(url, client_supplied=True)  # a literal: no lookup
        except WebhookTargetError as exc:
            return exc.reason
        except WebhookError as exc:  # pragma: no cover - literals do not resolve
            return str(exc)
        return None
