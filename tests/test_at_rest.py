"""No credentials at rest: what a store keeps after a job, read raw.

The captured request's credentials (``Authorization``, ``Cookie``,
``X-API-Key``) never reach the SQLite file (nor its ``-wal``) or the Redis
keys in clear text, the SQLite files are private to the user (0600), and
``async-accept jobs show`` redacts credentials and query values unless
``--show-secrets``.
"""

from __future__ import annotations

import contextlib
import io
import json
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

SECRET = "at-rest-secret-0123456789abcdef-012345"
TOKEN = "bearer-secret-TOKEN-4f1c2a"
COOKIE = "cookie-secret-VALUE-9d3e7b"
API_KEY = "apikey-secret-VALUE-77aa01"
QUERY = "query-secret-VALUE-31c0de"
NEEDLES = [TOKEN.encode(), COOKIE.encode(), API_KEY.encode()]
CREDENTIALS = {
    "Authorization": f"Bearer {TOKEN}",
    "Cookie": f"session={COOKIE}; theme=dark",
    "X-API-Key": API_KEY,
}
GATE = threading.Event()


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """The marked handler: waits on /gated, fails on /fail, else answers a fixed text."""
    path = environ["PATH_INFO"]
    if path == "/gated":
        GATE.wait(10)
    if path == "/fail":
        raise RuntimeError("boom")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done"]


@contextlib.contextmanager
def _deployment(store: Any) -> Iterator[tuple[Any, httpx.Client]]:
    from async_accept.wsgi import AsyncAcceptMiddleware

    mw = AsyncAcceptMiddleware(
        _app,
        secret_key=SECRET,
        store=store,
        executor="thread",
        routes={"POST /work": {}, "POST /fail": {}, "POST /gated": {}},
        heartbeat_interval=0.2,
        worker_lost_after=3.0,
        sweep_interval=None,
    )
    client = httpx.Client(
        transport=httpx.WSGITransport(app=mw), base_url="http://testserver", headers=CREDENTIALS
    )
    try:
        yield mw, client
    finally:
        GATE.set()
        client.close()
        mw.runtime.shutdown()
        mw.store.close()


