"""The scenarios. Each is a function of the run context; a missing prerequisite
skips it (or one of its cases) with the reason, never fails the run."""

from __future__ import annotations

import contextlib
import importlib
import json
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._http import Conn
from ._load import AUTH, Settings, Target, compare, run_load
from ._proc import (
    LOAD_CPU,
    PY,
    ROOT,
    SERVER_CPU,
    Proc,
    app_env,
    child_env,
    gunicorn,
    pin,
    uvicorn,
)
from ._report import Report, fmt_ms, ratio_cols

REDIS_URL = "redis://127.0.0.1:6379/14"
PG_SCHEMA = "aa_bench"
PG_URL = f"postgresql://postgres@127.0.0.1:5432/test?schema={PG_SCHEMA}"
HEADERS = {"Authorization": AUTH}
POST_HEADERS = {"Authorization": AUTH, "Content-Type": "application/json"}


@dataclass
class Ctx:
    quick: bool
    full: bool
    settings: Settings
    report: Report
    tmp: Path
    #: ``--sizes``: the store sizes of the scale cases (default: scale_sizes)
    sizes: list[int] | None = None
    #: ``--stores``: the stores of the owned and scale cases (default: every one reachable)
    stores: list[str] | None = None
    _n: int = 0
    _procs: list[Proc] = field(default_factory=list)

    def path(self, name: str) -> Path:
        self._n += 1
        return self.tmp / f"{self._n:03d}-{name}"

    def sqlite_url(self, name: str) -> str:
        return f"sqlite:///{self.path(name + '.db')}"  # absolute: four slashes


# -- prerequisites ------------------------------------------------------------------


def middleware_missing() -> str | None:
    """Why the middleware can't be benchmarked yet, or None."""
    try:
        from async_accept.asgi import AsyncAcceptMiddleware  # noqa: F401
        from async_accept.wsgi import AsyncAcceptMiddleware as W  # noqa: F401
    except Exception as exc:
        return f"async_accept.asgi / .wsgi middleware not importable yet ({exc!r})"
    return None


def redis_missing() -> str | None:
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except Exception as exc:
        return f"Redis on 127.0.0.1:6379 not reachable ({exc!r})"
    return None


def flush_redis() -> None:
    import redis

    # ASYNC: Redis frees the keys in the background (1M jobs took longer than the
    # client's socket timeout to flush in line).
    redis.Redis.from_url(REDIS_URL).flushdb(asynchronous=True)


def executor_missing(name: str) -> str | None:
    """Why ``async_accept.executors.<name>`` can't be used, or None."""
    try:
        importlib.import_module(f"async_accept.executors.{name}")
    except Exception as exc:
        return f"async_accept.executors.{name} not importable yet ({exc!r})"
    return None


def redis_store_missing() -> str | None:
    why = redis_missing()
    if why:
        return why
    try:
        from async_accept.stores import resolve_store

        resolve_store(REDIS_URL).close()
    except Exception as exc:
        return f"the Redis store can't be built ({exc!r})"
    return None


def postgres_store_missing() -> str | None:
    """Why the PostgreSQL store can't be benchmarked (psycopg, a server on :5432), or None."""
    try:
        import psycopg

        psycopg.connect(PG_URL.split("?")[0], connect_timeout=2).close()
    except Exception as exc:
        return f"PostgreSQL on 127.0.0.1:5432 (database test) not usable ({exc!r})"
    return None


def reset_postgres() -> None:
    """Start the benchmark's schema afresh (its tables are created on first use)."""
    import psycopg

    with psycopg.connect(PG_URL.split("?")[0], autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{PG_SCHEMA}" CASCADE')


# -- servers ------------------------------------------------------------------------


@contextlib.contextmanager
def asgi_server(
    ctx: Ctx, name: str, *, mw: bool, store: str = "memory://", executor: str | None = None
) -> Iterator[Proc]:
    env = app_env(mw=mw, store=store, executor=executor)
    p = uvicorn(name, "benchmarks.apps.app:asgi", env, ctx.tmp)
    try:
        yield p
    finally:
        p.stop()


@contextlib.contextmanager
def wsgi_server(
    ctx: Ctx, name: str, *, mw: bool, store: str = "memory://", executor: str | None = None
) -> Iterator[Proc]:
    env = app_env(mw=mw, store=store, executor=executor)
    target = "benchmarks.apps.app:wsgi" if mw else "benchmarks.apps.app:bare_wsgi"
    p = gunicorn(name, target, env, ctx.tmp)
    try:
        yield p
    finally:
        p.stop()


@contextlib.contextmanager
def peer_server(ctx: Ctx, kind: str) -> Iterator[Proc]:
    env = {"BENCH_REDIS_URL": REDIS_URL}
    p = uvicorn(f"{kind}-peer", f"benchmarks.peers.{kind}_peer:app", env, ctx.tmp)
    try:
        yield p
    finally:
        p.stop()


@contextlib.contextmanager
def peer_worker(ctx: Ctx, kind: str) -> Iterator[Proc]:
    """A real Celery (solo pool) or RQ (SimpleWorker, no fork per job) worker."""
    env = {"BENCH_REDIS_URL": REDIS_URL}
    if kind == "celery":
        argv = [PY, "-m", "celery", "-A", "benchmarks.peers.celery_peer:celery_app", "worker"]
        argv += ["--pool", "solo", "-Q", "benchmarks", "-l", "info", "--without-gossip"]
        argv += ["--without-mingle", "--without-heartbeat", "-n", "bench@%h"]
        ready = "ready"
    else:
        argv = [PY, "-m", "rq.cli", "worker", "-u", REDIS_URL, "benchmarks"]
        argv += ["--worker-class", "rq.worker.SimpleWorker"]
        ready = "Listening on"
    p = Proc(f"{kind}-worker", argv, env=env, cpu=SERVER_CPU, log_dir=ctx.tmp)
    try:
        p.wait_log(ready, timeout=30)
        yield p
    finally:
        p.stop()


# -- small helpers ------------------------------------------------------------------


def post_jobs(port: int, path: str, n: int) -> list[str]:
    """Accept ``n`` jobs; their status URLs (Location)."""
    c = Conn(port)
    out = []
    for _ in range(n):
        r = c.request("POST", path, b"{}", POST_HEADERS)
        if r.status != 202 or "location" not in r.headers:
            raise RuntimeError(f"POST {path}: expected 202 + Location, got {r.status} {r.body!r}")
        out.append(r.headers["location"])
    c.close()
    return out


def wait_done(port: int, urls: list[str], timeout: float = 60.0) -> None:
    """Poll until every status URL answers 303."""
    c = Conn(port)
    pending = list(urls)
    deadline = time.monotonic() + timeout
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} jobs not done within {timeout}s")
        pending = [u for u in pending if c.request("GET", u, headers=HEADERS).status != 303]
        if pending:
            time.sleep(0.05)
    c.close()


def paths_file(ctx: Ctx, name: str, urls: list[str]) -> Path:
    p = ctx.path(name + ".paths")
    p.write_text("\n".join(urls) + "\n")
    return p


