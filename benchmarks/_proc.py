"""Real server and worker processes on 127.0.0.1, pinned to a core, always stopped."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the project checkout
PY = sys.executable

#: The server (and its workers) run on this core, load generators on the other.
SERVER_CPU = 0
LOAD_CPU = 1

_live: dict[int, Proc] = {}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: this checkout importable, no bytecode written."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    env.update(extra or {})
    return env


def pin(cpu: int) -> list[str]:
    """``taskset`` prefix for a command (empty when the CPU does not exist)."""
    if cpu >= (os.cpu_count() or 1):
        return []
    return ["taskset", "-c", str(cpu)]


class Proc:
    """One child process in its own process group, stopped by its id."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cpu: int | None = SERVER_CPU,
        log_dir: Path,
        port: int | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.log_path = log_dir / f"{name}.log"
        full_env = child_env(env)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        prefix = pin(cpu) if cpu is not None else []
        self.popen = subprocess.Popen(
            [*prefix, *argv],
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own group: stop() reaches its children too
        )
        self.pid = self.popen.pid
        _live[self.pid] = self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def wait_http(self, path: str = "/hello", timeout: float = 30.0) -> None:
        """Wait until the server answers ``GET path`` (any status)."""
        assert self.port is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
                    if s.recv(16).startswith(b"HTTP/1."):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer within {timeout}s:\n{self.log_tail()}")

    def wait_log(self, needle: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log_tail(200):
                return
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: no {needle!r} in its log within {timeout}s")

    def pids(self) -> list[int]:
        """This process and its descendants."""
        out = [self.pid]
        i = 0
        while i < len(out):
            try:
                kids = Path(f"/proc/{out[i]}/task/{out[i]}/children").read_text().split()
            except OSError:
                kids = []
            out.extend(int(k) for k in kids)
            i += 1
        return out

    def rss_kb(self) -> int:
        """VmRSS of the process doing the work (gunicorn: its worker, the last child)."""
        pid = self.pids()[-1]
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the working process (all its threads)."""
        try:
            fields = Path(f"/proc/{self.pids()[-1]}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 10.0) -> None:
        if self.pid not in _live:
            return
        try:
            if self.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGTERM)
                try:
                    self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.pid, signal.SIGKILL)
                    self.popen.wait(5)
            # Children left behind in the group (a worker's own children).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        finally:
            _live.pop(self.pid, None)
            self._log.close()


def stop_all() -> None:
    for proc in list(_live.values()):
        proc.stop(timeout=5)


atexit.register(stop_all)


def _on_signal(signum: int, frame: object) -> None:
    stop_all()
    sys.exit(128 + signum)


signal.signal(signal.SIGTERM, _on_signal)


@contextlib.contextmanager
def running(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            p.stop()


def app_env(
    *, mw: bool, store: str = "memory://", executor: str | None = None, **extra: str
) -> dict[str, str]:
    env = {"BENCH_MW": "1" if mw else "0", "BENCH_STORE": store}
    if executor:
        env["BENCH_EXECUTOR"] = executor
    env.update(extra)
    return env


#: uvicorn's HTTP parser and event loop, the same for every server of a run
#: (``--uvicorn``): h11 + asyncio (what a plain ``pip install uvicorn`` gives), or
#: httptools + uvloop (``pip install 'uvicorn[standard]'``)
UVICORN_STACKS = {
    "h11": ["--http", "h11", "--loop", "asyncio"],
    "httptools": ["--http", "httptools", "--loop", "uvloop"],
}
UVICORN_FLAGS = list(UVICORN_STACKS["h11"])


def uvicorn(name: str, target: str, env: dict[str, str], log_dir: Path) -> Proc:
    """One uvicorn process (no reload, no access log), pinned to the server core."""
    port = free_port()
    argv = [PY, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--no-access-log", "--log-level", "warning", "--lifespan", "on", *UVICORN_FLAGS]
    p = Proc(name, argv, env=env, log_dir=log_dir, port=port)
    p.wait_http()
    return p


def gunicorn(name: str, target: str, env: dict[str, str], log_dir: Path) -> Proc:
    """One gunicorn worker (gthread, 4 threads: keep-alive like uvicorn), pinned."""
    port = free_port()
    argv = [PY, "-m", "gunicorn", target, "-b", f"127.0.0.1:{port}", "-w", "1"]
    argv += ["-k", "gthread", "--threads", "4", "--log-level", "warning"]
    argv += ["--keep-alive", "30"]
    p = Proc(name, argv, env=env, log_dir=log_dir, port=port)
    p.wait_http()
    return p
