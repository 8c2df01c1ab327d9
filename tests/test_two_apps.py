"""Two different apps given one store never run each other's jobs.

Real servers (gunicorn for a Flask app, uvicorn for a Starlette app), two files in
one directory, the same secret. With default settings both use the default store
file of that directory (``sqlite:///async_accept_jobs.db``): each app's sweep
(quick here, so that queued jobs are handed over within the run) sees the other's
queued jobs, and must leave them: every job runs in the app that accepted it, as the
ledger each handler appends to shows. With ``?namespace=`` each app has its own part of
the file: the same route in both, and a status URL of one is unknown (404) at the other.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.servers import ROOT, Server, base_env, gunicorn, uvicorn

SECRET = "two-apps-secret-0123456789abcdef0123"
ALICE = {"authorization": "Bearer alice"}
#: jobs submitted to the Flask app, and to the Starlette app: the one with less work
#: goes idle first, while the other's jobs still wait (as in the issue, where a
#: Starlette app ran 32 of 48 Flask jobs)
N = 24
N_STARLETTE = 6

COMMON = """
import os

LEDGER = os.environ["TWO_APPS_LEDGER"]
STORE = os.environ.get("TWO_APPS_STORE")  # None: the default store
# Quick sweeps, and queued jobs handed over after 0.3 s: what a sweep does to another
# app's queued jobs shows within the run. Two slots: the jobs queue up.
OPTIONS = dict(
    secret_key=os.environ["TWO_APPS_SECRET"],
    sweep_interval=0.2,
    requeue_after=0.3,
    **({} if STORE is None else {"store": STORE}),
)


def record(app, n):
    line = f"{app} {n}\\n".encode()
    fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
"""

FLASK_APP = """
from flask import Flask, jsonify, request

from async_accept import long_running
from async_accept.flask import AsyncAccept
import os
import time

from common import OPTIONS, record

ROUTE = os.environ["TWO_APPS_FLASK_ROUTE"]
app = Flask(__name__)


@app.get("/hello")
def hello():
    return "ok"


@app.post(ROUTE)
@long_running(sla=60)
def work():
    n = request.get_json()["n"]
    time.sleep(0.2)
    record("flask", n)
    return jsonify(app="flask", n=n)


AsyncAccept(app, executor="thread?max_workers=2", **OPTIONS)
"""

STARLETTE_APP = """
import asyncio
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from async_accept import long_running
from async_accept.asgi import AsyncAcceptMiddleware
from common import OPTIONS, record

ROUTE = os.environ["TWO_APPS_STARLETTE_ROUTE"]


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@long_running(sla=60)
async def work(request: Request) -> JSONResponse:
    n = (await request.json())["n"]
    await asyncio.sleep(0.2)
    record("starlette", n)
    return JSONResponse({"app": "starlette", "n": n})


