"""async_accept: 202 Accepted with a signed status URL for slow endpoints.

Importing this package imports no web framework and no backend.
"""

from __future__ import annotations

from .context import JobContext, current_job, report_progress
from .errors import (
    AsyncAcceptError,
    ConfigurationError,
    ExecutorError,
    JobCanceled,
    MissingDependencyError,
    StoreError,
)
from .job import Job, JobStatus
from .routes import RouteOptions, long_running

__version__ = "0.1.0"

__all__ = [
    "AsyncAcceptError",
    "ConfigurationError",
    "ExecutorError",
    "Job",
    "JobCanceled",
    "JobContext",
    "JobStatus",
    "MissingDependencyError",
    "RouteOptions",
    "StoreError",
    "__version__",
    "current_job",
    "long_running",
    "report_progress",
]
