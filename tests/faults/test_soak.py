"""A soak: jobs accepted at a steady rate for minutes; nothing is lost and nothing drifts.

Each window (a minute in the long run) samples the server process's RSS and open
file descriptors, the SQLite WAL file's size, and the accept latency. A resource
that grows window after window is a leak; the test asserts the resources, and
prints the latency per window (a benchmark figure, never asserted).

Long run (5 minutes at 100 jobs/s, per server):
``python -m pytest tests/faults/test_soak.py -m faults_long -s``
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from tests.faults.conftest import Deployment
from tests.faults.harness import FaultRun, assert_nothing_lost, children

pytestmark = pytest.mark.slow

#: (jobs per second, seconds, window seconds)
SOAKS = [
    pytest.param((20, 24, 6), id="short"),
    pytest.param(
        (100, 300, 60), id="long", marks=[pytest.mark.faults_long, pytest.mark.timeout(1200)]
    ),
]


@dataclass
class Window:
    """What one window of the soak saw."""

    second: int
    accepted: int
    rss_mb: float
    fds: int
    wal_mb: float
    accept_p50_ms: float
    accept_p99_ms: float


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q / 100 * len(v)) - 1))] if v else 0.0


def soak(
    run: FaultRun, pid: int, wal: Path, path: str, rate: int, seconds: int, window: int
) -> list[Window]:
    """Submit ``rate`` jobs a second for ``seconds``; one Window per ``window`` seconds."""
    windows: list[Window] = []
    latencies: list[float] = []
    start = time.monotonic()
    next_at = start
    window_end = start + window
    accepted = 0
    while time.monotonic() - start < seconds:
        now = time.monotonic()
        if now < next_at:
            time.sleep(next_at - now)
        next_at += 1 / rate
        t0 = time.perf_counter()
        (sub,) = run.submit(path, 1, query="sleep=0.01")
        latencies.append((time.perf_counter() - t0) * 1000)
        accepted += sub.code == 202
        if time.monotonic() >= window_end:
            windows.append(
                Window(
                    second=round(time.monotonic() - start),
                    accepted=accepted,
                    rss_mb=round(rss_mb(pid), 1),
                    fds=open_fds(pid),
                    wal_mb=round(wal.stat().st_size / 2**20 if wal.exists() else 0.0, 2),
                    accept_p50_ms=round(pct(latencies, 50), 2),
                    accept_p99_ms=round(pct(latencies, 99), 2),
                )
            )
            latencies, accepted = [], 0
            window_end += window
    return windows


@pytest.mark.parametrize("soak_spec", SOAKS)
@pytest.mark.parametrize("door", ["uvicorn", "gunicorn"])
def test_a_steady_load_loses_nothing_and_leaks_nothing(
    deploy: Deployment, door: str, soak_spec: tuple[int, int, int]
) -> None:
    """Jobs at a steady rate: all complete once; RSS, fds and the WAL stop growing."""
    rate, seconds, window = soak_spec
    server, path = deploy.door(door)
    assert server.proc is not None
    pid = server.proc.pid
    if door == "gunicorn":
        (pid,) = children(pid)  # the worker runs the app, not the arbiter
    wal = deploy.tmp_path / "jobs.db-wal"
    run = deploy.run(server)
    windows = soak(run, pid, wal, path, rate, seconds, window)
    report = run.poll_all(timeout=120 + seconds)
    print(f"\nsoak {door} {rate}/s for {seconds} s:")
    for w in windows:
        print("  " + json.dumps(asdict(w)))
    print("  " + report.summary())
    out = os.environ.get("ASYNC_ACCEPT_FAULT_REPORTS")
    if out:
        with open(out, "a", encoding="utf-8") as f:
            row = {
                "test": f"soak {door} {rate}/s {seconds}s",
                "windows": [asdict(w) for w in windows],
            }
            f.write(json.dumps(row) + "\n")

    assert report.accepted == report.submitted, report.summary()
    assert report.completed == report.accepted, report.summary()
    assert_nothing_lost(report)
    # No drift: after the first window (imports, pools and caches warming up), the
    # resources stop growing. The bounds leave room for allocator noise, not a leak.
    steady = windows[1:]
    assert len(steady) >= 2, windows
    first, last = steady[0], steady[-1]
    assert last.rss_mb <= first.rss_mb * 1.25 + 15, windows
    assert last.fds <= first.fds + 8, windows
    # SQLite checkpoints its WAL back into the database as it goes (every ~4 MB).
    assert max(w.wal_mb for w in steady) <= 16, windows