app = Starlette(routes=[Route("/hello", hello), Route(ROUTE, work, methods=["POST"])])
app.add_middleware(AsyncAcceptMiddleware, executor="asyncio?max_concurrency=2", **OPTIONS)
"""


class Apps:
    """The two servers of a test, their ledger and their directory."""

    def __init__(self, folder: Path, flask: Server, star: Server, ledger: Path) -> None:
        self.folder = folder
        self.flask = flask
        self.star = star
        self.ledger = ledger

    def ran(self) -> list[tuple[str, str]]:
        """(app, input) of every job run so far, one per run."""
        if not self.ledger.exists():
            return []
        out = []
        for line in self.ledger.read_text().splitlines():
            app, name = line.split()
            out.append((app, name))
        return out


def _serve(
    tmp_path: Path, routes: tuple[str, str], stores: tuple[str | None, str | None]
) -> Iterator[Apps]:
    """The Flask app (gunicorn) and the Starlette app (uvicorn), files in one folder
    the servers run in, with these routes and stores (None: the default store)."""
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "common.py").write_text(COMMON)
    (folder / "flask_app.py").write_text(FLASK_APP)
    (folder / "starlette_app.py").write_text(STARLETTE_APP)
    ledger = tmp_path / "ledger.txt"

    def env(store: str | None) -> dict[str, str]:
        out = base_env(
            TWO_APPS_LEDGER=str(ledger),
            TWO_APPS_SECRET=SECRET,
            TWO_APPS_FLASK_ROUTE=routes[0],
            TWO_APPS_STARLETTE_ROUTE=routes[1],
            PYTHONPATH=f"{folder}:{ROOT}",
        )
        if store is not None:
            out["TWO_APPS_STORE"] = store
        return out

    flask = gunicorn("flask_app:app", env(stores[0]), tmp_path / "flask.log")
    star = uvicorn("starlette_app:app", env(stores[1]), tmp_path / "starlette.log")
    # The default store is a relative file: the same one for both, as for two apps
    # started in one directory.
    flask.cwd = star.cwd = folder
    started: list[Server] = []
    try:
        for server in (flask, star):
            server.start()
            started.append(server)
        yield Apps(folder, flask, star, ledger)
    finally:
        for server in started:
            server.stop()


def _submit(base: str, route: str, names: list[str]) -> list[str]:
    """POST each input to the route (in parallel): the status URLs of the 202s."""

    def one(name: str) -> str:
        r = httpx.post(
            base + route,
            json={"n": name},
            headers={**ALICE, "prefer": "respond-async"},
            timeout=30,
        )
        assert r.status_code == 202, r.text
        return base + r.headers["location"]

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, names))


def _ended(url: str, timeout: float = 90.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, object] = httpx.get(url, headers=ALICE, timeout=30).json()
        if body["status"] in ("completed", "failed", "canceled"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"{url} did not end within {timeout:g} s")


def _result(url: str) -> object:
    """The job's result: the handler's JSON, or what the other app answered instead."""
    r = httpx.get(url, headers=ALICE, timeout=30, follow_redirects=True)
    try:
        return r.json()
    except ValueError:
        return f"{r.status_code} {r.text[:80]}"


def _run_both(apps: Apps, routes: tuple[str, str]) -> tuple[list[str], list[str]]:
    """N jobs to the Flask app, N_STARLETTE to the Starlette app, at once: all end
    completed, each ran once, in its own app.
    Returns the status URLs (Flask's, Starlette's)."""
    flask_names = [f"f{i}" for i in range(N)]
    star_names = [f"s{i}" for i in range(N_STARLETTE)]
    with ThreadPoolExecutor(2) as pool:
        urls_f = pool.submit(_submit, apps.flask.base, routes[0], flask_names)
        urls_s = pool.submit(_submit, apps.star.base, routes[1], star_names)
        flask_urls, star_urls = urls_f.result(), urls_s.result()
    ends = [_ended(url) for url in flask_urls + star_urls]
    assert [e["status"] for e in ends] == ["completed"] * len(ends), ends
    # What each job's request got: its own app's handler's answer. A job replayed in
    # the other app gets that app's 404 (no such route there), and its handler never runs.
    wanted = [{"app": "flask", "n": n} for n in flask_names]
    wanted += [{"app": "starlette", "n": n} for n in star_names]
    got = [_result(url) for url in flask_urls + star_urls]
    misrouted = [(w, g) for w, g in zip(wanted, got, strict=True) if w != g]
    assert misrouted == [], f"{len(misrouted)} of {len(got)} jobs ran in the other app"
    ran = apps.ran()
    wrong = [(app, n) for app, n in ran if app != ("flask" if n[0] == "f" else "starlette")]
    assert wrong == [], f"{len(wrong)} of {len(ran)} jobs ran in the other app: {wrong}"
    expected = [("flask", n) for n in flask_names] + [("starlette", n) for n in star_names]
    assert sorted(ran) == sorted(expected), ran  # each exactly once
    return flask_urls, star_urls


def test_two_apps_in_one_directory_run_only_their_own_jobs(tmp_path: Path) -> None:
    """A Flask and a Starlette app with different routes on the default store file of
    their directory: of the jobs sent to each, every job completes, ran exactly once, in the
    app that accepted it (none in the other, which goes idle first and sweeps the
    other's queued jobs); a warning about the other app's route comes once at most."""
    routes = ("/flask-work", "/starlette-work")
    for apps in _serve(tmp_path, routes, (None, None)):
        _run_both(apps, routes)
        assert (apps.folder / "async_accept_jobs.db").exists()  # one file, both apps'
        assert apps.flask.log.read_text().count("'POST /starlette-work'") <= 1
        assert apps.star.log.read_text().count("'POST /flask-work'") <= 1


def test_the_same_route_in_two_namespaces_of_one_file(tmp_path: Path) -> None:
    """Both apps mark POST /work on one file, each with its own ?namespace=: each job
    runs in its own app, and a status URL of one app is an unknown job (404) at the
    other though both sign with the same secret."""
    store = f"sqlite:///{tmp_path}/shared.db"
    routes = ("/work", "/work")
    stores = (f"{store}?namespace=flaskapp", f"{store}?namespace=starapp")
    for apps in _serve(tmp_path, routes, stores):
        flask_urls, star_urls = _run_both(apps, routes)
        at_star = flask_urls[0].replace(apps.flask.base, apps.star.base)
        at_flask = star_urls[0].replace(apps.star.base, apps.flask.base)
        assert httpx.get(at_star, headers=ALICE, timeout=30).status_code == 404
        assert httpx.get(at_flask, headers=ALICE, timeout=30).status_code == 404
        assert httpx.get(flask_urls[0], headers=ALICE, timeout=30).status_code == 303
        assert not (apps.folder / "async_accept_jobs.db").exists()
