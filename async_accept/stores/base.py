"""The store contract: every store (memory, SQLite, Redis, ...) implements it.

State-changing methods are compare-and-set: each names the state it expects
and returns ``None`` (or ``changed=False``) when the job is not in it, so a
job can't be claimed twice and a late worker can't overwrite a cancel or a
deadman verdict. Callers pass ``now`` so tests control time.

A job whose ``expires_at`` has passed is gone: every read returns ``None``
for it even before :meth:`Store.purge_expired` deletes it.

Adding a backend means adding one folder beside ``memory/``, ``sqlite/`` and
``redis/``: a ``store.py`` whose class derives from :class:`StoreBase` and
implements :class:`Store` (plus an ``aio`` attribute when it has a native
awaitable face), an ``outbox.py`` whose class derives from
:class:`~async_accept.stores.outbox_base.OutboxBase`, the store's
:meth:`StoreBase.default_outbox` returning it, and one entry each in the
contract suites' fixtures (``tests/test_store_contract.py``: ``STORES``;
``tests/test_webhooks.py``: ``OUTBOXES``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, cast, runtime_checkable

from ..job import CapturedRequest, CapturedResponse, Job, JobStatus
from .outbox_base import Outbox

#: Seconds a silent process stays in the worker registry before it is forgotten.
WORKER_RETENTION = 3600.0


@dataclass(frozen=True, slots=True)
class OwnedQuery:
    """Which of one owner's jobs :meth:`Store.list_owned` reads (by default, all)."""

    limit: int = 100
    #: the cursor: ``(created_at, id)`` of the previous page's last job; only
    #: jobs after it (older, or as old with a smaller id) are read
    before: tuple[float, str] | None = None
    status: JobStatus | None = None
    #: ``METHOD /path``, as the job recorded it
    route: str | None = None
    #: ``created_after <= created_at < created_before``
    created_after: float | None = None
    created_before: float | None = None

    def admits(self, created_at: float, job_id: str, status: str, route: str | None) -> bool:
        """Whether a job with these fields matches (for stores that filter in Python)."""
        return (
            (self.status is None or status == JobStatus(self.status).value)
            and (self.route is None or route == self.route)
            and (self.created_after is None or created_at >= self.created_after)
            and (self.created_before is None or created_at < self.created_before)
            and (self.before is None or (created_at, job_id) < self.before)
        )


#: Every job of the owner (up to 100): ``list_owned``'s default query.
EVERY = OwnedQuery()


