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
