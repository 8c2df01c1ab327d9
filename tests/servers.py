"""Start and stop real server processes (uvicorn, gunicorn) on 127.0.0.1 for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from tests.services import free_port

ROOT = Path(__file__).resolve().parent.parent


class Server:
    """A server subprocess in its own process group; ``stop`` kills the whole group."""

    def __init__(self, argv: Sequence[str], port: int, env: dict[str, str], log: Path) -> None:
        self.argv = list(argv)
        self.port = port
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{port}"
        #: the directory the server runs in (where relative store paths land)
        self.cwd: Path = ROOT

    def start(self, ready_path: str = "/hello", timeout: float = 30.0) -> Server:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.base + ready_path, timeout=1).status_code < 500:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def kill(self) -> None:
        """kill -9 the whole process group (server and its workers)."""
        self.stop(signal.SIGKILL)


def uvicorn(
    app: str, env: dict[str, str], log: Path, workers: int = 1, port: int | None = None
) -> Server:
    port = port or free_port()
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--workers",
        str(workers),
    ]
    return Server(argv, port, env, log)


def gunicorn(
    app: str, env: dict[str, str], log: Path, workers: int = 1, port: int | None = None
) -> Server:
    port = port or free_port()
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        app,
        "-b",
        f"127.0.0.1:{port}",
        "-w",
        str(workers),
        "--threads",
        "4",
        "--graceful-timeout",
        "5",
        "--log-level",
        "warning",
    ]
    return Server(argv, port, env, log)


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNC_ACCEPT_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env
