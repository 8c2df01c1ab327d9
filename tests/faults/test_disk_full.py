"""SQLite on a full disk: accepts answer 503 problem+json (never a 500, never a silent
loss), status reads keep working, and once space frees everything resumes.

The store lives on a small tmpfs the test mounts (root only; skipped with a message
where mounting is not allowed) and unmounts at its end.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.conftest import SIZES, Deployment
from tests.faults.harness import (
    FaultRun,
    Submission,
    assert_nothing_lost,
    read_ledger,
    wait_until,
)
from tests.services import IN_CI

pytestmark = pytest.mark.slow

PROBLEM = "application/problem+json"


@pytest.fixture
def small_disk(
    request: pytest.FixtureRequest, tmp_path: Path, deploy: Deployment
) -> Iterator[Path]:
    """A tmpfs mounted under ``tmp_path`` (4 MiB; 64 MiB for a long run's jobs),
    unmounted at the end (after the deployment's servers, which hold the store's
    file open, are gone)."""
    size = "4m" if request.node.callspec.params.get("n", 8) <= 8 else "64m"
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        msg = f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {done.stderr.strip()}"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    try:
        yield mount
    finally:
        for _ in range(50):  # a server still holding the file keeps it busy a moment
            if subprocess.run(["umount", str(mount)], check=False).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Write a filler file until the disk has no byte left; its path."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    finally:
        os.close(fd)
    return filler


def submit_until_refused(run: FaultRun, path: str, tries: int) -> list[Submission]:
    """Submit (1 KiB bodies, so each job needs new pages) until the first 503; all subs."""
    subs: list[Submission] = []
    for _ in range(tries):
        sub = run.submit(path, 1, query="sleep=0.05&pad=" + "x" * 1024, prefix="full")[0]
        subs.append(sub)
        if sub.code != 202:
            break
    return subs


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("door", ["uvicorn", "gunicorn"])
def test_full_disk_answers_503_and_recovers(
    deploy: Deployment, small_disk: Path, door: str, n: int
) -> None:
    """Disk full: 503 problem+json, earlier status URLs still answer; space freed: 202s again."""
    deploy.store = f"sqlite:///{small_disk / 'jobs.db'}"
    server, path = deploy.door(door)
    run = deploy.run(server)
    before = run.submit(path, n, query="sleep=0.05", prefix="before")
    run.wait_for(before, ("completed",), at_least=n, timeout=30 + n * 0.2)
    # Jobs still running when the disk fills: their outcomes are written once it frees.
    inflight = run.submit(path, n, query="sleep=1", prefix="inflight")
    running = run.wait_for(inflight, ("processing",), at_least=min(n, 4), timeout=20)
    filler = fill(small_disk)
    try:
        full = submit_until_refused(run, path, tries=200)
        # Every in-flight handler is done while the disk is full (outcomes held in memory).
        wait_until(lambda: all(read_ledger(deploy.ledger)[s.key] for s in running), 20, "handlers")
        refused = full[-1]
        assert refused.code == 503, [s.code for s in full]
        assert refused.content_type == PROBLEM, refused
        # Reads need no space: the earlier jobs' status URLs still answer, and the
        # finished handlers' jobs read processing until their outcome is written
        # (which may still land in space SQLite already holds: then completed).
        for sub in before:
            code, body = run.status(sub)
            assert code == 303 and body is not None and body["status"] == "completed", code
        for sub in running:
            code, body = run.status(sub)
            assert body is not None and (code, body["status"]) in (
                (200, "processing"),
                (303, "completed"),
            ), code
    finally:
        filler.unlink()
    after = run.submit(path, n, query="sleep=0.05", prefix="after")
    assert all(s.code == 202 for s in after), [s.code for s in after]
    report = run.poll_all(timeout=60 + n * 0.5)
    assert report.completed == report.accepted, report.summary()
    assert report.completed >= 3 * n, report.summary()
    assert set(report.refused) == {"503"}, report.summary()
    assert_nothing_lost(report)
    assert all(s.code == 202 for s in inflight), [s.code for s in inflight]
    server.stop()
    with contextlib.closing(sqlite3.connect(small_disk / "jobs.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
