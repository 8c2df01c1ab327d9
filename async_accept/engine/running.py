"""Running a job (the worker side) and the sweep that recovers the lost ones."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin

from ..errors import ClaimFailed, ExecutorError, JobCanceled, ResultTooLarge, StoreError
from ..job import CapturedResponse, Job, JobStatus
from ..routes import retry_matches
from ..tracing import ExecuteSpan
from . import ops
from .ops import Gen
from .responses import deadline_error, problem_dict, strip_hop_by_hop
from .status import Status, may_retry


class Running(Status):
    """The worker side of the engine."""

    #: Whether this app may run a queued job it did not accept in this process (a job
    #: of a route it marks; see ownership.py); None: any. The front door sets it.
    owns_job: Callable[[Job], bool] | None = None

    # -- running a job (the worker side) ----------------------------------------------

    def run(self, job_id: str, worker_id: str) -> Gen[Job | None]:
        """Claim the job, replay its request, store the outcome."""
        now = self.clock()
        try:
            claimed = yield from ops.claim_with_request(job_id, worker_id, now)
        except StoreError as exc:
            # The claim may have landed with only its answer lost: this worker would
            # hold a lease nobody beats for (worker-lost later). Give it back (a
            # compare-and-set on our lease); the sweeper hands the queued job over again.
            with contextlib.suppress(StoreError):
                yield from ops.requeue(job_id, worker_id, self.clock(), durable=False)
            raise ClaimFailed(f"claim of job {job_id}: {exc}") from exc
        if claimed is None:
            return None  # canceled, taken by another worker, or gone
        job, stored = claimed
        if now >= job.deadline_at:
            return (
                yield from ops.fail(
                    job_id,
                    frozenset({JobStatus.PROCESSING}),
                    now,
                    deadline_error(job),
                    durable=True,
                )
            )
        request = None if stored is None else self.sealer.open(job_id, stored)
        if request is None:
            return (
                yield from ops.fail(
                    job_id,
                    frozenset({JobStatus.PROCESSING}),
                    now,
                    problem_dict(
                        500,
                        "request-missing",
                        "Request missing",
                        "The captured request is gone from the store.",
                    ),
                    durable=True,
                )
            )
        self.tracing.record_queue_wait(job, request)
        span = self.tracing.start_execute(job, request)
        try:
            return (yield from self._execute(job, worker_id, span))
        finally:
            span.end()

    def _execute(self, job: Job, worker_id: str, span: ExecuteSpan) -> Gen[Job | None]:
        """Replay the claimed job's request and store the outcome."""
        job_id = job.id
        request = span.request
        status = JobStatus.COMPLETED
        response: CapturedResponse | None = None
        error: dict[str, Any] | None = None
        location: str | None = None
        try:
            response = yield from ops.replay(request, job)
        except JobCanceled:
            status = JobStatus.CANCELED
        except ResultTooLarge as exc:
            status = JobStatus.FAILED
            error = problem_dict(
                500,
                "result-too-large",
                "Result too large",
                f"The handler's response is larger than max_result_size ({exc.limit} bytes).",
            )
        except WorkerShutdown:
            # A graceful stop: the job goes back to the queue, for another process (or
            # this one restarted) to run again; a canceled one ends canceled.
            return (yield from ops.requeue(job_id, worker_id, self.clock()))
        except Exception as exc:  # the handler's own error: the job fails
            if may_retry(job) and retry_matches(exc, job.meta.get("retry_on")):
                # The route asked for another run on this error: back to the queue,
                # handed to the executor again after the backoff (doubling per attempt).
                again = yield from ops.requeue(job_id, worker_id, self.clock())
                if again is not None and again.status is JobStatus.QUEUED:
                    backoff = float(job.meta.get("retry_backoff", 0.0))
                    delay = backoff * 2 ** (max(1, job.attempts) - 1)
                    with contextlib.suppress(ExecutorError):
                        yield from ops.submit(job_id, after=delay)
                return again
            status = JobStatus.FAILED
            detail = "The handler raised an exception."
            if self.options.debug:
                detail = f"{type(exc).__name__}: {exc}"
            error = problem_dict(500, "handler-error", "Handler error", detail)
        if response is not None:
            response.headers = strip_hop_by_hop(response.headers)
            if response.status >= 500:
                status = JobStatus.FAILED
                error = problem_dict(
                    response.status,
                    "handler-error",
                    "Handler error",
                    f"The handler answered {response.status}.",
                )
            elif response.status == 201 or 300 <= response.status < 400:
                loc = response.header(b"location")
                if loc:
                    base = request.root_path + request.path
                    location = urljoin(base, loc.decode("latin-1"))
        span.outcome(status, error)
        finished = yield from ops.finish(
            job_id, worker_id, self.clock(), status, response, error, location
        )
        return finished

    # -- housekeeping ---------------------------------------------------------------------

    def sweep(
        self,
        is_pending: Callable[[str], bool],
        *,
        requeue_before: float | None = None,
        purge: bool = True,
        batch: int = 500,
    ) -> Gen[dict[str, int]]:
        """Fail zombies, hand over queued jobs nobody is running, purge expired ones."""
        now = self.clock()
        report = {"failed": 0, "requeued": 0, "purged": 0}
        processing = yield from ops.list_jobs(JobStatus.PROCESSING, batch, None)
        for job in processing:
            failed = yield from self._sweep_deadman(job, now)
            report["failed"] += bool(failed)
        cutoff = requeue_before if requeue_before is not None else now - self.options.requeue_after
        queued = yield from ops.list_jobs(JobStatus.QUEUED, batch, cutoff)
        for job in queued:
            failed = yield from self._sweep_deadman(job, now)
            if failed is not None:
                report["failed"] += failed
            elif not job.cancel_requested and not is_pending(job.id) and self._owns(job):
                try:
                    yield from ops.submit(job.id)
                    report["requeued"] += 1
                except ExecutorError:
                    break
        if purge:
            report["purged"] = yield from ops.purge_expired(now)
        return report

    def _owns(self, job: Job) -> bool:
        """Another app's job (another route table, one store) is never handed over here."""
        owns = self.owns_job
        return owns is None or owns(job)

    def _sweep_deadman(self, job: Job, now: float) -> Gen[bool | None]:
        """None when the deadman switch spares the job, else whether this sweep failed it
        (another process may have ended it first)."""
        v = self.verdict(job, now)
        if v is None:
            return None
        done = yield from self.deadman_end(job, now, v)
        return done is not None


class WorkerShutdown(Exception):
    """The process running a job is shutting down before the job ended."""
