"""The executor seam: the Protocol, its base class and where RemoteExecutor lives."""

from __future__ import annotations

import pytest

from async_accept import worker
from async_accept._imports import import_optional
from async_accept.errors import ConfigurationError, MissingDependencyError
from async_accept.executors import Executor, resolve_executor
from async_accept.executors.asyncio import AsyncioExecutor
from async_accept.executors.base import BaseExecutor
from async_accept.executors.remote import RemoteExecutor, queue_name
from async_accept.executors.thread import ThreadExecutor


def test_remote_executor_is_still_importable_from_worker() -> None:
    """async_accept.worker.RemoteExecutor is the one in executors/remote.py."""
    assert worker.RemoteExecutor is RemoteExecutor
    assert issubclass(RemoteExecutor, BaseExecutor)


def test_base_class_defaults_satisfy_the_protocol() -> None:
    """Built-in executors get in-process, both-doors defaults and meet the Protocol."""
    thread, aio = ThreadExecutor(), AsyncioExecutor()
    assert isinstance(thread, Executor) and isinstance(aio, Executor)
    assert thread.out_of_process is False and aio.out_of_process is False
    assert thread.supports == frozenset({"asgi", "wsgi"})
    assert aio.supports == frozenset({"asgi"})
    assert RemoteExecutor.out_of_process is True
    assert BaseExecutor().is_pending("j") is False
    BaseExecutor().cancel("j")  # a no-op by default


def test_factory_path_executor_is_imported_by_the_shared_parser() -> None:
    """executor='module:factory' builds the executor; a bad path names the option."""
    ex = resolve_executor("async_accept.executors.thread:ThreadExecutor", "wsgi")
    assert isinstance(ex, ThreadExecutor)
    with pytest.raises(ConfigurationError, match=r"executor=.*has no 'Nope'"):
        resolve_executor("async_accept.executors.thread:Nope", "wsgi")


def test_queue_name_is_checked_once_for_every_remote_executor() -> None:
    """queue_name() refuses an empty or non-string queue."""
    assert queue_name("jobs") == "jobs"
    for bad in ("", None, 3):
        with pytest.raises(ConfigurationError, match="must be a queue name"):
            queue_name(bad)


def test_optional_import_names_feature_and_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing optional package raises MissingDependencyError with the pip extra."""
    import sys

    monkeypatch.setitem(sys.modules, "httpx", None)
    with pytest.raises(MissingDependencyError, match=r"async-accept\[client\]"):
        import_optional("httpx", "Webhooks", "client")
