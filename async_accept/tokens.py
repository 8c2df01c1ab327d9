"""Signed, expiring, rotatable status-URL tokens and the owner hash.

A token is the job id signed with itsdangerous' ``TimestampSigner`` (HMAC,
issue time inside). Secrets are given newest first; every one verifies, the
newest signs. The owner of a job is kept only as an HMAC of the caller's
credentials, never the credentials themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Callable, Sequence

from itsdangerous import BadData, BadSignature, SignatureExpired, TimestampSigner
from itsdangerous.encoding import base64_decode, base64_encode, bytes_to_int, int_to_bytes

from .errors import AsyncAcceptError, ConfigurationError

_VERIFIED_CACHE = 10_000
#: the shortest secret_key taken: one status URL lets an attacker test guesses offline
MIN_SECRET_BYTES = 32
_MAKE_ONE = "make one with: python -m async_accept secret"
_TOKEN_SALT = b"async_accept.job-token"
_OWNER_SALT = b"async_accept.owner"


class TokenError(AsyncAcceptError):
    """A token that does not validate (malformed, tampered, unknown key)."""


class TokenExpired(TokenError):
    """A token with a valid signature, older than the TTL."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__("token expired")


def normalize_secrets(secret_key: str | bytes | Sequence[str | bytes] | None) -> list[bytes]:
    """Secrets newest first, as bytes; ConfigurationError when none is usable."""
    if secret_key is None:
        raise ConfigurationError(
            "secret_key is missing: pass secret_key=... (or a list, newest first; make one with "
            "python -m async_accept secret) "
            "or set the ASYNC_ACCEPT_SECRET_KEY environment variable."
        )
    keys: list[str | bytes] = (
        [secret_key] if isinstance(secret_key, (str, bytes)) else list(secret_key)
    )
    out: list[bytes] = []
    for k in keys:
        if isinstance(k, str):
            k = k.encode("utf-8")
        if not isinstance(k, bytes) or not k:
            raise ConfigurationError(
                f"secret_key entries must be non-empty strings or bytes; {_MAKE_ONE}"
            )
        if len(k) < MIN_SECRET_BYTES:
            raise ConfigurationError(
                f"secret_key is {len(k)} bytes long: it must be at least {MIN_SECRET_BYTES} "
                f"random bytes, since one status URL lets anyone test guesses of it offline; "
                f"{_MAKE_ONE} (and pass it in ASYNC_ACCEPT_SECRET_KEY, not in the code)"
            )
        out.append(k)
    if not out:
        raise ConfigurationError("secret_key is an empty list: give at least one key")
    return out


def generate_secret() -> str:
    """A new random secret_key: 32 random bytes, URL-safe text (43 characters)."""
    return secrets.token_urlsafe(MIN_SECRET_BYTES)


class _ClockedSigner(TimestampSigner):
    """itsdangerous' signer, reading time from the engine's clock (testable)."""

    clock: Callable[[], float] = time.time

    def get_timestamp(self) -> int:
        return int(self.clock())