def e2e(port: int, post_path: str, n: int) -> tuple[list[float], int]:
    """Accept -> result available (the 303), sequential, tight polling (0.5 ms apart)."""
    c = Conn(port)
    lat: list[float] = []
    polls = 0
    for _ in range(n):
        t0 = time.perf_counter()
        r = c.request("POST", post_path, b"{}", POST_HEADERS)
        if r.status != 202:
            raise RuntimeError(f"POST {post_path}: {r.status} {r.body[:200]!r}")
        loc = r.headers["location"]
        while True:
            s = c.request("GET", loc, headers=HEADERS)
            polls += 1
            if s.status == 303:
                break
            if s.status != 200 or time.perf_counter() - t0 > 30:
                raise RuntimeError(f"GET {loc}: {s.status} {s.body[:200]!r}")
            time.sleep(0.0005)
        lat.append(time.perf_counter() - t0)
    c.close()
    return lat, polls


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q / 100 * len(v)) - 1))]


def e2e_row(
    ctx: Ctx, name: str, lat: list[float], polls: int, goal_ms: float | None, **extra: str
) -> None:
    p50, p99 = pct(lat, 50) * 1000, pct(lat, 99) * 1000
    cols = {"jobs": str(len(lat)), "p50 ms": fmt_ms(p50), "p99 ms": fmt_ms(p99)}
    cols["mean ms"] = fmt_ms(statistics.mean(lat) * 1000)
    cols["polls/job"] = f"{polls / len(lat):.1f}"
    if goal_ms is not None:
        cols["goal"] = f"p50 <= {goal_ms:g} ms"
        cols["met"] = "yes" if p50 <= goal_ms else "**no**"
    ctx.report.add("End to end: accept -> result available", name, **cols, **extra)


def pg_e2e_stages(since: float, n: int, cpu: dict[str, tuple[float, float]]) -> dict[str, str]:
    """The PostgreSQL row's stages, medians from the jobs' own timestamps (accept ->
    claimed, claimed -> finished: ``started_at`` is taken before the claim's round trip,
    ``finished_at`` before the finish's), and each process's CPU per job (server and
    worker share the server core, so their CPU bounds the latency)."""
    import psycopg

    with psycopg.connect(PG_URL.split("?")[0], autocommit=True) as conn:
        rows = conn.execute(
            f'SELECT started_at - created_at, finished_at - started_at FROM "{PG_SCHEMA}".jobs '
            "WHERE created_at >= %s AND finished_at IS NOT NULL",
            (since,),
        ).fetchall()
    out = {}
    if rows:
        out["accept->claimed ms"] = fmt_ms(statistics.median(r[0] for r in rows) * 1000)
        out["claimed->finished ms"] = fmt_ms(statistics.median(r[1] for r in rows) * 1000)
    for who, (before, after) in cpu.items():
        out[f"{who} CPU ms/job"] = f"{(after - before) * 1000 / n:.2f}"
    return out


def _inproc(ctx: Ctx, *args: str) -> dict[str, Any]:
    blocks, calls = ("6", "500") if ctx.quick else ("12", "2000")
    argv = [*pin(SERVER_CPU), PY, "-m", "benchmarks._inproc", *args]
    argv += ["--blocks", blocks, "--calls", calls]
    env = child_env({"BENCH_MW": "0"})
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=600, check=False, env=env, cwd=ROOT
    )
    for line in out.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            return dict(json.loads(line[len("BENCHJSON ") :]))
    raise RuntimeError(f"in-process run failed: {out.stderr[-1500:]}")


def inproc_row(ctx: Ctx, section: str, name: str, d: dict[str, Any], goal: float | None) -> None:
    cols = {"ratio": f"{d['ratio']:.3f}"}
    if goal is not None:
        cols["goal"] = f">= {goal:g}"
        cols["met"] = "yes" if d["ratio"] >= goal else "**no**"
    cols["A us/call"] = f"{d['a_us']:.2f}"
    cols["B us/call"] = f"{d['b_us']:.2f}"
    cols["A - B us"] = f"{d['a_us'] - d['b_us']:.2f}"
    cols["block ratios"] = f"{d['spread'][0]:.3f}-{d['spread'][1]:.3f}"
    ctx.report.add(section, name, **cols)


# -- scenarios ----------------------------------------------------------------------

HTTP = "HTTP ratios (A/B requests per second, median of A-B-B-A rounds)"
INPROC = "In-process (app called directly, no sockets; ratio = B time / A time)"


def sanity(ctx: Ctx) -> None:
    """Bare hello vs bare hello on two identical servers: the noise floor."""
    with (
        asgi_server(ctx, "bare-a", mw=False) as a,
        asgi_server(ctx, "bare-b", mw=False) as b,
    ):
        c = compare(Target("bare", a), Target("bare", b), ctx.settings)
        ctx.report.add(HTTP, "sanity: bare hello / bare hello (ASGI)", **ratio_cols(c))


def passthrough(ctx: Ctx) -> None:
    """An unmarked route with the middleware / the same app without it."""
    why = middleware_missing()
    if why:
        ctx.report.skip("passthrough", why)
        return
    goal = 0.98
    d = _inproc(ctx, "asgi_passthrough")
    inproc_row(ctx, INPROC, "pass-through ASGI (Starlette hello): with / without", d, goal)
    d = _inproc(ctx, "wsgi_passthrough")
    inproc_row(ctx, INPROC, "pass-through WSGI (Flask hello): with / without", d, goal)
    d = _inproc(ctx, "wsgi_passthrough", "--raw")
    inproc_row(ctx, INPROC, "pass-through WSGI (bare WSGI function): with / without", d, None)
    with (
        asgi_server(ctx, "asgi-mw", mw=True) as mw,
        asgi_server(ctx, "asgi-bare", mw=False) as bare,
    ):
        c = compare(Target("mw", mw), Target("bare", bare), ctx.settings)
        ctx.report.add(HTTP, "pass-through ASGI (uvicorn): with / without", **ratio_cols(c))
    with (
        wsgi_server(ctx, "wsgi-mw", mw=True) as mw,
        wsgi_server(ctx, "wsgi-bare", mw=False) as bare,
    ):
        c = compare(Target("mw", mw), Target("bare", bare), ctx.settings)
        ctx.report.add(
            HTTP, "pass-through WSGI (gunicorn gthread): with / without", **ratio_cols(c)
        )


def inprocess_paths(ctx: Ctx) -> None:
    """The accept and status paths in-process (null executor), against bare hello."""
    why = middleware_missing()
    if why:
        ctx.report.skip("inprocess", why)
        return
    for store in ("memory", "sqlite"):
        d = _inproc(ctx, "asgi_paths", "--store", "memory://" if store == "memory" else store)
        inproc_row(ctx, INPROC, f"accept ({store}, no executor) / bare hello", d["accept"], None)
        inproc_row(ctx, INPROC, f"status read ({store}) / bare hello", d["status"], None)


def _stores(ctx: Ctx, what: str) -> list[tuple[str, str]]:
    """(label, store URL) for memory, SQLite, Redis and PostgreSQL (skipping the
    servers that are absent)."""
    out = [("memory", "memory://"), ("sqlite", ctx.sqlite_url(what))]
    why = redis_store_missing()
    if why:
        ctx.report.skip(f"{what} (redis store)", why)
    else:
        out.append(("redis", REDIS_URL))
    why = postgres_store_missing()
    if why:
        ctx.report.skip(f"{what} (postgres store)", why)
    else:
        out.append(("postgres", PG_URL))
    return out


ACCEPT_GOALS: dict[str, float | None] = {
    "memory": 0.6,
    "sqlite": 0.45,
    "redis": 0.4,
    "postgres": None,
}
POLL_GOALS: dict[str, float | None] = {
    "memory": 0.75,
    "sqlite": 0.6,
    "redis": 0.45,
    "postgres": None,
}


