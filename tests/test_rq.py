"""The executor contract on RQ, with a real ``async-accept worker`` (RQ SimpleWorker)."""

from __future__ import annotations

import time

import pytest

from async_accept.errors import ConfigurationError, ExecutorError, MissingDependencyError
from tests.test_distributed import ExecutorContract, Setup

pytestmark = pytest.mark.redis


class TestRQExecutor(ExecutorContract):
    """The contract, with RQ."""

    executor = "rq"

    def broker_depth(self, setup: Setup, queue: str) -> int:
        import redis
        from rq import Queue

        client = redis.Redis.from_url(setup.redis_url)
        try:
            return int(Queue(queue, connection=client).count)
        finally:
            client.close()


def test_app_path_is_required_at_construction() -> None:
    """No app path (or a malformed one): ConfigurationError at construction naming the fix."""
    from async_accept.executors.rq import RQExecutor

    with pytest.raises(ConfigurationError, match=r"mysite\.asgi:application"):
        RQExecutor(redis_url="redis://127.0.0.1:6379/15")
    with pytest.raises(ConfigurationError, match=r"package\.module:attribute"):
        RQExecutor(app="mysite.asgi", redis_url="redis://127.0.0.1:6379/15")
    with pytest.raises(ConfigurationError, match="redis_url="):
        RQExecutor(app="mysite.asgi:application")


def test_resolved_by_name_with_query_options() -> None:
    """executor='rq?app=...&redis_url=...' builds an RQExecutor with those options."""
    from async_accept.executors import resolve_executor
    from async_accept.executors.rq import RQExecutor

    ex = resolve_executor(
        "rq?app=tests.e2e_app:wsgi_app&redis_url=redis://127.0.0.1:6379/15&queue=q&batch_size=7",
        "wsgi",
    )
    assert isinstance(ex, RQExecutor)
    assert (ex.app_path, ex.queue, ex.batch_size, ex.out_of_process) == (
        "tests.e2e_app:wsgi_app",
        "q",
        7,
        True,
    )
    ex.connection.close()


def test_memory_store_with_rq_is_refused() -> None:
    """A memory store with the RQ executor fails at construction: workers can't see it."""
    from tests import apps

    with pytest.raises(ConfigurationError, match="shared store"):
        apps.build_wsgi(
            secret_key="x" * 32,
            store="memory://",
            executor="rq?app=tests.e2e_app:wsgi_app&redis_url=redis://127.0.0.1:6379/15",
        )


def test_missing_rq_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without rq installed: MissingDependencyError with the pip install line."""
    import sys

    from async_accept.executors.rq import RQExecutor

    monkeypatch.setitem(sys.modules, "rq", None)
    with pytest.raises(MissingDependencyError, match=r"async-accept\[rq\]"):
        RQExecutor(app="m:app", redis_url="redis://127.0.0.1:6379/15")


def test_submit_before_start_and_after_shutdown_is_refused() -> None:
    """submit() raises ExecutorError when the executor isn't running (the client gets 503)."""
    from async_accept.executors.rq import RQExecutor

    ex = RQExecutor(app="m:app", redis_url="redis://127.0.0.1:6379/15")
    with pytest.raises(ExecutorError):
        ex.submit("job")
    ex.connection.close()


def test_submit_is_bounded_by_max_buffer() -> None:
    """Past max_buffer jobs waiting for the broker, submit refuses instead of growing."""
    from async_accept.executors.rq import RQExecutor
    from tests.services import free_port

    ex = RQExecutor(app="m:app", redis_url=f"redis://127.0.0.1:{free_port()}/0", max_buffer=3)

    class FakeRuntime:  # start() only keeps it; nothing is sent before the buffer fills
        store = None

    ex.start(FakeRuntime(), None)  # type: ignore[arg-type]
    try:
        t0 = time.monotonic()
        for i in range(3):
            ex.submit(f"j{i}")
        with pytest.raises(ExecutorError, match="waiting"):
            ex.submit("j3")
        assert time.monotonic() - t0 < 0.1
    finally:
        ex.shutdown(0.5)
        ex.connection.close()


def test_rq_worker_loop_survives_redis_down_while_building_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis down while the RQ worker is built: the loop waits and builds it again."""
    import argparse
    import signal
    import types

    import rq
    from redis.exceptions import ConnectionError as RedisConnectionError

    from async_accept import cli

    built: list[int] = []

    class FlakyWorker:
        def __init__(self, *args: object, **kwargs: object) -> None:
            built.append(1)
            if len(built) == 1:
                raise RedisConnectionError("Redis is down")

        def work(self, **kwargs: object) -> bool:
            self._shutdown_requested_date = time.time()  # then asked to stop
            return True

    monkeypatch.setattr(rq, "SimpleWorker", FlakyWorker)
    monkeypatch.setattr(rq, "Queue", lambda *args, **kwargs: None)
    pings: list[int] = []
    # Redis answers again: the loop pings it before building the worker again.
    redis_back = types.SimpleNamespace(ping=lambda: pings.append(1) or True)
    executor = types.SimpleNamespace(connection=redis_back, serializer=None)
    args = argparse.Namespace(burst=False, loglevel="warning")
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert cli._rq_worker(executor, "jobs", args) == 0
    finally:
        for sig, handler in saved.items():  # the loop installs its own while it waits
            signal.signal(sig, handler)
    assert len(built) == 2 and len(pings) == 1
