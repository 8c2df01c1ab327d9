"""PostgreSQL against the plain way on PostgreSQL: the hand-written peer
(``peers/pg_peer.py``: insert a row, 202 with its id, a status view reading the
row) side by side with async_accept's PostgreSQL store (``executor="store"``:
the queued job is the message), both served by one uvicorn process."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import _proc
from ._load import Target, compare, run_load
from ._proc import LOAD_CPU, PY, Proc, pin, uvicorn
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
    summarize_profile,
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
    _creates(ctx)
    _profile_accept(ctx)


STORE_SECTION = "Store creates in one process: 64 concurrent tasks on one event loop"


def _jobs(n: int) -> list[Any]:
    from async_accept.job import Job, JobStatus, new_job_id

    now = time.time()
    return [
        Job(
            id=new_job_id(),
            status=JobStatus.QUEUED,
            owner="bench",
            created_at=now,
            updated_at=now,
            expires_at=now + 3600,
            deadline_at=now + 60,
            sla=30.0,
            route="POST /work",
        )
        for _ in range(n)
    ]


async def _gather(n: int, tasks: int, one: Any) -> float:
    """Creates per second of ``n`` calls of ``one(i)`` from ``tasks`` concurrent tasks."""
    queue = list(range(n))

    async def runner() -> None:
        while queue:
            await one(queue.pop())

    t0 = time.perf_counter()
    await asyncio.gather(*(runner() for _ in range(tasks)))
    return n / (time.perf_counter() - t0)


def _creates(ctx: Ctx) -> None:
    """The database part alone, without HTTP: async_accept's create with its group
    commit, the same create one statement each, and the peer's INSERT."""
    from psycopg_pool import AsyncConnectionPool

    from async_accept.job import CapturedRequest
    from async_accept.stores import resolve_store
    from async_accept.stores.postgres.batch import create_one_async

    n = 1_000 if ctx.quick else 5_000
    request = CapturedRequest("POST", "/work", body=b"{}")
    reset_postgres()
    _reset_peer()
    store = resolve_store(PG_URL)
    sql = store._sql

    async def main() -> dict[str, float]:
        out: dict[str, float] = {}
        jobs = _jobs(n)
        out["async_accept create, group commit"] = await _gather(
            n, 64, lambda i: store.aio.create(jobs[i], request)
        )
        jobs = _jobs(n)

        async def single(i: int) -> Any:
            async def q(conn: Any) -> Any:
                return await create_one_async(conn, sql, jobs[i], request)

            return await store.aio._run(q)

        out["async_accept create, one statement per create"] = await _gather(n, 64, single)
        async with AsyncConnectionPool(
            DSN, min_size=10, max_size=10, kwargs={"autocommit": True}
        ) as pool:
            async with pool.connection() as conn:
                from .peers.pg_peer import DDL

                await conn.execute(DDL.replace("bench_peer_jobs", PEER_TABLE))

            async def peer(i: int) -> Any:
                async with pool.connection() as conn:
                    cur = await conn.execute(
                        f"INSERT INTO {PEER_TABLE} (payload) VALUES (%s) RETURNING id", ("{}",)
                    )
                    return await cur.fetchone()

            out["peer INSERT ... RETURNING id (pool of 10)"] = await _gather(n, 64, peer)
        return out

    try:
        rates = asyncio.run(main())
    finally:
        store.close()
    peer_rate = rates["peer INSERT ... RETURNING id (pool of 10)"]
    for name, rate in rates.items():
        ctx.report.add(
            STORE_SECTION,
            f"{name}, {n:,} creates",
            **{"creates/s": f"{rate:,.0f}", "/ peer": f"{rate / peer_rate:.2f}"},
        )
    reset_postgres()
    _reset_peer()


def _profile_accept(ctx: Ctx) -> None:
    """py-spy (--gil: where the server's CPU goes) while it accepts into PostgreSQL."""
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not Path(spy).exists():
        ctx.report.skip("pg_peers profile", "py-spy is not installed (pip install py-spy)")
        return
    seconds = 4 if ctx.quick else 8
    reset_postgres()
    with asgi_server(ctx, "prof-pg", mw=True, store=PG_URL, executor="store") as p:
        t = Target("accept", p, "/work", "POST", "{}")
        load = threading.Thread(target=run_load, args=(t, seconds + 4, ctx.settings))
        load.start()
        time.sleep(1.0)
        out = ctx.path("prof-pg-accept.txt")
        argv = [*pin(LOAD_CPU), spy, "record", "-p", str(p.pid), "-d", str(seconds)]
        argv += ["-r", "250", "-f", "raw", "-o", str(out), "--nonblocking", "--gil"]
        rec = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        load.join()
    reset_postgres()
    if rec.returncode != 0 or not out.exists():
        ctx.report.skip("pg_peers profile", f"py-spy failed: {rec.stderr[-300:]}")
        return
    own, incl = summarize_profile(out, 12)
    section = "Profile: accept path, CPU (py-spy --gil), PostgreSQL store"
    for (frame, pc), (iframe, ipc) in zip(own, incl, strict=False):
        ctx.report.add(
            section,
            frame,
            **{"self %": f"{pc:.1f}", "async_accept frame": iframe, "incl. %": f"{ipc:.1f}"},
        )


