"""The contract apps, configured from the environment, for real server processes.

uvicorn tests.e2e_app:asgi_app   /   gunicorn tests.e2e_app:wsgi_app
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
        "secret_key": env.get("ASYNC_ACCEPT_SECRET_KEY", "e2e-secret-0123456789abcdef"),
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


def __getattr__(name: str) -> Any:
    # Built on first access so that importing this module for one door
    # doesn't construct the other.
    if name == "asgi_app":
        app = apps.build_starlette(**_options())
    elif name == "wsgi_app":
        app = apps.build_wsgi(**_options())
    else:
        raise AttributeError(name)
    globals()[name] = app
    return app