@runtime_checkable
class Store(Protocol):
    """Synchronous store interface (WSGI front door, thread executors, workers)."""

    #: True when several processes may share it (SQLite file, Redis); False for memory.
    shared: bool
    #: True when calls do blocking I/O (the ASGI path then runs them in a thread).
    blocking: bool

    def create(self, job: Job, request: CapturedRequest) -> tuple[Job, bool]:
        """Record a new job with its request.

        When ``job.idempotency_key`` is set and a live job already holds that
        key, nothing is written and ``(existing_job, False)`` is returned;
        otherwise ``(job, True)``. Two racing creates with the same key yield
        exactly one ``True``.
        """
        ...

    def get(self, job_id: str, now: float) -> Job | None:
        """The job's metadata, or None when unknown or expired."""
        ...

    def get_request(self, job_id: str) -> CapturedRequest | None:
        """The captured request of a job, or None."""
        ...

    def get_result(self, job_id: str) -> CapturedResponse | None:
        """The stored handler response of a finished job, or None."""
        ...

    def claim(self, job_id: str, worker_id: str, now: float) -> Job | None:
        """CAS queued (and not cancel_requested) -> processing, owned by ``worker_id``.

        Sets ``started_at`` and ``heartbeat_at`` to ``now`` and increments
        ``attempts``. Returns the updated job, or None when it was not queued.
        """
        ...

    def claim_with_request(
        self, job_id: str, worker_id: str, now: float
    ) -> tuple[Job, CapturedRequest | None] | None:
        """:meth:`claim`, and the claimed job's captured request with it (a worker
        needs both): one round trip where the backend can (StoreBase: two calls)."""
        ...

    def heartbeat(self, job_id: str, worker_id: str, now: float) -> Job | None:
        """Refresh the lease of a processing job owned by ``worker_id``.

        Returns the job (so the caller sees ``cancel_requested``), or None when
        the job is no longer processing under this worker.
        """
        ...

    def set_progress(
        self,
        job_id: str,
        worker_id: str,
        now: float,
        percent: float | None,
        message: str | None,
        eta: float | None,
    ) -> Job | None:
        """Record progress (and refresh the lease) of a processing job owned by ``worker_id``.

        ``progress_at`` and ``updated_at`` become ``now``. Same return as heartbeat.
        """
        ...

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
        """CAS processing (owned by ``worker_id``) -> a terminal ``status``.

        Stores the response (if any) and sets ``result_status`` from it,
        ``finished_at``/``updated_at`` to ``now``, ``percent`` to 100 when
        completed. Returns None when the job was no longer ours to finish.
        """
        ...

    def fail(
        self,
        job_id: str,
        expected: Collection[JobStatus],
        now: float,
        error: dict[str, Any],
        lease: float | None = None,
    ) -> Job | None:
        """CAS any of ``expected`` -> failed with ``error`` (deadman switch, dispatch failure).

        With ``lease``, also only while the job's ``heartbeat_at`` equals it: the
        deadman switch fails a lost worker's job only if no heartbeat landed since
        it read the lease it watched."""
        ...

    def cancel(self, job_id: str, now: float) -> tuple[Job | None, bool]:
        """Cancel: queued -> canceled; processing -> ``cancel_requested=True``.

        Returns ``(job_after, changed)``; ``(None, False)`` when unknown,
        ``(job, False)`` when the job was already terminal (or its cancel was
        already requested).
        """
        ...

    def requeue(
        self, job_id: str, worker_id: str, now: float, lease: float | None = None
    ) -> Job | None:
        """CAS processing (owned by ``worker_id``) -> queued, for a graceful handover.

        A job whose cancel was requested goes to canceled instead (``finished_at =
        now``): no worker would claim it again. With ``lease``, only while the job's
        ``heartbeat_at`` equals it (the deadman switch requeueing a lost worker's job).
        """
        ...

    def mark_dispatched(self, job_ids: Sequence[str], now: float, stale_before: float) -> list[str]:
        """Note that ``job_ids`` are being handed to a broker at ``now``.

        Compare-and-set per job: marks (and returns, in the given order) the ids
        of jobs still queued, not cancel_requested, whose previous mark is absent
        or older than ``stale_before``; of two processes marking one job at once,
        one gets it. Remote executors (Celery, RQ) publish only what this returns,
        so that sweepers don't re-send a job a broker still holds. Memory and
        SQLite keep the mark as ``meta["dispatched_at"]``, Redis beside the job.
        """
        ...

    def retry(self, job_id: str, now: float) -> Job | None:
        """CAS failed (and not cancel_requested) -> queued: a new attempt of the
        same job, same id and status URL (``async-accept jobs retry``).

        Clears what the failed run left: worker, heartbeat, start and finish
        times, progress, error, stored result and the dispatch mark; sets
        ``deadline_at`` to ``now + 2 x sla``. Returns None when the job was not
        failed (or was canceled by its client, or is gone).
        """
        ...

    def list_jobs(
        self,
        status: JobStatus | None = None,
        limit: int = 100,
        created_before: float | None = None,
        newest: bool = False,
    ) -> list[Job]:
        """Live jobs, oldest first (equal times in creation order), or with ``newest``
        in the reverse order; optionally filtered by state and creation time."""
        ...

    def list_owned(self, owner: str, now: float, query: OwnedQuery = EVERY) -> list[Job]:
        """Live jobs of ``owner`` that ``query`` admits, newest first (``created_at``
        descending, then the job id descending), at most ``query.limit``. A job's
        ``owner`` field holds one hash, or two separated by a space (the
        credential's and the owner cookie's): ``owner`` matching either lists it.

        Read through an index by owner (``GET {prefix}/`` calls it), so its cost
        follows the owner's jobs, not the store's size.
        """
        ...

    def count_by_status(self) -> dict[JobStatus, int]:
        """How many live jobs are in each state (every state present, zeros included)."""
        ...

    def purge_expired(self, now: float) -> int:
        """Delete jobs (and their request/result) whose ``expires_at`` <= now."""
        ...

    def delete(self, job_id: str) -> bool:
        """Delete one job; True when it existed."""
        ...

    def worker_heartbeat(self, worker_id: str, now: float, info: dict[str, Any]) -> None:
        """Record that process ``worker_id`` is alive at ``now`` (the worker registry
        that ``GET {prefix}/health`` reads). ``info`` is JSON-able and replaces the
        previous one."""
        ...

    def list_workers(self, now: float) -> list[dict[str, Any]]:
        """Processes that beat within :data:`WORKER_RETENTION` seconds of ``now``,
        most recent first: each ``info`` plus ``"id"`` and ``"last_heartbeat"``.
        Older entries are forgotten."""
        ...

    def close(self) -> None:
        """Release connections. The store is unusable afterwards."""
        ...


