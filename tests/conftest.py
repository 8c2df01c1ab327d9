"""Fixtures: the contract suite's deployments (front door x store x executor)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import apps

SECRET = "test-secret-key-0123456789abcdef"
ALICE = {"Authorization": "Bearer alice"}
BOB = {"Authorization": "Bearer bob"}

COMBOS = [
    ("asgi", "memory", "asyncio"),
    ("asgi", "memory", "thread"),
    ("asgi", "sqlite", "asyncio"),
    ("asgi", "sqlite", "thread"),
    ("wsgi", "memory", "thread"),
    ("wsgi", "sqlite", "thread"),
    ("asgi", "redis", "asyncio"),
    ("wsgi", "redis", "thread"),
    ("asgi", "postgres", "asyncio"),
    ("asgi", "postgres", "thread"),
    ("wsgi", "postgres", "thread"),
]


class Clock:
    """Real time plus an offset tests can advance (deadman, TTL)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def lapse(watch: Any, seconds: float, step: float = 0.5) -> None:
    """Let ``seconds`` pass on the liveness watch's monotonic clock (an offset on
    ``time.monotonic``), in steps each followed by one of the process's own beats
    landing: writable time, as if the process had watched that long."""
    if not isinstance(watch.clock, MonotonicOffset):
        watch.clock = MonotonicOffset()
    clock = watch.clock
    while seconds > 0:
        clock.offset += min(step, seconds)
        seconds -= step
        landed = watch.beats_landed
        deadline = time.monotonic() + 30
        while watch.beats_landed == landed:
            assert time.monotonic() < deadline, "the sweeper's own beats stopped"
            time.sleep(0.01)


class MonotonicOffset:
    """``time.monotonic`` plus an offset tests advance (the liveness watch's clock)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


@dataclass
class Deployment:
    """One app behind the middleware, with a client and handles for tests."""

    door: str
    store_name: str
    executor_name: str
    client: httpx.Client
    middleware: Any
    clock: Clock
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def store(self) -> Any:
        return self.middleware.store

    def post(self, path: str, **kw: Any) -> httpx.Response:
        kw.setdefault("headers", ALICE)
        return self.client.post(path, **kw)

    def get(self, url: str, **kw: Any) -> httpx.Response:
        kw.setdefault("headers", ALICE)
        return self.client.get(url, **kw)

    def wait_status(
        self,
        url: str,
        until: Callable[[httpx.Response], bool],
        timeout: float = 15.0,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Poll ``url`` (without honouring Retry-After) until ``until`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.client.get(url, headers=headers or ALICE)
            if until(r):
                return r
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"status never reached the condition: {r.status_code} {r.text}"
                )
            time.sleep(0.01)

    def finished(self, url: str, **kw: Any) -> httpx.Response:
        return self.wait_status(
            url,
            lambda r: (
                r.status_code == 303
                or r.json().get("status") in ("failed", "canceled", "completed")
            ),
            **kw,
        )


def find_middleware(app: Any) -> Any:
    """The AsyncAcceptMiddleware instance inside a Starlette app's stack."""
    from async_accept.asgi import AsyncAcceptMiddleware

    node = getattr(app, "middleware_stack", None) or app
    for _ in range(20):
        if isinstance(node, AsyncAcceptMiddleware):
            return node
        node = getattr(node, "app", None)
        if node is None:
            break
    raise LookupError("no AsyncAcceptMiddleware in the app")


@contextlib.contextmanager
def deploy(
    door: str, store: str, executor: str, tmp_path: Path, **options: Any
) -> Iterator[Deployment]:
    with contextlib.ExitStack() as cleanup:  # runs after the store is closed
        clock = Clock()
        store_url = "memory://" if store == "memory" else f"sqlite:///{tmp_path / 'jobs.db'}"
        opts: dict[str, Any] = {
            "secret_key": SECRET,
            "store": store_url,
            "executor": executor,
            "heartbeat_interval": 0.2,
            "worker_lost_after": 3.0,
            "poll_interval": 1,
        }
        opts.update(options)
        if store == "redis":
            from tests.services import require_redis, wipe_redis_namespace

            url = require_redis()
            from async_accept.stores.redis import RedisStore

            namespace = f"contract-{time.time_ns()}"
            opts["store"] = RedisStore.from_url(url, namespace=namespace)
            cleanup.callback(wipe_redis_namespace, url, namespace)
        if store == "postgres":
            from tests.services import drop_postgres_schema, postgres_schema_url, require_postgres

            opts["store"], schema = postgres_schema_url(require_postgres())
            cleanup.callback(drop_postgres_schema, schema)
        if door == "asgi":
            from starlette.testclient import TestClient

            app = apps.build_starlette(**opts)
            with TestClient(app, follow_redirects=False, raise_server_exceptions=False) as client:
                client.get("/hello")  # builds the middleware stack
                mw = find_middleware(app)
                mw.runtime.engine.clock = clock
                try:
                    yield Deployment(door, store, executor, client, mw, clock)
                finally:
                    apps.GATES.open_all()
            mw.store.close()
        else:
            mw = apps.build_wsgi(**opts)
            mw.runtime.engine.clock = clock
            transport = httpx.WSGITransport(app=mw)
            with httpx.Client(
                transport=transport, base_url="http://testserver", follow_redirects=False
            ) as client:
                try:
                    yield Deployment(door, store, executor, client, mw, clock)
                finally:
                    apps.GATES.open_all()
                    mw.runtime.shutdown()
            mw.store.close()


@pytest.fixture(params=COMBOS, ids=["-".join(c) for c in COMBOS])
def dep(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    """Every combination of front door, store and executor the contract covers."""
    apps.GATES = apps.Gates()
    door, store, executor = request.param
    with deploy(door, store, executor, tmp_path) as d:
        yield d


@pytest.fixture
def make_dep(tmp_path: Path) -> Iterator[Callable[..., Deployment]]:
    """Build a deployment with custom options: make_dep(door, store, executor, **options)."""
    stack = contextlib.ExitStack()
    apps.GATES = apps.Gates()

    def make(
        door: str, store: str = "memory", executor: str | None = None, **options: Any
    ) -> Deployment:
        ex = executor or ("asyncio" if door == "asgi" else "thread")
        return stack.enter_context(deploy(door, store, ex, tmp_path, **options))

    with stack:
        yield make


@pytest.fixture
def pg_url() -> Iterator[tuple[str, str]]:
    """A PostgreSQL store URL on a fresh schema, and the schema; dropped after the test."""
    from tests.services import drop_postgres_schema, postgres_schema_url, require_postgres

    url, schema = postgres_schema_url(require_postgres())
    try:
        yield url, schema
    finally:
        drop_postgres_schema(schema)


@pytest.fixture
def pg_store(pg_url: tuple[str, str]) -> Iterator[Any]:
    """A PostgreSQL store on ``pg_url``'s fresh schema; closed after the test."""
    from async_accept.stores.postgres import PostgresStore

    store = PostgresStore.from_url(pg_url[0])
    try:
        yield store
    finally:
        store.close()
