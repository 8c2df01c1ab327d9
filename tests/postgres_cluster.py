"""A PostgreSQL server of a test's own, in a temporary folder on a free port.

Tests that stop or restart the database use this one, so the machine's own
server (127.0.0.1:5432) is never touched. Needs PostgreSQL's server programs
(``initdb``, ``pg_ctl``); as root they run as the ``postgres`` user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.services import IN_CI, free_port


def _bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


class PostgresCluster:
    """``initdb`` + ``pg_ctl start/stop/restart``; :attr:`url` reaches database ``postgres``."""

    def __init__(self) -> None:
        bindir = _bindir()
        if bindir is None:
            msg = "PostgreSQL's server programs (initdb, pg_ctl) are not installed"
            if IN_CI:
                pytest.fail(msg)
            pytest.skip(msg)
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="aa-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as: list[str] = []
        if os.geteuid() == 0:  # the server refuses to run as root
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def _run(self, program: str, *args: str) -> None:
        argv = [*self._as, os.path.join(self.bindir, program), *args]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"{program} failed: {out.stdout}\n{out.stderr}\n{self.tail()}")

    def _ctl(self, action: str, *extra: str) -> None:
        self._run("pg_ctl", action, "-D", str(self.data), "-l", str(self.log), "-w", *extra)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("start", "-o", options)

    def stop(self) -> None:
        """Fast shutdown: sessions are cut off, committed data stays."""
        if (self.data / "postmaster.pid").exists():
            self._ctl("stop", "-m", "fast")

    def restart(self, mode: str = "fast") -> None:
        """``immediate`` is a crash as far as sessions and WAL recovery go."""
        self._ctl("restart", "-m", mode)

    def tail(self) -> str:
        try:
            return self.log.read_text()[-3000:]
        except OSError:
            return ""

    def remove(self) -> None:
        """Stop the server and delete its folder."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
