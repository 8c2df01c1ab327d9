"""A redis-server of the test's own, on a free port (never the machine's :6379),
with or without an append-only file, that a scenario can restart."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.faults.harness import wait_until
from tests.services import IN_CI, free_port


def _answers(port: int) -> bool:
    import redis

    client = redis.Redis(port=port, socket_connect_timeout=0.2, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class OwnRedis:
    """``redis-server`` in ``folder``; ``persistent``: ``appendonly yes`` (fsync
    every write), else no persistence at all (no AOF, no RDB snapshots)."""

    def __init__(self, folder: Path, persistent: bool) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            msg = "redis-server is not installed (apt-get install redis-server)"
            if IN_CI:
                pytest.fail(msg)
            pytest.skip(msg)
        self.persistent = persistent
        self.argv = [
            binary,
            "--port",
            str(free_port()),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(folder),
            "--save",
            "",
            "--appendonly",
            "yes" if persistent else "no",
            "--appendfsync",
            "always",
        ]
        self.port = int(self.argv[2])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = folder / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OwnRedis:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_until(lambda: _answers(self.port), 10, f"redis-server on :{self.port}")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it (SIGTERM: a clean shutdown, which flushes the append-only file)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()
