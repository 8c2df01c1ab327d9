"""The contract apps, configured from the environment, for real server processes.

uvicorn tests.e2e_app:asgi_app   /   gunicorn tests.e2e_app:wsgi_app
"""

from __future__ import annotations

import os
from typing import Any

from tests import apps


def _options() -> dict[str, Any]:
    opts: dict[str, Any] = {
        "secret_key": os.environ.get("ASYNC_ACCEPT_SECRET_KEY", "e2e-secret-0123456789abcdef"),
        "store": os.environ["ASYNC_ACCEPT_STORE"],
    }
    for name in ("heartbeat_interval", "worker_lost_after", "sweep_interval", "requeue_after"):
        value = os.environ.get("ASYNC_ACCEPT_" + name.upper())
        if value:
            opts[name] = float(value)
    if os.environ.get("ASYNC_ACCEPT_EXECUTOR"):
        opts["executor"] = os.environ["ASYNC_ACCEPT_EXECUTOR"]
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
