"""An in-process store, for tests and single-process use only.

Jobs live in this process's memory: they vanish on restart and are not
shared between server worker processes (``uvicorn --workers 2`` would answer
404 for half the polls). Use the SQLite default or Redis for anything else.
"""

from __future__ import annotations

import copy
import marshal
import threading
from collections.abc import Collection, Sequence
from dataclasses import fields
from operator import itemgetter
from typing import Any

from ...job import DROP_REQUEST_ON, CapturedRequest, CapturedResponse, Job, JobStatus
from ..base import EVERY, WORKER_RETENTION, Outcome, OwnedQuery, Progress, StoreBase
from ..outbox_base import Outbox, pending_notices
from .outbox import MemoryOutbox


class MemoryStore(StoreBase):
    """Jobs in a dict, for tests and single-process use.

    Nothing survives a restart and nothing is shared with other processes.
    Thread-safe (one lock around every call). Every record is kept frozen, a
    job as a tuple of plain values and a request or result as marshal bytes:
    no caller ever holds the store's own objects, and the garbage collector has
    nothing per job to walk (a dict of live dataclasses made its full
    collections grow with the store: 270 ms pauses at 150,000 jobs).
    """

    shared = False
    blocking = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, _Record] = {}
        self._requests: dict[str, bytes] = {}
        self._results: dict[str, bytes] = {}
        self._idem: dict[str, str] = {}
        #: owner hash -> ids of its jobs (GET {prefix}/ reads one owner's jobs)
        self._by_owner: dict[str, set[str]] = {}
        self._workers: dict[str, dict[str, Any]] = {}
        self._run_times: dict[str, str] = {}
        #: the outbox default_outbox() handed out: ended jobs' notices go there
        self._outbox: MemoryOutbox | None = None

    def _live(self, job_id: str, now: float) -> Job | None:
        """A private copy of the job, if it exists and has not expired."""
        rec = self._jobs.get(job_id)
        if rec is None or rec[_EXPIRES] <= now:
            return None
        return _thaw(rec)

    def _put(self, job: Job) -> Job:
        self._jobs[job.id] = _freeze(job)
        return job

    def create(self, job: Job, request: CapturedRequest) -> tuple[Job, bool]:
        with self._lock:
            key = job.idempotency_key
            if key is not None:
                holder = self._idem.get(key)
                existing = self._jobs.get(holder) if holder else None
                if (
                    existing is not None
                    and existing[_ID] != job.id
                    and existing[_EXPIRES] > job.created_at
                ):
                    return _thaw(existing), False
            rec = _freeze(job)
            if job.id in self._jobs:
                # The id is 128 random bits: this is a repeat of our own create.
                return _thaw(rec), True
            self._jobs[job.id] = rec
            self._requests[job.id] = _freeze_request(request)
            for owner in job.owner.split():  # the credential's hash, the owner cookie's
                self._by_owner.setdefault(owner, set()).add(job.id)
            if key is not None:
                self._idem[key] = job.id
            return _thaw(rec), True

    def get(self, job_id: str, now: float) -> Job | None:
        with self._lock:
            return self._live(job_id, now)

    def get_request(self, job_id: str) -> CapturedRequest | None:
        with self._lock:
            req = self._requests.get(job_id)
        return None if req is None else _thaw_request(req)

    def get_result(self, job_id: str) -> CapturedResponse | None:
        with self._lock:
            res = self._results.get(job_id)
        return None if res is None else _thaw_response(res)

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
            return self._put(job)

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
            return self._put(job)

    def _set_progress(
        self, job_id: str, worker_id: str, now: float, progress: Progress
    ) -> Job | None:
        with self._lock:
            job = self._owned(job_id, worker_id, now)
            if job is None:
                return None
            job.percent, job.message, job.eta = progress
            job.progress_at = now
            job.updated_at = now
            job.heartbeat_at = now
            return self._put(job)

    def _finish(self, job_id: str, worker_id: str, now: float, outcome: Outcome) -> Job | None:
        status, response, error, result_location = outcome
        with self._lock:
            job = self._owned(job_id, worker_id, now)
            if job is None:
                return None
            job.status = status
            job.finished_at = now
            job.updated_at = now
            job.error = error  # frozen by _put: the caller keeps its own dict
            job.result_location = result_location
            if response is not None:
                self._results[job_id] = _freeze_response(response)
                job.result_status = response.status
            if status is JobStatus.COMPLETED:
                job.percent = 100.0
                job.eta = None
            if status in DROP_REQUEST_ON:
                self._requests.pop(job_id, None)
            return self._ended(self._put(job), now)

    def fail(
        self,
        job_id: str,
        expected: Collection[JobStatus],
        now: float,
        error: dict[str, Any],
        lease: float | None = None,
    ) -> Job | None:
        with self._lock:
            job = self._live(job_id, now)
            if job is None or job.status not in expected:
                return None
            if lease is not None and job.heartbeat_at != lease:
                return None  # a heartbeat landed since the lease was read
            job.status = JobStatus.FAILED
            job.error = error  # frozen by _put: the caller keeps its own dict
            job.finished_at = now
            job.updated_at = now
            return self._ended(self._put(job), now)

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
                self._requests.pop(job_id, None)
                return self._ended(self._put(job), now), True
            if job.status is JobStatus.PROCESSING and not job.cancel_requested:
                job.cancel_requested = True
                job.updated_at = now
                return self._put(job), True
            return job, False

    def requeue(
        self, job_id: str, worker_id: str, now: float, lease: float | None = None
    ) -> Job | None:
        with self._lock:
            job = self._owned(job_id, worker_id, now)
            if job is None or (lease is not None and job.heartbeat_at != lease):
                return None
            if job.cancel_requested:  # nobody will run it again: it ends here
                job.status = JobStatus.CANCELED
                job.finished_at = now
            else:
                job.status = JobStatus.QUEUED
            job.worker_id = None
            job.heartbeat_at = None
            job.updated_at = now
            # The claim used its dispatch up: the next hand-over goes out at once.
            job.meta.pop("dispatched_at", None)
            return self._ended(self._put(job), now)

    def _ended(self, job: Job, now: float) -> Job:
        """Under the lock: an ended job's webhook notices go to the outbox with it."""
        if self._outbox is not None:
            for notice in pending_notices(job, now):
                self._outbox.enqueue(notice)
        return job

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
                self._put(job)
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
            return self._put(job)

    def list_jobs(
        self,
        status: JobStatus | None = None,
        limit: int = 100,
        created_before: float | None = None,
        newest: bool = False,
    ) -> list[Job]:
        want = None if status is None else JobStatus(status).value
        with self._lock:
            recs = [
                r
                for r in self._jobs.values()
                if (want is None or r[_STATUS] == want)
                and (created_before is None or r[_CREATED] < created_before)
            ]
        recs.sort(key=itemgetter(_CREATED))  # stable: creation order for equal times
        if newest:
            recs.reverse()
        return [_thaw(r) for r in recs[: max(0, limit)]]

    def list_owned(self, owner: str, now: float, query: OwnedQuery = EVERY) -> list[Job]:
        with self._lock:
            recs = [self._jobs[i] for i in self._by_owner.get(owner, ())]
        recs = [
            r
            for r in recs
            if r[_EXPIRES] > now and query.admits(r[_CREATED], r[_ID], r[_STATUS], r[_ROUTE])
        ]
        recs.sort(key=itemgetter(_CREATED, _ID), reverse=True)
        return [_thaw(r) for r in recs[: max(0, query.limit)]]

    def count_by_status(self) -> dict[JobStatus, int]:
        with self._lock:
            values = [r[_STATUS] for r in self._jobs.values()]
        counts = dict.fromkeys(JobStatus, 0)
        for value in values:
            counts[_STATUSES[value]] += 1
        return counts

    def purge_expired(self, now: float) -> int:
        with self._lock:
            gone = [jid for jid, r in self._jobs.items() if r[_EXPIRES] <= now]
            for jid in gone:
                self._drop(jid)
            return len(gone)

    def _drop(self, job_id: str) -> bool:
        rec = self._jobs.pop(job_id, None)
        self._requests.pop(job_id, None)
        self._results.pop(job_id, None)
        if rec is not None:
            for owner in rec[_OWNER].split():
                mine = self._by_owner.get(owner)
                if mine is not None:
                    mine.discard(job_id)
                    if not mine:
                        del self._by_owner[owner]
        key = rec[_IDEM] if rec is not None else None
        if key is not None and self._idem.get(key) == job_id:
            del self._idem[key]
        return rec is not None

    def delete(self, job_id: str) -> bool:
        with self._lock:
            return self._drop(job_id)

    def load_run_times(self) -> dict[str, str]:
        with self._lock:
            return dict(self._run_times)

    def save_run_time(self, route: str, data: str) -> None:
        with self._lock:
            self._run_times[route] = data

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

    def default_outbox(self) -> Outbox | None:
        """An outbox in this process's memory too; none for a subclass that says
        other processes share it (deliveries kept here would be lost to them)."""
        if self.shared:
            return None
        if self._outbox is None:
            self._outbox = MemoryOutbox()
        return self._outbox