NOTIFY_SECTION = (
    "Queued-job NOTIFY on create: the trigger as installed (A) / the same schema with "
    "its jobs_queued trigger disabled (B); N uvicorn processes, not pinned, one wrk "
    "each (connections split; p50: the processes' median, p99: the worst)"
)


NOTIFY_DB_SECTION = (
    "Queued-job NOTIFY, the database alone: N processes x 64 tasks calling "
    "store.aio.create for 2 s (group commit), the trigger as installed (A) / disabled (B)"
)


def _notify_schema(name: str, trigger: bool) -> str:
    """A fresh schema at the current version; ``trigger=False`` disables the NOTIFY
    of queued jobs on insert (retry/requeue keep theirs)."""
    import psycopg

    from async_accept.stores.postgres import upgrade

    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        upgrade(conn, name)
        if not trigger:
            conn.execute(f'ALTER TABLE "{name}".jobs DISABLE TRIGGER jobs_queued')
    return f"{DSN}?schema={name}"


@contextlib.contextmanager
def _webs(ctx: Ctx, name: str, store: str, executor: str, n: int) -> Iterator[list[Proc]]:
    """``n`` single-process uvicorns, each on its own port and any core. Not ``uvicorn
    --workers``: its workers' sockets lose TCP_NODELAY (asyncio sets it only on a
    socket whose proto is TCP), which stalls each answer ~40 ms (Nagle + delayed ACK)."""
    from ._proc import app_env, free_port

    env = app_env(mw=True, store=store, executor=executor)
    procs: list[Proc] = []
    try:
        for i in range(n):
            port = free_port()
            argv = [PY, "-m", "uvicorn", "benchmarks.apps.app:asgi", "--host", "127.0.0.1"]
            argv += ["--port", str(port), "--no-access-log", "--log-level", "warning"]
            argv += _proc.UVICORN_FLAGS
            procs.append(Proc(f"{name}-{i}", argv, env=env, cpu=None, log_dir=ctx.tmp, port=port))
            procs[-1].wait_http()
        yield procs
    finally:
        for p in procs:
            p.stop()