def accept(ctx: Ctx) -> None:
    """202s/s on a marked no-op route / bare hello: the jobs run in the same
    process (asyncio executor), and, to split the cost, not at all (a null
    executor that takes jobs and never runs them)."""
    why = middleware_missing()
    if why:
        ctx.report.skip("accept", why)
        return
    # The ceiling: the same POST with its JSON body, answered by the bare app's own
    # no-op handler. uvicorn's work for a POST with a body bounds every accept row.
    with (
        asgi_server(ctx, "bare-post", mw=False) as post,
        asgi_server(ctx, "bare", mw=False) as bare,
    ):
        a = Target("bare POST /work", post, "/work", "POST", "{}")
        c = compare(a, Target("bare", bare), ctx.settings)
        ctx.report.add(
            HTTP, "reference: POST /work without the middleware / bare hello", **ratio_cols(c)
        )
    null = "benchmarks._inproc:NullExecutor"
    for label, store in _stores(ctx, "accept"):
        for executor, how in ((None, "jobs run by the asyncio executor"), (null, "jobs not run")):
            if label == "redis":
                flush_redis()
            if label == "postgres":
                reset_postgres()
            if store.startswith("sqlite:"):
                store = ctx.sqlite_url("accept")
            with (
                asgi_server(ctx, f"accept-{label}", mw=True, store=store, executor=executor) as mw,
                asgi_server(ctx, "bare", mw=False) as bare,
            ):
                a = Target(f"accept {label}", mw, "/work", "POST", "{}")
                c = compare(a, Target("bare", bare), ctx.settings)
                cols = ratio_cols(c, ACCEPT_GOALS[label])
                if label == "sqlite":
                    p99_ok = c.med("a", "p99_ms") <= 2 * c.med("b", "p99_ms")
                    cols["met"] += "; p99 <= 2x hello: " + ("yes" if p99_ok else "**no**")
                ctx.report.add(HTTP, f"accept ({label} store, {how}) / bare hello", **cols)
                if label == "sqlite":
                    _paced_p99(ctx, a, Target("bare", bare), how)


PACED = "Accept p99 at a fixed rate (the same paced load on both sides)"


def _paced_p99(ctx: Ctx, accept: Target, hello: Target, how: str) -> None:
    """p99 of SQLite accepts against hello at the same paced rate, below both routes'
    capacity: what store writes add to the tail when nothing queues for the server
    (wrk's flat-out rounds measure queueing behind 32 connections instead)."""
    rate = 500.0 if ctx.quick else 1000.0
    seconds = 1.5 if ctx.quick else 3.0
    s = Settings(connections=8, loadgen="python")
    a99: list[float] = []
    b99: list[float] = []
    a50: list[float] = []
    b50: list[float] = []
    for i in range(ctx.settings.rounds):
        order = ((accept, a50, a99), (hello, b50, b99))
        for target, p50s, p99s in order if i % 2 == 0 else order[::-1]:
            run = _paced(target, seconds, rate, s)
            p50s.append(run.p50_us / 1000)
            p99s.append(run.p99_us / 1000)
    ra, rb = statistics.median(a99), statistics.median(b99)
    ctx.report.add(
        PACED,
        f"accept (sqlite store, {how}) p99 / bare hello p99, {rate:.0f} requests/s",
        ratio=f"{ra / rb:.2f}",
        goal="<= 2",
        met="yes" if ra <= 2 * rb else "**no**",
        **{"accept p50/p99 ms": f"{fmt_ms(statistics.median(a50))} / {fmt_ms(ra)}"},
        **{"hello p50/p99 ms": f"{fmt_ms(statistics.median(b50))} / {fmt_ms(rb)}"},
        **{"round p99 ms (accept)": f"{min(a99):.2f}-{max(a99):.2f}"},
    )


def poll(ctx: Ctx) -> None:
    """Status answers/s for running jobs (200 + status JSON) / bare hello."""
    why = middleware_missing()
    if why:
        ctx.report.skip("poll", why)
        return
    n_jobs = 200
    for label, store in _stores(ctx, "poll"):
        if label == "redis":
            flush_redis()
        if label == "postgres":
            reset_postgres()
        with (
            asgi_server(ctx, f"poll-{label}", mw=True, store=store) as mw,
            asgi_server(ctx, "bare", mw=False) as bare,
        ):
            urls = post_jobs(mw.port, "/sleep?s=3600", n_jobs)
            paths = paths_file(ctx, f"poll-{label}", urls)
            a = Target(f"poll {label}", mw, urls[0], paths_file=paths)
            c = compare(a, Target("bare", bare), ctx.settings)
            ctx.report.add(
                HTTP,
                f"status poll, running jobs ({label} store) / bare hello",
                **ratio_cols(c, POLL_GOALS[label]),
            )


def end_to_end(ctx: Ctx) -> None:
    """A no-op job from accept to result available (303), p50/p99."""
    why = middleware_missing()
    if why:
        ctx.report.skip("e2e", why)
        return
    n = 50 if ctx.quick else 300
    cases: list[tuple[str, Callable[..., Any], str]] = [
        ("ASGI, asyncio executor, SQLite", asgi_server, "asyncio"),
        ("ASGI, thread executor, SQLite", asgi_server, "thread"),
        ("WSGI (gunicorn), thread executor, SQLite", wsgi_server, "thread"),
    ]
    for name, server, executor in cases:
        with server(ctx, "e2e", mw=True, store=ctx.sqlite_url("e2e"), executor=executor) as p:
            e2e(p.port, "/work", 5)  # warm up
            lat, polls = e2e(p.port, "/work", n)
            e2e_row(ctx, name, lat, polls, 5.0)
    why = postgres_store_missing()
    if why:
        ctx.report.skip("e2e async_accept, store executor, PostgreSQL", why)
    else:
        reset_postgres()
        with (
            asgi_server(ctx, "aa-store", mw=True, store=PG_URL, executor="store") as p,
            store_worker(ctx, PG_URL) as w,
        ):
            e2e(p.port, "/work", 5)
            since, server0, worker0 = time.time(), p.cpu_seconds(), w.cpu_seconds()
            lat, polls = e2e(p.port, "/work", n)
            cpu = {
                "server": (server0 or 0.0, p.cpu_seconds() or 0.0),
                "worker": (worker0 or 0.0, w.cpu_seconds() or 0.0),
            }
            stages = pg_e2e_stages(since, n, cpu)
            e2e_row(ctx, "ASGI, store executor + 1 worker, PostgreSQL", lat, polls, 5.0, **stages)
    for kind in ("celery", "rq"):
        why = remote_executor_missing(kind)
        if why:
            ctx.report.skip(f"e2e async_accept + {kind} executor", why)
            continue
        flush_redis()
        with remote_setup(ctx, kind) as p:
            e2e(p.port, "/work", 5)
            lat, polls = e2e(p.port, "/work", n)
            e2e_row(ctx, f"ASGI, {kind} executor, Redis store", lat, polls, None)


# The Celery and RQ executors (another issue): skipped while they can't be imported.

APP_PATH = "benchmarks.apps.app:asgi"


WAIT_GOAL_MS = {"long-poll": (20.0, 100.0), "sse": (20.0, 100.0)}


def _sse_until_done(client: Any, url: str) -> None:
    """Read the status URL's event stream until its final event, then the result."""
    headers = {**HEADERS, "Accept": "text/event-stream"}
    result = None
    with client.stream("GET", url, headers=headers) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:") and '"links"' in line:
                data = json.loads(line[5:])
                if data["status"] in ("completed", "failed", "canceled"):
                    result = data["links"].get("result")
                    break
    if result is None:
        raise RuntimeError(f"{url}: the stream ended without a final event")
    client.get(result, headers=HEADERS)


