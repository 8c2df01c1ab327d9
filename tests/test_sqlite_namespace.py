"""Apps sharing one SQLite file keep apart by namespace: ``?namespace=`` in the store URL
(or ``namespace=``, or the CLI's ``--namespace``) confines every read, write, list, purge,
idempotency key and webhook delivery of the store to it; a job of one namespace is unknown
in another; bad or conflicting namespaces are refused at start; a file of the previous
layout (schema 2) is upgraded in place, its jobs kept in the default namespace."""

from __future__ import annotations

import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from async_accept.errors import ConfigurationError
from async_accept.job import CapturedRequest, Job, JobStatus, new_job_id
from async_accept.outbox import Delivery
from async_accept.stores import resolve_outbox, resolve_store
from async_accept.stores.base import OwnedQuery
from async_accept.stores.sqlite import SCHEMA_VERSION, SQLiteOutbox, SQLiteStore

SECRET = "namespace-secret-0123456789abcdef"
ALICE = {"authorization": "Bearer alice"}
REQUEST = CapturedRequest(method="POST", path="/report", headers=[], body=b"{}")

names = st.from_regex(r"[A-Za-z0-9_.\-]{1,64}", fullmatch=True)
others = st.lists(
    st.one_of(
        st.tuples(st.just("timeout"), st.sampled_from(["0.5", "3", "12.25"])),
        st.tuples(st.just("synchronous"), st.sampled_from(["off", "NORMAL", "Full", "extra"])),
    ),
    max_size=2,
    unique_by=lambda kv: kv[0],
)


def make_job(now: float, **kw: Any) -> Job:
    fields: dict[str, Any] = {
        "id": new_job_id(),
        "status": JobStatus.QUEUED,
        "owner": "owner-hmac",
        "created_at": now,
        "updated_at": now,
        "expires_at": now + 3600.0,
        "deadline_at": now + 60.0,
        "sla": 30.0,
        "route": "POST /report",
    }
    fields.update(kw)
    return Job(**fields)


@settings(max_examples=60, deadline=None)
@given(names, others, st.integers(0, 2))
def test_a_urls_namespace_is_used_and_its_other_options_kept(
    ns: str, options: list[tuple[str, str]], at: int
) -> None:
    """sqlite:///f.db?...namespace=X... anywhere among timeout/synchronous: the store's
    namespace is X, the other options are applied as without it."""
    query = list(options)
    query.insert(min(at, len(query)), ("namespace", ns))
    with tempfile.TemporaryDirectory() as tmp:
        store = resolve_store(f"sqlite:///{tmp}/jobs.db?{urlencode(query)}")
        try:
            assert isinstance(store, SQLiteStore)
            assert store.namespace == ns
            given_opts = dict(options)
            assert store.timeout == float(given_opts.get("timeout", 5.0))
            assert store.synchronous == given_opts.get("synchronous", "NORMAL").upper()
            assert repr(store).endswith(f"namespace={ns!r})")
        finally:
            store.close()


def test_no_namespace_is_the_default_one_and_the_keyword_agrees(tmp_path: Path) -> None:
    """Without ?namespace= the store's namespace is '' (a file of one app, as before);
    the namespace= keyword (the CLI's --namespace) gives one, or repeats the URL's."""
    url = f"sqlite:///{tmp_path}/jobs.db"
    for spec, keyword, expected in [
        (url, None, ""),
        (url, "billing", "billing"),
        (url + "?namespace=billing", "billing", "billing"),
    ]:
        store = resolve_store(spec, namespace=keyword)
        try:
            assert store.namespace == expected  # type: ignore[attr-defined]
        finally:
            store.close()


@pytest.mark.parametrize(
    ("query", "keyword", "says"),
    [
        ("?namespace=a&namespace=b", None, "once"),
        ("?namespace=a&namespace=a", None, "once"),
        ("?namespace=a", "b", "keep one"),
        ("?namespace=", None, "1-64 letters"),
        ("?namespace=a%20b", None, "1-64 letters"),
        ("?namespace=a:b", None, "1-64 letters"),
        ("?namespace=" + "x" * 65, None, "1-64 letters"),
        ("", "", "1-64 letters"),
        ("?namespaces=a", None, "unknown option 'namespaces'"),
    ],
)
def test_bad_or_conflicting_namespaces_are_refused(
    tmp_path: Path, query: str, keyword: str | None, says: str
) -> None:
    """A namespace given twice, two different ones, an empty one or one with other
    characters: a ConfigurationError saying what to write, before the file is touched."""
    with pytest.raises(ConfigurationError, match=says):
        resolve_store(f"sqlite:///{tmp_path}/jobs.db{query}", namespace=keyword)
    assert not (tmp_path / "jobs.db").exists()


