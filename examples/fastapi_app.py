"""async_accept on FastAPI: a slow report endpoint that answers 202 Accepted.

Run (from the repository root)::

    uvicorn examples.fastapi_app:app --port 8000

Then::

    curl -si -X POST 127.0.0.1:8000/reports -H 'Authorization: Bearer me' \\
         -H 'Content-Type: application/json' -d '{"title": "Q3"}'
    # 202 Accepted, Location: /_jobs/<token>; poll it with the same Authorization
    curl -si 127.0.0.1:8000/_jobs/<token> -H 'Authorization: Bearer me'

``POST /reports`` takes about two seconds and reports its progress; the
status URL shows it, then answers ``303 See Other`` to the result. The
OpenAPI document (http://127.0.0.1:8000/docs) shows the route's 202 with its
``Location`` and ``Retry-After`` headers and the status endpoints. Set
``ASYNC_ACCEPT_STORE`` (default ``sqlite:///async_accept_jobs.db``, shared
by every worker process) and ``ASYNC_ACCEPT_SECRET_KEY`` (a development key
is used when it is unset).
"""

from __future__ import annotations

import os
import time

from fastapi import FastAPI
from pydantic import BaseModel

from async_accept import long_running, report_progress
from async_accept.fastapi import AsyncAcceptMiddleware, document_async_accept

PAGES = 5
SECONDS = 2.0

app = FastAPI(title="Reports")


class ReportRequest(BaseModel):
    title: str = "untitled"


class Report(BaseModel):
    title: str
    pages: int
    framework: str


@app.post("/reports")
@long_running(sla=30)
def create_report(body: ReportRequest) -> Report:
    """About two seconds of blocking work (FastAPI runs it in its threadpool),
    reporting progress page by page."""
    for page in range(1, PAGES + 1):
        time.sleep(SECONDS / PAGES)
        left = (PAGES - page) * SECONDS / PAGES
        report_progress(100 * page / PAGES, message=f"rendered page {page}/{PAGES}", eta=left)
    return Report(title=body.title, pages=PAGES, framework="fastapi")


@app.get("/hello")
def hello() -> str:
    return "hello"


app.add_middleware(
    AsyncAcceptMiddleware,
    secret_key=os.environ.get("ASYNC_ACCEPT_SECRET_KEY", "dev-only-change-me-0123456789abcdef"),
    store=os.environ.get("ASYNC_ACCEPT_STORE", "sqlite:///async_accept_jobs.db"),
)
document_async_accept(app, include_status_routes=True)
