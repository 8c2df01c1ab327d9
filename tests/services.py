"""Real services for tests: fail loudly in CI when missing, skip elsewhere with a how-to."""

from __future__ import annotations

import os
import socket

import pytest

REDIS_URL = os.environ.get("ASYNC_ACCEPT_TEST_REDIS", "redis://127.0.0.1:6379/15")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def require_redis() -> str:
    """The test Redis URL; fails in CI and skips elsewhere when Redis is not answering."""
    if not _port_open("127.0.0.1", 6379):
        msg = (
            "Redis is not answering on 127.0.0.1:6379. Start it with: "
            'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no'
        )
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return REDIS_URL


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wipe_redis_namespace(url: str, namespace: str) -> None:
    """Delete every key a test wrote under ``namespace`` (index sets carry no TTL)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=500))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    finally:
        client.close()


POSTGRES_URL = os.environ.get(
    "ASYNC_ACCEPT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


def require_postgres() -> str:
    """The test PostgreSQL URL; fails in CI and skips elsewhere when it is not answering."""
    if not _port_open("127.0.0.1", 5432):
        msg = (
            "PostgreSQL is not answering on 127.0.0.1:5432. Start it with: "
            "pg_ctlcluster <version> main start (or: service postgresql start)"
        )
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        msg = "psycopg is not installed: pip install 'async-accept[postgres]'"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return POSTGRES_URL


def postgres_schema_url(url: str = POSTGRES_URL) -> tuple[str, str]:
    """A store URL on a fresh schema name of its own, and that name."""
    import uuid

    schema = "test_" + uuid.uuid4().hex[:16]
    return f"{url}{'&' if '?' in url else '?'}schema={schema}", schema


def drop_postgres_schema(schema: str, url: str = POSTGRES_URL) -> None:
    """Drop what a test created in ``schema`` (tables, data, everything)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')  # type: ignore[arg-type]


def postgres_schema_at(schema: str, version: int, now: float, url: str = POSTGRES_URL) -> None:
    """Build ``schema`` as a release at schema ``version`` left it, holding one queued
    job, ``old`` (an upgrade test's starting point)."""
    import psycopg

    from async_accept.stores.postgres import ddl

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(ddl(schema, 0, version))
        conn.execute(
            f'INSERT INTO "{schema}".jobs (id, status, owner, created_at, updated_at, '
            "expires_at, deadline_at, sla) VALUES ('old', 'queued', 'o', %s, %s, %s, %s, 1)",
            (now, now, now + 3600, now + 60),
        )


def postgres_schema_versions(schema: str, url: str = POSTGRES_URL) -> list[int]:
    """The migrations recorded in ``schema``, in order."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            f'SELECT version FROM "{schema}".schema_version ORDER BY version'
        ).fetchall()
    return [v for (v,) in rows]
