"""The Starlette, FastAPI and Falcon examples under a real uvicorn, driven over HTTP:
202 -> polling with progress -> 303 -> result, other credentials -> 404; and the
Starlette example under ``uvicorn --workers 2``, where a job accepted by one
worker process is answered by the other."""

from __future__ import annotations

import http.client
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import Server, base_env, uvicorn

pytestmark = pytest.mark.slow

ALICE = {"Authorization": "Bearer alice"}
BOB = {"Authorization": "Bearer bob"}

EXAMPLES = {
    # name: (the module the example needs, its app)
    "starlette": ("starlette", "examples.starlette_app:app"),
    "fastapi": ("fastapi", "examples.fastapi_app:app"),
    "falcon": ("falcon", "examples.falcon_app:app"),
}


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Every server started here is killed (its whole process group) at the end."""
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def start_example(name: str, tmp_path: Path, servers: list[Server], workers: int = 1) -> Server:
    module, app = EXAMPLES[name]
    pytest.importorskip(module)
    env = base_env(
        ASYNC_ACCEPT_STORE=f"sqlite:///{tmp_path / 'jobs.db'}",
        ASYNC_ACCEPT_SECRET_KEY="example-secret-0123456789abcdef-0123",
    )
    server = uvicorn(app, env, tmp_path / "server.log", workers=workers)
    servers.append(server)
    return server.start(ready_path="/hello")


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_runs_the_whole_flow(name: str, tmp_path: Path, servers: list[Server]) -> None:
    """POST /reports -> 202; polling shows progress; 303 -> the report; Bob gets 404."""
    base = start_example(name, tmp_path, servers).base
    plain = httpx.get(base + "/hello", headers=ALICE, timeout=5)
    assert plain.status_code == 200 and "hello" in plain.text  # passes through

    r = httpx.post(base + "/reports", json={"title": "Q3"}, headers=ALICE, timeout=5)
    assert r.status_code == 202, r.text
    loc = r.headers["location"]
    assert loc.startswith("/_jobs/") and int(r.headers["retry-after"]) >= 1
    assert r.json()["status_url"] == loc

    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while True:
        status = httpx.get(base + loc, headers=ALICE, timeout=5)
        assert status.status_code in (200, 303), status.text
        if status.status_code == 303:
            break
        seen.append(status.json())
        assert int(status.headers["retry-after"]) >= 1
        assert time.monotonic() < deadline, seen[-1]
        time.sleep(0.1)
    progress = [s for s in seen if s["percent_complete"] not in (None, 0, 100)]
    assert progress, seen
    assert all(s["status"] == "processing" for s in progress)
    assert progress[-1]["message"].startswith("rendered page")
    assert any(s["estimated_time_remaining"] is not None for s in progress)
    assert status.json()["status"] == "completed"
    assert status.headers["location"] == loc + "/result"

    result = httpx.get(base + status.headers["location"], headers=ALICE, timeout=5)
    assert result.status_code == 200
    assert result.json() == {"title": "Q3", "pages": 5, "framework": name}
    for url in (loc, loc + "/result"):
        for who in (BOB, {}):
            denied = httpx.get(base + url, headers=who, timeout=5)
            assert denied.status_code == 404
            assert denied.headers["content-type"] == "application/problem+json"


def test_fastapi_example_documents_the_202(tmp_path: Path, servers: list[Server]) -> None:
    """The FastAPI example's /openapi.json shows the 202 of /reports and the status routes."""
    base = start_example("fastapi", tmp_path, servers).base
    doc = httpx.get(base + "/openapi.json", timeout=5).json()
    accepted = doc["paths"]["/reports"]["post"]["responses"]["202"]
    assert {"Location", "Retry-After"} <= set(accepted["headers"])
    assert "/_jobs/{token}" in doc["paths"] and "/_jobs/{token}/result" in doc["paths"]


# --- two worker processes -----------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out.extend(int(c) for c in text)
    return out


def _serving_pid(server_port: int, client_port: int, pids: list[int]) -> int | None:
    """Which process holds the server end of the TCP connection from ``client_port``."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if (
            int(local.rsplit(":", 1)[1], 16) == server_port
            and int(remote.rsplit(":", 1)[1], 16) == client_port
        ):
            inode = fields[9]
            break
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        with os.scandir(f"/proc/{pid}/fd") as fds:
            for fd in fds:
                try:
                    if os.readlink(fd.path) == target:
                        return pid
                except OSError:
                    continue
    return None


def _request(
    port: int, method: str, path: str, workers: list[int], body: Any = None
) -> tuple[int, dict[str, str], Any, int | None]:
    """One request on a fresh connection: status, headers, JSON body, the worker that served it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.connect()
        assert conn.sock is not None
        client_port = conn.sock.getsockname()[1]
        headers = {**ALICE, "Content-Type": "application/json"}
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        resp = conn.getresponse()
        data = json.loads(resp.read() or b"null")
        # The connection is kept alive: its server end still belongs to the worker.
        pid = _serving_pid(port, client_port, workers)
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, pid
    finally:
        conn.close()


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc")
def test_any_worker_answers_any_job(tmp_path: Path, servers: list[Server]) -> None:
    """uvicorn --workers 2: a job accepted by one worker is polled to its result on the other."""
    server = start_example("starlette", tmp_path, servers, workers=2)
    assert server.proc is not None
    workers: list[int] = []
    deadline = time.monotonic() + 20
    while len(workers) < 2:
        workers = [p for p in _children(server.proc.pid) if Path(f"/proc/{p}/fd").exists()]
        assert time.monotonic() < deadline, "uvicorn did not start two workers"
        time.sleep(0.1)

    status, headers, body, accepted_by = _request(
        server.port, "POST", "/reports", workers, {"title": "cross"}
    )
    assert status == 202, body
    assert accepted_by in workers
    loc = headers["location"]

    # Fresh connections until the job has finished and the other worker has served it
    # past "queued" (the kernel picks the worker; bounded).
    answered_by: set[int | None] = set()
    other_saw: list[tuple[int, Any]] = []
    finished = False
    deadline = time.monotonic() + 30
    while not (finished and any(b["status"] != "queued" for _, b in other_saw)):
        assert time.monotonic() < deadline, f"answered by {answered_by}, accepted by {accepted_by}"
        status, headers, body, pid = _request(server.port, "GET", loc, workers)
        assert status in (200, 303), body
        assert body["id"] and body["status"] in ("queued", "processing", "completed")
        answered_by.add(pid)
        if pid is not None and pid != accepted_by:
            other_saw.append((status, body))
        finished = finished or status == 303
        time.sleep(0.05)
    assert any(b["status"] in ("processing", "completed") for _, b in other_saw)

    # The result, read through the other worker too.
    deadline = time.monotonic() + 30
    while True:
        status, _, body, pid = _request(server.port, "GET", loc + "/result", workers)
        assert status == 200, body
        assert body == {"title": "cross", "pages": 5, "framework": "starlette"}
        if pid is not None and pid != accepted_by:
            break
        assert time.monotonic() < deadline, "the other worker never served the result"