# -- frozen records ------------------------------------------------------------------
#
# A job is kept as a tuple of its field values in field order, with the status as
# its string and ``error``/``meta`` as marshal bytes: a tuple of strings, numbers
# and bytes is untracked by the garbage collector. Requests and results are one
# marshal blob each. Thawing builds a new object every time, so the store's
# records never leak to a caller.

_Record = tuple[Any, ...]
_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Job))
_ID = _NAMES.index("id")
_STATUS = _NAMES.index("status")
_CREATED = _NAMES.index("created_at")
_EXPIRES = _NAMES.index("expires_at")
_IDEM = _NAMES.index("idempotency_key")
_OWNER = _NAMES.index("owner")
_ROUTE = _NAMES.index("route")
_ERROR = _NAMES.index("error")
_META = _NAMES.index("meta")
_STATUSES: dict[str, JobStatus] = {s.value: s for s in JobStatus}
_values = itemgetter(*_NAMES)
_EMPTY_META = marshal.dumps({})


def _freeze(job: Job) -> _Record:
    values = list(_values(job.__dict__))
    values[_STATUS] = JobStatus(job.status).value
    error = job.error
    values[_ERROR] = None if error is None else marshal.dumps(error)
    meta = job.meta
    values[_META] = marshal.dumps(meta) if meta else _EMPTY_META
    return tuple(values)


