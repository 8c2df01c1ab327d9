"""Credentials of a captured request, sealed at rest (AES-256-GCM).

A job keeps the whole request so that a worker can replay it, but its
credential headers (``Authorization``, ``Proxy-Authorization``, ``Cookie``,
``X-API-Key``, ``Api-Key`` and the app's ``identity_headers=``) never reach
the store in clear text: each value is encrypted with a key derived from
``secret_key`` (HKDF-SHA256, one AES key per secret), bound to the job id
and header name as associated data, so a value can't be moved to another
job or header. The newest secret seals; every secret in the list opens, so
rotating the secret keeps queued jobs replayable.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import Any

from .errors import MissingDependencyError
from .job import CapturedRequest, Headers

log = logging.getLogger("async_accept")

#: a sealed value starts with this (then base64url of nonce + ciphertext + tag)
SEALED_PREFIX = b"aa-sealed:v1:"
_INFO = b"async_accept.request-credentials.v1"
#: headers whose value is sealed at rest (lower-case), besides identity_headers=
CREDENTIAL_HEADERS: frozenset[bytes] = frozenset(
    {b"authorization", b"proxy-authorization", b"cookie", b"x-api-key", b"api-key"}
)


def _aesgcm() -> Any:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as exc:  # pragma: no cover - a dependency
        raise MissingDependencyError(
            "Sealing credentials at rest", "crypto", "cryptography"
        ) from exc
    return AESGCM


def derive_key(secret: bytes) -> bytes:
    """The AES-256 key of one secret (HKDF-SHA256, fixed info, no salt)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret)


class RequestSealer:
    """Seals a request's credential headers before the store, opens them after."""

    def __init__(
        self, secrets_newest_first: Sequence[bytes], extra_headers: Sequence[bytes] = ()
    ) -> None:
        aead = _aesgcm()
        self._ciphers = [aead(derive_key(s)) for s in secrets_newest_first]
        self.names = CREDENTIAL_HEADERS | frozenset(extra_headers)

    def seal(self, job_id: str, request: CapturedRequest) -> CapturedRequest:
        """A copy of ``request`` whose credential header values are sealed."""
        if not any(k in self.names for k, _ in request.headers):
            return request
        cipher = self._ciphers[0]
        headers: Headers = []
        for k, v in request.headers:
            if k in self.names:
                nonce = os.urandom(12)
                sealed = cipher.encrypt(nonce, v, _aad(job_id, k))
                v = SEALED_PREFIX + base64.urlsafe_b64encode(nonce + sealed)
            headers.append((k, v))
        return dataclasses.replace(request, headers=headers)

    def open(self, job_id: str, request: CapturedRequest) -> CapturedRequest:
        """A copy of ``request`` with its sealed values opened; one no key opens is dropped."""
        if not any(v.startswith(SEALED_PREFIX) for _, v in request.headers):
            return request
        headers: Headers = []
        for k, v in request.headers:
            if v.startswith(SEALED_PREFIX):
                opened = self._open(job_id, k, v[len(SEALED_PREFIX) :])
                if opened is None:
                    log.warning(
                        "async_accept: job %s: the %s header can't be opened with any "
                        "secret_key (was the key that sealed it removed?); replayed without it",
                        job_id,
                        k.decode("latin-1"),
                    )
                    continue
                v = opened
            headers.append((k, v))
        return dataclasses.replace(request, headers=headers)

    def _open(self, job_id: str, name: bytes, data: bytes) -> bytes | None:
        from cryptography.exceptions import InvalidTag

        try:
            raw = base64.urlsafe_b64decode(data)
        except ValueError:
            return None
        if len(raw) < 28:
            return None
        nonce, sealed = raw[:12], raw[12:]
        for cipher in self._ciphers:
            try:
                return bytes(cipher.decrypt(nonce, sealed, _aad(job_id, name)))
            except InvalidTag:
                continue
        return None


def _aad(job_id: str, name: bytes) -> bytes:
    return job_id.encode("ascii", "replace") + b"\x00" + name