class AsyncStore(Protocol):
    """The same contract, awaitable: what the ASGI front door calls."""

    async def create(self, job: Job, request: CapturedRequest) -> tuple[Job, bool]: ...
    async def get(self, job_id: str, now: float) -> Job | None: ...
    async def get_request(self, job_id: str) -> CapturedRequest | None: ...
    async def get_result(self, job_id: str) -> CapturedResponse | None: ...
    async def claim(self, job_id: str, worker_id: str, now: float) -> Job | None: ...
    async def claim_with_request(
        self, job_id: str, worker_id: str, now: float
    ) -> tuple[Job, CapturedRequest | None] | None: ...
    async def heartbeat(self, job_id: str, worker_id: str, now: float) -> Job | None: ...
    async def set_progress(
        self,
        job_id: str,
        worker_id: str,
        now: float,
        percent: float | None,
        message: str | None,
        eta: float | None,
    ) -> Job | None: ...
    async def finish(
        self,
        job_id: str,
        worker_id: str,
        now: float,
        status: JobStatus,
        response: CapturedResponse | None = None,
        error: dict[str, Any] | None = None,
        result_location: str | None = None,
    ) -> Job | None: ...
    async def fail(
        self,
        job_id: str,
        expected: Collection[JobStatus],
        now: float,
        error: dict[str, Any],
        lease: float | None = None,
    ) -> Job | None: ...
    async def cancel(self, job_id: str, now: float) -> tuple[Job | None, bool]: ...
    async def requeue(
        self, job_id: str, worker_id: str, now: float, lease: float | None = None
    ) -> Job | None: ...
    async def list_jobs(
        self,
        status: JobStatus | None = None,
        limit: int = 100,
        created_before: float | None = None,
        newest: bool = False,
    ) -> list[Job]: ...
    async def list_owned(self, owner: str, now: float, query: OwnedQuery = EVERY) -> list[Job]: ...
    async def retry(self, job_id: str, now: float) -> Job | None: ...
    async def count_by_status(self) -> dict[JobStatus, int]: ...
    async def purge_expired(self, now: float) -> int: ...
    async def delete(self, job_id: str) -> bool: ...
    async def worker_heartbeat(self, worker_id: str, now: float, info: dict[str, Any]) -> None: ...
    async def list_workers(self, now: float) -> list[dict[str, Any]]: ...


