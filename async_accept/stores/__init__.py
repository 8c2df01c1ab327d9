"""Job stores and their webhook outboxes: the protocols, resolvers from a URL or
an instance, and the awaitable face of a store.

Each backend is one folder (``memory/``, ``sqlite/``, ``redis/``) holding its
``store.py``, its ``outbox.py`` and, where it has one, its ``connection.py``.
"""

from __future__ import annotations

import importlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

from .._imports import import_from_string
from ..errors import ConfigurationError
from .adapters import InlineAsyncStore, ThreadedAsyncStore
from .base import AsyncStore, Store
from .namespaces import pick_namespace
from .outbox_base import Outbox

__all__ = ["AsyncStore", "Outbox", "Store", "as_async", "resolve_outbox", "resolve_store"]

_ASYNC_METHODS = (
    "create",
    "get",
    "get_request",
    "get_result",
    "claim",
    "heartbeat",
    "set_progress",
    "finish",
    "fail",
    "cancel",
    "requeue",
    "list_jobs",
    "list_owned",
    "count_by_status",
    "purge_expired",
    "delete",
)


def resolve_store(spec: str | Store | None, *, namespace: str | None = None) -> Store:
    """Turn ``"memory://"``, ``"sqlite:///jobs.db"``, ``"redis://..."``, a
    ``"package.module:Factory"`` path or a store instance into a store.

    ``namespace`` (the CLI's ``--namespace``) is a SQLite or Redis URL's
    ``?namespace=`` given apart; both given must agree."""
    if namespace is not None and not (
        isinstance(spec, str)
        and urlsplit(spec).scheme.lower() in ("sqlite", "redis", "rediss", "unix")
    ):
        raise ConfigurationError(
            f"namespace={namespace!r} applies to SQLite and Redis store URLs only (store={spec!r})"
        )
    if spec is None or spec == "":
        spec = "sqlite:///async_accept_jobs.db"
    if not isinstance(spec, str):
        missing = [m for m in _ASYNC_METHODS if not callable(getattr(spec, m, None))]
        if missing:
            raise ConfigurationError(
                f"store={spec!r} is not a store: it lacks {', '.join(missing)}. "
                "Pass a URL such as 'sqlite:///jobs.db' or an object implementing "
                "async_accept.stores.Store."
            )
        return spec
    url = urlsplit(spec)
    scheme = url.scheme.lower()
    if scheme == "memory":
        from .memory import MemoryStore

        return MemoryStore()
    if scheme == "sqlite":
        # sqlite:///relative.db, sqlite:////abs/path.db, sqlite:///:memory: is refused
        path = spec[len("sqlite://") :]
        path = path.split("?", 1)[0]
        if path.startswith("/"):
            path = path[1:]
        if not path:
            raise ConfigurationError(
                f"store={spec!r} has no file path: use 'sqlite:///jobs.db' (relative) "
                "or 'sqlite:////var/lib/app/jobs.db' (absolute)."
            )
        if path == ":memory:":
            raise ConfigurationError(
                "store='sqlite:///:memory:' would give every connection its own empty "
                "database; use 'memory://' for an in-process store or a file path."
            )
        opts = _sqlite_options(spec, parse_qsl(url.query, keep_blank_values=True), namespace)
        from .sqlite import SQLiteStore

        return SQLiteStore(path, **opts)
    if scheme in ("redis", "rediss", "unix"):
        try:
            mod = importlib.import_module("async_accept.stores.redis")
        except ModuleNotFoundError as exc:  # the store module itself is part of the package
            raise ConfigurationError(f"store={spec!r}: the Redis store is unavailable") from exc
        if namespace is not None:
            return cast(Store, mod.RedisStore.from_url(spec, namespace=namespace))
        return cast(Store, mod.RedisStore.from_url(spec))
    if scheme in ("postgresql", "postgres"):
        from .postgres.connection import parse_url

        settings = parse_url(spec)  # before the import below: bad options fail first
        from .postgres import PostgresStore

        return PostgresStore(settings)
    if ":" in spec and "://" not in spec:
        factory = import_from_string(spec, "store")
        return resolve_store(factory() if callable(factory) else factory)
    raise ConfigurationError(
        f"store={spec!r} is not understood: use 'memory://', 'sqlite:///path/jobs.db', "
        "'redis://host:6379/0', 'postgresql://user@host/db' or a store instance."
    )