def _load_all(procs: list[Proc], duration: float, s: Any) -> Any:
    """One wrk per process at once (the connections split between them): the sum of
    their requests, the worst p99, the median p50."""
    import dataclasses
    import statistics
    from concurrent.futures import ThreadPoolExecutor

    from ._load import Load

    each = dataclasses.replace(s, connections=max(1, s.connections // len(procs)))
    targets = [Target(p.name, p, "/work", "POST", "{}") for p in procs]
    with ThreadPoolExecutor(len(procs)) as pool:
        loads = list(pool.map(lambda t: run_load(t, duration, each), targets))
    return Load(
        requests=sum(x.requests for x in loads),
        seconds=max(x.seconds for x in loads),
        errors=sum(x.errors for x in loads),
        p50_ms=statistics.median(x.p50_ms for x in loads),
        p99_ms=max(x.p99_ms for x in loads),
    )


def _compare_all(a: list[Proc], b: list[Proc], s: Any) -> Any:
    """:func:`compare` over groups of processes: A-B-B-A rounds after a warmup."""
    from ._load import Comparison

    _load_all(a, s.warmup, s)
    _load_all(b, s.warmup, s)
    runs: dict[str, list[Any]] = {"a": [], "b": []}
    for i in range(s.rounds):
        for side, procs in [("a", a), ("b", b)][:: 1 if i % 2 == 0 else -1]:
            runs[side].append(_load_all(procs, s.duration, s))
    ta, tb = Target("trigger", a[0]), Target("no trigger", b[0])
    return Comparison(ta, tb, runs["a"], runs["b"])


def _create_for(url: str, seconds: float, executor: str, tasks: int) -> int:
    """Creates done in ``seconds`` by ``tasks`` tasks of one process (one event loop),
    each job noting ``executor`` (run in a child process)."""
    from async_accept.job import CapturedRequest
    from async_accept.stores import resolve_store

    store = resolve_store(url)
    request = CapturedRequest("POST", "/work", body=b"{}")

    async def main() -> int:
        done = 0
        end = time.monotonic() + seconds

        async def runner() -> None:
            nonlocal done
            while time.monotonic() < end:
                job = _jobs(1)[0]
                job.meta["executor"] = executor
                await store.aio.create(job, request)
                done += 1

        await asyncio.gather(*(runner() for _ in range(tasks)))
        return done

    try:
        return asyncio.run(main())
    finally:
        store.close()


def _notify_creates(ctx: Ctx, counts: tuple[int, ...]) -> None:
    """The database part alone: N processes creating at once (group commit in each),
    the trigger as installed against disabled, alternating rounds."""
    import itertools
    import statistics
    from concurrent.futures import ProcessPoolExecutor

    seconds = 2.0
    rounds = max(2, ctx.settings.rounds // 2)
    for executor, n in itertools.product(("asyncio", "store"), counts):
        urls = {
            True: _notify_schema("aa_bench_notify_on", True),
            False: _notify_schema("aa_bench_notify_off", False),
        }
        rates: dict[bool, list[float]] = {True: [], False: []}
        with ProcessPoolExecutor(n) as pool:
            for i in range(rounds):
                for trig in (True, False) if i % 2 == 0 else (False, True):
                    args = ([urls[trig]] * n, [seconds] * n, [executor] * n, [64] * n)
                    rates[trig].append(sum(pool.map(_create_for, *args)) / seconds)
        a, b = statistics.median(rates[True]), statistics.median(rates[False])
        ctx.report.add(
            NOTIFY_DB_SECTION,
            f'jobs for executor="{executor}", {n} process{"es" if n > 1 else ""}',
            **{
                "ratio": f"{a / b:.2f}",
                "A creates/s": f"{a:,.0f}",
                "B creates/s": f"{b:,.0f}",
                "round ratios": " ".join(
                    f"{x / y:.2f}" for x, y in zip(rates[True], rates[False], strict=True)
                ),
            },
        )


PGBENCH_SECTION = (
    "Queued-job NOTIFY, pgbench: one job inserted per commit (no group commit) by C "
    "connections, a store job (A: the trigger NOTIFYs) / an in-process job (B: the "
    "trigger runs, sends nothing)"
)
_PGBENCH_INSERT = (
    'INSERT INTO "{s}".jobs (id, status, owner, created_at, updated_at, expires_at, '
    "deadline_at, sla, meta) VALUES (md5(random()::text || clock_timestamp()::text), "
    "'queued', 'o', 0, 0, 1e12, 1e12, 1, '{{\"executor\": \"{e}\"}}');\n"
)


def _pgbench(ctx: Ctx) -> None:
    """Commits per second of single-job inserts, notifying or not, alternating rounds."""
    import re
    import statistics

    pgbench = shutil.which("pgbench")
    if pgbench is None:
        ctx.report.skip("pg_notify pgbench", "pgbench is not installed (postgresql-client)")
        return
    url = _notify_schema("aa_bench_notify_on", True)
    scripts = {}
    for executor in ("store", "asyncio"):
        scripts[executor] = ctx.path(f"pgbench-{executor}.sql")
        scripts[executor].write_text(_PGBENCH_INSERT.format(s="aa_bench_notify_on", e=executor))
    seconds = str(max(1, round(ctx.settings.duration)))
    for n in (1, 2, 4, 8):
        tps: dict[str, list[float]] = {"store": [], "asyncio": []}
        for i in range(max(2, ctx.settings.rounds // 2)):
            for executor in ("store", "asyncio") if i % 2 == 0 else ("asyncio", "store"):
                argv = [*pin(LOAD_CPU), pgbench, "-n", "-c", str(n), "-j", str(n), "-T", seconds]
                argv += ["-f", str(scripts[executor]), url.split("?")[0]]
                out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
                found = re.search(r"tps = ([\d.]+)", out)
                tps[executor].append(float(found.group(1)) if found else 0.0)
        a, b = statistics.median(tps["store"]), statistics.median(tps["asyncio"])
        rounds = " ".join(f"{x / y:.2f}" for x, y in zip(tps["store"], tps["asyncio"], strict=True))
        ctx.report.add(
            PGBENCH_SECTION,
            f"{n} connection{'s' if n > 1 else ''}",
            **{"ratio": f"{a / b:.2f}", "A commits/s": f"{a:,.0f}", "B commits/s": f"{b:,.0f}"},
            **{"round ratios": rounds},
        )


def pg_notify(ctx: Ctx) -> None:
    """What the queued-job NOTIFY costs an accept: 1, 2 and 4 web processes on one
    database, executor="asyncio" (no store worker listens) and "store" (none running)."""
    why = middleware_missing() or postgres_store_missing()
    if why:
        ctx.report.skip("pg_notify", why)
        return
    counts = (1, 2) if ctx.quick else (1, 2, 4)
    try:
        _pgbench(ctx)
        _notify_creates(ctx, counts)
        for executor in ("asyncio", "store"):
            for n in counts:
                on = _notify_schema("aa_bench_notify_on", True)
                off = _notify_schema("aa_bench_notify_off", False)
                with (
                    _webs(ctx, f"notify-on-{executor}-{n}", on, executor, n) as a,
                    _webs(ctx, f"notify-off-{executor}-{n}", off, executor, n) as b,
                ):
                    c = _compare_all(a, b, ctx.settings)
                label = f'executor="{executor}", {n} web process{"es" if n > 1 else ""}'
                cols = ratio_cols(c)
                cols.pop("A/B server CPU")
                ctx.report.add(NOTIFY_SECTION, label, **cols)
    finally:
        import psycopg

        with psycopg.connect(DSN, autocommit=True) as conn:
            for name in ("aa_bench_notify_on", "aa_bench_notify_off"):
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
