"""The contract apps, configured from the environment, for real server processes.

uvicorn tests.e2e_app:asgi_app   /   gunicorn tests.e2e_app:wsgi_app
async-accept worker --app tests.e2e_app:asgi_app   (also lifespan_app)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from tests import apps


def _options(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The middleware options ``env`` (default: os.environ) describes.

    ``ASYNC_ACCEPT_REDIS_NAMESPACE`` puts a ``redis://`` store under its own
    namespace, so that tests sharing one Redis database don't see each other's jobs.
    """
    env = os.environ if env is None else env
    opts: dict[str, Any] = {
        "secret_key": env.get("ASYNC_ACCEPT_SECRET_KEY", "e2e-secret-0123456789abcdef-0123456"),
        "store": env["ASYNC_ACCEPT_STORE"],
    }
    namespace = env.get("ASYNC_ACCEPT_REDIS_NAMESPACE")
    if namespace and opts["store"].startswith("redis://"):
        from async_accept.stores.redis import RedisStore

        opts["store"] = RedisStore.from_url(opts["store"], namespace=namespace)
    for name in ("heartbeat_interval", "worker_lost_after", "sweep_interval", "requeue_after"):
        value = env.get("ASYNC_ACCEPT_" + name.upper())
        if value:
            opts[name] = float(value)
    if env.get("ASYNC_ACCEPT_EXECUTOR"):
        opts["executor"] = env["ASYNC_ACCEPT_EXECUTOR"]
    return opts


#: pids of this process's lifespan startups (a worker should run it once)
LIFESPAN_STARTUPS: list[int] = []


def build_lifespan_app(**options: Any) -> Any:
    """A Starlette app whose lifespan makes loop-bound resources for its handlers.

    ``POST /uses-lifespan`` (long-running) uses an ``asyncio.Queue`` made at
    startup, which works only on the loop that made it, and answers whether it
    runs on that loop and how many startups this process saw.
    """
    import asyncio
    import contextlib
    from collections.abc import AsyncIterator

    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from async_accept import long_running
    from async_accept.asgi import AsyncAcceptMiddleware

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        LIFESPAN_STARTUPS.append(os.getpid())
        yield {"loop": asyncio.get_running_loop(), "queue": asyncio.Queue()}

    @long_running(sla=30)
    async def uses_lifespan(request: Request) -> Response:
        queue = request.state.queue
        await queue.put(1)
        await queue.get()
        return JSONResponse(
            {
                "same_loop": request.state.loop is asyncio.get_running_loop(),
                "startups": len(LIFESPAN_STARTUPS),
                "pid": os.getpid(),
            }
        )

    async def hello(request: Request) -> Response:
        return Response("hello")

    return Starlette(
        routes=[
            Route("/uses-lifespan", uses_lifespan, methods=["POST"]),
            Route("/hello", hello),
        ],
        middleware=[Middleware(AsyncAcceptMiddleware, **options)],
        lifespan=lifespan,
    )


def __getattr__(name: str) -> Any:
    # Built on first access so that importing this module for one door
    # doesn't construct the other.
    if name == "asgi_app":
        app = apps.build_starlette(**_options())
    elif name == "wsgi_app":
        app = apps.build_wsgi(**_options())
    elif name == "lifespan_app":
        app = build_lifespan_app(**_options())
    else:
        raise AttributeError(name)
    globals()[name] = app
    return app
