"""The job record, its states, and the captured request/response it carries.

Everything here is plain data that serializes to JSON (bodies travel as bytes
beside the JSON, never pickled).
"""

from __future__ import annotations

import base64
import enum
import json
import os
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

Headers = list[tuple[bytes, bytes]]


class JobStatus(str, enum.Enum):
    """The five states of a job (PROTOCOL.md section 2)."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    def __str__(self) -> str:
        return self.value


TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED}
)
ACTIVE: frozenset[JobStatus] = frozenset({JobStatus.QUEUED, JobStatus.PROCESSING})
#: Ends after which a job never runs again: the store deletes its captured
#: request (and the credentials in it) there. A failed job keeps it until its
#: TTL, for a route's retries and ``async-accept jobs retry``.
DROP_REQUEST_ON: frozenset[JobStatus] = frozenset({JobStatus.COMPLETED, JobStatus.CANCELED})
#: The key of a job's ``meta`` naming the executor it was handed to (``"store"``,
#: ``"asyncio"``, ...): a PostgreSQL store wakes its store workers (``NOTIFY``) only
#: for a job that one of them will claim (schema 5).
EXECUTOR_META = "executor"


class _RandomPool:
    """OS CSPRNG bytes read 4 KiB at a time.

    ``os.urandom`` lets go of the GIL around its system call, so a call per job
    hands the GIL to any thread waiting for it (the SQLite store's I/O threads
    under load) and the event loop waits to get it back: profiled at ~20 us per
    accept, against 0.3 us for the bytes themselves. A pool refills once per
    256 ids. Thread-safe; a forked child starts with an empty pool, so no two
    processes ever hand out the same bytes.
    """

    SIZE = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buf = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        with self._lock:
            pos = self._pos
            if pos + n > len(self._buf):
                self._buf = os.urandom(max(self.SIZE, n))
                pos = 0
            self._pos = pos + n
            return self._buf[pos : pos + n]

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._buf = b""
        self._pos = 0


_random = _RandomPool()
if hasattr(os, "register_at_fork"):  # pragma: no branch - every POSIX Python has it
    os.register_at_fork(after_in_child=_random._after_fork)


def new_job_id() -> str:
    """A random job id: 128 bits from the OS CSPRNG, URL-safe, never sequential."""
    return base64.urlsafe_b64encode(_random.take(16)).rstrip(b"=").decode("ascii")


def _enc_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[list[str]]:
    return [[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers]


def _dec_headers(raw: Iterable[Iterable[str]]) -> Headers:
    out: Headers = []
    for pair in raw:
        k, v = pair
        out.append((k.encode("latin-1"), v.encode("latin-1")))
    return out


class _HeaderLookup:
    """``header(name)`` for the captured request and response."""

    headers: Headers

    def header(self, name: bytes) -> bytes | None:
        """First value of header ``name`` (lower-case bytes), or None."""
        for k, v in self.headers:
            if k == name:
                return v
        return None


@dataclass
class CapturedRequest(_HeaderLookup):
    """The whole HTTP request, as the front door saw it.

    ``path`` is the decoded path *below* ``root_path`` (ASGI semantics; the
    WSGI front door stores ``PATH_INFO`` decoded the same way), ``headers``
    have lower-cased names.
    """

    method: str
    path: str
    query_string: bytes = b""
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    root_path: str = ""
    raw_path: bytes | None = None
    scheme: str = "http"
    http_version: str = "1.1"
    server: tuple[str, int] | None = None
    #: (host, port); the port is None when a WSGI server sent REMOTE_ADDR alone
    client: tuple[str, int | None] | None = None
    #: ASGI scope extensions replayed as they came (``tls``), JSON values only
    extensions: dict[str, Any] | None = None
    #: the principal the framework authenticated (see identity.py); never stored
    principal: str | None = field(default=None, compare=False, repr=False)

    def meta_json(self) -> str:
        """Everything but the body, as JSON."""
        return json.dumps(
            {
                "method": self.method,
                "path": self.path,
                "query_string": self.query_string.decode("latin-1"),
                "headers": _enc_headers(self.headers),
                "root_path": self.root_path,
                "raw_path": None if self.raw_path is None else self.raw_path.decode("latin-1"),
                "scheme": self.scheme,
                "http_version": self.http_version,
                "server": list(self.server) if self.server else None,
                "client": list(self.client) if self.client else None,
                **({"extensions": self.extensions} if self.extensions else {}),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_meta_json(cls, meta: str, body: bytes) -> CapturedRequest:
        d = json.loads(meta)
        server = d.get("server")
        client = d.get("client")
        raw_path = d.get("raw_path")
        return cls(
            method=d["method"],
            path=d["path"],
            query_string=d.get("query_string", "").encode("latin-1"),
            headers=_dec_headers(d.get("headers", [])),
            body=body,
            root_path=d.get("root_path", ""),
            raw_path=None if raw_path is None else raw_path.encode("latin-1"),
            scheme=d.get("scheme", "http"),
            http_version=d.get("http_version", "1.1"),
            server=(server[0], int(server[1])) if server else None,
            client=(client[0], None if client[1] is None else int(client[1])) if client else None,
            extensions=d.get("extensions") or None,
        )

    def to_json(self) -> str:
        """Self-contained JSON (body base64) for stores without a blob column."""
        d = json.loads(self.meta_json())
        d["body"] = base64.b64encode(self.body).decode("ascii")
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, data: str) -> CapturedRequest:
        d = json.loads(data)
        body = base64.b64decode(d.pop("body", ""))
        return cls.from_meta_json(json.dumps(d), body)


@dataclass
class CapturedResponse(_HeaderLookup):
    """The handler's response: status, headers (lower-cased names), body bytes."""

    status: int
    headers: Headers = field(default_factory=list)
    body: bytes = b""

    def meta_json(self) -> str:
        return json.dumps(
            {"status": self.status, "headers": _enc_headers(self.headers)},
            separators=(",", ":"),
        )

    @classmethod
    def from_meta_json(cls, meta: str, body: bytes) -> CapturedResponse:
        d = json.loads(meta)
        return cls(status=int(d["status"]), headers=_dec_headers(d["headers"]), body=body)

    def to_json(self) -> str:
        d = json.loads(self.meta_json())
        d["body"] = base64.b64encode(self.body).decode("ascii")
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, data: str) -> CapturedResponse:
        d = json.loads(data)
        return cls(
            status=int(d["status"]),
            headers=_dec_headers(d["headers"]),
            body=base64.b64decode(d.get("body", "")),
        )


@dataclass
class Job:
    """A job's metadata: what a status read needs, without the bodies.

    Times are POSIX seconds (float, UTC). ``deadline_at`` is acceptance +
    2 x sla: the deadman switch fails a job still active then.
    """

    id: str
    status: JobStatus
    owner: str
    created_at: float
    updated_at: float
    expires_at: float
    deadline_at: float
    sla: float
    started_at: float | None = None
    finished_at: float | None = None
    percent: float | None = None
    message: str | None = None
    eta: float | None = None
    progress_at: float | None = None
    cancel_requested: bool = False
    worker_id: str | None = None
    heartbeat_at: float | None = None
    error: dict[str, Any] | None = None
    result_status: int | None = None
    result_location: str | None = None
    route: str | None = None
    idempotency_key: str | None = None
    fingerprint: str | None = None
    attempts: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["status"] = JobStatus(kwargs["status"])
        kwargs["cancel_requested"] = bool(kwargs.get("cancel_requested", False))
        return cls(**kwargs)

    @classmethod
    def from_json(cls, data: str | bytes) -> Job:
        return cls.from_dict(json.loads(data))
