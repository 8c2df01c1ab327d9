"""The README's first command: ``python3 examples/demo.py`` runs on the embedded default
and prints 202 -> progress -> 303 -> result, then the 404 another caller gets."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_prints_202_progress_303_result_and_exits_0() -> None:
    """The demo, run as the README says, shows each step of the protocol in order."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNC_ACCEPT_")}
    done = subprocess.run(
        [sys.executable, "examples/demo.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "store: SQLite, executor: asyncio" in lines[0]
    assert re.search(r"POST /reports -> 202 Location: \S*/_jobs/\S+ +Retry-After: \d+", lines[1])
    polls = [ln for ln in lines if "GET status ->" in ln]
    assert any(re.search(r"-> 200 processing +\d+\.\d%", ln) for ln in polls), done.stdout
    assert "-> 303 completed" in polls[-1]
    assert any("303 See Other ->" in ln for ln in lines)
    result = next(ln for ln in lines if "GET result ->" in ln)
    assert '-> 200 {"report":"quarterly","pages":6}' in result
    assert lines[-1].startswith("another caller on the status URL -> 404")
