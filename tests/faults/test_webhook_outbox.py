"""A job never ends without its webhook: the delivery is written with the end.

The store writes a job's webhook delivery in the transaction that ends it, so
neither a lost reply from the store nor a process killed right after the end
can leave a job ended with no delivery recorded (before, the delivery was a
second write after the end, and both faults below lost it).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from tests.faults.conftest import SIZES, Deployment
from tests.faults.harness import FaultReport, assert_nothing_lost, restart
from tests.test_webhooks import SECRET, Receiver, receiver

__all__ = ["receiver"]  # the real webhook receiver on 127.0.0.1 (a fixture)

pytestmark = pytest.mark.slow


def hook_env(rec: Receiver, **extra: str) -> dict[str, str]:
    rec.now = None  # the dispatcher signs with the wall clock
    return {
        "ASYNC_ACCEPT_WEBHOOK_URL": rec.url("/hook"),
        "ASYNC_ACCEPT_WEBHOOK_SECRET": SECRET,
        "ASYNC_ACCEPT_FAULT_WRAP_STORE": "1",
        **extra,
    }


def notified(rec: Receiver, report: FaultReport, timeout: float) -> dict[str, list[str]]:
    """Wait until every ended job was notified (or ``timeout``); status by job id."""
    want = {body["id"] for body in report.final.values()}
    deadline = time.monotonic() + timeout
    while True:
        got: dict[str, list[str]] = {}
        with rec.lock:
            requests = list(rec.requests)
        for req in requests:
            assert req.verified == "ok", req.verified
            data = json.loads(req.body)["data"]
            got.setdefault(data["id"], []).append(data["status"])
        if want <= set(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def undelivered(db: Path) -> list[str]:
    """Ended jobs of the store's file without a webhook delivery recorded."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT id FROM jobs WHERE status IN ('completed', 'failed', 'canceled') "
            "AND id NOT IN (SELECT job_id FROM webhook_deliveries WHERE job_id IS NOT NULL)"
        ).fetchall()
    return [r[0] for r in rows]


@pytest.mark.parametrize("n", SIZES)
def test_a_lost_reply_to_finish_still_notifies(
    deploy: Deployment, receiver: Receiver, n: int
) -> None:
    """The first finishes are written but their replies lost: every job is notified once."""
    server = deploy.uvicorn(**hook_env(receiver, ASYNC_ACCEPT_FAULT_LOST_REPLIES="3"))
    run = deploy.run(server)
    run.submit("/work", n, query="sleep=0.05")
    report = run.poll_all(timeout=30 + n * 0.2)
    assert_nothing_lost(report)
    assert report.completed == n, report.summary()
    got = notified(receiver, report, timeout=20 + n * 0.1)
    assert set(got) == {body["id"] for body in report.final.values()}
    assert all(v == ["completed"] for v in got.values()), got
    assert undelivered(deploy.tmp_path / "jobs.db") == []


@pytest.mark.parametrize("n", SIZES)
def test_a_process_killed_right_after_finish_still_notifies(
    deploy: Deployment, receiver: Receiver, n: int
) -> None:
    """kill right after a finish is written (before anything else runs): after a restart,
    every ended job, the killed one's included, is notified; none ends without a delivery."""
    marker = deploy.tmp_path / "killed-after-finish"
    env = hook_env(receiver, ASYNC_ACCEPT_FAULT_EXIT_AFTER_FINISH=str(marker))
    server = deploy.uvicorn(**env)
    run = deploy.run(server)
    run.submit("/work", n, query="sleep=0.5")
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert time.monotonic() < deadline, "no job finished"
        time.sleep(0.05)
    assert server.proc is not None and server.proc.wait(10) is not None  # it really died
    killed = marker.read_text()
    # The delivery was written with the end (its payload is empty unless the dead
    # process's dispatcher thread claimed it in the instant before the exit).
    with sqlite3.connect(deploy.tmp_path / "jobs.db") as conn:
        rows = conn.execute(
            "SELECT state FROM webhook_deliveries WHERE job_id = ?", (killed,)
        ).fetchall()
    assert len(rows) == 1, rows
    deploy.started(restart(server))
    report = run.poll_all(timeout=60 + n * 0.3)
    # (a submission still in flight when the process died is refused, not lost)
    assert report.accepted >= 1 and not report.never_ending, report.summary()
    assert not report.vanished, report.summary()
    got = notified(receiver, report, timeout=30 + n * 0.1)
    assert got.get(killed) == ["completed"], got.get(killed)
    assert set(got) == {body["id"] for body in report.final.values()}
    assert all(len(v) == 1 for v in got.values()), got
    assert undelivered(deploy.tmp_path / "jobs.db") == []