def _finish(client: httpx.Client, path: str) -> str:
    """Post to ``path`` with every credential and wait for the job to end; its status URL."""
    accepted = client.post(f"{path}?token={QUERY}", content=b"payload")
    assert accepted.status_code == 202, accepted.text
    url = accepted.headers["location"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        r = client.get(url)
        if r.status_code == 303 or r.json()["status"] in ("completed", "failed", "canceled"):
            return url
        time.sleep(0.02)
    raise AssertionError("the job never ended")


def _sqlite_bytes(db: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in db.parent.iterdir()
        if p.name.startswith(db.name) and p.is_file()
    }


@pytest.mark.parametrize("path", ["/work", "/fail"])
def test_sqlite_file_holds_no_credential_after_the_job(tmp_path: Path, path: str) -> None:
    """After a job ends, neither the SQLite file nor its -wal holds a credential."""
    db = tmp_path / "jobs.db"
    with _deployment(f"sqlite:///{db}") as (_, client):
        _finish(client, path)
        raw = _sqlite_bytes(db)  # read while the connections are still open (WAL not folded)
        assert any(name.endswith("-wal") for name in raw), sorted(raw)
    raw_after = _sqlite_bytes(db)
    for snapshot in (raw, raw_after):
        for name, data in snapshot.items():
            for needle in NEEDLES:
                assert needle not in data, f"{needle!r} in {name}"


def test_sqlite_files_are_private(tmp_path: Path) -> None:
    """The SQLite file and its -wal/-shm are created mode 0600."""
    db = tmp_path / "jobs.db"
    with _deployment(f"sqlite:///{db}") as (_, client):
        _finish(client, "/work")
        files = [p for p in tmp_path.iterdir() if p.name.startswith("jobs.db")]
        assert files
        for p in files:
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, (p.name, oct(p.stat().st_mode))


def _redis_values(url: str, namespace: str) -> dict[str, bytes]:
    import redis

    client = redis.Redis.from_url(url)
    out: dict[str, bytes] = {}
    try:
        for key in client.scan_iter(match=f"{namespace}:*", count=500):
            kind = client.type(key)
            name = key.decode()
            if kind == b"string":
                out[name] = client.get(key) or b""
            elif kind == b"hash":
                out[name] = b"|".join(k + b"=" + v for k, v in client.hgetall(key).items())
            elif kind == b"list":
                out[name] = b"|".join(client.lrange(key, 0, -1))
            elif kind == b"set":
                out[name] = b"|".join(client.smembers(key))
            elif kind == b"zset":
                out[name] = b"|".join(client.zrange(key, 0, -1))
            elif kind == b"stream":
                out[name] = repr(client.xrange(key)).encode()
    finally:
        client.close()
    return out


@pytest.mark.redis
@pytest.mark.parametrize("path", ["/work", "/fail"])
def test_redis_keys_hold_no_credential_after_the_job(path: str) -> None:
    """After a job ends, no Redis key of the store holds a credential."""
    from async_accept.stores.redis import RedisStore
    from tests.services import require_redis, wipe_redis_namespace

    url = require_redis()
    namespace = f"at-rest-{time.time_ns()}"
    try:
        with _deployment(RedisStore.from_url(url, namespace=namespace)) as (_, client):
            _finish(client, path)
            values = _redis_values(url, namespace)
        assert values
        for name, data in values.items():
            for needle in NEEDLES:
                assert needle not in data, f"{needle!r} in {name}"
    finally:
        wipe_redis_namespace(url, namespace)


def _cli(*argv: str) -> tuple[int, str]:
    from async_accept.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


def test_jobs_show_redacts_credential_headers(tmp_path: Path) -> None:
    """`jobs show` prints no credential header value of a running job's request."""
    db = tmp_path / "jobs.db"
    GATE.clear()
    with _deployment(f"sqlite:///{db}") as (_, client):
        accepted = client.post(f"/gated?token={QUERY}", content=b"payload")
        job_id = accepted.json()["id"]
        code, text = _cli("jobs", "show", "--store", f"sqlite:///{db}", "--", job_id)
        GATE.set()
    assert code == 0
    shown = json.loads(text)
    assert "request" in shown
    for needle in (TOKEN, COOKIE, API_KEY):
        assert needle not in text


def test_jobs_show_redacts_query_values_unless_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`jobs show` redacts query values; --show-secrets prints the request as captured."""
    db = tmp_path / "jobs.db"
    monkeypatch.setenv("ASYNC_ACCEPT_SECRET_KEY", SECRET)
    GATE.clear()
    with _deployment(f"sqlite:///{db}") as (_mw, client):
        accepted = client.post(f"/gated?token={QUERY}", content=b"payload")
        job_id = accepted.json()["id"]
        _, redacted = _cli("jobs", "show", "--store", f"sqlite:///{db}", "--", job_id)
        assert QUERY not in redacted
        assert "token=" in redacted
        code, shown = _cli(
            "jobs", "show", "--show-secrets", "--store", f"sqlite:///{db}", "--", job_id
        )  # fmt: skip
        GATE.set()
    assert code == 0
    assert QUERY in shown
    assert TOKEN in shown


def test_sealed_credentials_open_after_a_key_rotation() -> None:
    """Sealed with the old key, opened by a key list that still has it; bound to the job."""
    from async_accept.job import CapturedRequest
    from async_accept.sealing import RequestSealer

    old, new = b"o" * 32, b"n" * 32
    request = CapturedRequest(
        "POST", "/work", headers=[(b"authorization", b"Bearer t"), (b"x-other", b"1")]
    )
    sealed = RequestSealer([old]).seal("job-1", request)
    assert (b"authorization", b"Bearer t") not in sealed.headers
    assert (b"x-other", b"1") in sealed.headers
    assert RequestSealer([new, old]).open("job-1", sealed).headers == request.headers
    # Another job's id, or a key list without the sealing key: the header is dropped.
    assert RequestSealer([new, old]).open("job-2", sealed).headers == [(b"x-other", b"1")]
    assert RequestSealer([new]).open("job-1", sealed).headers == [(b"x-other", b"1")]
