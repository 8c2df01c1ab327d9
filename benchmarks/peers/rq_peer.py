"""The plain way over RQ: enqueue in the view, 202 + a status view on Job.fetch.

Written as RQ's docs suggest (``def`` views, so the blocking Redis calls run in
the threadpool). Worker: ``rq worker -u redis://127.0.0.1:6379/14 benchmarks``.
"""

from __future__ import annotations

import os

from redis import Redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
redis = Redis.from_url(REDIS)
queue = Queue("benchmarks", connection=redis)


def noop() -> dict[str, bool]:
    return {"ok": True}


def work(request: Request) -> Response:
    job = queue.enqueue(noop)
    url = f"/status/{job.id}"
    return JSONResponse({"id": job.id, "status_url": url}, 202, {"Location": url})


def status(request: Request) -> Response:
    try:
        job = Job.fetch(request.path_params["job_id"], connection=redis)
    except NoSuchJobError:
        return JSONResponse({"error": "no such job"}, 404)
    state = job.get_status(refresh=False)
    if state == "finished":
        return RedirectResponse(f"/result/{job.id}", 303)
    return JSONResponse({"id": job.id, "state": state}, headers={"Retry-After": "1"})


def result(request: Request) -> Response:
    job = Job.fetch(request.path_params["job_id"], connection=redis)
    return JSONResponse(job.return_value())


def hello(request: Request) -> Response:
    return JSONResponse("hello")


app = Starlette(
    routes=[
        Route("/work", work, methods=["POST"]),
        Route("/status/{job_id}", status),
        Route("/result/{job_id}", result),
        Route("/hello", hello),
    ]
)