def test_a_namespace_keyword_on_a_store_without_namespaces_is_refused() -> None:
    """namespace= with memory:// (or a store object) says where namespaces apply."""
    with pytest.raises(ConfigurationError, match="SQLite and Redis"):
        resolve_store("memory://", namespace="a")
    with pytest.raises(ConfigurationError, match="1-64 letters"):
        SQLiteStore("jobs.db", namespace="no spaces")


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[SQLiteStore, SQLiteStore, SQLiteStore]]:
    """Three stores on one file: namespaces a and b, and the default one."""
    path = str(tmp_path / "jobs.db")
    stores = (
        SQLiteStore(path, namespace="a"),
        SQLiteStore(path, namespace="b"),
        SQLiteStore(path),
    )
    yield stores
    for s in stores:
        s.close()


def test_one_idempotency_key_in_two_namespaces_is_two_jobs(
    two: tuple[SQLiteStore, SQLiteStore, SQLiteStore],
) -> None:
    """The same key in a, b and the default namespace makes three jobs; in a again, a's job."""
    now = time.time()
    jobs = [s.create(make_job(now, idempotency_key="same"), REQUEST) for s in two]
    assert [fresh for _, fresh in jobs] == [True, True, True]
    assert len({job.id for job, _ in jobs}) == 3
    again, fresh = two[0].create(make_job(now, idempotency_key="same"), REQUEST)
    assert (again.id, fresh) == (jobs[0][0].id, False)


def test_a_job_of_another_namespace_is_absent(
    two: tuple[SQLiteStore, SQLiteStore, SQLiteStore],
) -> None:
    """b can't read, claim, cancel, retry, delete or list a's job, nor its request or
    result; a still can, and a's job is untouched by b's attempts."""
    a, b, default = two
    now = time.time()
    job, _ = a.create(make_job(now), REQUEST)
    for other in (b, default):
        assert other.get(job.id, now) is None
        assert other.get_request(job.id) is None
        assert other.claim(job.id, "w-other", now) is None
        assert other.cancel(job.id, now) == (None, False)
        assert other.mark_dispatched([job.id], now, now) == []
        assert other.delete(job.id) is False
        assert other.list_jobs() == []
        assert other.list_owned("owner-hmac", now, OwnedQuery()) == []
        assert sum(other.count_by_status().values()) == 0
        assert other.purge_expired(now + 7200) == 0
    assert a.get(job.id, now) == job and a.get_request(job.id) == REQUEST
    running = a.claim(job.id, "w-a", now)
    assert running is not None
    for other in (b, default):
        assert other.heartbeat(job.id, "w-a", now) is None
        assert other.requeue(job.id, "w-a", now) is None
        assert other.fail(job.id, {JobStatus.PROCESSING}, now, {"type": "x"}) is None
        assert other.list_jobs(JobStatus.PROCESSING) == []
    done = a.finish(job.id, "w-a", now, JobStatus.FAILED, None, {"type": "x"})
    assert done is not None and done.status is JobStatus.FAILED
    assert b.retry(job.id, now) is None and b.get_result(job.id) is None
    assert a.get(job.id, now) == done
    assert a.list_jobs() == [done]


def test_workers_and_learned_run_times_are_per_namespace(
    two: tuple[SQLiteStore, SQLiteStore, SQLiteStore],
) -> None:
    """Each namespace's health sees its own workers and learns its own run times."""
    a, b, _ = two
    now = time.time()
    a.worker_heartbeat("wa", now, {"role": "web"})
    b.worker_heartbeat("wb", now, {"role": "worker"})
    assert [w["id"] for w in a.list_workers(now)] == ["wa"]
    assert [w["id"] for w in b.list_workers(now)] == ["wb"]
    a.save_run_time("POST /report", '{"mean": 1.0}')
    b.save_run_time("POST /report", '{"mean": 2.0}')
    assert a.load_run_times() == {"POST /report": '{"mean": 1.0}'}
    assert b.load_run_times() == {"POST /report": '{"mean": 2.0}'}


def test_each_namespace_has_its_own_webhook_outbox_in_the_file(
    two: tuple[SQLiteStore, SQLiteStore, SQLiteStore],
) -> None:
    """A job's delivery recorded with its end is due in its namespace's outbox only
    (another app's dispatcher never sends, nor signs, it); disabling an endpoint is per
    namespace too."""
    a, b, _ = two
    box_a, box_b = a.default_outbox(), b.default_outbox()
    try:
        now = time.time()
        job, _ = a.create(make_job(now, meta={"webhook": "https://hooks.example/a"}), REQUEST)
        a.claim(job.id, "w", now)
        a.finish(job.id, "w", now, JobStatus.COMPLETED, None, None)
        assert box_b.due(now + 1) == [] and box_b.list_deliveries() == []
        [due] = box_a.due(now + 1)
        assert due.job_id == job.id
        box_a.disable_endpoint("https://hooks.example/a", now, "gone")
        assert box_a.endpoint_disabled("https://hooks.example/a")
        assert not box_b.endpoint_disabled("https://hooks.example/a")
    finally:
        box_a.close()
        box_b.close()


