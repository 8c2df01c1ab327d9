"""Seeding the PostgreSQL store with many jobs fast, for the scale scenario.

Through the store API a completed job costs three statements and three commits
(create, claim, finish): about 8 minutes per million on these machines. Here
the store itself creates, claims and finishes one job (the template); its rows
(``jobs`` and its result in ``job_bodies``) are then cloned by SQL, 100,000 a
statement (``INSERT … SELECT … generate_series``), over every column of the
table's layout (``sql._COLUMNS``, the order the store writes and reads). Each
clone differs from the template only in its id (22 URL-safe base64 characters,
like ``new_job_id``: an md5 of the row number and a random salt) and its times
(shifted back by a millisecond a row, so created_at is distinct per job);
everything else (owner, status, result) is what the store wrote. The kept jobs
are read back through the store (``get``, ``get_result``) and checked before a
status URL is made for them.
"""

from __future__ import annotations

import random
import secrets
import time
from typing import Any

#: Rows cloned per statement (one transaction each).
CHUNK = 100_000
#: Time columns shifted per row; the other columns are copied as they are.
TIMES = (
    "created_at",
    "updated_at",
    "expires_at",
    "deadline_at",
    "started_at",
    "finished_at",
    "progress_at",
    "heartbeat_at",
)
#: The seconds between two clones' times.
STEP = 0.001


def _clone_sql(schema: str) -> str:
    from async_accept.stores.postgres.sql import _COLUMNS

    s = f'"{schema}"'
    exprs = []
    for col in _COLUMNS:
        if col == "id":
            exprs.append("g.id")
        elif col in TIMES:
            exprs.append(f"t.{col} - g.i * {STEP}::float8")
        else:
            exprs.append(f"t.{col}")
    cols = ", ".join(_COLUMNS)
    return (
        "WITH g AS (SELECT i, rtrim(translate(encode(decode(md5(i::text || %(salt)s), 'hex'), "
        "'base64'), '+/', '-_'), '=') AS id "
        "FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i), "
        f"j AS (INSERT INTO {s}.jobs ({cols}) SELECT {', '.join(exprs)} "
        f"FROM {s}.jobs AS t, g WHERE t.id = %(template)s RETURNING id) "
        f"INSERT INTO {s}.job_bodies (job_id, kind, meta, body) "
        f"SELECT j.id, b.kind, b.meta, b.body FROM j, {s}.job_bodies AS b "
        "WHERE b.job_id = %(template)s"
    )


def seed_completed(loader: Any, schema: str, n: int, keep: int) -> list[str]:
    """``n`` completed jobs in ``loader``'s PostgreSQL store (``schema``), one of them
    made by the store and ``n - 1`` cloned from it; the status URLs of ``keep`` of
    them, picked at random and each checked through the store (their ids in
    ``loader.kept``)."""
    import psycopg

    from async_accept.job import JobStatus

    store = loader.store
    template = loader.one()
    salt = secrets.token_hex(8)
    statement = _clone_sql(schema)
    dsn = store.settings.conninfo
    with psycopg.connect(dsn, autocommit=True) as conn:
        for lo in range(1, n, CHUNK):
            hi = min(n - 1, lo + CHUNK - 1)
            args = {"salt": salt, "lo": lo, "hi": hi, "template": template.id}
            conn.execute(statement, args)
        conn.execute(f'ANALYZE "{schema}".jobs')
        conn.execute(f'ANALYZE "{schema}".job_bodies')
        total = conn.execute(f'SELECT count(*) FROM "{schema}".jobs').fetchone()
        ids = [
            r[0]
            for r in conn.execute(
                f'SELECT id FROM "{schema}".jobs TABLESAMPLE SYSTEM (%s) LIMIT %s',
                (min(100.0, 100.0 * 4 * keep / max(n, 1)), 4 * keep),
            ).fetchall()
        ]
    if not total or total[0] != n:
        raise RuntimeError(f"seeding wrote {total} jobs, not {n}")
    random.shuffle(ids)
    ids = ids[:keep]
    if len(ids) < keep:
        raise RuntimeError(f"seeding: only {len(ids)} jobs sampled for {keep}")
    urls = []
    now = time.time()
    expected = loader.response
    for job_id in ids:
        job = store.get(job_id, now)
        if job is None or job.status is not JobStatus.COMPLETED or job.owner != loader.owner:
            raise RuntimeError(f"seeded job {job_id} reads back wrong: {job!r}")
        urls.append(loader.url(job))
    loader.kept = ids
    for job_id in ids[:20]:
        result = store.get_result(job_id)
        if result is None or (result.status, result.body) != (expected.status, expected.body):
            raise RuntimeError(f"seeded job {job_id}: result reads back wrong: {result!r}")
    return urls


def time_gets(store: Any, ids: list[str], calls: int = 2000) -> tuple[float, float]:
    """p50 and p99 in ms of ``store.get`` alone (blocking face), cycling over ``ids``."""
    times = []
    for i in range(calls):
        job_id = ids[i % len(ids)]
        now = time.time()
        t0 = time.perf_counter()
        store.get(job_id, now)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2] * 1e3, times[int(len(times) * 0.99)] * 1e3
