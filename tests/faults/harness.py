"""A ledger-checked fault harness: submit N jobs to a real server, break something,
poll every job to an end, and count what happened to each.

Each job's handler appends the job's input id to a ledger file when its side
effect is done (see ``tests/faults/app.py``), so the report can tell a job that
ended ``completed`` without ever running, or ran twice, from one that is fine.
The required outcome of every scenario: 0 acknowledged jobs lost (every 202
reaches ``completed``, ``failed`` with a reason the scenario allows, or
``canceled``) and 0 duplicated executions unless the route allows retries.
"""

from __future__ import annotations

import collections
import json
import os
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.servers import Server

OWNER = {"Authorization": "Bearer fault-runner"}
TERMINAL = ("completed", "failed", "canceled")


@dataclass
class Submission:
    """One submitted job: its input id and what the server answered."""

    key: str
    code: int | None  # None: the connection failed
    location: str | None = None
    #: the answer's Content-Type (a refusal must be problem+json)
    content_type: str | None = None


@dataclass
class FaultReport:
    """What happened to every submitted job."""

    submitted: int = 0
    accepted: int = 0
    #: non-202 answers by status code ("connection" when none came)
    refused: dict[str, int] = field(default_factory=dict)
    completed: int = 0
    #: failed jobs by the last segment of their error type (``worker-lost``, ...)
    failed: dict[str, int] = field(default_factory=dict)
    canceled: int = 0
    #: accepted jobs whose status URL later answered 404/410 (by code)
    vanished: dict[int, int] = field(default_factory=dict)
    never_ending: list[str] = field(default_factory=list)
    #: the last status code each never-ending job answered (0: no answer), by code
    stuck_codes: dict[int, int] = field(default_factory=dict)
    completed_not_executed: list[str] = field(default_factory=list)
    canceled_but_executed: list[str] = field(default_factory=list)
    executed_more_than_once: list[str] = field(default_factory=list)
    #: jobs refused (an answer other than 202) whose handler ran anyway
    refused_but_executed: list[str] = field(default_factory=list)
    #: the final status JSON of each accepted job, by input id
    final: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def summary(self) -> str:
        return (
            f"submitted={self.submitted} accepted={self.accepted} refused={self.refused} "
            f"completed={self.completed} failed={self.failed} canceled={self.canceled} "
            f"vanished={self.vanished} never_ending={len(self.never_ending)} "
            f"stuck_codes={self.stuck_codes} "
            f"completed_not_executed={len(self.completed_not_executed)} "
            f"canceled_but_executed={len(self.canceled_but_executed)} "
            f"executed_more_than_once={len(self.executed_more_than_once)} "
            f"refused_but_executed={len(self.refused_but_executed)}"
        )


def record_report(report: FaultReport) -> None:
    """Append the report as one JSON line to $ASYNC_ACCEPT_FAULT_REPORTS, when set
    (the figures of a fault run, for the README)."""
    path = os.environ.get("ASYNC_ACCEPT_FAULT_REPORTS")
    if not path:
        return
    row = {k: v for k, v in asdict(report).items() if k != "final"}
    for name in (
        "never_ending",
        "completed_not_executed",
        "canceled_but_executed",
        "executed_more_than_once",
        "refused_but_executed",
    ):
        row[name] = len(row[name])
    row["test"] = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(row) + "\n")


def error_type(status: dict[str, Any]) -> str:
    """``worker-lost`` for an error typed ``urn:...:worker-lost`` or ``.../worker-lost``."""
    error = status.get("error") or {}
    kind = str(error.get("type", "unknown")).rstrip("/")
    for sep in ("/", "#", ":"):
        kind = kind.rsplit(sep, 1)[-1]
    return kind


def read_ledger(path: Path) -> collections.Counter[str]:
    """How many times each job input id was executed (one ledger line per run)."""
    if not path.exists():
        return collections.Counter()
    return collections.Counter(line.split()[0] for line in path.read_text().splitlines() if line)


def assert_nothing_lost(
    report: FaultReport,
    *,
    allowed_errors: Collection[str] = (),
    retries_allowed: bool = False,
    allow_canceled: bool = False,
) -> None:
    """Fail with the report unless no acknowledged job was lost or wrongly ended.

    ``allowed_errors``: the failure types this scenario may produce (none by
    default); ``retries_allowed``: a job may run more than once.
    """
    problems = []
    if report.never_ending:
        problems.append(f"{len(report.never_ending)} accepted jobs never ended")
    if report.vanished:
        problems.append(f"accepted jobs vanished: {report.vanished}")
    if report.completed_not_executed:
        problems.append(f"{len(report.completed_not_executed)} completed but never executed")
    if report.canceled_but_executed:
        problems.append(
            f"{len(report.canceled_but_executed)} canceled though the handler produced a result"
        )
    if report.refused_but_executed:
        problems.append(f"{len(report.refused_but_executed)} refused but executed")
    if report.executed_more_than_once and not retries_allowed:
        problems.append(f"{len(report.executed_more_than_once)} executed more than once")
    unexpected = {k: v for k, v in report.failed.items() if k not in allowed_errors}
    if unexpected:
        problems.append(f"unexpected failures: {unexpected}")
    if report.canceled and not allow_canceled:
        problems.append(f"{report.canceled} canceled")
    assert not problems, f"{'; '.join(problems)}\n{report.summary()}"


