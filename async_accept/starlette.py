"""Starlette and FastAPI: the ASGI middleware, and how it finds ``@long_running``
endpoints in the routing tree (the walk itself lives in ``discovery``, which
the front door imports without importing this module or ``asgi``)."""

from __future__ import annotations

from .asgi import AsyncAcceptMiddleware
from .discovery import discover_routes, flat_routes

__all__ = ["AsyncAcceptMiddleware", "discover_routes", "flat_routes"]
