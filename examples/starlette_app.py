"""async_accept on Starlette: a slow report endpoint that answers 202 Accepted.

Run (from the repository root)::

    uvicorn examples.starlette_app:app --port 8000

Then::

    curl -si -X POST 127.0.0.1:8000/reports -H 'Authorization: Bearer me' \\
         -H 'Content-Type: application/json' -d '{"title": "Q3"}'
    # 202 Accepted, Location: /_jobs/<token>; poll it with the same Authorization
    curl -si 127.0.0.1:8000/_jobs/<token> -H 'Authorization: Bearer me'

``POST /reports`` takes about two seconds and reports its progress; the
status URL shows it, then answers ``303 See Other`` to the result. Jobs live
in a SQLite file that every worker process shares (``--workers 2`` works as
is): set ``ASYNC_ACCEPT_STORE`` (default ``sqlite:///async_accept_jobs.db``)
and ``ASYNC_ACCEPT_SECRET_KEY`` (a development key is used when it is unset).
"""

from __future__ import annotations

import asyncio
import json
import os

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from async_accept import long_running, report_progress
from async_accept.starlette import AsyncAcceptMiddleware

PAGES = 5
SECONDS = 2.0


@long_running(sla=30)
async def create_report(request: Request) -> JSONResponse:
    """About two seconds of work, reporting progress page by page."""
    try:
        payload = await request.json()
    except json.JSONDecodeError:
        payload = {}
    title = str(payload.get("title", "untitled")) if isinstance(payload, dict) else "untitled"
    for page in range(1, PAGES + 1):
        await asyncio.sleep(SECONDS / PAGES)
        left = (PAGES - page) * SECONDS / PAGES
        report_progress(100 * page / PAGES, message=f"rendered page {page}/{PAGES}", eta=left)
    return JSONResponse({"title": title, "pages": PAGES, "framework": "starlette"})


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


app = Starlette(
    routes=[
        Route("/reports", create_report, methods=["POST"]),
        Route("/hello", hello),
    ],
    middleware=[
        Middleware(
            AsyncAcceptMiddleware,
            secret_key=os.environ.get(
                "ASYNC_ACCEPT_SECRET_KEY", "dev-only-change-me-0123456789abcdef"
            ),
            store=os.environ.get("ASYNC_ACCEPT_STORE", "sqlite:///async_accept_jobs.db"),
        )
    ],
)
