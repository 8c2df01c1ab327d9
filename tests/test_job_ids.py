"""Job ids: 128 random bits from a pooled OS CSPRNG, never repeated across threads or forks."""

from __future__ import annotations

import base64
import os
import string
import subprocess
import sys
import textwrap
import threading

import pytest

from async_accept import job as job_module
from async_accept.job import new_job_id


def _bits(job_id: str) -> bytes:
    return base64.urlsafe_b64decode(job_id + "==")


def test_ids_are_16_random_bytes_url_safe() -> None:
    """An id is 22 URL-safe characters that decode to 16 bytes, and 20,000 ids never repeat."""
    ids = [new_job_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    for job_id in ids[:100]:
        assert len(job_id) == 22 and len(_bits(job_id)) == 16
        assert set(job_id) <= set(string.ascii_letters + string.digits + "-_")


def test_the_os_is_asked_once_per_256_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool reads 4 KiB per os.urandom call and hands out each byte once."""
    calls: list[int] = []
    real = os.urandom

    def counting(n: int) -> bytes:
        calls.append(n)
        return real(n)

    pool = job_module._RandomPool()
    monkeypatch.setattr(os, "urandom", counting)
    chunks = [pool.take(16) for _ in range(512)]
    assert calls == [4096, 4096]
    assert b"".join(chunks[:256]) != b"".join(chunks[256:])
    assert len(set(chunks)) == 512


def test_threads_never_get_the_same_id() -> None:
    """Eight threads taking ids at once get 40,000 distinct ones."""
    out: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def work(mine: list[str]) -> None:
        start.wait()
        mine.extend(new_job_id() for _ in range(5000))

    threads = [threading.Thread(target=work, args=(o,)) for o in out]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for o in out for i in o]
    assert len(every) == 40_000 and len(set(every)) == 40_000


FORK_SCRIPT = textwrap.dedent(
    """
    import os
    from async_accept.job import new_job_id

    new_job_id()  # the pool now holds bytes both processes would see after a fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, ",".join(new_job_id() for _ in range(10)).encode())
        os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 4096):
        data += chunk
    os.waitpid(pid, 0)
    print(data.decode())
    print(",".join(new_job_id() for _ in range(10)))
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_repeat_the_parents_next_ids() -> None:
    """After fork, the child draws fresh bytes: its ids differ from the ones the parent
    goes on to draw from the pool they shared."""
    out = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    child, parent = set(out[0].split(",")), set(out[1].split(","))
    assert len(child) == 10 and len(parent) == 10 and not child & parent
