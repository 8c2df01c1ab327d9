"""Noticing that a Celery or RQ worker died, so that what it held is sent again soon.

A broker worker takes messages before it runs them: Celery prefetches (with the
Redis transport an unacknowledged message returns only after the transport's
visibility timeout, an hour by default), and any worker may be killed between
taking a message and claiming its job in the store. Such a job stays ``queued``
in the store while no broker holds its message. The sweepers re-send queued jobs
whose dispatch mark is older than ``redispatch_after``; alone, that makes a job
held by a dead worker wait ``redispatch_after`` (60 s by default), past the
deadline of a route with a short ``sla``.

:class:`WorkerWatch` reads the store's worker registry (every process that runs
jobs beats into it every ``heartbeat_interval``) and judges a worker lost when
its heartbeat has not changed for ``worker_lost_after`` seconds of *this*
process's monotonic clock: no comparison of two machines' wall clocks decides
that a worker is gone, and a worker that said goodbye (``state: stopped``: a
warm shutdown gives back what it prefetched) is not lost. Each loss moves the
watch's *cutoff* to about when the worker died; the remote executor then treats
every queued job dispatched before the cutoff as due for a re-send, whatever
``redispatch_after`` says. So a dead worker's jobs go out again within about
``worker_lost_after + heartbeat_interval + sweep_interval``.

A re-sent job can't run twice: the store's claim is a compare-and-set, and the
worker that gets the second message of a job already claimed (or ended) drops
it. The price is messages: at each worker loss, every job then queued and
dispatched before it is sent once more (by each web process that sees the loss
before another one re-marked the job).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["WorkerWatch"]

log = logging.getLogger("async_accept")


@dataclass
class _Seen:
    """One worker as this process last saw it in the registry."""

    heartbeat: float
    #: this process's monotonic clock when ``heartbeat`` last changed (or was first seen)
    changed_at: float
    lost: bool = False


class WorkerWatch:
    """Which consuming workers of one executor kind went silent.

    ``kind``: the executor name the workers report (``"celery"``, ``"rq"``);
    ``lost_after``: seconds of unchanged heartbeat (monotonic, here) that make a
    worker lost; ``beat_every``: the workers' heartbeat interval; ``forget_after``:
    a worker first seen silent longer than this (by the registry's timestamps) died
    long enough ago that ``redispatch_after`` has already re-sent what it held.
    """

    def __init__(
        self,
        kind: str,
        lost_after: float,
        beat_every: float,
        forget_after: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kind = kind
        self.lost_after = float(lost_after)
        self.beat_every = float(beat_every)
        self.forget_after = float(forget_after)
        self._monotonic = monotonic
        self._seen: dict[str, _Seen] = {}
        #: queued jobs dispatched before this (clock time) may sit in a dead worker
        self.cutoff: float | None = None
        #: workers judged lost so far (for logs and tests)
        self.losses = 0

    def _ours(self, info: dict[str, Any]) -> bool:
        return (
            info.get("role") == "worker"
            and bool(info.get("consumes", True))
            and info.get("executor") == self.kind
        )

    def observe(self, workers: Iterable[dict[str, Any]], now: float) -> float | None:
        """Take one reading of the registry (``Store.list_workers``) at clock time
        ``now``; returns the cutoff (None while no worker was lost)."""
        mono = self._monotonic()
        present: set[str] = set()
        for info in workers:
            if not self._ours(info):
                continue
            wid = str(info.get("id"))
            present.add(wid)
            beat = float(info.get("last_heartbeat", 0.0))
            seen = self._seen.get(wid)
            if info.get("state") == "stopped":
                # A goodbye: Celery's warm shutdown hands back what it prefetched,
                # RQ holds nothing. Not a loss; if it comes back, it's new.
                self._seen[wid] = _Seen(beat, mono, lost=True)
                continue
            if seen is None:
                # First sight. A worker silent for longer than forget_after by the
                # registry's own timestamps died long ago: nothing left to re-send.
                gone = now - beat > self.forget_after
                self._seen[wid] = _Seen(beat, mono, lost=gone)
                continue
            if beat != seen.heartbeat:
                seen.heartbeat, seen.changed_at, seen.lost = beat, mono, False
                continue
            if not seen.lost and mono - seen.changed_at > self.lost_after:
                seen.lost = True
                self._lost(wid, info, now)
        for wid in [w for w in self._seen if w not in present]:
            del self._seen[wid]  # forgotten by the registry
        return self.cutoff

    def _lost(self, wid: str, info: dict[str, Any], now: float) -> None:
        """``wid`` fell silent. Its next beat was due at most ``beat_every`` after the
        last change we saw, more than ``lost_after`` ago: it died at least
        ``lost_after - beat_every`` before ``now``. The cutoff sits in the middle of
        that window: after the death by half of it (a margin for the clocks of the
        processes that marked the dispatches), and before ``now`` by the other half,
        so a job that another process re-sent on noticing the same loss a little
        earlier is not sent a third time from here."""
        self.losses += 1
        slack = max(0.0, self.lost_after - self.beat_every) / 2.0
        cutoff = now - slack
        if self.cutoff is None or cutoff > self.cutoff:
            self.cutoff = cutoff
        log.warning(
            "async_accept: %s worker %s (pid %s on %s) stopped beating; the jobs it may "
            "have taken are sent again",
            self.kind,
            wid,
            info.get("pid"),
            info.get("host"),
        )
