"""An in-process store, for tests and single-process use only.

Jobs live in this process's memory: they vanish on restart and are not
shared between server worker processes (``uvicorn --workers 2`` would answer
404 for half the polls). Use the SQLite default or Redis for anything else.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Collection, Sequence
from typing import Any, TypeVar

from ..job import CapturedRequest, CapturedResponse, Job, JobStatus
from .base import WORKER_RETENTION

_T = TypeVar("_T")


class MemoryStore:
    """Jobs in a dict, for tests and single-process use.

    Nothing survives a restart and nothing is shared with other processes.
    Thread-safe (one lock around every call); jobs, requests and results are
    copied in and out, so no caller ever holds the store's own objects.
    """

    shared = False
    blocking = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._requests: dict[str, CapturedRequest] = {}
        self._results: dict[str, CapturedResponse] = {}
        self._idem: dict[str, str] = {}
        self._workers: dict[str, dict[str, Any]] = {}

    @staticmethod
    def _copy(job: Job) -> Job:
        # copy.copy + a JSON-shaped clone: several times cheaper than
        # dataclasses.replace + deepcopy, and this runs on every status read.
        out = _shallow(job)
        out.error = _clone(job.error)
        out.meta = _clone(job.meta)
        return out

    def _live(self, job_id: str, now: float) -> Job | None:
        job = self._jobs.get(job_id)
        if job is None or job.expires_at <= now:
            return None
        return job

    def create(self, job: Job, request: CapturedRequest) -> tuple[Job, bool]:
        with self._lock:
            key = job.idempotency_key
            if key is not None:
                holder = self._idem.get(key)
                existing = self._jobs.get(holder) if holder else None
                if (
                    existing is not None
                    and existing.id != job.id
                    and existing.expires_at > job.created_at
                ):
                    return self._copy(existing), False
            if job.id in self._jobs:
                # The id is 128 random bits: this is a repeat of our own create.
                return self._copy(job), True
            self._jobs[job.id] = self._copy(job)
            self._requests[job.id] = _copy_request(request)
            if key is not None:
                self._idem[key] = job.id
            return self._copy(job), True

    def get(self, job_id: str, now: float) -> Job | None:
        with self._lock:
            job = self._live(job_id, now)
            return None if job is None else self._copy(job)

    def get_request(self, job_id: str) -> CapturedRequest | None:
        with self._lock:
            req = self._requests.get(job_id)
            return None if req is None else _copy_request(req)

    def get_result(self, job_id: str) -> CapturedResponse | None:
        with self._lock:
            res = self._results.get(job_id)
            return None if res is None else _copy_response(res)

    def claim(self, job_id: str, worker_id: str, now: float) -> Job | None:
        with self._lock:
            job = self._live(job_id, now)
            if job is None or job.status is not JobStatus.QUEUED or job.cancel_requested:
                return None
            job.status = JobStatus.PROCESSING
            job.worker_id = worker_id
            job.started_at = now
            job.heartbeat_at = now
            job.updated_at = now
            job.attempts += 1
            return self._copy(job)

    def _owned(self, job_id: str, worker_id: str, now: float) -> Job | None:
        job = self._live(job_id, now)
        if job is None or job.status is not JobStatus.PROCESSING or job.worker_id != worker_id:
            return None
        return job

    def heartbeat(self, job_id: str, worker_id: str, now: float) -> Job | None:
        with self._lock:
            job = self._owned(job_id, worker_id, now)
            if job is None:
                return None
            job.heartbeat_at = now
            return self._copy(job)

    def set_progress(
        self,
        job_id: str,
        worker_id: str,
        now: float,
        percent: float | None,
        message: str | None,
        eta: float | None,
    ) -> Job | None:
        with self._lock:
            job = self._owned(job_id, worker_id, now)
            if job is None:
                return None
            job.percent = percent
            job.message = message
            job.eta = eta
            job.progress_at = now
            job.updated_at = now
            job.heartbeat_at = now
            return self._copy(job)

    def finish(
        self,
        job_id: str,
        worker_id: str,
        now: float,
        status: JobStatus,
        response: CapturedResponse | None = None,
        error: dict[str, Any] | None = None,
        result_location: str | None = None,
    ) -> Job | None:
        status = JobStatus(status)
        if not status.terminal:
            raise ValueError(f"finish() needs a terminal status, not {status.value!r}")
        with self._lock:
            job = self._owned(job_id, worker_id, now)
            if job is None:
                return None
            job.status = status
            job.finished_at = now
            job.updated_at = now
            job.error = copy.deepcopy(error)
            job.result_location = result_location
            if response is not None:
                self._results[job_id] = _copy_response(response)
                job.result_status = response.status
            if status is JobStatus.COMPLETED:
                job.percent = 100.0
                job.eta = None
            return self._copy(job)

    def fail(
        self,
        job_id: str,
        expected: Collection[JobStatus],
        now: float,
        error: dict[str, Any],
    ) -> Job | None:
        with self._lock:
            job = self._live(job_id, now)
            if job is None or job.status not in expected:
                return None
            job.status = JobStatus.FAILED
            job.error = copy.deepcopy(error)
            job.finished_at = now
            job.updated_at = now
            return self._copy(job)

    def cancel(self, job_id: str, now: float) -> tuple[Job | None, bool]:
        with self._lock:
            job = self._live(job_id, now)
            if job is None:
                return None, False
            if job.status is JobStatus.QUEUED:
                job.status = JobStatus.CANCELED
                job.cancel_requested = True
                job.finished_at = now
                job.updated_at = now
                return self._copy(job), True
            if job.status is JobStatus.PROCESSING and not job.cancel_requested:
                job.cancel_requested = True
                job.updated_at = now
                return self._copy(job), True
            return self._copy(job), False

    def requeue(self, job_id: str, worker_id: str, now: float) -> Job | None:
        with self._lock:
            job = self._owned(job_id, worker_id, now)
            if job is None:
                return None
            if job.cancel_requested:  # nobody will run it again: it ends here
                job.status = JobStatus.CANCELED
                job.finished_at = now
            else:
                job.status = JobStatus.QUEUED
            job.worker_id = None
            job.heartbeat_at = None
            job.updated_at = now
            return self._copy(job)

    def mark_dispatched(self, job_ids: Sequence[str], now: float, stale_before: float) -> list[str]:
        marked: list[str] = []
        with self._lock:
            for job_id in job_ids:
                job = self._live(job_id, now)
                if job is None or job.status is not JobStatus.QUEUED or job.cancel_requested:
                    continue
                last = job.meta.get("dispatched_at")
                if isinstance(last, (int, float)) and last >= stale_before:
                    continue
                job.meta["dispatched_at"] = now
                marked.append(job_id)
        return marked

    def retry(self, job_id: str, now: float) -> Job | None:
        with self._lock:
            job = self._live(job_id, now)
            if job is None or job.status is not JobStatus.FAILED or job.cancel_requested:
                return None
            job.status = JobStatus.QUEUED
            job.worker_id = job.heartbeat_at = job.started_at = job.finished_at = None
            job.percent = job.eta = job.progress_at = None
            job.message = job.error = job.result_status = job.result_location = None
            job.updated_at = now
            job.deadline_at = now + 2 * job.sla
            job.meta.pop("dispatched_at", None)
            self._results.pop(job_id, None)
            return self._copy(job)

    def list_jobs(
        self,
        status: JobStatus | None = None,
        limit: int = 100,
        created_before: float | None = None,
    ) -> list[Job]:
        with self._lock:
            jobs = [
                j
                for j in self._jobs.values()
                if (status is None or j.status == status)
                and (created_before is None or j.created_at < created_before)
            ]
            jobs.sort(key=lambda j: j.created_at)  # stable: creation order for equal times
            return [self._copy(j) for j in jobs[: max(0, limit)]]

    def count_by_status(self) -> dict[JobStatus, int]:
        with self._lock:
            counts = dict.fromkeys(JobStatus, 0)
            for job in self._jobs.values():
                counts[job.status] += 1
            return counts

    def purge_expired(self, now: float) -> int:
        with self._lock:
            gone = [jid for jid, j in self._jobs.items() if j.expires_at <= now]
            for jid in gone:
                self._drop(jid)
            return len(gone)

    def _drop(self, job_id: str) -> bool:
        job = self._jobs.pop(job_id, None)
        self._requests.pop(job_id, None)
        self._results.pop(job_id, None)
        key = job.idempotency_key if job is not None else None
        if key is not None and self._idem.get(key) == job_id:
            del self._idem[key]
        return job is not None

    def delete(self, job_id: str) -> bool:
        with self._lock:
            return self._drop(job_id)

    def worker_heartbeat(self, worker_id: str, now: float, info: dict[str, Any]) -> None:
        entry = copy.deepcopy(info)
        entry.update(id=worker_id, last_heartbeat=now)
        with self._lock:
            self._workers[worker_id] = entry

    def list_workers(self, now: float) -> list[dict[str, Any]]:
        with self._lock:
            for wid in [
                w for w, e in self._workers.items() if e["last_heartbeat"] < now - WORKER_RETENTION
            ]:
                del self._workers[wid]
            out = [copy.deepcopy(e) for e in self._workers.values()]
        out.sort(key=lambda e: -e["last_heartbeat"])
        return out

    def close(self) -> None:
        """Nothing to release."""


def _clone(value: Any) -> Any:
    """Copy of a JSON-shaped value (dicts, lists, scalars)."""
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


def _copy_request(request: CapturedRequest) -> CapturedRequest:
    # Bytes and strings are immutable: only the header list needs its own copy.
    out = _shallow(request)
    out.headers = list(request.headers)
    return out


def _copy_response(response: CapturedResponse) -> CapturedResponse:
    out = _shallow(response)
    out.headers = list(response.headers)
    return out


def _shallow(obj: _T) -> _T:
    """A shallow copy of a plain dataclass instance (much cheaper than copy.copy)."""
    out = object.__new__(type(obj))
    out.__dict__.update(obj.__dict__)
    return out
