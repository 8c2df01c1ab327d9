"""The async_accept demo: a slow request turns into 202 -> progress -> 303 -> result.

Run:  python examples/demo.py

It starts a real uvicorn server on 127.0.0.1 (a free port) with a Starlette
app whose ``POST /reports`` takes about three seconds and reports progress,
on the embedded default (SQLite store in a temporary folder, asyncio
executor), then acts as a client: it posts, honours Retry-After while polling
(printing the progress), follows the 303 and prints the result.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile
import threading
import time

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from async_accept import long_running, report_progress
from async_accept.asgi import AsyncAcceptMiddleware


@long_running(sla=10)
async def create_report(request: Request) -> JSONResponse:
    """A slow endpoint: about 3 seconds of 'work', reporting progress as it goes."""
    payload = await request.json()
    pages = int(payload.get("pages", 6))
    for page in range(1, pages + 1):
        await asyncio.sleep(3 / pages)
        report_progress(
            100 * page / pages,
            message=f"rendered page {page}/{pages}",
            eta=(pages - page) * 3 / pages,
        )
    return JSONResponse({"report": "quarterly", "pages": pages}, status_code=200)


def build_app(db_path: str) -> Starlette:
    return Starlette(
        routes=[Route("/reports", create_report, methods=["POST"])],
        middleware=[
            Middleware(
                AsyncAcceptMiddleware,
                secret_key=os.environ.get(
                    "ASYNC_ACCEPT_SECRET_KEY", "demo-secret-change-me-0123456789abcdef"
                ),
                store=f"sqlite:///{db_path}",
                heartbeat_interval=0.5,
            )
        ],
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        config = uvicorn.Config(
            build_app(os.path.join(tmp, "jobs.db")),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        print(f"server: uvicorn on {base}, store: SQLite, executor: asyncio")
        try:
            with httpx.Client(
                base_url=base, headers={"Authorization": "Bearer demo-user"}
            ) as client:
                t0 = time.monotonic()
                r = client.post("/reports", json={"pages": 6})
                print(
                    f"[{time.monotonic() - t0:5.2f}s] POST /reports -> {r.status_code} "
                    f"Location: {r.headers['location']}  Retry-After: {r.headers['retry-after']}"
                )
                status_url = r.headers["location"]
                while True:
                    wait = min(float(r.headers.get("retry-after", "1")), 1.0)
                    time.sleep(wait)
                    r = client.get(status_url, follow_redirects=False)
                    body = r.json()
                    pct = body["percent_complete"]
                    print(
                        f"[{time.monotonic() - t0:5.2f}s] GET status -> {r.status_code} "
                        f"{body['status']:<10} {'' if pct is None else f'{pct:5.1f}%'} "
                        f"{body['message'] or ''}"
                    )
                    if r.status_code == 303:
                        break
                    if body["status"] in ("failed", "canceled"):
                        print("job ended:", body)
                        return 1
                result_url = r.headers["location"]
                print(f"[{time.monotonic() - t0:5.2f}s] 303 See Other -> {result_url}")
                result = client.get(result_url)
                elapsed = time.monotonic() - t0
                print(f"[{elapsed:5.2f}s] GET result -> {result.status_code} {result.text}")
                other = client.get(status_url, headers={"Authorization": "Bearer someone-else"})
                print(
                    f"another caller on the status URL -> {other.status_code} (no job enumeration)"
                )
        finally:
            server.should_exit = True
            thread.join(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
