"""The plain way over Celery: enqueue in the view, 202 + a status view on AsyncResult.

Written as Celery's and FastAPI/Starlette tutorials suggest (``def`` views, so
the blocking broker calls run in the threadpool). Worker:
``celery -A benchmarks.peers.celery_peer worker -Q benchmarks``.
"""

from __future__ import annotations

import os

from celery import Celery
from celery.result import AsyncResult
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
celery_app = Celery("benchmarks_peer", broker=REDIS, backend=REDIS)
celery_app.conf.task_default_queue = "benchmarks"


@celery_app.task(name="benchmarks.noop")
def noop() -> dict[str, bool]:
    return {"ok": True}


def work(request: Request) -> Response:
    task = noop.delay()
    url = f"/status/{task.id}"
    return JSONResponse({"id": task.id, "status_url": url}, 202, {"Location": url})


def status(request: Request) -> Response:
    res = AsyncResult(request.path_params["task_id"], app=celery_app)
    state = res.state
    if state == "SUCCESS":
        return RedirectResponse(f"/result/{res.id}", 303)
    return JSONResponse({"id": res.id, "state": state}, headers={"Retry-After": "1"})


def result(request: Request) -> Response:
    res = AsyncResult(request.path_params["task_id"], app=celery_app)
    return JSONResponse(res.get(timeout=1) if res.ready() else {"state": res.state})


def hello(request: Request) -> Response:
    return JSONResponse("hello")


app = Starlette(
    routes=[
        Route("/work", work, methods=["POST"]),
        Route("/status/{task_id}", status),
        Route("/result/{task_id}", result),
        Route("/hello", hello),
    ]
)