def test_an_outbox_url_takes_a_namespace_too(tmp_path: Path) -> None:
    """outbox='sqlite:///hooks.db?namespace=a' (or namespace=): deliveries of a, unseen in b."""
    url = f"sqlite:///{tmp_path}/hooks.db"
    box_a = resolve_outbox(url + "?namespace=a")
    box_b = resolve_outbox(url, namespace="b")
    try:
        assert isinstance(box_a, SQLiteOutbox) and box_a.namespace == "a"
        now = time.time()
        box_a.enqueue(Delivery(id="msg_1", url="https://h.example/", payload="{}",
                               created_at=now, next_at=now))  # fmt: skip
        assert box_b.get("msg_1") is None and box_b.due(now) == []
        assert box_a.get("msg_1") is not None
    finally:
        box_a.close()
        box_b.close()
    with pytest.raises(ConfigurationError, match="keep one"):
        resolve_outbox(url + "?namespace=a", namespace="b")


# -- the schema 2 file of the previous release ---------------------------------------------

#: The tables of schema 2 (async_accept before namespaces), as that release created them.
SCHEMA_2 = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, owner TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, expires_at REAL NOT NULL,
    deadline_at REAL NOT NULL, sla REAL NOT NULL, started_at REAL, finished_at REAL,
    percent REAL, message TEXT, eta REAL, progress_at REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0, worker_id TEXT, heartbeat_at REAL,
    error TEXT, result_status INTEGER, result_location TEXT, route TEXT,
    idempotency_key TEXT, fingerprint TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    meta TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX jobs_status_created ON jobs (status, created_at);
CREATE INDEX jobs_expires ON jobs (expires_at);
CREATE INDEX jobs_owner1_created ON jobs ((CASE WHEN instr(owner, ' ') > 0
    THEN substr(owner, 1, instr(owner, ' ') - 1) ELSE owner END), created_at, id);
CREATE INDEX jobs_owner2_created ON jobs ((CASE WHEN instr(owner, ' ') > 0
    THEN substr(owner, instr(owner, ' ') + 1) ELSE '' END), created_at, id);
CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE TABLE job_bodies (job_id TEXT NOT NULL, kind TEXT NOT NULL, meta TEXT NOT NULL,
    body BLOB NOT NULL, PRIMARY KEY (job_id, kind));
CREATE TRIGGER jobs_delete_bodies AFTER DELETE ON jobs
BEGIN DELETE FROM job_bodies WHERE job_id = old.id; END;
CREATE TABLE workers (id TEXT PRIMARY KEY, last_heartbeat REAL NOT NULL,
    info TEXT NOT NULL DEFAULT '{}') WITHOUT ROWID;
CREATE TABLE run_times (route TEXT PRIMARY KEY, data TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE webhook_deliveries (id TEXT PRIMARY KEY, url TEXT NOT NULL,
    payload TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, next_at REAL NOT NULL, claim TEXT,
    last_error TEXT, last_status INTEGER, job_id TEXT,
    client_supplied INTEGER NOT NULL DEFAULT 0);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_at);
CREATE TABLE webhook_disabled_endpoints (url TEXT PRIMARY KEY, disabled_at REAL NOT NULL,
    reason TEXT NOT NULL);