def waiting(ctx: Ctx) -> None:
    """Time to know a job ended: when the client holds the result, minus the job's
    run time, p50/p99; poll() (long-poll), an event stream, plain Retry-After polling."""
    why = middleware_missing()
    if why:
        ctx.report.skip("waiting", why)
        return
    import httpx

    from async_accept.client import poll as client_poll

    runs = {0.05: 20 if ctx.quick else 50, 2.0: 3 if ctx.quick else 10}
    if ctx.full:
        runs[20.0] = 3
    section = "Waiting: client holds the result - job run time"
    for label, store in _stores(ctx, "waiting"):
        for seconds, n in runs.items():
            if label == "redis":
                flush_redis()
            # A server per job length: the route learns that length's run time.
            with asgi_server(ctx, f"waiting-{label}", mw=True, store=store) as p:
                base = f"http://127.0.0.1:{p.port}"
                with httpx.Client(base_url=base, headers=HEADERS, timeout=60) as c:
                    for mode in ("long-poll", "sse", "retry-after"):
                        lags: list[float] = []
                        for _ in range(n):
                            t0 = time.perf_counter()
                            r = c.post(f"/sleep?s={seconds}", content=b"{}", headers=POST_HEADERS)
                            if mode == "long-poll":
                                client_poll(r, client=c)
                            elif mode == "retry-after":
                                client_poll(r, client=c, wait=None)
                            else:
                                _sse_until_done(c, r.headers["location"])
                            lags.append(time.perf_counter() - t0 - seconds)
                        p50, p99 = pct(lags, 50) * 1000, pct(lags, 99) * 1000
                        cols = {"jobs": str(n), "p50 ms": fmt_ms(p50), "p99 ms": fmt_ms(p99)}
                        if mode in WAIT_GOAL_MS:
                            g50, g99 = WAIT_GOAL_MS[mode]
                            cols["goal"] = f"p50 <= {g50:g}, p99 <= {g99:g} ms"
                            cols["met"] = "yes" if p50 <= g50 and p99 <= g99 else "**no**"
                        elif seconds >= 2:
                            cols["goal"] = f"p50 <= 25% of {seconds:g} s"
                            cols["met"] = "yes" if p50 <= 250 * seconds else "**no**"
                        ctx.report.add(section, f"{label}, {seconds:g} s job, {mode}", **cols)
    waiting_peers(ctx)


def _poll_every(port: int, n: int, every: float) -> list[float]:
    """The common client of a hand-written view: POST, then GET the status URL every
    ``every`` s until the 303, then the result; seconds from the POST, per job."""
    c = Conn(port)
    out: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = c.request("POST", "/work", b"{}", POST_HEADERS)
        loc = r.headers["location"]
        while True:
            time.sleep(every)
            s = c.request("GET", loc, headers=HEADERS)
            if s.status == 303:
                c.request("GET", s.headers["location"], headers=HEADERS)
                break
            if s.status != 200 or time.perf_counter() - t0 > 30:
                raise RuntimeError(f"GET {loc}: {s.status} {s.body[:200]!r}")
        out.append(time.perf_counter() - t0)
    c.close()
    return out


def waiting_peers(ctx: Ctx) -> None:
    """Time to know a no-op job ended: the hand-written Celery / RQ view polled every
    1 s (the common client) against async_accept with the same broker's executor
    and poll() (long-poll), p50/p99 and the ratio of the p50s."""
    import httpx

    from async_accept.client import poll as client_poll

    section = "Waiting: hand-written Celery / RQ views polled every 1 s"
    n_peer, n_ours = (5, 20) if ctx.quick else (10, 50)
    for kind in ("celery", "rq"):
        why = redis_missing() or remote_executor_missing(kind)
        if why:
            ctx.report.skip(f"waiting ({kind} peer)", why)
            continue
        flush_redis()
        with peer_server(ctx, kind) as peer, peer_worker(ctx, kind):
            _poll_every(peer.port, 1, 1.0)  # warm up
            theirs = _poll_every(peer.port, n_peer, 1.0)
        flush_redis()
        ours: list[float] = []
        with remote_setup(ctx, kind) as p:
            base = f"http://127.0.0.1:{p.port}"
            with httpx.Client(base_url=base, headers=HEADERS, timeout=60) as c:
                for i in range(n_ours + 3):
                    t0 = time.perf_counter()
                    client_poll(c.post("/work", content=b"{}", headers=POST_HEADERS), client=c)
                    if i >= 3:  # warm-up
                        ours.append(time.perf_counter() - t0)
        p50s = pct(theirs, 50) / pct(ours, 50)
        for name, lat in (
            (f"{kind} peer, polled every 1 s", theirs),
            (f"async_accept, {kind} executor, poll() long-poll", ours),
        ):
            cols = {
                "jobs": str(len(lat)),
                "p50 ms": fmt_ms(pct(lat, 50) * 1000),
                "p99 ms": fmt_ms(pct(lat, 99) * 1000),
            }
            if name.startswith("async_accept"):
                cols["peer p50 / ours"] = f"{p50s:.1f}x"
                cols["goal"] = ">= 10x"
                cols["met"] = "yes" if p50s >= 10 else "**no**"
            ctx.report.add(section, name, **cols)


WAITER_JOBS = 100
#: seconds between two jobs' ends (the ends are spread, as real jobs' are)
WAITER_END_STEP = 0.05