class FaultRun:
    """Submissions to one server (which a scenario may stop and restart on its port)."""

    def __init__(self, base: str, ledger: Path) -> None:
        self.base = base
        self.ledger = ledger
        self.submissions: list[Submission] = []
        self._client = httpx.Client(base_url=base, headers=OWNER, timeout=10)

    def close(self) -> None:
        self._client.close()

    def submit(
        self, path: str, n: int, *, query: str = "", prefix: str = "job"
    ) -> list[Submission]:
        """POST ``n`` jobs to ``path`` (body and ``?id=`` carry the input id)."""
        start = len(self.submissions)
        out = []
        for i in range(start, start + n):
            key = f"{prefix}-{i}"
            sep = "&" if query else ""
            try:
                r = self._client.post(f"{path}?id={key}{sep}{query}", content=key.encode())
                sub = Submission(
                    key, r.status_code, r.headers.get("location"), r.headers.get("content-type")
                )
            except httpx.HTTPError:
                sub = Submission(key, None)
            self.submissions.append(sub)
            out.append(sub)
        return out

    def status(self, sub: Submission) -> tuple[int, dict[str, Any] | None]:
        """The status URL's code and JSON (``(0, None)`` when the server did not answer)."""
        assert sub.location is not None
        try:
            r = self._client.get(sub.location)
        except httpx.HTTPError:
            return 0, None
        if r.status_code in (200, 303):
            return r.status_code, r.json()
        return r.status_code, None

    def cancel(self, sub: Submission) -> int:
        assert sub.location is not None
        return self._client.delete(sub.location).status_code

    def wait_for(
        self,
        subs: Iterable[Submission],
        states: Collection[str],
        *,
        at_least: int = 1,
        timeout: float = 20.0,
    ) -> list[Submission]:
        """Wait until ``at_least`` of ``subs`` are in one of ``states``; those."""
        subs = [s for s in subs if s.location]
        deadline = time.monotonic() + timeout
        while True:
            hits = []
            for s in subs:
                _code, body = self.status(s)
                if body is not None and body["status"] in states:
                    hits.append(s)
            if len(hits) >= at_least:
                return hits
            assert time.monotonic() < deadline, f"fewer than {at_least} jobs reached {states}"
            time.sleep(0.05)

    def poll_all(
        self, timeout: float = 60.0, settle: float = 0.0, gone_is_final: bool = False
    ) -> FaultReport:
        """Poll every accepted job until all ended (or ``timeout``); the report.

        ``settle``: seconds to wait after the last end before reading the ledger
        (a handler a cancel could not interrupt may still be writing it).
        ``gone_is_final``: a 404/410 ends the polling of that job (it is counted
        as vanished), for scenarios where losing the store's data is the fault.
        """
        report = FaultReport(submitted=len(self.submissions))
        pending: dict[str, Submission] = {}
        for s in self.submissions:
            if s.code == 202 and s.location:
                report.accepted += 1
                pending[s.key] = s
            else:
                code = "connection" if s.code is None else str(s.code)
                report.refused[code] = report.refused.get(code, 0) + 1
        last_code: dict[str, int] = {}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for key, s in list(pending.items()):
                code, body = self.status(s)
                last_code[key] = code
                if body is not None and body["status"] in TERMINAL:
                    report.final[key] = body
                    del pending[key]
                elif gone_is_final and code in (404, 410):
                    report.vanished[code] = report.vanished.get(code, 0) + 1
                    del pending[key]
            if pending:
                time.sleep(0.1)
        for key in pending:
            code = last_code.get(key, 0)
            if code in (404, 410):
                report.vanished[code] = report.vanished.get(code, 0) + 1
            else:
                report.never_ending.append(key)
                report.stuck_codes[code] = report.stuck_codes.get(code, 0) + 1
        time.sleep(settle)
        runs = read_ledger(self.ledger)
        for key, body in report.final.items():
            status = body["status"]
            if status == "completed":
                report.completed += 1
                if runs[key] == 0:
                    report.completed_not_executed.append(key)
            elif status == "failed":
                kind = error_type(body)
                report.failed[kind] = report.failed.get(kind, 0) + 1
            else:
                report.canceled += 1
                if runs[key] > 0:
                    report.canceled_but_executed.append(key)
        report.executed_more_than_once = sorted(k for k, n in runs.items() if n > 1)
        report.refused_but_executed = sorted(
            # (a lost connection may hide a 202: only an answered refusal counts)
            s.key
            for s in self.submissions
            if s.code is not None and s.code != 202 and runs[s.key] > 0
        )
        record_report(report)
        return report


def restart(server: Server, timeout: float = 30.0) -> Server:
    """A new server process with the same command, environment and port."""
    return Server(server.argv, server.port, server.env, server.log).start(timeout=timeout)


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (read from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may hold spaces: parse after its closing paren.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def spawned_workers(pid: int) -> list[int]:
    """The worker processes a server spawned with multiprocessing (uvicorn --workers N)."""
    out = []
    for child in children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            out.append(child)
    return out


def signal_and_wait(server: Server, sig: int, timeout: float = 30.0) -> float:
    """Send ``sig`` to the server's main process; the seconds until it exited."""
    assert server.proc is not None
    started = time.monotonic()
    os.kill(server.proc.pid, sig)
    server.proc.wait(timeout)
    return time.monotonic() - started


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
