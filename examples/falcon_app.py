"""async_accept on Falcon (ASGI): a slow report endpoint that answers 202 Accepted.

Run (from the repository root)::

    uvicorn examples.falcon_app:app --port 8000

Then::

    curl -si -X POST 127.0.0.1:8000/reports -H 'Authorization: Bearer me' \\
         -H 'Content-Type: application/json' -d '{"title": "Q3"}'
    # 202 Accepted, Location: /_jobs/<token>; poll it with the same Authorization
    curl -si 127.0.0.1:8000/_jobs/<token> -H 'Authorization: Bearer me'

``POST /reports`` takes about two seconds and reports its progress; the
status URL shows it, then answers ``303 See Other`` to the result.
``async_accept.falcon.wrap`` wraps a ``falcon.asgi.App`` (as here) or a WSGI
``falcon.App`` (then run it under gunicorn) and finds the ``@long_running``
responders. Set ``ASYNC_ACCEPT_STORE`` (default
``sqlite:///async_accept_jobs.db``, shared by every worker process) and
``ASYNC_ACCEPT_SECRET_KEY`` (a development key is used when it is unset).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import falcon
import falcon.asgi

from async_accept import long_running, report_progress
from async_accept.falcon import wrap

PAGES = 5
SECONDS = 2.0


class Reports:
    @long_running(sla=30)
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """About two seconds of work, reporting progress page by page."""
        payload: Any = await req.get_media(default_when_empty={})
        title = str(payload.get("title", "untitled")) if isinstance(payload, dict) else "untitled"
        for page in range(1, PAGES + 1):
            await asyncio.sleep(SECONDS / PAGES)
            left = (PAGES - page) * SECONDS / PAGES
            report_progress(100 * page / PAGES, message=f"rendered page {page}/{PAGES}", eta=left)
        resp.media = {"title": title, "pages": PAGES, "framework": "falcon"}


class Hello:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "hello"


api = falcon.asgi.App()
api.add_route("/reports", Reports())
api.add_route("/hello", Hello())

app = wrap(
    api,
    secret_key=os.environ.get("ASYNC_ACCEPT_SECRET_KEY", "dev-only-change-me-0123456789abcdef"),
    store=os.environ.get("ASYNC_ACCEPT_STORE", "sqlite:///async_accept_jobs.db"),
)