def resolve_outbox(spec: Outbox | str, *, namespace: str | None = None) -> Outbox:
    """Turn ``"memory://"``, ``"sqlite:///webhooks.db"`` (``sqlite:////abs/path.db``,
    ``?namespace=`` as a store's, or ``namespace``) or an outbox instance into an outbox."""
    if namespace is not None and not (isinstance(spec, str) and spec.startswith("sqlite:///")):
        raise ConfigurationError(f"namespace={namespace!r} applies to SQLite outbox URLs only")
    if not isinstance(spec, str):
        missing = [
            m
            for m in ("enqueue", "due", "mark_sent", "mark_retry", "mark_dead", "replay")
            if not callable(getattr(spec, m, None))
        ]
        if missing:
            raise ConfigurationError(
                f"outbox={spec!r} is not an outbox: it lacks {', '.join(missing)}"
            )
        return spec
    if spec == "memory://":
        from .memory.outbox import MemoryOutbox

        return MemoryOutbox()
    if spec.startswith("sqlite:///"):
        from .sqlite.outbox import SQLiteOutbox

        path, _, query = spec[len("sqlite:///") :].partition("?")
        pairs = parse_qsl(query, keep_blank_values=True)
        unknown = sorted({k for k, _ in pairs if k != "namespace"})
        if unknown:
            raise ConfigurationError(
                f"outbox={spec!r}: unknown option {unknown[0]!r} (known: namespace)"
            )
        values = [v for k, v in pairs if k == "namespace"]
        chosen = pick_namespace("SQLite", f"outbox={spec!r}", values, namespace, "")
        return SQLiteOutbox(path, namespace=chosen or None)
    raise ConfigurationError(
        f"outbox={spec!r} is not understood: use 'memory://', 'sqlite:///webhooks.db' "
        "or an Outbox instance."
    )


def _sqlite_options(
    spec: str, pairs: list[tuple[str, str]], namespace: str | None = None
) -> dict[str, Any]:
    namespaces = [v for k, v in pairs if k == "namespace"]
    out: dict[str, Any] = {}
    if namespaces or namespace is not None:
        where = f"store={spec!r}"
        out["namespace"] = pick_namespace("SQLite", where, namespaces, namespace, "")
    for key, value in pairs:
        if key == "namespace":
            continue
        if key == "timeout":
            try:
                out["timeout"] = float(value)
            except ValueError as exc:
                raise ConfigurationError(
                    f"store={spec!r}: timeout must be a number of seconds"
                ) from exc
        elif key == "synchronous":
            if value.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
                raise ConfigurationError(
                    f"store={spec!r}: synchronous must be OFF, NORMAL, FULL or EXTRA"
                )
            out["synchronous"] = value.upper()
        else:
            raise ConfigurationError(
                f"store={spec!r}: unknown option {key!r} (known: timeout, synchronous, namespace)"
            )
    return out


def as_async(store: Store, pool: ThreadPoolExecutor | None = None) -> AsyncStore:
    """The awaitable face of ``store``: its own native one when it has one
    (``store.aio``), else a direct call for non-blocking stores, else a thread hop."""
    native = getattr(store, "aio", None)
    if native is not None:
        return cast(AsyncStore, native)
    if not store.blocking:
        return InlineAsyncStore(store)
    if pool is None:
        # Two threads: store calls are short, and more threads only fight over
        # the GIL with the event loop (measured: no gain from 8 over 1-2).
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="async-accept-io")
    return ThreadedAsyncStore(store, pool)
