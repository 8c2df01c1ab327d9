"""async_accept on Flask: a slow report endpoint that answers 202 Accepted.

Run (from the repository root)::

    gunicorn -w 2 -b 127.0.0.1:8000 examples.flask_app:app

Then::

    curl -si -X POST 127.0.0.1:8000/reports -H 'Authorization: Bearer me' \\
         -H 'Content-Type: application/json' -d '{"title": "Q3"}'
    # 202 Accepted, Location: /_jobs/<token>; poll it with the same Authorization
    curl -si 127.0.0.1:8000/_jobs/<token> -H 'Authorization: Bearer me'

``POST /reports`` takes about two seconds and reports its progress; the
status URL shows it, then answers ``303 See Other`` to the result. Both
gunicorn workers share the jobs through a SQLite file: set
``ASYNC_ACCEPT_STORE`` (default ``sqlite:///async_accept_jobs.db``) and
``ASYNC_ACCEPT_SECRET_KEY`` (a development key is used when it is unset).
"""

from __future__ import annotations

import os
import time

from flask import Flask, Response, jsonify, request

from async_accept import long_running, report_progress
from async_accept.flask import AsyncAccept

app = Flask(__name__)
app.config["SECRET_KEY"] = os.environ.get(
    "ASYNC_ACCEPT_SECRET_KEY", "dev-only-change-me-0123456789abcdef"
)
app.config["ASYNC_ACCEPT_STORE"] = os.environ.get(
    "ASYNC_ACCEPT_STORE", "sqlite:///async_accept_jobs.db"
)

PAGES = 5
SECONDS = 2.0


@app.post("/reports")
@long_running(sla=30)
def create_report() -> Response:
    """About two seconds of work, reporting progress page by page."""
    payload = request.get_json(silent=True) or {}
    title = str(payload.get("title", "untitled"))
    for page in range(1, PAGES + 1):
        time.sleep(SECONDS / PAGES)
        left = (PAGES - page) * SECONDS / PAGES
        report_progress(100 * page / PAGES, message=f"rendered page {page}/{PAGES}", eta=left)
    return jsonify(title=title, pages=PAGES, framework="flask")


@app.get("/hello")
def hello() -> str:
    return "hello"


AsyncAccept(app)
