"""Who may see the dashboard, its session cookie, and the CSRF token of its actions.

The dashboard is never open to anyone: ``dashboard="auth"`` puts it behind the
health endpoint's guard (``Authorization: Bearer <health_token>``, or the
``health=check(headers)`` callable), ``dashboard=check`` behind a check of its
own, and with neither it answers the same 404 as an unknown job.

A browser can't send a Bearer header by itself, so the token guard has a login
form: posting the right token sets a session cookie signed with the app's
secret *and* bound to the token (a rotated token ends every session). With a
check, the check decides on every request and the cookie only carries the
session the CSRF token is bound to. The cookie is ``HttpOnly``,
``SameSite=Strict`` and scoped to the dashboard's path; every action is a POST
that must carry ``csrf`` = HMAC(secret, session id), so a page on another site
can neither read nor forge it.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any

from itsdangerous import BadData, TimestampSigner
from werkzeug.http import parse_cookie

from ..engine.responses import headers_dict
from ..job import CapturedRequest

COOKIE = "async_accept_dashboard"
#: How long a dashboard session lasts after its login (seconds).
SESSION_AGE = 12 * 3600

Check = Callable[[Mapping[str, str]], bool]


@dataclass(frozen=True, slots=True)
class Guard:
    """How callers prove they may use the dashboard: a token, or a check."""

    token: str | None = None
    check: Check | None = None


def guard_for(mode: Any, health: Any, health_token: str | None) -> Guard | None:
    """The dashboard's guard for option ``dashboard=mode``; None: the dashboard is off.

    ``"auth"`` borrows the health endpoint's guard (its check when ``health`` is a
    callable, else its ``health_token``); a callable is a check of its own.
    """
    if callable(mode):
        return Guard(check=mode)
    if mode != "auth":
        return None
    if callable(health):
        return Guard(check=health)
    if health == "auth" and health_token:
        return Guard(token=health_token)
    return None  # "auth" with nothing to check against: never open


def bearer_matches(request: CapturedRequest, token: str) -> bool:
    raw = request.header(b"authorization") or b""
    scheme, _, given = raw.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token.encode("utf-8"))


def token_matches(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))


class Sessions:
    """Signs and reads the dashboard session cookie; derives its CSRF token."""

    def __init__(self, keys: list[bytes], guard: Guard) -> None:
        self.keys = keys  # newest first, as the options hold them
        # Bound to the token: a session made with an old token stops working.
        bound = b"" if guard.token is None else hashlib.sha256(guard.token.encode()).digest()
        self._signer = TimestampSigner(
            list(reversed(keys)),  # itsdangerous signs with the last key
            salt=b"async_accept.dashboard-session" + bound,
        )

    def new(self) -> tuple[str, str]:
        """A fresh session: ``(session id, cookie value)``."""
        sid = secrets.token_urlsafe(18)
        return sid, self._signer.sign(sid).decode("ascii")

    def read(self, request: CapturedRequest) -> str | None:
        """The session id of a valid, unexpired cookie, else None."""
        raw = [v for k, v in request.headers if k == b"cookie"]
        if not raw:
            return None
        value = parse_cookie(b"; ".join(raw).decode("latin-1")).get(COOKIE)
        if not value:
            return None
        try:
            return self._signer.unsign(value, max_age=SESSION_AGE).decode("ascii")
        except (BadData, UnicodeDecodeError):
            return None

    def csrf(self, sid: str) -> str:
        """The CSRF token of session ``sid`` (signed with the newest key)."""
        return self._csrf(self.keys[0], sid)

    def csrf_ok(self, sid: str | None, given: str | None) -> bool:
        if not sid or not given:
            return False
        return any(hmac.compare_digest(self._csrf(k, sid), given) for k in self.keys)

    @staticmethod
    def _csrf(key: bytes, sid: str) -> str:
        return hmac.new(key, b"async_accept.dashboard-csrf:" + sid.encode(), "sha256").hexdigest()

    def cookie(self, value: str, path: str, secure: bool, max_age: int = SESSION_AGE) -> bytes:
        """A ``Set-Cookie`` value for the session cookie, written as the standard
        library writes it (so frameworks that re-parse Set-Cookie keep it as is)."""
        jar: SimpleCookie = SimpleCookie()
        jar[COOKIE] = value
        morsel = jar[COOKIE]
        morsel.update({"path": path, "max-age": str(max_age), "samesite": "Strict"})
        morsel["httponly"] = True
        if secure:
            morsel["secure"] = True
        return morsel.OutputString().encode("latin-1")


def check_allows(check: Check, request: CapturedRequest) -> bool:
    """What the app's check says about this request (an error in it says no)."""
    try:
        return bool(check(headers_dict(request)))
    except Exception:
        return False


class SignInLimiter:
    """Failed sign-ins per client address: a token bucket of ``burst`` tries that
    refills one every ``per`` seconds, kept in memory (this process), for at most
    ``addresses`` addresses (the longest unseen are forgotten first).

    Only failures take a token and a sign-in that succeeds forgets the address, so
    an operator who types the token right is never slowed; an address with no
    token left is refused before its token is even compared.
    """

    def __init__(
        self,
        burst: int = 5,
        per: float = 12.0,
        addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst, self.per, self.addresses, self.clock = burst, per, addresses, clock
        self._lock = threading.Lock()
        #: address -> (tokens, when counted), least recently seen first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _tokens(self, who: str, now: float) -> float:
        tokens, at = self._buckets.get(who, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - at) / self.per)

    def retry_after(self, who: str) -> int | None:
        """Seconds until ``who`` may try again; None: it may now."""
        now = self.clock()
        with self._lock:
            tokens = self._tokens(who, now)
        if tokens >= 1.0:
            return None
        return max(1, math.ceil((1.0 - tokens) * self.per))

    def failed(self, who: str) -> None:
        now = self.clock()
        with self._lock:
            tokens = self._tokens(who, now)
            self._buckets.pop(who, None)
            self._buckets[who] = (max(0.0, tokens - 1.0), now)
            while len(self._buckets) > self.addresses:
                self._buckets.popitem(last=False)

    def succeeded(self, who: str) -> None:
        with self._lock:
            self._buckets.pop(who, None)
