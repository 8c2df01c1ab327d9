"""async_accept: 202 Accepted with a signed status URL for slow endpoints."""

from __future__ import annotations

from .errors import AsyncAcceptError, ConfigurationError, JobCanceled, MissingDependencyError
from .job import Job, JobStatus
from .routes import RouteOptions, long_running

__version__ = "0.1.0"

__all__ = [
    "AsyncAcceptError",
    "ConfigurationError",
    "Job",
    "JobCanceled",
    "JobStatus",
    "MissingDependencyError",
    "RouteOptions",
    "__version__",
    "long_running",
]
