"""One exception root; subclasses carry the data a caller needs."""

from __future__ import annotations


class AsyncAcceptError(Exception):
    """Root of every exception async_accept raises on purpose."""


class ConfigurationError(AsyncAcceptError, ValueError):
    """A bad option, raised at construction time. The message names the fix."""


class MissingDependencyError(ConfigurationError, ImportError):
    """An optional feature was used without its package installed."""

    def __init__(self, feature: str, extra: str, package: str) -> None:
        self.feature = feature
        self.extra = extra
        self.package = package
        super().__init__(
            f"{feature} needs the {package!r} package: pip install 'async-accept[{extra}]'"
        )


class StoreError(AsyncAcceptError):
    """The job store could not perform an operation (down, locked, full, ...)."""


class ClaimFailed(StoreError):
    """The store failed while a worker claimed a job: the job did not run there and
    is still queued (a claim that landed with its answer lost was given back)."""


class ExecutorError(AsyncAcceptError):
    """The executor could not take a job."""


class JobCanceled(AsyncAcceptError):
    """Raised inside a job by :func:`report_progress` once its cancel was requested."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id} was canceled")


class ResultTooLarge(AsyncAcceptError):
    """The handler's response is larger than ``max_result_size``: the job fails
    ``result-too-large`` instead of holding it all in memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"the handler's response is larger than max_result_size={limit} bytes")