PRAGMA user_version = 2;
"""


def _schema_2_file(path: Path, now: float) -> dict[str, str]:
    """A schema 2 file holding a queued job with an idempotency key and its request, a
    completed one with its result, a worker, a learned run time and a pending delivery."""
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_2)
    cols = "id, status, owner, created_at, updated_at, expires_at, deadline_at, sla, route"
    for job_id, status, key in (("q1", "queued", "key-1"), ("c1", "completed", None)):
        conn.execute(
            f"INSERT INTO jobs ({cols}, idempotency_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job_id, status, "owner-hmac", now, now, now + 3600, now + 60, 30.0,
             "POST /report", key),
        )  # fmt: skip
    conn.execute(
        "INSERT INTO job_bodies VALUES ('q1', 'request', ?, ?)",
        (REQUEST.meta_json(), REQUEST.body),
    )
    conn.execute("INSERT INTO workers VALUES ('old-worker', ?, '{}')", (now,))
    conn.execute("INSERT INTO run_times VALUES ('POST /report', '{\"mean\": 4.0}')")
    conn.execute(
        "INSERT INTO webhook_deliveries (id, url, payload, state, created_at, updated_at, "
        "next_at, job_id) VALUES ('msg_c1', 'https://h.example/', '', 'pending', ?, ?, ?, 'c1')",
        (now, now, now),
    )
    conn.execute(
        "INSERT INTO webhook_disabled_endpoints VALUES ('https://gone.example/', ?, 'gone')",
        (now,),
    )
    conn.commit()
    conn.close()
    return {"queued": "q1", "completed": "c1"}


def test_a_schema_2_file_is_upgraded_in_place_and_its_jobs_kept(tmp_path: Path) -> None:
    """Opening a schema 2 file holding jobs: user_version becomes the current one, the jobs
    (request, idempotency key, worker, run time, outbox rows) are the default namespace's,
    run and end as before, and a namespaced store on the same file sees none of them."""
    path = tmp_path / "jobs.db"
    now = time.time()
    ids = _schema_2_file(path, now)
    store = SQLiteStore(str(path))
    named = SQLiteStore(str(path), namespace="billing")
    box = store.default_outbox()
    try:
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
        queued = store.get(ids["queued"], now)
        assert queued is not None and queued.status is JobStatus.QUEUED
        assert store.get_request(ids["queued"]) == REQUEST
        holder, fresh = store.create(make_job(now, idempotency_key="key-1"), REQUEST)
        assert (holder.id, fresh) == (ids["queued"], False)
        assert [j.id for j in store.list_jobs()] == [ids["queued"], ids["completed"]]
        assert [w["id"] for w in store.list_workers(now)] == ["old-worker"]
        assert store.load_run_times() == {"POST /report": '{"mean": 4.0}'}
        assert [d.id for d in box.list_deliveries()] == ["msg_c1"]
        assert box.endpoint_disabled("https://gone.example/")
        claimed = store.claim(ids["queued"], "w", now)
        assert claimed is not None and claimed.attempts == 1
        done = store.finish(ids["queued"], "w", now, JobStatus.COMPLETED, None, None)
        assert done is not None and done.status is JobStatus.COMPLETED
        assert named.list_jobs() == [] and named.get(ids["completed"], now) is None
        assert named.load_run_times() == {} and named.list_workers(now) == []
        fresh_named, created = named.create(make_job(now, idempotency_key="key-1"), REQUEST)
        assert created and fresh_named.id != ids["queued"]
    finally:
        box.close()
        named.close()
        store.close()
    reopened = SQLiteStore(str(path))  # the upgrade ran once: opening again changes nothing
    try:
        assert len(reopened.list_jobs()) == 2
    finally:
        reopened.close()


def test_a_file_of_a_newer_layout_is_still_refused(tmp_path: Path) -> None:
    """A file whose schema is newer than this release's: the error names the fix."""
    path = tmp_path / "jobs.db"
    SQLiteStore(str(path)).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(ConfigurationError, match="newer async_accept"):
        SQLiteStore(str(path), namespace="a")


# -- two apps over HTTP --------------------------------------------------------------------


def _app(store_url: str, name: str) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from async_accept import long_running
    from async_accept.asgi import AsyncAcceptMiddleware

    @long_running
    async def report(request: Request) -> JSONResponse:
        return JSONResponse({"app": name})

    app = Starlette(routes=[Route("/report", report, methods=["POST"])])
    app.add_middleware(
        AsyncAcceptMiddleware, secret_key=SECRET, store=store_url, executor="asyncio"
    )
    return app


def test_two_apps_on_one_file_never_see_each_others_jobs(tmp_path: Path) -> None:
    """Two apps, the same secret, one SQLite file, namespaces a and b: a's job completes
    in a, and its status URL is an unknown job (404) in b."""
    from starlette.testclient import TestClient

    url = f"sqlite:///{tmp_path}/jobs.db"
    with (
        TestClient(_app(f"{url}?namespace=a", "a")) as app_a,
        TestClient(_app(f"{url}?namespace=b", "b")) as app_b,
    ):
        r = app_a.post("/report", headers={**ALICE, "prefer": "respond-async"})
        assert r.status_code == 202, r.text
        loc = r.headers["location"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done = app_a.get(loc, headers=ALICE, follow_redirects=False)
            if done.status_code == 303:
                break
            time.sleep(0.05)
        assert done.status_code == 303, done.text
        assert app_a.get(done.headers["location"], headers=ALICE).json() == {"app": "a"}
        assert app_b.get(loc, headers=ALICE, follow_redirects=False).status_code == 404
