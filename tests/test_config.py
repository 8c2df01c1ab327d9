"""Bad options fail at construction with a ConfigurationError naming the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from async_accept import ConfigurationError
from async_accept.asgi import AsyncAcceptMiddleware as ASGIMiddleware
from async_accept.wsgi import AsyncAcceptMiddleware as WSGIMiddleware


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
    pass


def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:  # pragma: no cover
    return []


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({}, "secret_key is missing"),
        ({"secret_key": ""}, "non-empty"),
        ({"secret_key": []}, "empty list"),
        ({"store": "cassandra://x"}, "not understood"),
        ({"store": "sqlite://"}, "file path"),
        ({"store": "sqlite:///:memory:"}, "memory://"),
        ({"store": "sqlite:///jobs.db?bogus=1"}, "unknown option"),
        ({"store": object()}, "not a store"),
        ({"executor": "carrier-pigeon"}, "not understood"),
        ({"executor": object()}, "not an executor"),
        ({"prefix": "jobs"}, "prefix"),
        ({"prefix": "/"}, "prefix"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": "1d"}, "ttl"),
        ({"sla": -1}, "sla"),
        ({"max_body_size": -5}, "max_body_size"),
        ({"heartbeat_interval": 5, "worker_lost_after": 5}, "worker_lost_after"),
        ({"status_code_running": 201}, "status_code_running"),
        ({"identity": "alice"}, "identity"),
        ({"routes": "POST /x"}, "routes"),
        ({"routes": ["POST x"]}, "path must start"),
        ({"no_such_option": 1}, "no_such_option"),
    ],
)
def test_bad_option_raises_configuration_error(
    options: dict[str, Any], match: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each bad option is refused at construction, on both front doors, naming the fix."""
    monkeypatch.delenv("ASYNC_ACCEPT_SECRET_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    opts = {"secret_key": "s" * 32, "store": "memory://", **options}
    if "secret_key" in options and options["secret_key"] is None:
        del opts["secret_key"]
    if options == {}:
        del opts["secret_key"]
    for cls, app in ((ASGIMiddleware, asgi_app), (WSGIMiddleware, wsgi_app)):
        with pytest.raises(ConfigurationError, match=match):
            cls(app, **opts)


def test_secret_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """ASYNC_ACCEPT_SECRET_KEY is used when secret_key is not given (comma-separated rotation)."""
    new, old = "newkey-" + "x" * 26, "oldkey-" + "y" * 26
    monkeypatch.setenv("ASYNC_ACCEPT_SECRET_KEY", f"{new}, {old}")
    mw = WSGIMiddleware(wsgi_app, store="memory://")
    assert mw.options.secrets == [new.encode(), old.encode()]


def test_asyncio_executor_refused_for_wsgi() -> None:
    """The asyncio executor can't serve a WSGI app: ConfigurationError suggests 'thread'."""
    with pytest.raises(ConfigurationError, match="thread"):
        WSGIMiddleware(wsgi_app, secret_key="s" * 32, store="memory://", executor="asyncio")


def test_out_of_process_executor_refuses_memory_store() -> None:
    """An executor running jobs elsewhere can't use the in-memory store."""

    class Remote:
        name = "remote"
        out_of_process = True
        supports = frozenset({"asgi", "wsgi"})

        def start(self, runtime: Any, loop: Any) -> None: ...
        def submit(self, job_id: str) -> None: ...
        def shutdown(self, timeout: float) -> None: ...

    with pytest.raises(ConfigurationError, match="shared store"):
        WSGIMiddleware(wsgi_app, secret_key="s" * 32, store="memory://", executor=Remote())


def test_missing_app_is_refused() -> None:
    """The wrapped application is required."""
    with pytest.raises(ConfigurationError, match="application"):
        ASGIMiddleware(None, secret_key="s" * 32)  # type: ignore[arg-type]


def test_missing_sqlite_directory_is_refused(tmp_path: Path) -> None:
    """A SQLite path in a folder that doesn't exist fails at start-up, not on first request."""
    with pytest.raises(ConfigurationError):
        WSGIMiddleware(wsgi_app, secret_key="s" * 32, store=f"sqlite:///{tmp_path}/nope/jobs.db")