class Progress(NamedTuple):
    """What :meth:`Store.set_progress` records."""

    percent: float | None
    message: str | None
    eta: float | None


class Outcome(NamedTuple):
    """How :meth:`Store.finish` ends a job: a terminal status and what the run left."""

    status: JobStatus
    response: CapturedResponse | None = None
    error: dict[str, Any] | None = None
    result_location: str | None = None


class StoreBase:
    """What every store backend shares; backends derive from it.

    ``set_progress`` and ``finish`` are written here once: they bundle their
    arguments (:class:`Progress`, :class:`Outcome`, the status checked to be
    terminal) and hand them to the backend's ``_set_progress`` and ``_finish``.
    Defaults a backend overrides where they differ: ``shared`` and ``blocking``
    (a file or a server, reached with blocking I/O), :meth:`default_outbox` (where
    its webhook deliveries wait when no outbox is configured) and :meth:`close`.
    """

    shared: bool = True
    blocking: bool = True

    def claim_with_request(
        self, job_id: str, worker_id: str, now: float
    ) -> tuple[Job, CapturedRequest | None] | None:
        store = cast("Store", self)
        job = store.claim(job_id, worker_id, now)
        return None if job is None else (job, store.get_request(job_id))

    def set_progress(
        self,
        job_id: str,
        worker_id: str,
        now: float,
        percent: float | None,
        message: str | None,
        eta: float | None,
    ) -> Job | None:
        return self._set_progress(job_id, worker_id, now, Progress(percent, message, eta))

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
        outcome = Outcome(terminal_status(status), response, error, result_location)
        return self._finish(job_id, worker_id, now, outcome)

    def _set_progress(
        self, job_id: str, worker_id: str, now: float, progress: Progress
    ) -> Job | None:
        raise NotImplementedError

    def _finish(self, job_id: str, worker_id: str, now: float, outcome: Outcome) -> Job | None:
        raise NotImplementedError

    def default_outbox(self) -> Outbox | None:
        """The webhook outbox that lives where this store's jobs do, or None when
        the backend has none (a shared store then needs ``webhook_outbox=``)."""
        return None

    def close(self) -> None:
        """Nothing to release."""


class AsyncStoreBase:
    """What every awaitable face shares: ``set_progress`` and ``finish`` written
    once, over the face's ``_set_progress`` and ``_finish`` (as in :class:`StoreBase`)."""

    async def claim_with_request(
        self, job_id: str, worker_id: str, now: float
    ) -> tuple[Job, CapturedRequest | None] | None:
        store = cast("AsyncStore", self)
        job = await store.claim(job_id, worker_id, now)
        return None if job is None else (job, await store.get_request(job_id))

    async def set_progress(
        self,
        job_id: str,
        worker_id: str,
        now: float,
        percent: float | None,
        message: str | None,
        eta: float | None,
    ) -> Job | None:
        return await self._set_progress(job_id, worker_id, now, Progress(percent, message, eta))

    async def finish(
        self,
        job_id: str,
        worker_id: str,
        now: float,
        status: JobStatus,
        response: CapturedResponse | None = None,
        error: dict[str, Any] | None = None,
        result_location: str | None = None,
    ) -> Job | None:
        outcome = Outcome(terminal_status(status), response, error, result_location)
        return await self._finish(job_id, worker_id, now, outcome)

    async def _set_progress(
        self, job_id: str, worker_id: str, now: float, progress: Progress
    ) -> Job | None:
        raise NotImplementedError

    async def _finish(
        self, job_id: str, worker_id: str, now: float, outcome: Outcome
    ) -> Job | None:
        raise NotImplementedError


def terminal_status(status: JobStatus) -> JobStatus:
    """``status`` as a JobStatus, refused unless it ends a job (what ``finish`` takes)."""
    status = JobStatus(status)
    if not status.terminal:
        raise ValueError(f"finish() needs a terminal status, not {status.value!r}")
    return status
