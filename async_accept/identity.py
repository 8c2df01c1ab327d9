"""Who is calling: the owner material a job is bound to, and the owner cookie.

The owner of a job is, in this order of preference:

1. what the app's ``identity=`` function returns (``str``, ``bytes`` or
   ``None``; anything else is a :class:`ConfigurationError`);
2. the principal the framework authenticated (Starlette/FastAPI
   ``scope["user"]``, Django ``request.user``), which the front door puts on
   the captured request: a refreshed token or a rewritten session cookie of
   the same user keeps access;
3. the credential material of the request: ``Authorization``,
   ``Proxy-Authorization``, ``X-API-Key``, ``Api-Key`` (plus the
   ``identity_headers=``) and the ``session_cookies=``.

Material is encoded unambiguously (each part as a length-prefixed name and
value), so no two different sets of credentials can give the same bytes.
Only an HMAC of it is ever stored (:mod:`async_accept.tokens`).

A caller identified by a session cookie alone also gets an *owner cookie* at
accept: a random value, ``HttpOnly``, ``SameSite=Lax``, for the app's path
(one per browser: it comes back at the next accepts and is reused). A job
accepted with it answers whoever presents the same owner cookie, so a session
cookie the app rewrites (Flask's signed session after a ``flash()``,
Starlette's ``SessionMiddleware``, Django's key rotation at login) keeps the
user's access, while another browser never gets it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence

from .cookie_rules import CookieReader, read_cookies
from .errors import ConfigurationError

#: request headers whose value identifies the caller (lower-case)
DEFAULT_IDENTITY_HEADERS: tuple[str, ...] = (
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
)
#: cookies that identify a browser session by default
DEFAULT_SESSION_COOKIES: tuple[str, ...] = ("session", "sessionid")
#: the owner cookie handed out at accept to callers identified by a session cookie only
OWNER_COOKIE = "async_accept_owner"
_OWNER_COOKIE_B = OWNER_COOKIE.encode("ascii")
_COOKIE_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
#: the owner hashes a lookup of an unknown job is compared with (same work, no match)
NOBODY = "0" * 64 + " " + "0" * 64


def encode_parts(parts: Iterable[tuple[bytes, bytes]]) -> bytes:
    """``name`` and ``value`` of each part, length-prefixed (4 bytes, big-endian)."""
    out = bytearray()
    for name, value in parts:
        out += len(name).to_bytes(4, "big") + name
        out += len(value).to_bytes(4, "big") + value
    return bytes(out)


def parse_cookie_header(values: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
    """``Cookie`` header lines as (name, value) byte pairs, in order; never raises.

    Nothing is decoded: malformed or non-UTF-8 cookies stay bytes. Quotes
    around a value are dropped, as RFC 6265 allows.
    """
    out: list[tuple[bytes, bytes]] = []
    for line in values:
        for piece in line.split(b";"):
            name, eq, value = piece.partition(b"=")
            name = name.strip()
            if not eq or not name:
                continue
            value = value.strip()
            if len(value) >= 2 and value[:1] == b'"' and value[-1:] == b'"':
                value = value[1:-1]
            out.append((name, value))
    return out


def check_identity_result(value: object) -> bytes:
    """What an ``identity=`` function returned, as bytes.

    ConfigurationError for anything but ``str``, ``bytes`` or ``None``.
    """
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, bytes):
        return value
    raise ConfigurationError(
        f"identity= must return str, bytes or None (the caller's identity), "
        f"not {type(value).__name__}: return str(user_id) for a numeric id"
    )


class Identity:
    """What identifies a caller in a captured request."""

    __slots__ = ("cookie", "material", "principal", "session_only")

    def __init__(
        self, material: bytes, *, principal: bool, session_only: bool, cookie: bytes | None
    ) -> None:
        #: the owner material (empty: anonymous)
        self.material = material
        #: it came from the framework's authenticated principal or identity=
        self.principal = principal
        #: it came from session cookies only (the owner cookie then applies)
        self.session_only = session_only
        #: the owner cookie's value the request carried, if any
        self.cookie = cookie


def read_identity(
    headers: Sequence[tuple[bytes, bytes]],
    principal: str | None,
    identity_headers: Sequence[bytes],
    session_cookies: Sequence[bytes],
    cookie_reader: CookieReader | None = None,
) -> Identity:
    """The caller's identity from a request's headers (and the framework principal).

    ``cookie_reader`` (cookie_rules.py) says which value of a repeated session
    cookie the app's framework reads: the owner is bound to that one. Without
    one, every value counts, in order (a second cookie can only narrow access).
    """
    cookie_lines = [v for k, v in headers if k == b"cookie"]
    cookies = parse_cookie_header(cookie_lines) if cookie_lines else []
    owner_cookie = None
    for name, value in cookies:
        if name == _OWNER_COOKIE_B and len(value) == 43 and _COOKIE_CHARS.issuperset(value):
            owner_cookie = value
            break
    if principal:
        material = encode_parts([(b"principal", principal.encode("utf-8", "surrogatepass"))])
        return Identity(material, principal=True, session_only=False, cookie=owner_cookie)
    parts: list[tuple[bytes, bytes]] = []
    for name in identity_headers:
        for k, v in headers:
            if k == name and v:
                parts.append((b"h:" + k, v))
    credential = bool(parts)
    if session_cookies and cookie_lines:
        if cookie_reader is None:
            parts.extend((b"c:" + n, v) for n, v in cookies if v and n in session_cookies)
        else:
            seen = read_cookies(cookie_reader, cookie_lines)
            for name in session_cookies:
                text = seen.get(name.decode("latin-1"))
                if text:
                    parts.append((b"c:" + name, text.encode("utf-8", "surrogatepass")))
    session_only = bool(parts) and not credential
    return Identity(
        encode_parts(parts), principal=False, session_only=session_only, cookie=owner_cookie
    )


def owner_cookie_material(value: bytes) -> bytes:
    """The owner material of an owner cookie's value (hashed like any other)."""
    return encode_parts([(b"owner-cookie", value)])


