"""Driving servers: wrk (or the Python fallback) pinned to the load core, A-B-B-A rounds."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ._proc import LOAD_CPU, PY, ROOT, Proc, child_env, pin

LUA = Path(__file__).resolve().parent / "lua" / "bench.lua"
AUTH = "Bearer benchmark-user"
WRK = shutil.which("wrk")


@dataclass
class Target:
    """What one side of a comparison requests."""

    label: str
    server: Proc
    path: str = "/hello"
    method: str = "GET"
    body: str | None = None
    paths_file: Path | None = None  # round-robin over these paths instead of ``path``

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port


@dataclass
class Load:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    cpu: float | None = None  # server CPU seconds / wall seconds during the run

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass
class Settings:
    rounds: int = 10
    duration: float = 3.0
    warmup: float = 1.0
    connections: int = 32
    loadgen: str = "wrk" if WRK else "python"
    notes: list[str] = field(default_factory=list)


def run_load(t: Target, duration: float, s: Settings, max_requests: int | None = None) -> Load:
    """One bounded load run against ``t`` from the load core."""
    env = child_env()
    env.pop("BENCH_PATHS", None)
    env.pop("BENCH_BODY", None)
    env.update({"BENCH_METHOD": t.method, "BENCH_AUTH": AUTH})
    if t.body is not None:
        env["BENCH_BODY"] = t.body
    if t.paths_file is not None:
        env["BENCH_PATHS"] = str(t.paths_file)
    if s.loadgen == "wrk" and max_requests is None:
        seconds = max(1, round(duration))  # wrk takes whole seconds
        argv = [WRK or "wrk", "-t1", f"-c{s.connections}", f"-d{seconds}s", "--latency"]
        argv += ["--timeout", "10s", "-s", str(LUA), f"http://127.0.0.1:{t.port}{t.path}"]
    else:
        argv = [PY, "-m", "benchmarks._pyload", "--port", str(t.port), "--path", t.path]
        argv += ["--method", t.method, "--auth", AUTH, "--connections", str(s.connections)]
        argv += ["--duration", str(duration)]
        if max_requests is not None:
            argv += ["--max-requests", str(max_requests)]
        if t.body is not None:
            argv += ["--body", t.body]
        if t.paths_file is not None:
            argv += ["--paths", str(t.paths_file)]
    cpu0, wall0 = t.server.cpu_seconds(), time.monotonic()
    out = subprocess.run(
        [*pin(LOAD_CPU), *argv],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=False,
    )
    for line in out.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            d = json.loads(line[len("BENCHJSON ") :])
            cpu1, wall1 = t.server.cpu_seconds(), time.monotonic()
            errors = d["connect"] + d["read"] + d["write"] + d["status"] + d["timeout"]
            return Load(
                requests=d["requests"],
                seconds=d["duration_us"] / 1e6,
                errors=errors,
                p50_ms=d["p50_us"] / 1000,
                p99_ms=d["p99_us"] / 1000,
                # The load generator's start-up is inside the wall time: a slight undercount.
                cpu=(cpu1 - cpu0) / (wall1 - wall0) if cpu0 is not None and cpu1 else None,
            )
    raise RuntimeError(f"load generator failed ({out.returncode}): {out.stderr[-800:]}")


@dataclass
class Comparison:
    a: Target
    b: Target
    a_runs: list[Load]
    b_runs: list[Load]

    @property
    def ratios(self) -> list[float]:
        return [
            x.rps / y.rps if y.rps else 0.0 for x, y in zip(self.a_runs, self.b_runs, strict=True)
        ]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    def med(self, side: str, attr: str) -> float:
        runs = self.a_runs if side == "a" else self.b_runs
        values = [getattr(r, attr) for r in runs]
        if any(v is None for v in values):
            return float("nan")
        return statistics.median(values)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.a_runs + self.b_runs)

    def spread(self) -> str:
        r = sorted(self.ratios)
        return f"{r[0]:.2f}-{r[-1]:.2f}"


def compare(a: Target, b: Target, s: Settings) -> Comparison:
    """Median of ``s.rounds`` rounds in A-B-B-A order (AB, BA, AB, ...), after a warmup."""
    run_load(a, s.warmup, s)
    run_load(b, s.warmup, s)
    a_runs: list[Load] = []
    b_runs: list[Load] = []
    for i in range(s.rounds):
        if i % 2 == 0:
            a_runs.append(run_load(a, s.duration, s))
            b_runs.append(run_load(b, s.duration, s))
        else:
            b_runs.append(run_load(b, s.duration, s))
            a_runs.append(run_load(a, s.duration, s))
    return Comparison(a, b, a_runs, b_runs)
