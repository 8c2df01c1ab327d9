"""What an engine generator can ask the world for, one typed helper per operation.

The engine's generators ``yield from`` these helpers; a driver (``Runtime.drive``
blocking, ``Runtime.adrive`` awaited) performs the yielded op and resumes the
generator. A store op carries its call twice, typed: ``run(store)`` for the
blocking face and ``arun(astore)`` for the awaitable one; the driver puts the
result on the op, so each helper returns a typed value without a cast. No
store method is ever named by a string.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, NamedTuple, TypeVar

from ..job import CapturedRequest, CapturedResponse, Job, JobStatus

if TYPE_CHECKING:
    from ..stores import AsyncStore, Store
    from ..stores.base import OwnedQuery

T = TypeVar("T")


class JobEvent(NamedTuple):
    """What a store call did to a job, for metrics and webhooks."""

    kind: Literal["accepted", "ended"]
    job: Job


@dataclass(slots=True)
class StoreCall(Generic[T]):
    """One store operation: ``run(store)`` blocking or ``await arun(astore)``."""

    run: Callable[[Store], T]
    arun: Callable[[AsyncStore], Awaitable[T]]
    #: what the call's result says happened to a job (None: a read, nothing to report)
    event: Callable[[T], JobEvent | None] | None = None
    #: a job's outcome (finish, fail, requeue by the worker running it): the driver
    #: retries it with backoff across transient store errors, holding it until durable
    durable: bool = False
    result: T = field(init=False)


@dataclass(slots=True)
class ExecutorCall:
    """Hand ``job_id`` to the executor (``submit``), or tell it a running job's
    cancel was requested (``cancel``: asyncio cancels the task). Never blocks."""

    job_id: str
    cancel: bool = False
    #: submit only after this many seconds (a retry's backoff)
    after: float = 0.0


@dataclass(slots=True)
class WaitFor:
    """Wait up to ``timeout`` seconds for the job to end; yields the latest Job or None."""

    job_id: str
    timeout: float


@dataclass(slots=True)
class WaitChange:
    """Wait up to ``timeout`` seconds for ``job`` to change as its client sees it
    (state, progress); yields the changed Job, ``job`` itself after the timeout,
    or None once the job is gone. Answered by the process's change feed."""

    job: Job
    timeout: float


@dataclass(slots=True)
class Replay:
    """Run the captured request against the app; yields the CapturedResponse."""

    request: CapturedRequest
    job: Job


Op = StoreCall[Any] | ExecutorCall | WaitFor | WaitChange | Replay
Gen = Generator[Op, Any, T]


def _store(call: StoreCall[T]) -> Gen[T]:
    yield call
    return call.result


def _created(result: tuple[Job, bool]) -> JobEvent | None:
    return JobEvent("accepted", result[0]) if result[1] else None


def _ended(job: Job | None) -> JobEvent | None:
    return JobEvent("ended", job) if job is not None and job.terminal else None


def _canceled(result: tuple[Job | None, bool]) -> JobEvent | None:
    return _ended(result[0]) if result[1] else None


# --- store operations -------------------------------------------------------------


def create(job: Job, request: CapturedRequest) -> Gen[tuple[Job, bool]]:
    return _store(
        StoreCall(lambda s: s.create(job, request), lambda s: s.create(job, request), _created)
    )


def get(job_id: str, now: float) -> Gen[Job | None]:
    return _store(StoreCall(lambda s: s.get(job_id, now), lambda s: s.get(job_id, now)))


def get_request(job_id: str) -> Gen[CapturedRequest | None]:
    return _store(StoreCall(lambda s: s.get_request(job_id), lambda s: s.get_request(job_id)))


def get_result(job_id: str) -> Gen[CapturedResponse | None]:
    return _store(StoreCall(lambda s: s.get_result(job_id), lambda s: s.get_result(job_id)))


def claim(job_id: str, worker_id: str, now: float) -> Gen[Job | None]:
    return _store(
        StoreCall(
            lambda s: s.claim(job_id, worker_id, now), lambda s: s.claim(job_id, worker_id, now)
        )
    )


def claim_with_request(
    job_id: str, worker_id: str, now: float
) -> Gen[tuple[Job, CapturedRequest | None] | None]:
    return _store(
        StoreCall(
            lambda s: s.claim_with_request(job_id, worker_id, now),
            lambda s: s.claim_with_request(job_id, worker_id, now),
        )
    )