class TokenSigner:
    """Signs job ids into status-URL tokens and checks them."""

    def __init__(
        self,
        secrets_newest_first: Sequence[bytes],
        ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.secrets = list(secrets_newest_first)
        self.ttl = ttl
        # itsdangerous wants oldest to newest; the last one signs.
        self._signer = _ClockedSigner(
            list(reversed(self.secrets)), salt=_TOKEN_SALT, digest_method=hashlib.sha256
        )
        self._signer.clock = clock
        #: token -> (job id, issue time) of tokens whose signature verified
        self._verified: dict[str, tuple[str, int]] = {}
        # Keyed HMAC states prepared once and copied per use: ``hmac.new`` would
        # redo the key schedule (and itsdangerous the key derivation) per token.
        self._sign_mac = hmac.new(self._signer.derive_key(), digestmod=hashlib.sha256)
        self._owner_macs = [
            hmac.new(hmac.new(k, _OWNER_SALT, hashlib.sha256).digest(), digestmod=hashlib.sha256)
            for k in self.secrets
        ]

    def sign(self, job_id: str, issued_at: float | None = None) -> str:
        """The token for ``job_id``. With ``issued_at`` (the job's creation time)
        the token is a pure function of job and key, so a repeat of an
        idempotent request gets the very same status URL back."""
        if issued_at is None:
            return self._signer.sign(job_id.encode("ascii")).decode("ascii")
        sep = self._signer.sep
        value = job_id.encode("ascii") + sep + base64_encode(int_to_bytes(int(issued_at)))
        mac = self._sign_mac.copy()  # what Signer.sign computes, without re-deriving the key
        mac.update(value)
        return (value + sep + base64_encode(mac.digest())).decode("ascii")

    def unsign(self, token: str) -> str:
        """The job id in ``token``. Raises TokenExpired past the TTL, TokenError otherwise."""
        hit = self._verified.get(token)
        if hit is not None:
            # Clients poll the same URL many times: the HMAC was checked once,
            # only the age is checked again (as itsdangerous does it).
            job_id, issued = hit
            age = int(self._signer.clock()) - issued
            if age > math.ceil(self.ttl) or age < 0:
                raise TokenExpired(job_id)
            return job_id
        job_id = self._unsign(token)
        try:
            issued = bytes_to_int(base64_decode(token.rsplit(".", 2)[1]))
        except (BadData, IndexError, ValueError):  # pragma: no cover - verified above
            return job_id
        cache = self._verified
        if len(cache) >= _VERIFIED_CACHE:
            with contextlib.suppress(KeyError, StopIteration, RuntimeError):
                del cache[next(iter(cache))]  # the oldest entry
        cache[token] = (job_id, issued)
        return job_id

    def _unsign(self, token: str) -> str:
        try:
            raw = token.encode("ascii")
        except UnicodeEncodeError as exc:
            raise TokenError("token is not ASCII") from exc
        # Base64 leaves spare bits in the last character of the signature, so
        # two spellings can decode to the same bytes: accept only the canonical
        # one, so that a changed character never validates.
        _, dot, sig = raw.rpartition(b".")
        try:
            canonical = dot and base64_encode(base64_decode(sig)) == sig
        except BadData:
            canonical = False
        if not canonical:
            raise TokenError("bad signature")
        try:
            value = self._signer.unsign(raw, max_age=math.ceil(self.ttl))
        except SignatureExpired as exc:
            payload = exc.payload
            job_id = payload.decode("ascii", "replace") if isinstance(payload, bytes) else ""
            raise TokenExpired(job_id) from exc
        except BadSignature as exc:
            raise TokenError("bad signature") from exc
        try:
            return str(value.decode("ascii"))
        except UnicodeDecodeError as exc:  # pragma: no cover - we only sign ASCII ids
            raise TokenError("bad payload") from exc

    def owner_hash(self, material: bytes) -> str:
        """Keyed hash of the caller's credentials, with the newest key."""
        mac = self._owner_macs[0].copy()
        mac.update(material)
        return mac.hexdigest()

    def owner_hashes(self, material: bytes) -> list[str]:
        """The owner hash of ``material`` under every key, newest first (a job made
        before a key rotation is stored under an older key's hash)."""
        out: list[str] = []
        for template in self._owner_macs:
            mac = template.copy()
            mac.update(material)
            if (digest := mac.hexdigest()) not in out:
                out.append(digest)
        return out

    def owner_matches(self, stored: str, material: bytes, alt: bytes | None = None) -> bool:
        """Constant-time check of a caller against a stored owner (any key).

        ``stored`` is the owner hash of the credential material, optionally
        followed by a space and the hash of an owner cookie; ``alt`` is the
        owner material of the owner cookie the caller sent. The work is the
        same whichever matches, or none.
        """
        h1, _, h2 = stored.partition(" ")
        ok = False
        for template in self._owner_macs:
            mac = template.copy()
            mac.update(material)
            ok |= hmac.compare_digest(mac.hexdigest(), h1)
            other = template.copy()
            other.update(alt if alt is not None else b"")
            ok |= hmac.compare_digest(other.hexdigest(), h2 or "-") and alt is not None
        return ok
