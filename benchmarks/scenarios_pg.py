"""PostgreSQL against the plain way on PostgreSQL: the hand-written peer
(``peers/pg_peer.py``: insert a row, 202 with its id, a status view reading the
row) side by side with async_accept's PostgreSQL store (``executor="store"``:
the queued job is the message), both served by one uvicorn process."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ._load import Target, compare
from ._proc import Proc, uvicorn
from ._report import ratio_cols
from .scenarios import (
    HTTP,
    PG_URL,
    Ctx,
    asgi_server,
    middleware_missing,
    paths_file,
    post_jobs,
    postgres_store_missing,
    reset_postgres,
)

PEER_TABLE = "bench_peer_jobs"
DSN = PG_URL.split("?")[0]


def _reset_peer() -> None:
    import psycopg

    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {PEER_TABLE}")


@contextlib.contextmanager
def pg_peer_server(ctx: Ctx) -> Iterator[Proc]:
    env = {"BENCH_PG_DSN": DSN, "BENCH_PG_TABLE": PEER_TABLE}
    p = uvicorn("pg-peer", "benchmarks.peers.pg_peer:app", env, ctx.tmp)
    try:
        yield p
    finally:
        p.stop()


def pg_peers(ctx: Ctx) -> None:
    """async_accept's PostgreSQL store (executor="store", no workers running) against
    the hand-written PostgreSQL peer: accept throughput (goal >= 2x), and status
    reads of queued jobs."""
    why = middleware_missing() or postgres_store_missing()
    if why:
        ctx.report.skip("pg_peers", why)
        return
    reset_postgres()
    _reset_peer()
    with (
        pg_peer_server(ctx) as peer,
        asgi_server(ctx, "aa-pg", mw=True, store=PG_URL, executor="store") as mw,
        asgi_server(ctx, "bare", mw=False) as bare,
    ):
        bare_t = Target("bare", bare)
        pa = Target("pg peer accept", peer, "/work", "POST", "{}")
        ma = Target("async_accept accept", mw, "/work", "POST", "{}")
        c = compare(pa, bare_t, ctx.settings)
        ctx.report.add(HTTP, "pg peer: accept / bare hello", **ratio_cols(c))
        c = compare(ma, bare_t, ctx.settings)
        ctx.report.add(HTTP, "async_accept accept (PostgreSQL store) / bare hello", **ratio_cols(c))
        c = compare(ma, pa, ctx.settings)
        ctx.report.add(
            HTTP,
            'async_accept accept (PostgreSQL store, executor="store") / pg peer accept',
            **ratio_cols(c, 2.0),
        )
        peer_urls = post_jobs(peer.port, "/work", 200)
        aa_urls = post_jobs(mw.port, "/work", 200)
        pp = Target("pg peer poll", peer, peer_urls[0])
        pp.paths_file = paths_file(ctx, "pg-peer", peer_urls)
        mp = Target("async_accept poll", mw, aa_urls[0])
        mp.paths_file = paths_file(ctx, "aa-pg", aa_urls)
        c = compare(mp, pp, ctx.settings)
        ctx.report.add(
            HTTP,
            "async_accept poll (PostgreSQL store, queued jobs) / pg peer poll",
            **ratio_cols(c),
        )
    reset_postgres()
    _reset_peer()