def finish(
    job_id: str,
    worker_id: str,
    now: float,
    status: JobStatus,
    response: CapturedResponse | None,
    error: dict[str, Any] | None,
    location: str | None,
) -> Gen[Job | None]:
    args = (job_id, worker_id, now, status, response, error, location)
    return _store(
        StoreCall(lambda s: s.finish(*args), lambda s: s.finish(*args), _ended, durable=True)
    )


def fail(
    job_id: str,
    expected: frozenset[JobStatus],
    now: float,
    error: dict[str, Any],
    *,
    durable: bool = False,
    lease: float | None = None,
) -> Gen[Job | None]:
    """Fail a job in one of ``expected``; with ``lease``, only while its
    ``heartbeat_at`` is still that value (the deadman switch's worker-lost)."""
    if lease is None:
        return _store(
            StoreCall(
                lambda s: s.fail(job_id, expected, now, error),
                lambda s: s.fail(job_id, expected, now, error),
                _ended,
                durable=durable,
            )
        )
    return _store(
        StoreCall(
            lambda s: s.fail(job_id, expected, now, error, lease=lease),
            lambda s: s.fail(job_id, expected, now, error, lease=lease),
            _ended,
            durable=durable,
        )
    )


def requeue(
    job_id: str, worker_id: str, now: float, *, durable: bool = True, lease: float | None = None
) -> Gen[Job | None]:
    """Hand a job ``worker_id`` runs back to the queue (a canceled one ends canceled);
    with ``lease``, only while its ``heartbeat_at`` is still that value."""
    if lease is None:
        return _store(
            StoreCall(
                lambda s: s.requeue(job_id, worker_id, now),
                lambda s: s.requeue(job_id, worker_id, now),
                _ended,
                durable=durable,
            )
        )
    return _store(
        StoreCall(
            lambda s: s.requeue(job_id, worker_id, now, lease=lease),
            lambda s: s.requeue(job_id, worker_id, now, lease=lease),
            _ended,
            durable=durable,
        )
    )


def cancel(job_id: str, now: float) -> Gen[tuple[Job | None, bool]]:
    return _store(
        StoreCall(lambda s: s.cancel(job_id, now), lambda s: s.cancel(job_id, now), _canceled)
    )


def delete(job_id: str) -> Gen[bool]:
    return _store(StoreCall(lambda s: s.delete(job_id), lambda s: s.delete(job_id)))


def list_jobs(
    status: JobStatus, limit: int, created_before: float | None, newest: bool = False
) -> Gen[list[Job]]:
    return _store(
        StoreCall(
            lambda s: s.list_jobs(status, limit, created_before, newest),
            lambda s: s.list_jobs(status, limit, created_before, newest),
        )
    )


def list_owned(owner: str, now: float, query: OwnedQuery) -> Gen[list[Job]]:
    return _store(
        StoreCall(
            lambda s: s.list_owned(owner, now, query), lambda s: s.list_owned(owner, now, query)
        )
    )


def retry(job_id: str, now: float) -> Gen[Job | None]:
    return _store(StoreCall(lambda s: s.retry(job_id, now), lambda s: s.retry(job_id, now)))


def count_by_status() -> Gen[dict[JobStatus, int]]:
    return _store(StoreCall(lambda s: s.count_by_status(), lambda s: s.count_by_status()))


def purge_expired(now: float) -> Gen[int]:
    return _store(StoreCall(lambda s: s.purge_expired(now), lambda s: s.purge_expired(now)))


def list_workers(now: float) -> Gen[list[dict[str, Any]]]:
    return _store(StoreCall(lambda s: s.list_workers(now), lambda s: s.list_workers(now)))


# --- executor operations ------------------------------------------------------------


def submit(job_id: str, after: float = 0.0) -> Gen[None]:
    yield ExecutorCall(job_id, after=after)


def cancel_local(job_id: str) -> Gen[None]:
    yield ExecutorCall(job_id, cancel=True)


def wait_for(job_id: str, timeout: float) -> Gen[Job | None]:
    job: Job | None = yield WaitFor(job_id, timeout)
    return job


def wait_change(job: Job, timeout: float) -> Gen[Job | None]:
    changed: Job | None = yield WaitChange(job, timeout)
    return changed


def replay(request: CapturedRequest, job: Job) -> Gen[CapturedResponse]:
    response: CapturedResponse = yield Replay(request, job)
    return response