async def _hold_waiters(
    port: int, urls: list[str], n: int, ready: threading.Event
) -> list[tuple[float, str]]:
    """Open ``n`` long-polls (``Prefer: wait=120``, one connection each) spread
    over ``urls``; each answer: (wall time received, body)."""
    import asyncio

    sent = [0]

    async def one(url: str) -> tuple[float, str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {AUTH}\r\n"
            "Prefer: wait=120\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        sent[0] += 1
        if sent[0] == n:
            ready.set()  # every request is out (the server may still be reading some)
        data = await reader.read()  # the server closes after the answer
        got = time.time()
        writer.close()
        return got, data.decode("latin-1").split("\r\n\r\n", 1)[-1]

    tasks: list[asyncio.Task[tuple[float, str]]] = []
    for i in range(n):
        tasks.append(asyncio.create_task(one(urls[i % len(urls)])))
        if i % 200 == 199:
            await asyncio.sleep(0.05)  # stay under the listen backlog
    return await asyncio.gather(*tasks, return_exceptions=False)


def _hold_in_thread(
    port: int, urls: list[str], n: int, ready: threading.Event, out: dict[str, Any]
) -> None:
    import asyncio

    out["answers"] = asyncio.run(_hold_waiters(port, urls, n, ready))


def _ts(text: str | None) -> float:
    from datetime import datetime

    assert text is not None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def waiters(ctx: Ctx) -> None:
    """Many waiters on one uvicorn process: 100 jobs whose ends are spread over 5 s,
    each watched by N/100 long-polls; how late each answer is after its job's end,
    RSS per waiter, store reads/s and GET /hello p99 while they wait, N = 100 and 5,000."""
    why = middleware_missing()
    if why:
        ctx.report.skip("waiters", why)
        return
    import resource

    import httpx

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 12_000 and hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20_000), hard))
    section = "Many waiters: one uvicorn process, SQLite store, 100 jobs"
    counts = [100, 1000] if ctx.quick else [100, 5000]
    for n in counts:
        env = app_env(mw=True, store=ctx.sqlite_url("waiters"), BENCH_COUNT_READS="1")
        p = uvicorn(f"waiters-{n}", "benchmarks.apps.app:asgi", env, ctx.tmp)
        try:
            base = f"http://127.0.0.1:{p.port}"
            idle = _probe(p.port, 3.0, 100)
            settle = 8.0 + n / 500  # accepts, then every waiter in place
            with httpx.Client(base_url=base, headers=HEADERS, timeout=30) as c:
                end0 = time.time() + settle
                urls = []
                for i in range(WAITER_JOBS):
                    left = end0 + i * WAITER_END_STEP - time.time()
                    r = c.post(f"/sleep?s={left:.3f}", content=b"{}", headers=POST_HEADERS)
                    urls.append(r.headers["location"])
                time.sleep(1.0)  # every job processing: the next change is its end
                rss0 = p.rss_kb()
                ready = threading.Event()
                out: dict[str, Any] = {}
                t = threading.Thread(target=_hold_in_thread, args=(p.port, urls, n, ready, out))
                t.start()
                ready.wait(60)
                time.sleep(max(1.0, end0 - time.time() - 3.5))  # every waiter held
                rss1 = p.rss_kb()
                reads0 = c.get("/store-reads").json()["reads"]
                held = _probe(p.port, 2.0, 100)  # every waiter held, no job ended yet
                reads1 = c.get("/store-reads").json()["reads"]
                quiet_s = 2.0
                ending = _probe(p.port, WAITER_JOBS * WAITER_END_STEP + 1.0, 100)
                t.join(120)
            answers = out.get("answers", [])
            lags, early = [], 0
            for got, body in answers:
                job = json.loads(body)
                if job.get("status") not in ("completed", "failed", "canceled"):
                    early += 1
                    continue
                lags.append((got - _ts(job["finished_at"])) * 1000)
            late = sum(1 for x in lags if x > 100)
            ctx.report.add(
                section,
                f"{n:,} long-polls",
                answered=f"{len(lags):,} / {n:,}",
                **{
                    "after the end p50/p99/max ms": (
                        f"{fmt_ms(pct(lags, 50))} / {fmt_ms(pct(lags, 99))} / {fmt_ms(max(lags))}"
                        if lags
                        else "-"
                    ),
                    "> 100 ms": str(late),
                    "answered early": str(early),
                    "RSS per waiter": f"{(rss1 - rss0) * 1024 / n:,.0f} B",
                    "store reads/s (held)": f"{(reads1 - reads0) / quiet_s:,.1f}",
                    "hello p99 idle / held / ends ms": (
                        f"{fmt_ms(pct(idle, 99) * 1000)} / {fmt_ms(pct(held, 99) * 1000)}"
                        f" / {fmt_ms(pct(ending, 99) * 1000)}"
                    ),
                },
            )
        finally:
            p.stop()


def remote_executor_missing(kind: str) -> str | None:
    return middleware_missing() or redis_store_missing() or executor_missing(kind)


def remote_executor_spec(kind: str) -> str:
    if kind == "celery":
        return f"celery?app={APP_PATH}&broker_url={REDIS_URL}&queue=aa_bench"
    return f"rq?app={APP_PATH}&redis_url={REDIS_URL}&queue=aa_bench"


@contextlib.contextmanager
def remote_worker(ctx: Ctx, kind: str) -> Iterator[Proc]:
    """``async-accept worker`` for the app (Celery: solo pool, like the peer's worker;
    RQ: its SimpleWorker), pinned to the server core."""
    env = app_env(mw=True, store=REDIS_URL, executor=remote_executor_spec(kind))
    argv = [PY, "-m", "async_accept.cli", "worker", "--app", APP_PATH, "--executor", kind]
    argv += ["--loglevel", "info"]
    if kind == "celery":
        argv += ["--pool", "solo", "--concurrency", "1"]
    p = Proc(f"aa-{kind}-worker", argv, env=env, cpu=SERVER_CPU, log_dir=ctx.tmp)
    try:
        p.wait_log("ready" if kind == "celery" else "Listening on", timeout=30)
        yield p
    finally:
        p.stop()


@contextlib.contextmanager
def store_worker(ctx: Ctx, store: str) -> Iterator[Proc]:
    """``async-accept worker`` claiming from ``store`` (executor="store"), pinned to
    the server core."""
    env = app_env(mw=True, store=store, executor="store")
    argv = [PY, "-m", "async_accept.cli", "worker", "--app", APP_PATH, "--concurrency", "4"]
    p = Proc("aa-store-worker", argv, env=env, cpu=SERVER_CPU, log_dir=ctx.tmp)
    try:
        p.wait_log("ready.", timeout=30)
        yield p
    finally:
        p.stop()


@contextlib.contextmanager
def remote_setup(ctx: Ctx, kind: str) -> Iterator[Proc]:
    """The app with the Celery/RQ executor on the Redis store, and its worker."""
    with (
        asgi_server(
            ctx, f"aa-{kind}", mw=True, store=REDIS_URL, executor=remote_executor_spec(kind)
        ) as p,
        remote_worker(ctx, kind),
    ):
        yield p


def peers(ctx: Ctx) -> None:
    """The plain way (hand-written 202 + status over Celery / RQ) against bare hello
    and against async_accept on the same Redis."""
    why = redis_missing()
    if why:
        ctx.report.skip("peers", why)
        return
    mw_why = middleware_missing() or redis_store_missing()
    n = 50 if ctx.quick else 300
    for kind in ("celery", "rq"):
        _peer_case(ctx, kind, mw_why, n)


def _peer_case(ctx: Ctx, kind: str, mw_why: str | None, n: int) -> None:
    # async_accept on the same Redis, with the same engine's executor; with the
    # asyncio executor as a stand-in (jobs run in the web process) until the
    # Celery/RQ executors exist.
    ex_why = remote_executor_missing(kind)
    executor = None if ex_why else remote_executor_spec(kind)
    label = "asyncio executor (stand-in)" if ex_why else f"{kind} executor"
    flush_redis()
    with peer_server(ctx, kind) as peer, asgi_server(ctx, "bare", mw=False) as bare:
        bare_t = Target("bare", bare)
        # 1. Accept throughput, no workers running on either side.
        pa = Target(f"{kind} peer accept", peer, "/work", "POST", "{}")
        c = compare(pa, bare_t, ctx.settings)
        ctx.report.add(HTTP, f"{kind} peer: accept / bare hello", **ratio_cols(c))
        variants = [(executor, label)]
        if executor is not None:  # many short jobs: a few jobs per broker message
            variants.append((f"{executor}&jobs_per_message=8", f"{label}, jobs_per_message=8"))
        for spec, what in variants if not mw_why else []:
            with asgi_server(ctx, "aa-accept", mw=True, store=REDIS_URL, executor=spec) as mw:
                ma = Target("async_accept accept", mw, "/work", "POST", "{}")
                c = compare(ma, pa, ctx.settings)
                ctx.report.add(
                    HTTP,
                    f"async_accept accept (Redis store, {what}) / {kind} peer accept",
                    **ratio_cols(c, None if ex_why else 2.0),
                )
                time.sleep(1.0)  # let its hand-over thread drain before the flush
        # 2. Drop both backlogs: the workers start on empty queues.
        flush_redis()
        with contextlib.ExitStack() as stack:
            stack.enter_context(peer_worker(ctx, kind))
            peer_urls = post_jobs(peer.port, "/work", 200)
            mw = None
            if not mw_why:
                mw = stack.enter_context(
                    asgi_server(ctx, "aa-poll", mw=True, store=REDIS_URL, executor=executor)
                )
                if not ex_why:
                    stack.enter_context(remote_worker(ctx, kind))
                aa_urls = post_jobs(mw.port, "/work", 200)
                wait_done(mw.port, aa_urls)
            wait_done(peer.port, peer_urls)
            # 3. Poll throughput of done jobs (303 on both sides).
            pp = Target(f"{kind} peer poll", peer, peer_urls[0])
            pp.paths_file = paths_file(ctx, f"{kind}-peer", peer_urls)
            c = compare(pp, bare_t, ctx.settings)
            ctx.report.add(HTTP, f"{kind} peer: poll (done jobs) / bare hello", **ratio_cols(c))
            if mw is not None:
                mp = Target("async_accept poll", mw, aa_urls[0])
                mp.paths_file = paths_file(ctx, f"aa-{kind}", aa_urls)
                c = compare(mp, pp, ctx.settings)
                ctx.report.add(
                    HTTP,
                    f"async_accept poll (Redis store, done jobs) / {kind} peer poll",
                    **ratio_cols(c, 1.0),
                )
            # 4. End to end on the peer.
            e2e(peer.port, "/work", 5)
            lat, polls = e2e(peer.port, "/work", n)
            worker = "solo pool" if kind == "celery" else "SimpleWorker"
            e2e_row(ctx, f"{kind} peer (hand-written, {worker}), Redis", lat, polls, None)
    if mw_why:
        ctx.report.skip(f"async_accept vs {kind} peer", mw_why)
    elif ex_why:
        ctx.report.skip(f"async_accept with the {kind} executor vs the {kind} peer", ex_why)


