"""async_accept on a flaskr-style Flask app: session login, a view serving the
form (GET) and the create (POST), ``flash`` then ``redirect``.

Run (from the repository root)::

    gunicorn -w 2 -b 127.0.0.1:8000 examples.flaskr_app:app

What a user sees, as without the middleware:

- ``GET /create`` and ``POST /create`` without logging in: Flask's own redirect to
  ``/auth/login``, at once (the app decides first: no job);
- ``GET /create`` logged in: the form, at once (GET beside POST is not marked);
- ``POST /create`` logged in: ``202 Accepted``; the status URL answers ``303`` to
  ``/`` with the session cookie carrying the flash, and ``/`` shows
  "Post created" and the post.

Posts live in a SQLite file (``FLASKR_DB``, default ``flaskr.db``) so both
workers see them; jobs in ``ASYNC_ACCEPT_STORE`` (default
``sqlite:///async_accept_jobs.db``).
"""

from __future__ import annotations

import functools
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, flash, g, get_flashed_messages, redirect, request, session

from async_accept import long_running
from async_accept.flask import AsyncAccept

app = Flask(__name__)
app.config["SECRET_KEY"] = os.environ.get(
    "ASYNC_ACCEPT_SECRET_KEY", "dev-only-change-me-0123456789abcdef"
)
app.config["ASYNC_ACCEPT_STORE"] = os.environ.get(
    "ASYNC_ACCEPT_STORE", "sqlite:///async_accept_jobs.db"
)
DB = os.environ.get("FLASKR_DB", "flaskr.db")


def db() -> sqlite3.Connection:
    if "db" not in g:
        g.db = sqlite3.connect(DB, timeout=10)
        g.db.execute("CREATE TABLE IF NOT EXISTS post (title TEXT NOT NULL, author TEXT)")
    conn: sqlite3.Connection = g.db
    return conn


@app.teardown_appcontext
def close_db(_exc: BaseException | None) -> None:
    conn = g.pop("db", None)
    if conn is not None:
        conn.close()


def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """flaskr's decorator: anonymous users go to the login page."""

    @functools.wraps(view)
    def wrapped(**kwargs: Any) -> Any:
        if session.get("user") is None:
            return redirect("/auth/login")
        return view(**kwargs)

    return wrapped


@app.route("/auth/login", methods=["GET", "POST"])
def login() -> Any:
    if request.method == "POST":
        session.clear()
        session["user"] = request.form["username"]
        return redirect("/")
    return '<form method="post"><input name="username"><button>Log in</button></form>'


@app.get("/")
def index() -> str:
    messages = " ".join(get_flashed_messages())
    titles = ", ".join(row[0] for row in db().execute("SELECT title FROM post ORDER BY rowid"))
    return f"<p class=flash>{messages}</p><p>posts: {titles}</p>"


@app.route("/create", methods=["GET", "POST"])
@login_required
@long_running(sla=30)  # below the login decorator: anonymous callers never make a job
def create() -> Any:
    if request.method == "POST":
        time.sleep(0.5)  # the slow part (rendering, a remote call, ...)
        conn = db()
        conn.execute(
            "INSERT INTO post (title, author) VALUES (?, ?)",
            (request.form["title"], session["user"]),
        )
        conn.commit()
        flash("Post created")
        return redirect("/")
    return '<form method="post"><input name="title"><button>Save</button></form>'


AsyncAccept(app)