def _thaw(rec: _Record) -> Job:
    d = dict(zip(_NAMES, rec, strict=True))
    d["status"] = _STATUSES[rec[_STATUS]]
    error = rec[_ERROR]
    d["error"] = None if error is None else marshal.loads(error)
    d["meta"] = marshal.loads(rec[_META])
    job: Job = object.__new__(Job)
    job.__dict__ = d
    return job


def _freeze_request(r: CapturedRequest) -> bytes:
    return marshal.dumps(
        (
            r.method,
            r.path,
            r.query_string,
            [(bytes(k), bytes(v)) for k, v in r.headers],
            r.body,
            r.root_path,
            r.raw_path,
            r.scheme,
            r.http_version,
            r.server,
            r.client,
            r.extensions,
        )
    )


def _thaw_request(blob: bytes) -> CapturedRequest:
    (method, path, qs, headers, body, root, raw, scheme, version, server, client, ext) = (
        marshal.loads(blob)
    )
    return CapturedRequest(
        method=method,
        path=path,
        query_string=qs,
        headers=headers,
        body=body,
        root_path=root,
        raw_path=raw,
        scheme=scheme,
        http_version=version,
        server=server,
        client=client,
        extensions=ext,
    )


def _freeze_response(r: CapturedResponse) -> bytes:
    return marshal.dumps((r.status, [(bytes(k), bytes(v)) for k, v in r.headers], r.body))


def _thaw_response(blob: bytes) -> CapturedResponse:
    status, headers, body = marshal.loads(blob)
    return CapturedResponse(status=status, headers=headers, body=body)
