"""Whether a running job's worker is lost, judged without comparing clocks.

A worker writes ``heartbeat_at`` with its own clock, which may be seconds off the
judging process's (another machine, a skewed container, NTP stepping). So the
judge never subtracts it from its own time: it only watches the value *change*.
Each process keeps one :class:`Liveness` watch. The first time it sees a running
job's lease (worker, attempt, ``heartbeat_at``) it starts counting; when it sees
a different lease it starts again; a job is lost once its lease stayed the same
for ``worker_lost_after`` seconds of this process's ``time.monotonic()``. A judge
that just started (or never saw the job) therefore waits one full window.

A slow store is not a dead worker: while a store blocks writes (a SQLite write
lock held by another process, a stalled server), the worker's heartbeats wait
but reads still answer, and the lease looks frozen. So only *writable* time is
counted: time between two of the judge's own beats (its worker-registry
heartbeat, every ``heartbeat_interval``) that both landed, no more than
:attr:`Liveness.max_gap` apart and with no failed beat between them. A stretch
in which the judge's own writes blocked or failed counts for nothing, and a
verdict needs at least two of its own beats landed after the lease was first
seen. The final write is a compare-and-set on the lease watched (the store's
``fail``/``requeue`` with ``lease=``): a beat that landed meanwhile keeps the job.

Deadlines (``deadline_at``) stay wall-clock times: they are the promise made to
the client at acceptance (2 x sla), read against the judge's clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..job import Job, JobStatus

#: a lease as the watch compares it: who runs the job, which attempt, its heartbeat
Lease = tuple[str | None, int, float | None]


def lease_of(job: Job) -> Lease:
    return (job.worker_id, job.attempts, job.heartbeat_at)


@dataclass(slots=True)
class _Seen:
    """One job's lease as first seen: the writable time and own beats counted then."""

    lease: Lease
    credit: float
    landed: int
    last_seen: float


class Liveness:
    """One process's watch over the leases of running jobs (thread-safe)."""

    def __init__(
        self,
        lost_after: float,
        beat_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: seconds of writable time a lease must stay unchanged for its job to be lost
        self.lost_after = lost_after
        #: the longest gap between two of the judge's own beats that still counts: its
        #: beat interval plus half the slack the window leaves, so that a stall the
        #: watch can't tell from a slow beat delays a healthy worker's beat by less
        #: than the window
        self.max_gap = beat_interval + max(0.0, lost_after - beat_interval) / 2
        self.clock = clock
        self.after_fork()

    def after_fork(self) -> None:
        """Start afresh (a forked child: nothing it watched is its own, and a lock
        held by a parent's thread at the fork would never be released)."""
        self._lock = threading.Lock()
        self._credit = 0.0  # writable seconds counted so far
        self._landed = 0  # own beats landed so far
        self._last_landing: float | None = None
        self._broken = False  # a beat failed since the last landing
        self._seen: dict[str, _Seen] = {}
        self._pruned_at = self.clock()

    # -- the judge's own beats ------------------------------------------------------

    def landed(self) -> None:
        """One of this process's own store writes (its registry beat) just landed."""
        with self._lock:
            now = self.clock()
            last = self._last_landing
            if last is not None and not self._broken and 0.0 <= now - last <= self.max_gap:
                self._credit += now - last
            self._landed += 1
            self._last_landing = now
            self._broken = False

    def failed(self) -> None:
        """One of this process's own beats failed: the gap it falls in counts for nothing."""
        with self._lock:
            self._broken = True

    @property
    def writable_seconds(self) -> float:
        """Writable time counted so far (for tests and diagnostics)."""
        return self._credit

    @property
    def beats_landed(self) -> int:
        """How many of this process's own beats landed so far."""
        return self._landed

    # -- the jobs watched -------------------------------------------------------------

    def lost(self, job: Job) -> bool:
        """Whether ``job`` (processing) has had the same lease for ``lost_after`` seconds
        of writable time, as watched by this process (its first sight starts the watch)."""
        if job.status is not JobStatus.PROCESSING or job.heartbeat_at is None:
            return False
        lease = lease_of(job)
        with self._lock:
            now = self.clock()
            self._prune(now)
            seen = self._seen.get(job.id)
            if seen is None or seen.lease != lease:
                # Writable time is added at each landing for the whole gap before it:
                # the part of the current gap that passed before this sight is not the
                # lease's (held back; a gap that turns out broken then costs a little).
                before = 0.0
                if self._last_landing is not None:
                    before = min(max(0.0, now - self._last_landing), self.max_gap)
                self._seen[job.id] = _Seen(lease, self._credit + before, self._landed, now)
                return False
            seen.last_seen = now
            return self._landed - seen.landed >= 2 and self._credit - seen.credit >= self.lost_after

    def forget(self, job_id: str) -> None:
        """Stop watching ``job_id`` (it ended, or was handed back)."""
        with self._lock:
            self._seen.pop(job_id, None)

    def watching(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._seen

    def _prune(self, now: float) -> None:
        """Forget jobs not looked at for a while (they ended elsewhere, or expired)."""
        keep = max(60.0, 4 * self.lost_after)
        if now - self._pruned_at < keep:
            return
        self._pruned_at = now
        for job_id in [j for j, s in self._seen.items() if now - s.last_seen > keep]:
            del self._seen[job_id]
