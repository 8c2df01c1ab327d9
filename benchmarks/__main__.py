"""``python -m benchmarks [--quick] [--full] [--sizes N,N] [--stores S,S] [--only NAME ...]``

Starts real servers on 127.0.0.1 (uvicorn / gunicorn, one worker, pinned to
core 0), drives them from core 1 (wrk, else a bounded Python load generator),
prints ratios measured side by side (median of A-B-B-A rounds) with p50/p99,
and writes the tables to ``benchmarks/results.md`` (a run with ``--only`` to
``benchmarks/results.<names>.md`` unless ``--output`` says otherwise). Every process it starts is
stopped when it ends. Benchmarks are not tests: nothing is asserted.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from . import _proc, scenarios, scenarios_pg
from ._load import Settings
from ._proc import LOAD_CPU, stop_all
from ._report import Report

SCENARIOS: dict[str, Callable[[scenarios.Ctx], None]] = {
    "sanity": scenarios.sanity,
    "passthrough": scenarios.passthrough,
    "inprocess": scenarios.inprocess_paths,
    "accept": scenarios.accept,
    "poll": scenarios.poll,
    "e2e": scenarios.end_to_end,
    "waiting": scenarios.waiting,
    "waiters": scenarios.waiters,
    "peers": scenarios.peers,
    "pg_peers": scenarios_pg.pg_peers,
    "pg_notify": scenarios_pg.pg_notify,
    "loop": scenarios.loop_health,
    "scale": scenarios.scale,
    "owned": scenarios.owned,
    "memory": scenarios.memory,
    "profile": scenarios.profile,
}


def _ints(value: str) -> list[int]:
    try:
        sizes = [int(v.replace("_", "")) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: comma-separated numbers") from None
    if not sizes or min(sizes) < 200:
        raise argparse.ArgumentTypeError(f"{value!r}: sizes of at least 200 jobs")
    return sizes


RESULTS = Path(__file__).resolve().parent / "results.md"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="short rounds and small sizes (smoke run)")
    p.add_argument("--full", action="store_true", help="also the 1M-job scale case")
    p.add_argument(
        "--sizes",
        type=_ints,
        help="store sizes of the scale and owned cases, e.g. 10000,100000,1000000",
    )
    p.add_argument(
        "--stores",
        type=lambda v: [s.strip() for s in v.split(",") if s.strip()],
        help="stores of the owned and scale cases, e.g. redis,postgres (default: every one "
        "reachable)",
    )
    p.add_argument(
        "--only",
        action="append",
        choices=sorted(SCENARIOS),
        metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}",
    )
    p.add_argument("--rounds", type=int, help="A-B rounds per ratio (default 10; quick 6)")
    p.add_argument("--duration", type=float, help="seconds per load run (default 3; quick 1)")
    p.add_argument("--loadgen", choices=["wrk", "python"], help="default: wrk when installed")
    p.add_argument(
        "--uvicorn",
        choices=sorted(_proc.UVICORN_STACKS),
        default="h11",
        help="uvicorn's HTTP parser and loop for every server: h11 + asyncio (default, a "
        "plain uvicorn install) or httptools + uvloop (uvicorn[standard])",
    )
    p.add_argument(
        "--output",
        type=Path,
        help="Markdown results file (default: benchmarks/results.md for a run of every "
        "scenario; with --only, benchmarks/results.<names>.md, git-ignored, so that a "
        "partial run never replaces the full results)",
    )
    args = p.parse_args(argv)
    if args.output is None:
        args.output = RESULTS if not args.only else only_output(args.only)

    settings = Settings()
    if args.quick:
        settings.rounds, settings.duration, settings.warmup = 6, 1.0, 1.0
    if args.rounds:
        settings.rounds = max(2, args.rounds)
    if args.duration:
        settings.duration = args.duration
    if args.loadgen:
        settings.loadgen = args.loadgen
    if args.uvicorn == "httptools":
        missing = [m for m in ("httptools", "uvloop") if importlib.util.find_spec(m) is None]
        if missing:
            raise SystemExit(
                f"--uvicorn httptools needs {', '.join(missing)}: pip install 'uvicorn[standard]'"
            )
    _proc.UVICORN_FLAGS[:] = _proc.UVICORN_STACKS[args.uvicorn]
    if settings.loadgen == "wrk" and not shutil.which("wrk"):
        print("wrk not found: using the Python load generator (apt-get install wrk for wrk)")
        settings.loadgen = "python"

    # This process probes latencies and loads jobs: keep it off the server core.
    if (os.cpu_count() or 1) > LOAD_CPU:
        os.sched_setaffinity(0, {LOAD_CPU})

    command = "python -m benchmarks " + shlex.join(argv if argv is not None else sys.argv[1:])
    report = Report(
        command=command.strip(),
        settings=(
            f"{settings.rounds} rounds x {settings.duration:g} s per side, "
            f"{settings.connections} connections, load generator {settings.loadgen}, "
            "server on core 0 and load on core 1 (taskset), one server process, uvicorn "
            + ("h11 + asyncio" if args.uvicorn == "h11" else "httptools + uvloop")
        ),
    )
    tmp = Path(tempfile.mkdtemp(prefix="aa-bench-"))
    ctx = scenarios.Ctx(
        quick=args.quick,
        full=args.full,
        settings=settings,
        report=report,
        tmp=tmp,
        sizes=args.sizes,
        stores=args.stores,
    )
    report.notes.append(f"Code measured: {_revision()}; load average at start {_loadavg()}.")
    names = args.only or list(SCENARIOS)
    failed = False
    t_start = time.monotonic()
    try:
        for name in names:
            print(f"== {name}: {(SCENARIOS[name].__doc__ or '').splitlines()[0]}", flush=True)
            t0 = time.monotonic()
            try:
                SCENARIOS[name](ctx)
            except Exception as exc:
                failed = True
                traceback.print_exc()
                report.skip(name, f"failed: {exc!r} (logs in {tmp})")
            finally:
                stop_all()
            print(f"   ({time.monotonic() - t0:.0f} s)", flush=True)
    finally:
        stop_all()
    report.notes.append(
        f"Total run time {time.monotonic() - t_start:.0f} s; load average at the end "
        f"{_loadavg()} (other work on this machine shows as noise: wide round ratios, "
        "server CPU well below 100% on a bare hello)."
    )
    report.notes.append(
        "errors = non-2xx/3xx answers plus socket errors and timeouts seen by the load "
        "generator, over all rounds of both sides."
    )
    text = report.markdown()
    print()
    print(text)
    args.output.write_text(text)
    print(f"written to {args.output}")
    if not failed:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


def only_output(names: list[str]) -> Path:
    """Where a run of only ``names`` writes its tables by default."""
    return RESULTS.with_name(f"results.{'-'.join(dict.fromkeys(names))}.md")


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _revision() -> str:
    """The commit of the checkout, and whether async_accept/ has local changes."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=False, timeout=10
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "async_accept")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return f"commit {head or 'unknown'}" + (
        " + uncommitted changes in async_accept/" if dirty else ""
    )


if __name__ == "__main__":
    sys.exit(main())