def loop_health(ctx: Ctx) -> None:
    """p99 of an unmarked route, idle vs while ~200 jobs/s are accepted and run
    (asyncio executor, SQLite store; each job sleeps 50 ms)."""
    why = middleware_missing()
    if why:
        ctx.report.skip("loop", why)
        return
    rounds = 6 if ctx.quick else 10
    seconds = 2.0 if ctx.quick else 4.0
    probe_rate = 200.0
    with asgi_server(ctx, "loop", mw=True, store=ctx.sqlite_url("loop")) as p:
        idle: list[float] = []
        loaded: list[float] = []
        accepted = 0
        for i in range(rounds):
            order = (False, True) if i % 2 == 0 else (True, False)
            for with_load in order:
                result: dict[str, Any] = {}
                thread = None
                if with_load:
                    target = Target("jobs", p, "/sleep?s=0.05", "POST", "{}")

                    def load(t: Target = target, out: dict[str, Any] = result) -> None:
                        s = Settings(connections=4, loadgen="python")
                        out["load"] = _paced(t, seconds + 1.0, 200.0, s)

                    thread = threading.Thread(target=load)
                    thread.start()
                    time.sleep(0.5)
                lat = _probe(p.port, seconds, probe_rate)
                if thread is not None:
                    thread.join()
                    accepted += result["load"].requests
                (loaded if with_load else idle).append(pct(lat, 99) * 1000)
        i99, l99 = statistics.median(idle), statistics.median(loaded)
        ctx.report.add(
            "Event-loop health (unmarked route while jobs are accepted and run)",
            "GET /hello p99: under ~200 accepts/s / idle",
            ratio=f"{l99 / i99:.2f}",
            goal="<= 2",
            met="yes" if l99 <= 2 * i99 else "**no**",
            **{"idle p99 ms": fmt_ms(i99), "loaded p99 ms": fmt_ms(l99)},
            **{"accepts/s": f"{accepted / (seconds + 1.0) / (rounds):.0f}"},
        )


def _paced(t: Target, duration: float, rate: float, s: Settings) -> Any:
    """A paced POST load (Python generator on the load core)."""
    argv = [*pin(LOAD_CPU), PY, "-m", "benchmarks._pyload", "--port", str(t.port)]
    argv += ["--path", t.path, "--method", t.method, "--body", t.body or "{}"]
    argv += ["--auth", AUTH, "--connections", str(s.connections)]
    argv += ["--duration", str(duration), "--rate", str(rate)]
    out = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=False,
        env=child_env(),
        cwd=ROOT,
    )
    for line in out.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            d = json.loads(line[len("BENCHJSON ") :])
            return type(
                "L",
                (),
                {
                    "requests": d["requests"],
                    "errors": d["status"],
                    "p50_us": d["p50_us"],
                    "p99_us": d["p99_us"],
                },
            )
    raise RuntimeError(out.stderr[-800:])


def _probe(port: int, seconds: float, rate: float) -> list[float]:
    """Paced sequential GET /hello from this process; latencies in seconds."""
    c = Conn(port)
    lat: list[float] = []
    interval = 1.0 / rate
    start = time.perf_counter()
    nxt = start
    while True:
        now = time.perf_counter()
        if now - start >= seconds:
            break
        if nxt > now:
            time.sleep(nxt - now)
        nxt += interval
        t0 = time.perf_counter()
        c.request("GET", "/hello", headers=HEADERS)
        lat.append(time.perf_counter() - t0)
    c.close()
    return lat


# -- scale and memory ---------------------------------------------------------------


def scale_sizes(ctx: Ctx) -> list[int]:
    if ctx.sizes:
        return ctx.sizes
    if ctx.quick:
        return [1_000, 10_000]
    return [10_000, 100_000, 1_000_000] if ctx.full else [10_000, 100_000]


