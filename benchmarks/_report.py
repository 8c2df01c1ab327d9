"""Results: rows grouped in sections, printed and written as Markdown."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field

from ._load import Comparison


@dataclass
class Row:
    section: str
    name: str
    cols: dict[str, str]


@dataclass
class Report:
    command: str
    settings: str
    rows: list[Row] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, section: str, name: str, **cols: str) -> None:
        row = Row(section, name, cols)
        self.rows.append(row)
        print(f"  [{section}] {name}: " + ", ".join(f"{k}={v}" for k, v in cols.items()))

    def skip(self, what: str, why: str) -> None:
        self.skipped.append((what, why))
        print(f"  SKIPPED {what}: {why}")

    def markdown(self) -> str:
        out = ["# async_accept benchmarks", ""]
        date = datetime.datetime.now().astimezone().isoformat(" ", "seconds")
        out += [f"- Machine: {machine()}", f"- Date: {date}"]
        out += [f"- Command: `{self.command}`", f"- Settings: {self.settings}", ""]
        sections: list[str] = []
        for r in self.rows:
            if r.section not in sections:
                sections.append(r.section)
        for sec in sections:
            rows = [r for r in self.rows if r.section == sec]
            keys: list[str] = []
            for r in rows:
                keys += [k for k in r.cols if k not in keys]
            out += [f"## {sec}", ""]
            out.append("| measurement | " + " | ".join(_title(k) for k in keys) + " |")
            out.append("| --- | " + " | ".join("---" for _ in keys) + " |")
            for r in rows:
                out.append(f"| {r.name} | " + " | ".join(r.cols.get(k, "") for k in keys) + " |")
            out.append("")
        if self.skipped:
            out += ["## Skipped", ""]
            out += [f"- **{what}**: {why}" for what, why in self.skipped]
            out.append("")
        if self.notes:
            out += ["## Notes", ""]
            out += [f"- {n}" for n in self.notes]
            out.append("")
        return "\n".join(out)


def _title(key: str) -> str:
    return key.replace("_", " ")


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    kernel = platform.release()
    try:
        import uvicorn

        server = f"uvicorn {uvicorn.__version__}"
    except ImportError:
        server = "no uvicorn"
    try:
        wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
        wrk_v = (wrk.stdout or wrk.stderr).split("\n")[0].split(" [")[0]
    except OSError:
        wrk_v = "no wrk"
    return (
        f"nproc {os.cpu_count()}, {model}, Linux {kernel}, Python {sys.version.split()[0]}, "
        f"{server}, {wrk_v}"
    )


def fmt_ms(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def ratio_cols(c: Comparison, goal: float | None = None, higher: bool = True) -> dict[str, str]:
    cols = {"ratio": f"{c.ratio:.2f}"}
    if goal is not None:
        met = c.ratio >= goal if higher else c.ratio <= goal
        cols["goal"] = (">= " if higher else "<= ") + f"{goal:g}"
        cols["met"] = "yes" if met else "**no**"
    cols["A req/s"] = f"{c.med('a', 'rps'):,.0f}"
    cols["B req/s"] = f"{c.med('b', 'rps'):,.0f}"
    cols["A p50/p99 ms"] = f"{fmt_ms(c.med('a', 'p50_ms'))} / {fmt_ms(c.med('a', 'p99_ms'))}"
    cols["B p50/p99 ms"] = f"{fmt_ms(c.med('b', 'p50_ms'))} / {fmt_ms(c.med('b', 'p99_ms'))}"
    cols["A/B server CPU"] = f"{c.med('a', 'cpu'):.0%} / {c.med('b', 'cpu'):.0%}"
    cols["round ratios"] = c.spread()
    cols["errors"] = str(c.errors)
    return cols
