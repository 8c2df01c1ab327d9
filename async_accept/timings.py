"""Each route's learned run time, so ``Retry-After`` and
``estimated_time_remaining`` fit the job when its handler reports no ``eta``.

Per route: an exponentially weighted mean of the run times (what a client is
told to expect) and the recent runs, whose 90th percentile is where a job that
overruns the mean is expected to end. Kept in the store when it can keep them
(``load_run_times`` / ``save_run_time``), so every process and every restart
starts from what the others learned; a process reads them at start and on its
sweeps, never on a request. A route's statistics are written at most once per
``SAVE_EVERY`` seconds (a burst of short jobs costs one write, not one per job,
beside each job's own end); the runs in between are in the next write.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .errors import StoreError
from .job import Job, JobStatus

log = logging.getLogger("async_accept")

#: weight of the newest run in the mean
ALPHA = 0.3
#: how many recent runs the percentile looks at
RECENT = 20
#: the least seconds between two writes of one route's statistics to the store
SAVE_EVERY = 1.0


@runtime_checkable
class KeepsRunTimes(Protocol):
    """A store that keeps each route's run-time statistics (a JSON text per route)."""

    def load_run_times(self) -> dict[str, str]: ...

    def save_run_time(self, route: str, data: str) -> None: ...


@dataclass
class RunTime:
    """One route's statistics."""

    mean: float
    recent: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> RunTime:
        recent = ([*self.recent, seconds])[-RECENT:]
        return RunTime(self.mean + ALPHA * (seconds - self.mean), recent)

    @property
    def high(self) -> float:
        """The 90th percentile of the recent runs (nearest rank)."""
        if not self.recent:
            return self.mean
        ordered = sorted(self.recent)
        return ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]

    def to_json(self) -> str:
        return json.dumps({"mean": self.mean, "recent": self.recent})

    @classmethod
    def from_json(cls, text: str) -> RunTime | None:
        try:
            data: Any = json.loads(text)
            mean = float(data["mean"])
            recent = [float(x) for x in data.get("recent", [])][-RECENT:]
        except (ValueError, TypeError, KeyError):
            return None
        if not math.isfinite(mean) or mean < 0:
            return None
        return cls(mean, recent)


class RunTimes:
    """The learned run times of this process's routes (a dict read without I/O)."""

    def __init__(self, store: Any) -> None:
        self._store: KeepsRunTimes | None = store if isinstance(store, KeepsRunTimes) else None
        self._lock = threading.Lock()
        self._by_route: dict[str, RunTime] = {}
        #: when each route's statistics were last written (monotonic)
        self._saved: dict[str, float] = {}

    def get(self, route: str | None) -> RunTime | None:
        return self._by_route.get(route or "")

    def save_due(self, route: str | None) -> bool:
        """Whether :meth:`record` of a run of ``route`` now would write the store."""
        last = self._saved.get(route or "", -math.inf)
        return self._store is not None and time.monotonic() - last >= SAVE_EVERY

    def record(self, route: str | None, seconds: float, *, save: bool = True) -> None:
        """Learn one run (blocking: writes the store when it keeps run times and its
        last write of the route is :data:`SAVE_EVERY` old; never with ``save=False``)."""
        if not (math.isfinite(seconds) and seconds >= 0):
            return
        key = route or ""
        with self._lock:
            old = self._by_route.get(key)
            new = RunTime(seconds, [seconds]) if old is None else old.add(seconds)
            self._by_route[key] = new
            now = time.monotonic()
            due = save and now - self._saved.get(key, -math.inf) >= SAVE_EVERY
            if due:
                self._saved[key] = now
        if self._store is not None and due:
            self._store.save_run_time(key, new.to_json())

    def learn(self, job: Job | None, save: bool = True) -> None:
        """A job that ran to completion teaches its route's run time (blocking: may
        write the store, never with ``save=False``; a failed write is logged, not raised)."""
        if job is None or job.started_at is None or job.finished_at is None:
            return
        if job.status is JobStatus.COMPLETED:
            try:
                self.record(job.route, job.finished_at - job.started_at, save=save)
            except StoreError:
                log.warning("async_accept: run time of job %s not saved", job.id, exc_info=True)

    def load(self) -> None:
        """Take what the store learned (other processes, earlier runs)."""
        if self._store is None:
            return
        loaded = {}
        for route, text in self._store.load_run_times().items():
            rt = RunTime.from_json(text)
            if rt is not None:
                loaded[route] = rt
        with self._lock:
            self._by_route.update(loaded)
