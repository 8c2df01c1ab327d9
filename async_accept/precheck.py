"""The app decides first: a marked handler's wrapper tells the middleware
"accept now" when the request reaches it.

For a route marked with ``@long_running`` the middleware does not accept on
arrival: it opens a :class:`Gate` (a context variable) and calls the app with
the request. The app's whole stack runs (its middleware, authentication,
CSRF, host checks, validation, dependencies, decorators above the mark).
Whatever the app answers before the handler goes to the client as it is.
When the call reaches the handler, the wrapper ``@long_running`` put around
it raises :class:`AcceptNow` instead of running the body; the middleware
catches it and answers ``202`` from the request it captured. In the job the
stack runs again on the replayed request, and with no gate open (and
``current_job()`` set) the wrapper runs the body.

Why an exception derived from ``BaseException``: every framework turns an
``Exception`` escaping a handler into a logged 500 (Starlette's and
Litestar's exception middleware, Flask's and Quart's ``handle_exception``,
Django's ``convert_exception_to_response``, DRF's ``handle_exception``,
Falcon's error handlers), reporting it to error trackers on the way. They all
catch ``Exception``, not ``BaseException`` (as with ``asyncio.CancelledError``,
``KeyboardInterrupt``), so :class:`AcceptNow` passes through them unlogged,
their ``finally`` blocks and context exits still running (a transaction of
``ATOMIC_REQUESTS`` rolls back, Flask's teardown runs). Thread hops carry it
too: ``anyio.to_thread``, asgiref's ``sync_to_async`` and
``concurrent.futures`` re-raise a ``BaseException`` in the caller, and they
copy the context, so the gate is seen in the thread running a sync handler.
anyio task groups (Starlette's ``BaseHTTPMiddleware``) may wrap it in a
``BaseExceptionGroup``: :func:`accept_signal` looks inside.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .context import current_job

#: the marked handler's ``RouteOptions`` (typed loosely: routes.py imports this module)
RouteOptions = Any

__all__ = ["AcceptNow", "Gate", "accept_signal", "open_gate", "stop_here"]


class AcceptNow(BaseException):
    """The request reached a marked handler: accept it as a job now.

    Raised by the handler's wrapper in the request cycle, caught by the
    middleware that opened the gate; never seen by the app's error handling.
    """

    def __init__(self, options: RouteOptions) -> None:
        super().__init__("the request reached a @long_running handler: accept it now")
        self.options = options


class Gate:
    """One request's pre-check: open while the app runs in the request cycle."""

    __slots__ = ("is_open", "options")

    def __init__(self) -> None:
        self.is_open = True
        #: the options of the handler the call reached (set with AcceptNow)
        self.options: RouteOptions | None = None


_gate: contextvars.ContextVar[Gate | None] = contextvars.ContextVar(
    "async_accept_gate", default=None
)


@contextmanager
def open_gate() -> Iterator[Gate]:
    """Open a gate for the app call made inside the ``with`` block."""
    gate = Gate()
    token = _gate.set(gate)
    try:
        yield gate
    finally:
        gate.is_open = False  # copies of this context (tasks, threads) see it closed
        _gate.reset(token)


def stop_here(options: RouteOptions) -> None:
    """In a marked handler's wrapper: raise :class:`AcceptNow` when a middleware
    waits for the call to reach the handler; return (run the body) otherwise:
    in a job, without a middleware, after the gate closed."""
    gate = _gate.get()
    if gate is None or not gate.is_open or current_job() is not None:
        return
    gate.is_open = False  # one handler per request: a nested call runs
    gate.options = options
    raise AcceptNow(options)


def accept_signal(exc: BaseException) -> AcceptNow | None:
    """The :class:`AcceptNow` that ``exc`` is or carries (exception groups,
    ``__cause__``/``__context__`` of a framework's wrapping), or None."""
    seen = 0
    pending: list[BaseException] = [exc]
    while pending and seen < 50:
        current = pending.pop()
        seen += 1
        if isinstance(current, AcceptNow):
            return current
        inner = getattr(current, "exceptions", None)  # BaseExceptionGroup
        if isinstance(inner, tuple):
            pending.extend(e for e in inner if isinstance(e, BaseException))
    return None
