"""Whether the processes in the worker registry are alive, as the health answer
and the dashboard tell it.

Every process that accepts or runs jobs beats into the store's worker registry
(``last_heartbeat``: the beating process's wall clock). Comparing that with the
reader's own wall clock makes two machines' clocks decide: a reader whose clock
runs 20 s ahead calls every worker silent (and the health answer ``stalled``, so
a load balancer takes a healthy node out); one that runs behind keeps calling a
dead worker alive.

:class:`BeatWatch` judges by what this process saw instead, as the job liveness
watch (``liveness.py``) and the Celery/RQ worker watch do: a worker is alive
while its heartbeat value *changed* within ``lost_after`` seconds of this
process's ``time.monotonic()``. A reader that has not watched a worker for a
full window yet has nothing of its own to go by and falls back to the registry's
age, as before. A worker that said goodbye (``state: stopped``) is not alive.
Readings happen only when somebody reads (a health probe, a dashboard page), so
a death shows at most one reading interval late.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["BeatWatch"]


@dataclass
class _Seen:
    heartbeat: float
    #: this process's monotonic clock when it first saw the worker
    first_seen: float
    #: ... and when it last saw ``heartbeat`` change
    changed_at: float


class BeatWatch:
    """Alive or not, per registered worker, by this process's monotonic clock."""

    def __init__(self, lost_after: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.lost_after = float(lost_after)
        self._monotonic = monotonic
        self._seen: dict[str, _Seen] = {}
        self._lock = threading.Lock()

    def alive(self, workers: Iterable[dict[str, Any]], now: float) -> dict[str, bool]:
        """Take one reading of the registry (``Store.list_workers`` at clock time
        ``now``); returns each listed worker's id -> alive."""
        out: dict[str, bool] = {}
        with self._lock:
            mono = self._monotonic()
            present: set[str] = set()
            for w in workers:
                wid = str(w.get("id"))
                present.add(wid)
                beat = float(w.get("last_heartbeat", 0.0))
                seen = self._seen.get(wid)
                if seen is None:
                    seen = self._seen[wid] = _Seen(beat, mono, mono)
                elif beat != seen.heartbeat:
                    seen.heartbeat, seen.changed_at = beat, mono
                if w.get("state") == "stopped":
                    out[wid] = False
                elif mono - seen.first_seen >= self.lost_after:
                    out[wid] = mono - seen.changed_at <= self.lost_after
                else:  # not watched for a window yet: the registry's own age
                    out[wid] = now - beat <= self.lost_after
            for wid in [w for w in self._seen if w not in present]:
                del self._seen[wid]  # forgotten by the registry
        return out
