"""Executors: a Protocol and a resolver from a short name or an instance."""

from __future__ import annotations

import contextlib
import importlib
from typing import Any
from urllib.parse import parse_qs

from .._imports import import_from_string
from ..errors import ConfigurationError
from .base import Executor

__all__ = ["Executor", "resolve_executor"]

_BUILTIN = {
    "thread": ("async_accept.executors.thread", "ThreadExecutor"),
    "threads": ("async_accept.executors.thread", "ThreadExecutor"),
    "asyncio": ("async_accept.executors.asyncio", "AsyncioExecutor"),
    "celery": ("async_accept.executors.celery", "CeleryExecutor"),
    "rq": ("async_accept.executors.rq", "RQExecutor"),
    "store": ("async_accept.executors.store", "StoreExecutor"),
}


def _query_kwargs(spec: str, query: str) -> dict[str, Any]:
    """``"thread?max_workers=4"`` -> ``{"max_workers": 4}`` (numbers become ints/floats)."""
    out: dict[str, Any] = {}
    for key, values in parse_qs(query, keep_blank_values=True).items():
        value: Any = values[-1]
        try:
            value = int(value)
        except ValueError:
            with contextlib.suppress(ValueError):
                value = float(value)
        if not key.isidentifier():
            raise ConfigurationError(f"executor={spec!r}: bad option name {key!r}")
        out[key] = value
    return out


def resolve_executor(spec: Any, kind: str) -> Executor:
    """``None`` (asyncio for ASGI, thread for WSGI), a short name with options
    (``"thread?max_workers=4"``), a
    ``"package.module:factory"`` path, or an instance."""
    if spec is None:
        spec = "asyncio" if kind == "asgi" else "thread"
    if isinstance(spec, str):
        name, _, query = spec.strip().partition("?")
        name = name.lower()
        if name in _BUILTIN:
            mod_name, attr = _BUILTIN[name]
            try:
                factory = getattr(importlib.import_module(mod_name), attr)
            except ModuleNotFoundError as exc:
                raise ConfigurationError(f"executor={spec!r} is not available: {exc}") from exc
            kwargs = _query_kwargs(spec, query)
            try:
                executor = factory(**kwargs)
            except TypeError as exc:
                raise ConfigurationError(f"executor={spec!r}: {exc}") from exc
        elif ":" in spec:
            factory = import_from_string(spec, "executor")
            executor = factory() if isinstance(factory, type) or callable(factory) else factory
        else:
            raise ConfigurationError(
                f"executor={spec!r} is not understood: use 'thread', 'asyncio', 'celery', "
                "'rq', 'store', 'package.module:factory' or an executor instance"
            )
    else:
        executor = spec
    missing = [
        m for m in ("start", "submit", "shutdown") if not callable(getattr(executor, m, None))
    ]
    if missing:
        raise ConfigurationError(
            f"executor={spec!r} is not an executor: it lacks {', '.join(missing)}"
        )
    supports = getattr(executor, "supports", frozenset({"asgi", "wsgi"}))
    if kind not in supports:
        hint = "'thread'" if kind == "wsgi" else "'asyncio' or 'thread'"
        raise ConfigurationError(
            f"executor={getattr(executor, 'name', spec)!r} can't run {kind.upper()} apps; "
            f"use {hint}"
        )
    return executor  # type: ignore[no-any-return]