class BulkLoader:
    """Creates completed jobs through the store API, with real tokens and owners."""

    def __init__(self, store_url: str) -> None:
        from async_accept.engine import Engine
        from async_accept.job import CapturedRequest, CapturedResponse
        from async_accept.options import build_options
        from async_accept.stores import resolve_store

        from .apps.app import ROUTES, SECRET

        self.options = build_options(secret_key=SECRET, store=store_url, routes=ROUTES)
        self.engine = Engine(self.options)
        self.store = resolve_store(store_url)
        self.request = CapturedRequest(
            method="POST",
            path="/work",
            headers=[(b"authorization", AUTH.encode()), (b"content-type", b"application/json")],
            body=b"{}",
        )
        self.owner = self.engine.signer.owner_hash(self.engine.identity_material(self.request))
        self.response = CapturedResponse(200, [(b"content-type", b"application/json")], b"{}")
        #: ids of the jobs whose status URLs the last create returned
        self.kept: list[str] = []

    def create(self, n: int, keep: int) -> list[str]:
        """``n`` completed jobs; the status URLs of ``keep`` of them, spread evenly."""
        every = max(1, n // keep)
        urls = []
        self.kept = []
        for i in range(n):
            job = self.one()
            if i % every == 0:
                urls.append(self.url(job))
                self.kept.append(job.id)
        return urls

    def one(self) -> Any:
        """One job created, claimed and finished (completed, with a result) by the store."""
        from async_accept.job import Job, JobStatus, new_job_id

        ttl, sla = self.options.ttl, self.options.sla
        now = time.time()
        job = Job(
            id=new_job_id(),
            status=JobStatus.QUEUED,
            owner=self.owner,
            created_at=now,
            updated_at=now,
            expires_at=now + ttl,
            deadline_at=now + 2 * sla,
            sla=sla,
            route="POST /work",
        )
        self.store.create(job, self.request)
        self.store.claim(job.id, "bench-loader", now)
        self.store.finish(job.id, "bench-loader", now, JobStatus.COMPLETED, self.response)
        return job

    def url(self, job: Any) -> str:
        """The job's status URL (path), as its 202 gave it."""
        return self.engine.status_url("", self.engine.token_for(job))


def _store_size(url: str) -> int:
    if url.startswith("postgresql:"):
        import psycopg

        with psycopg.connect(url.split("?")[0]) as conn:
            row = conn.execute(
                "SELECT COALESCE(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind = 'r'",
                (PG_SCHEMA,),
            ).fetchone()
        return int(row[0]) if row else 0
    if url.startswith("sqlite:"):
        path = Path(url[len("sqlite:///") :])
        return sum(
            p.stat().st_size for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()
        )
    import redis

    return int(redis.Redis.from_url(url).info("memory")["used_memory"])


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _one_by_one(port: int, urls: list[str], n: int = 2000) -> tuple[float, float, int]:
    """GET of status URLs one at a time (one client, no other load): p50 and p99 in
    ms, and how many did not answer 303."""
    c = Conn(port)
    lat: list[float] = []
    wrong = 0
    for i in range(n):
        t0 = time.perf_counter()
        reply = c.request("GET", urls[i % len(urls)], headers=HEADERS)
        lat.append(time.perf_counter() - t0)
        wrong += reply.status != 303
    c.close()
    return pct(lat, 50) * 1e3, pct(lat, 99) * 1e3, wrong


def scale(ctx: Ctx) -> None:
    """Status-read latency and store size at 10k/100k (1M with --full) jobs; purge cost."""
    from ._pgseed import seed_completed, time_gets

    why = middleware_missing()
    if why:
        ctx.report.skip("scale", why)
        return
    stores = ["sqlite"]
    why = redis_store_missing()
    if why:
        ctx.report.skip("scale (redis store)", why)
    else:
        stores.append("redis")
    why = postgres_store_missing()
    if why:
        ctx.report.skip("scale (postgres store)", why)
    else:
        stores.append("postgres")
    s = Settings(**{**ctx.settings.__dict__, "rounds": 6})
    section = "Scale: status reads of completed jobs (303) with N jobs in the store"
    for label in [x for x in stores if ctx.stores is None or x in ctx.stores]:
        for n in scale_sizes(ctx):
            url = {"sqlite": ctx.sqlite_url(f"scale-{n}"), "redis": REDIS_URL}.get(label, PG_URL)
            if label == "redis":
                flush_redis()
            if label == "postgres":
                reset_postgres()
            size0 = _store_size(url) if label == "redis" else 0
            loader = BulkLoader(url)
            t0 = time.perf_counter()
            if label == "postgres":  # one job by the store, the rest cloned by SQL
                urls = seed_completed(loader, PG_SCHEMA, n, keep=1000)
            else:
                urls = loader.create(n, keep=1000)
            create_s = time.perf_counter() - t0
            size = _store_size(url) - size0
            get_p50, get_p99 = time_gets(loader.store, loader.kept)
            with (
                asgi_server(ctx, f"scale-{label}", mw=True, store=url) as mw,
                asgi_server(ctx, "bare", mw=False) as bare,
            ):
                one_p50, one_p99, wrong = _one_by_one(mw.port, urls)
                st = Target("status", mw, urls[0], paths_file=paths_file(ctx, "scale", urls))
                c = compare(st, Target("bare", bare), s)
            t0 = time.perf_counter()
            purged = loader.store.purge_expired(time.time() + loader.options.ttl + 60)
            purge_s = time.perf_counter() - t0
            loader.store.close()
            ctx.report.add(
                section,
                f"{label}, {n:,} jobs",
                **{
                    "status / hello": f"{c.ratio:.2f}",
                    "status req/s": f"{c.med('a', 'rps'):,.0f}",
                    "p50 ms": fmt_ms(c.med("a", "p50_ms")),
                    "p99 ms": fmt_ms(c.med("a", "p99_ms")),
                    "one client p50/p99 ms": f"{fmt_ms(one_p50)} / {fmt_ms(one_p99)}",
                    "store.get p50/p99 ms": f"{fmt_ms(get_p50)} / {fmt_ms(get_p99)}",
                    "store size": _mb(size),
                    "bytes/job": f"{size / n:,.0f}",
                    "create us/job": f"{create_s / n * 1e6:.0f}"
                    + (" (SQL clones)" if label == "postgres" else ""),
                    "purge all": f"{purge_s:.2f} s ({purged:,} jobs)",
                    "errors": str(c.errors + wrong),
                },
            )


def memory(ctx: Ctx) -> None:
    """VmRSS of the server process before and after N accepted (and run) jobs."""
    why = middleware_missing()
    if why:
        ctx.report.skip("memory", why)
        return
    n = 10_000 if ctx.quick else 100_000
    stores = [("sqlite", ctx.sqlite_url("memory")), ("memory", "memory://")]
    why = redis_store_missing()
    if why:
        ctx.report.skip("memory (redis store)", why)
    else:
        stores.insert(1, ("redis", REDIS_URL))
    for label, url in stores:
        if label == "redis":
            flush_redis()
        with asgi_server(ctx, f"mem-{label}", mw=True, store=url) as mw:
            t = Target("accept", mw, "/work", "POST", "{}")
            run_load(t, 1.0, ctx.settings)
            time.sleep(1.0)
            rss0 = mw.rss_kb()
            done = 0
            deadline = time.monotonic() + 300
            while done < n and time.monotonic() < deadline:
                done += run_load(t, 2.0, ctx.settings).requests
            time.sleep(2.0)  # let the last jobs finish
            rss1 = mw.rss_kb()
            ctx.report.add(
                "Memory: server VmRSS after N accepted jobs (asyncio executor)",
                f"{label} store",
                jobs=f"{done:,}",
                **{
                    "RSS before": f"{rss0 / 1024:.1f} MB",
                    "RSS after": f"{rss1 / 1024:.1f} MB",
                    "growth": f"{(rss1 - rss0) / 1024:.1f} MB",
                    "bytes/job": f"{(rss1 - rss0) * 1024 / done:,.0f}",
                },
            )


# -- profile ------------------------------------------------------------------------


def _frame(f: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)``."""
    func, _, where = f.rpartition(" (")
    return f"{func} ({where.split(':')[0].split('/')[-1]})"


def summarize_profile(
    path: Path, n: int, skip: tuple[str, ...] = ()
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """From py-spy's raw (collapsed) output: the top ``n`` frames by self time,
    and the top ``n`` by inclusive time among async_accept's own frames, each as
    a percentage of the samples (stacks whose leaf is in ``skip`` are left out)."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        raw = stack.split(";")
        if any(raw[-1].startswith(x) for x in skip):
            continue
        count = int(count_s)
        total += count
        frames = [_frame(f) for f in raw]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for raw_f, f in set(zip(raw, frames, strict=True)):
            if "async_accept/" in raw_f:
                incl[f] = incl.get(f, 0) + count
    total = max(total, 1)

    def top(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, v / total * 100) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:n]]

    return top(own), top(incl)


#: Leaf frames of a thread-pool thread waiting for work (idle, not the store's cost).
_IDLE = ("_worker (concurrent/futures/thread.py", "select (selectors.py", "EpollSelector.select")


