"""The plain way on PostgreSQL alone: insert a row, answer 202 with its id, a worker
polls the table with ``FOR UPDATE SKIP LOCKED``, a status view reads the row.

Written as a user of Starlette and psycopg 3 would: ``async def`` views on a
``psycopg_pool.AsyncConnectionPool`` (10 connections, the same as the
async_accept store's default ``pool_max``) opened in the lifespan, autocommit
(one statement per request). Worker: ``python -m benchmarks.peers.pg_peer``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import AsyncIterator

import psycopg
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

DSN = os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
TABLE = os.environ.get("BENCH_PG_TABLE", "bench_peer_jobs")

DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    status text NOT NULL DEFAULT 'queued',
    payload jsonb NOT NULL,
    result jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS {TABLE}_queued ON {TABLE} (id) WHERE status = 'queued';
"""

pool: AsyncConnectionPool | None = None


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    global pool
    pool = AsyncConnectionPool(
        DSN, min_size=10, max_size=10, open=False, kwargs={"autocommit": True}
    )
    await pool.open(wait=True)
    async with pool.connection() as conn:
        await conn.execute(DDL)
    try:
        yield
    finally:
        await pool.close()


async def work(request: Request) -> Response:
    payload = await request.body() or b"{}"
    assert pool is not None
    async with pool.connection() as conn:
        cur = await conn.execute(
            f"INSERT INTO {TABLE} (payload) VALUES (%s) RETURNING id", (payload.decode(),)
        )
        row = await cur.fetchone()
    assert row is not None
    url = f"/status/{row[0]}"
    return JSONResponse({"id": row[0], "status_url": url}, 202, {"Location": url})


async def status(request: Request) -> Response:
    assert pool is not None
    async with pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT status FROM {TABLE} WHERE id = %s", (int(request.path_params["job_id"]),)
        )
        row = await cur.fetchone()
    if row is None:
        return JSONResponse({"error": "no such job"}, 404)
    if row[0] == "done":
        return RedirectResponse(f"/result/{request.path_params['job_id']}", 303)
    return JSONResponse(
        {"id": request.path_params["job_id"], "state": row[0]}, headers={"Retry-After": "1"}
    )


async def result(request: Request) -> Response:
    assert pool is not None
    async with pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT result FROM {TABLE} WHERE id = %s", (int(request.path_params["job_id"]),)
        )
        row = await cur.fetchone()
    return JSONResponse(row[0] if row else None)


async def hello(request: Request) -> Response:
    return JSONResponse("hello")


app = Starlette(
    routes=[
        Route("/work", work, methods=["POST"]),
        Route("/status/{job_id}", status),
        Route("/result/{job_id}", result),
        Route("/hello", hello),
    ],
    lifespan=lifespan,
)


def worker(poll: float = 0.05) -> None:
    """Claim the oldest queued row (SKIP LOCKED), run the no-op, store the result."""
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(DDL)
        print("worker ready", flush=True)
        while True:
            with conn.transaction():
                row = conn.execute(
                    f"SELECT id, payload FROM {TABLE} WHERE status = 'queued' "
                    "ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
                ).fetchone()
                if row is not None:
                    conn.execute(
                        f"UPDATE {TABLE} SET status = 'done', result = %s WHERE id = %s",
                        (json.dumps({"ok": True}), row[0]),
                    )
            if row is None:
                time.sleep(poll)


if __name__ == "__main__":
    worker()
