"""Fixtures of the fault runs; the long runs are skipped unless asked for.

Long runs: ``python -m pytest tests/faults -m faults_long -p no:cacheprovider``
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import FaultRun
from tests.servers import Server, base_env, gunicorn, uvicorn

LONG_HINT = "long fault run: python -m pytest tests/faults -m faults_long"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "faults_long" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason=LONG_HINT)
    for item in items:
        if item.get_closest_marker("faults_long") is not None:
            item.add_marker(skip)


#: a short run in the default suite, a long one behind the marker
SIZES = [
    pytest.param(8, id="short"),
    pytest.param(200, id="long", marks=[pytest.mark.faults_long, pytest.mark.timeout(900)]),
]


class Deployment:
    """Real servers started by one test (stopped at its end), with a ledger."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.ledger = tmp_path / "ledger.txt"
        self.store = f"sqlite:///{tmp_path / 'jobs.db'}"
        self.servers: list[Server] = []
        self.runs: list[FaultRun] = []

    def env(self, **extra: str) -> dict[str, str]:
        options = {
            "ASYNC_ACCEPT_STORE": self.store,
            "ASYNC_ACCEPT_FAULT_LEDGER": str(self.ledger),
            "ASYNC_ACCEPT_HEARTBEAT_INTERVAL": "0.2",
            "ASYNC_ACCEPT_WORKER_LOST_AFTER": "2",
            "ASYNC_ACCEPT_SWEEP_INTERVAL": "0.5",
            "ASYNC_ACCEPT_REQUEUE_AFTER": "1",
            # Long runs queue minutes of work: the deadline must not be what ends it.
            "ASYNC_ACCEPT_FAULT_SLA": "600",
        }
        options.update(extra)
        return base_env(**options)

    def uvicorn(self, workers: int = 1, **env: str) -> Server:
        server = uvicorn(
            "tests.faults.app:asgi_app", self.env(**env), self.tmp_path / "server.log", workers
        )
        return self.started(server.start())

    def gunicorn(self, workers: int = 1, **env: str) -> Server:
        server = gunicorn(
            "tests.faults.app:wsgi_app", self.env(**env), self.tmp_path / "server.log", workers
        )
        return self.started(server.start())

    def door(self, door: str, **env: str) -> tuple[Server, str]:
        """gunicorn with a 4-thread executor or uvicorn with a 4-task asyncio one; the
        server and its job route (a sync handler under gunicorn)."""
        if door == "gunicorn":
            return self.gunicorn(ASYNC_ACCEPT_EXECUTOR="thread?max_workers=4", **env), "/work-sync"
        return self.uvicorn(ASYNC_ACCEPT_EXECUTOR="asyncio?max_concurrency=4", **env), "/work"

    def started(self, server: Server) -> Server:
        self.servers.append(server)
        return server

    def run(self, server: Server) -> FaultRun:
        run = FaultRun(server.base, self.ledger)
        self.runs.append(run)
        return run

    def log(self) -> str:
        path = self.tmp_path / "server.log"
        return path.read_text()[-4000:] if path.exists() else ""


@pytest.fixture
def deploy(tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment(tmp_path)
    yield d
    for run in d.runs:
        run.close()
    for server in d.servers:
        server.kill()