def new_owner_cookie() -> bytes:
    """A fresh owner cookie value (256 random bits, URL-safe)."""
    return secrets.token_urlsafe(32).encode("ascii")


def owner_cookie_header(value: bytes, path: str, max_age: int, secure: bool) -> bytes:
    """The ``Set-Cookie`` value that hands ``value`` out for the job URLs below ``path``."""
    attrs = [
        _OWNER_COOKIE_B + b"=" + value,
        b"Path=" + (path or "/").encode("latin-1"),
        b"Max-Age=" + str(max(1, max_age)).encode(),
        b"HttpOnly",
        b"SameSite=Lax",
    ]
    if secure:
        attrs.append(b"Secure")
    return b"; ".join(attrs)


def starlette_principal(user: object) -> str | None:
    """The principal of a Starlette/FastAPI ``scope["user"]`` (AuthenticationMiddleware)."""
    try:
        if user is None or not getattr(user, "is_authenticated", False):
            return None
        try:
            ident = user.identity  # type: ignore[attr-defined]
        except (NotImplementedError, AttributeError):
            ident = getattr(user, "display_name", None)
        return None if ident in (None, "") else f"starlette:{ident}"
    except Exception:  # an app's user object that fails: no principal, never a 500
        return None


#: attributes naming a user object, tried in this order by :func:`object_principal`
_USER_KEYS = ("pk", "id", "identity", "username", "email")


def object_principal(framework: str, user: object) -> str | None:
    """The principal of a framework's user object of any shape (Litestar's
    ``request.user``): a ``str``/``int`` itself, else its type and the first of
    ``pk``, ``id``, ``identity``, ``username``, ``email`` it has (attribute or
    key); None for no user."""
    try:
        if user is None or isinstance(user, bool):
            return None
        if isinstance(user, (str, int)):
            return f"{framework}:{type(user).__name__}:{user}" if user != "" else None
        if getattr(user, "is_authenticated", True) is False:
            return None
        for key in _USER_KEYS:
            value = user.get(key) if isinstance(user, Mapping) else getattr(user, key, None)
            if isinstance(value, (str, int)) and not isinstance(value, bool) and value != "":
                return f"{framework}:{type(user).__qualname__}:{key}:{value}"
        return None
    except Exception:  # an app's user object that fails: no principal, never a 500
        return None


def django_user_principal(user: object) -> str | None:
    """The principal of a Django user object (model label and primary key), None
    for an anonymous or unsaved one."""
    try:
        if user is None or not getattr(user, "is_authenticated", False):
            return None
        pk = getattr(user, "pk", None)
        if pk is None:
            return None
        label = getattr(getattr(user, "_meta", None), "label_lower", type(user).__name__)
        return f"django:{label}:{pk}"
    except Exception:  # a broken auth backend: no principal, never a 500
        return None


def django_principal(request: object) -> str | None:
    """The principal of a Django request's ``user`` (AuthenticationMiddleware ran
    before, or DRF's authentication set it on the request in the view).

    In async code only a user already loaded is read (loading it there would
    touch the database from the event loop): DRF's, or a lazy one evaluated.
    """
    try:
        if not hasattr(request, "user"):
            return None
        if getattr(request, "scope", None) is not None and not _user_loaded(request):
            return None
        return django_user_principal(request.user)
    except Exception:  # a broken auth backend: no principal, never a 500
        return None


def _user_loaded(request: object) -> bool:
    """Whether ``request.user`` is there without a database query."""
    if hasattr(request, "_cached_user"):
        return True
    user = vars(request).get("user")
    wrapped = getattr(user, "_wrapped", None)
    if wrapped is None:
        return user is not None  # set by DRF (or the app) as it is
    from django.utils.functional import empty

    return wrapped is not empty