def profile(ctx: Ctx) -> None:
    """py-spy on the server while it accepts and answers status polls (SQLite store):
    CPU (samples of the thread holding the GIL) and wall (every busy thread)."""
    why = middleware_missing()
    if why:
        ctx.report.skip("profile", why)
        return
    import shutil

    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not Path(spy).exists():
        ctx.report.skip("profile", "py-spy is not installed (pip install py-spy)")
        return
    seconds = 4 if ctx.quick else 8
    for what in ("accept", "status"):
        with asgi_server(ctx, f"prof-{what}", mw=True, store=ctx.sqlite_url("prof")) as p:
            if what == "accept":
                t = Target("accept", p, "/work", "POST", "{}")
            else:
                urls = post_jobs(p.port, "/sleep?s=3600", 200)
                t = Target("status", p, urls[0], paths_file=paths_file(ctx, "prof", urls))
            load = threading.Thread(target=run_load, args=(t, 2 * seconds + 5, ctx.settings))
            load.start()
            time.sleep(1.0)
            outs = {}
            for mode in ("cpu", "wall"):
                out = ctx.path(f"prof-{what}-{mode}.txt")
                argv = [*pin(LOAD_CPU), spy, "record", "-p", str(p.pid), "-d", str(seconds)]
                argv += ["-r", "250", "-f", "raw", "-o", str(out), "--nonblocking"]
                if mode == "cpu":
                    argv.append("--gil")
                rec = subprocess.run(
                    argv, capture_output=True, text=True, timeout=seconds + 60, check=False
                )
                if rec.returncode == 0 and out.exists():
                    outs[mode] = out
                else:
                    ctx.report.skip(f"profile {what} {mode}", f"py-spy failed: {rec.stderr[-300:]}")
            load.join()
            if "cpu" in outs:
                own, incl = summarize_profile(outs["cpu"], 12)
                section = f"Profile: {what} path, CPU (py-spy --gil), SQLite store"
                for (frame, pc), (iframe, ipc) in zip(own, incl, strict=False):
                    ctx.report.add(
                        section,
                        frame,
                        **{"self %": f"{pc:.1f}", "async_accept frame": iframe},
                        **{"incl. %": f"{ipc:.1f}"},
                    )
            if "wall" in outs:
                own, incl = summarize_profile(outs["wall"], 8, skip=_IDLE)
                section = f"Profile: {what} path, wall time of busy threads (py-spy), SQLite store"
                for (frame, pc), (iframe, ipc) in zip(own, incl, strict=False):
                    ctx.report.add(
                        section,
                        frame,
                        **{"self %": f"{pc:.1f}", "async_accept frame": iframe},
                        **{"incl. %": f"{ipc:.1f}"},
                    )


def _owned_jobs(store: Any, n: int, mine: str, keep: int) -> None:
    """``n`` queued jobs, ``keep`` of them owned by ``mine``, the rest by 1,000 others.

    A Redis store is seeded through its own create script, pipelined 1,000 calls a
    round trip (1M one-by-one round trips would take most of the run); every other
    store through ``Store.create``."""
    from async_accept.job import CapturedRequest, Job, JobStatus, new_job_id

    request = CapturedRequest("POST", "/work", body=b"{}")
    every = max(1, n // keep)
    base = time.time()
    scripts = getattr(store, "_scripts", None)
    pipe = store._client.pipeline(transaction=False) if scripts is not None else None
    for i in range(n):
        now = base + i * 1e-4
        owner = mine if i % every == 0 else f"other-{i % 1000}"
        job = Job(
            id=new_job_id(),
            status=JobStatus.QUEUED,
            owner=owner,
            created_at=now,
            updated_at=now,
            expires_at=now + 86400,
            deadline_at=now + 3600,
            sla=1800,
            route="POST /work",
        )
        if pipe is None:
            store.create(job, request)
            continue
        call = store._layout.create(job, request)  # the very script create() runs
        scripts[call.script](keys=call.keys, args=call.args, client=pipe)
        if len(pipe) >= 1000:
            pipe.execute()
    if pipe is not None and len(pipe):
        pipe.execute()


def _owned_jobs_pg(n: int, mine: str, keep: int) -> None:
    """The same jobs as ``_owned_jobs``, written into the PostgreSQL store's table with
    ``COPY`` (a million creates one by one would take the better part of an hour);
    list_owned reads no request body, so none is written."""
    import psycopg

    from async_accept.job import new_job_id

    every = max(1, n // keep)
    base = time.time()
    cols = "id, status, owner, created_at, updated_at, expires_at, deadline_at, sla, route"
    with psycopg.connect(PG_URL.split("?")[0], autocommit=True) as conn:
        with conn.cursor().copy(f'COPY "{PG_SCHEMA}".jobs ({cols}) FROM STDIN') as copy:
            for i in range(n):
                now = base + i * 1e-4
                owner = mine if i % every == 0 else f"other-{i % 1000}"
                row = (new_job_id(), "queued", owner, now, now, now + 86400, now + 3600)
                copy.write_row((*row, 1800.0, "POST /work"))
        conn.execute(f'ANALYZE "{PG_SCHEMA}".jobs')


def owned(ctx: Ctx) -> None:
    """``Store.list_owned`` (what ``GET {prefix}/`` reads): one owner's first page and a
    later page at 10k/100k (1M with --full) jobs in the store; flat when it is indexed."""
    from async_accept.stores import resolve_store
    from async_accept.stores.base import OwnedQuery

    stores = ["memory", "sqlite"]
    if redis_store_missing() is None:
        stores.append("redis")
    elif not ctx.stores or "redis" in ctx.stores:
        ctx.report.skip("owned (redis store)", str(redis_store_missing()))
    if postgres_store_missing() is None:
        stores.append("postgres")
    elif not ctx.stores or "postgres" in ctx.stores:
        ctx.report.skip("owned (postgres store)", str(postgres_store_missing()))
    section = "A caller's own jobs: Store.list_owned, one owner with 200 of N jobs"
    for label in [s for s in stores if ctx.stores is None or s in ctx.stores]:
        for n in scale_sizes(ctx):
            if label == "redis":
                flush_redis()
            if label == "postgres":
                reset_postgres()
            url = {
                "memory": "memory://",
                "sqlite": ctx.sqlite_url(f"owned-{n}"),
                "redis": REDIS_URL,
                "postgres": PG_URL,
            }[label]
            store = resolve_store(url)
            try:
                t_seed = time.monotonic()
                if label == "postgres":
                    _owned_jobs_pg(n, "bench-owner", 200)
                else:
                    _owned_jobs(store, n, "bench-owner", 200)
                seeded = time.monotonic() - t_seed
                now = time.time() + n * 1e-4 + 1
                page = OwnedQuery(limit=21)
                first = store.list_owned("bench-owner", now, page)
                later = OwnedQuery(limit=21, before=(first[19].created_at, first[19].id))
                timings: dict[str, list[float]] = {"first": [], "later": []}
                for _ in range(200):
                    t0 = time.perf_counter()
                    store.list_owned("bench-owner", now, page)
                    timings["first"].append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    store.list_owned("bench-owner", now, later)
                    timings["later"].append(time.perf_counter() - t0)
                row: dict[str, str] = {}
                for name, values in timings.items():
                    values.sort()
                    row[f"{name} page p50 ms"] = fmt_ms(values[len(values) // 2] * 1e3)
                    row[f"{name} page p99 ms"] = fmt_ms(values[int(len(values) * 0.99)] * 1e3)
                row["seeding s"] = f"{seeded:.0f}"
                ctx.report.add(section, f"{label}, {n:,} jobs", **row)
            finally:
                store.close()
            if label == "redis":
                flush_redis()
