"""The client side of the pattern: wait for a 202 job and fetch its result.

::

    from async_accept.client import poll

    response = httpx.post(url, json=order, headers=auth)   # 202 Accepted
    result = poll(response, headers=auth, timeout=600)      # the final response

:func:`poll` (and :func:`apoll`, its awaitable twin) follows the status URL
from the ``Location`` of a 202. Each status read long-polls (``Prefer: wait=N``,
RFC 7240): a server that applies it answers as soon as the job changes, and the
next read follows at once; a server that doesn't is read again after its
``Retry-After`` (delta-seconds or an HTTP date; a growing backoff when there is
none). Every status JSON goes to ``on_progress``; on ``303 See Other`` the
result is fetched with the same credentials. A failed, canceled, unknown or expired job
raises a typed :class:`ClientError` carrying the problem object.

httpx is optional (``pip install 'async-accept[client]'``) and imported only
when a function here is called.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ._imports import import_optional
from .errors import AsyncAcceptError

if TYPE_CHECKING:
    from typing import TypeAlias

    import httpx

    AuthLike: TypeAlias = (
        httpx.Auth | tuple[str | bytes, str | bytes] | Callable[[httpx.Request], httpx.Request]
    )

__all__ = [
    "ClientError",
    "JobCanceledError",
    "JobExpired",
    "JobFailed",
    "JobNotFound",
    "PollTimeout",
    "UnexpectedResponse",
    "acancel",
    "apoll",
    "cancel",
    "parse_retry_after",
    "poll",
]

#: Headers that carry credentials: never sent to another origin than the status URL's.
_CREDENTIAL_HEADERS = frozenset(
    {"authorization", "cookie", "proxy-authorization", "x-api-key", "api-key"}
)
#: Answers from a status URL that mean "try again later" (proxies, rate limits, restarts).
_TRANSIENT = frozenset({429, 502, 503, 504})
_FIRST_BACKOFF = 1.0
#: seconds a status read asks the server to hold it (below common 30-s proxy timeouts)
DEFAULT_WAIT = 25.0
#: read timeout kept beyond the asked wait, for the answer to travel
_WAIT_SLACK = 1.0
_BACKOFF_FACTOR = 1.5


def _httpx() -> Any:
    return import_optional("httpx", "The polling client", "client")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value, or None when absent or unreadable.

    Both RFC 9110 forms are understood: delta-seconds (``"120"``) and an
    HTTP date (``"Wed, 21 Oct 2015 07:28:00 GMT"``, measured from ``now``,
    POSIX seconds, default the wall clock). A date in the past gives 0.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(int(value))
    from werkzeug.http import parse_date

    when = parse_date(value)
    if when is None:
        return None
    if now is None:
        now = time.time()
    return max(0.0, when.timestamp() - now)


class ClientError(AsyncAcceptError):
    """Root of the polling client's errors.

    ``problem`` is the server's problem object (RFC 9457) when it sent one,
    ``status_json`` the last status JSON seen, ``response`` the answer that
    ended the wait, ``url`` the URL it came from.
    """

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        response: httpx.Response | None = None,
        problem: dict[str, Any] | None = None,
        status_json: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.response = response
        self.problem: dict[str, Any] = problem or {}
        self.status_json = status_json
        super().__init__(message)

    @property
    def job_id(self) -> str | None:
        """The job's id, when a status JSON told it."""
        if self.status_json is None:
            return None
        value = self.status_json.get("id")
        return value if isinstance(value, str) else None


class JobFailed(ClientError):
    """The job ended ``failed``; ``problem`` is the status JSON's ``error``."""


class JobCanceledError(ClientError):
    """The job ended ``canceled``."""


class JobNotFound(ClientError):
    """The status URL answered 404: unknown job, bad token or other credentials."""


class JobExpired(ClientError):
    """The status URL answered 410: the job outlived its TTL and was purged."""


class PollTimeout(ClientError, TimeoutError):
    """The job was still running when the total ``timeout`` ran out.

    ``url`` is the status URL: poll it again or cancel it.
    """


class UnexpectedResponse(ClientError):
    """The server answered something the protocol does not allow here."""


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    port = url.port
    if port is None:
        port = {"http": 80, "https": 443}.get(url.scheme)
    return (url.scheme, url.host, port)


def _json(response: httpx.Response) -> Any:
    ctype = response.headers.get("content-type", "")
    if "json" not in ctype:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _problem(response: httpx.Response) -> dict[str, Any]:
    data = _json(response)
    if isinstance(data, dict):
        return data
    return {"status": response.status_code, "title": response.reason_phrase}


@dataclass
class _Step:
    """What the driver does next: wait then poll ``url``, fetch the result, or stop."""

    kind: Literal["wait", "result", "done"]
    delay: float = 0.0
    url: httpx.URL | None = None
    response: httpx.Response | None = None


class _Poll:
    """The polling logic without I/O; :func:`poll` and :func:`apoll` drive it."""

    def __init__(
        self,
        *,
        headers: Mapping[str, str] | None,
        auth: AuthLike | None,
        timeout: float | None,
        max_interval: float,
        on_progress: Callable[[dict[str, Any]], object] | None,
        wait: float | None = None,
    ) -> None:
        if not max_interval > 0:
            raise ValueError(f"max_interval={max_interval!r} must be > 0")
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout={timeout!r} must be >= 0")
        if wait is not None and not wait >= 0:
            raise ValueError(f"wait={wait!r} must be >= 0 (0 or None: no long-poll)")
        self.wait = wait or 0.0
        self.httpx = _httpx()
        self.headers: dict[str, str] = dict(headers or {})
        self.auth = auth
        self.max_interval = float(max_interval)
        self.on_progress = on_progress
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.url: httpx.URL | None = None
        self.creds_origin: tuple[str, str, int | None] | None = None
        self.last_status: dict[str, Any] | None = None
        self._backoff = _FIRST_BACKOFF

    # -- requests --------------------------------------------------------

    def same_origin(self, url: httpx.URL) -> bool:
        return self.creds_origin is None or _origin(url) == self.creds_origin

    def request_kwargs(self, url: httpx.URL) -> dict[str, Any]:
        """Headers and auth for ``url``: credentials only go to their own origin."""
        if self.same_origin(url):
            kwargs: dict[str, Any] = {"headers": self.headers}
            if self.auth is not None:
                kwargs["auth"] = self.auth
            return kwargs
        # Like httpx on a cross-origin redirect: the result lives elsewhere
        # (a 201's resource on another host), so credentials stay home.
        safe = {k: v for k, v in self.headers.items() if k.lower() not in _CREDENTIAL_HEADERS}
        return {"headers": safe, "auth": None}

    def build(self, http: Any, method: str, url: httpx.URL) -> tuple[httpx.Request, Any]:
        """The request for ``url`` and the auth to send it with.

        Cross-origin, every credential header goes, the client's own default
        headers and cookies included (httpx would merge those in).
        """
        kwargs = self.request_kwargs(url)
        auth = kwargs.pop("auth", None) if "auth" in kwargs else self.httpx.USE_CLIENT_DEFAULT
        request = http.build_request(method, url, **kwargs)
        if not self.same_origin(url):
            for name in _CREDENTIAL_HEADERS:
                if name in request.headers:
                    del request.headers[name]
            auth = None
        return request, auth

    def status_kwargs(self, url: httpx.URL, client_timeout: Any) -> dict[str, Any]:
        """``request_kwargs`` for a status read, plus ``Prefer: wait=N``: N whole
        seconds, within the poll's own timeout and below the client's read timeout
        (which is the caller's to set; :func:`poll` makes its own client's long enough)."""
        kwargs = self.request_kwargs(url)
        wait = self.wait
        remaining = self.remaining()
        if remaining is not None:
            wait = min(wait, remaining)
        read = getattr(client_timeout, "read", None)
        if read is not None:
            wait = min(wait, read - _WAIT_SLACK)
        n = int(wait)
        if n >= 1:
            kwargs["headers"] = {**kwargs["headers"], "prefer": f"wait={n}"}
        return kwargs

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def timeout_error(self) -> PollTimeout:
        return PollTimeout(
            f"job at {self.url} still running when the timeout ran out",
            url=None if self.url is None else str(self.url),
            status_json=self.last_status,
        )

    # -- decisions -------------------------------------------------------

    def start(self, target: str | httpx.URL | httpx.Response) -> _Step:
        hx = self.httpx
        if not isinstance(target, hx.Response):
            self.url = hx.URL(str(target))
            if self.url.scheme not in ("http", "https"):
                raise ValueError(f"{target!r} is not an http(s) URL")
            self.creds_origin = _origin(self.url)
            return _Step("wait", 0.0)
        response: httpx.Response = target
        base = _request_url(response)
        if response.status_code not in (202, 303):
            # The route answered directly (``Prefer: wait`` / a fast job): that is the result.
            return _Step("done", response=response)
        location = response.headers.get("location")
        if not location:
            raise UnexpectedResponse(
                f"{response.status_code} without a Location header",
                url=None if base is None else str(base),
                response=response,
            )
        url = hx.URL(location) if base is None else base.join(location)
        if not self.headers and self.auth is None and base is not None:
            # Reuse the credentials that created the job; they only go to its origin.
            original = response.request.headers
            self.headers = {k: original[k] for k in ("authorization", "cookie") if k in original}
            self.creds_origin = _origin(base)
        if response.status_code == 303:
            self.url = base or url
            if self.creds_origin is None:
                self.creds_origin = _origin(self.url)
            return _Step("result", url=url)
        self.url = url
        if self.creds_origin is None:
            self.creds_origin = _origin(url)
        if self.wait >= 1:
            return _Step("wait", 0.0)  # a long-poll read waits on the server's side
        return _Step("wait", self._delay(response))

    def interpret(self, response: httpx.Response) -> _Step:
        """Decide after an answer from the status URL."""
        code = response.status_code
        url = response.url
        if code == 303:
            self._status(response)
            location = response.headers.get("location")
            if not location:
                raise UnexpectedResponse(
                    "303 without a Location header", url=str(url), response=response
                )
            return _Step("result", url=url.join(location))
        if code in (200, 202):
            status = self._status(response)
            if status is not None:
                state = status.get("status")
                if state == "failed":
                    error = status.get("error")
                    problem = error if isinstance(error, dict) else {}
                    title = problem.get("title") or "job failed"
                    detail = problem.get("detail")
                    raise JobFailed(
                        f"job {status.get('id')} failed: {title}"
                        + (f": {detail}" if detail else ""),
                        url=str(url),
                        response=response,
                        problem=problem,
                        status_json=status,
                    )
                if state == "canceled":
                    raise JobCanceledError(
                        f"job {status.get('id')} was canceled",
                        url=str(url),
                        response=response,
                        status_json=status,
                    )
                if state == "completed":
                    links = status.get("links")
                    result = links.get("result") if isinstance(links, dict) else None
                    if isinstance(result, str) and result:
                        return _Step("result", url=url.join(result))
                    return _Step("done", response=response)
            if code == 202:
                # OData / Durable Functions style: 202 while running; the
                # monitor may move.
                location = response.headers.get("location")
                if location:
                    self.url = url.join(location)
                return _Step("wait", 0.0 if _applied_wait(response) else self._delay(response))
            if status is None:
                # A 200 that is not a status document: the status URL served the result.
                return _Step("done", response=response)
            if _applied_wait(response):
                # The server held the read until a change (or its wait): read again now.
                return _Step("wait", 0.0)
            return _Step("wait", self._delay(response))
        if code == 404:
            raise JobNotFound(
                f"no job at {url}", url=str(url), response=response, problem=_problem(response)
            )
        if code == 410:
            raise JobExpired(
                f"the job at {url} has expired",
                url=str(url),
                response=response,
                problem=_problem(response),
            )
        if code in _TRANSIENT:
            return _Step("wait", self._delay(response))
        raise UnexpectedResponse(
            f"status URL {url} answered {code}",
            url=str(url),
            response=response,
            problem=_problem(response),
            status_json=self.last_status,
        )

    def _status(self, response: httpx.Response) -> dict[str, Any] | None:
        data = _json(response)
        if not isinstance(data, dict) or not isinstance(data.get("status"), str):
            return None
        self.last_status = data
        if self.on_progress is not None:
            self.on_progress(data)
        return data

    def _delay(self, response: httpx.Response) -> float:
        wait = parse_retry_after(response.headers.get("retry-after"))
        if wait is None:
            wait = self._backoff
            self._backoff = min(self._backoff * _BACKOFF_FACTOR, self.max_interval)
        return min(max(wait, 0.0), self.max_interval)

    def sleep_for(self, step: _Step) -> float:
        """How long to sleep before the next poll; raises PollTimeout when time is up."""
        remaining = self.remaining()
        if remaining is None:
            return step.delay
        if remaining <= 0:
            raise self.timeout_error()
        # Sleep at most to the deadline, then poll once more: the job may
        # have finished meanwhile.
        return min(step.delay, remaining)


def _own_timeout(wait: float | None) -> float:
    """The timeout of the client :func:`poll` makes: httpx's 5 s, or longer than the wait."""
    return max(5.0, (wait or 0.0) + 5.0)


def _applied_wait(response: httpx.Response) -> bool:
    """Whether the server applied ``Prefer: wait`` to this read."""
    applied = response.headers.get("preference-applied", "")
    return any(p.strip().lower().startswith("wait=") for p in applied.split(","))


def _request_url(response: httpx.Response) -> httpx.URL | None:
    try:
        return response.request.url
    except RuntimeError:  # a Response built by hand has no request
        return None


def poll(
    url_or_response: str | httpx.URL | httpx.Response,
    *,
    client: httpx.Client | None = None,
    headers: Mapping[str, str] | None = None,
    auth: AuthLike | None = None,
    timeout: float | None = None,
    max_interval: float = 30.0,
    on_progress: Callable[[dict[str, Any]], object] | None = None,
    sleep: Callable[[float], object] | None = None,
    wait: float | None = DEFAULT_WAIT,
) -> httpx.Response:
    """Wait for a job and return its final response.

    ``url_or_response`` is a 202 response (its ``Location``, resolved against
    the request URL, is the status URL; any other response is returned as it
    is, since the server answered directly) or a status URL. ``headers`` and
    ``auth`` go with every request; when neither is given and a response is
    passed, its request's ``Authorization`` and ``Cookie`` are reused for the
    same origin. Each status read asks the server to hold it until the job
    changes, up to ``wait`` seconds (``Prefer: wait``; its read timeout is
    raised to match; ``wait=None`` turns this off); a server that doesn't apply
    it is polled after each ``Retry-After``, capped at ``max_interval`` seconds.
    ``timeout`` bounds the whole wait (the asked wait never exceeds what is
    left; checked between requests) and raises :class:`PollTimeout`.
    ``sleep`` replaces :func:`time.sleep` (tests, custom schedulers).

    Raises :class:`JobFailed`, :class:`JobCanceledError`, :class:`JobNotFound`,
    :class:`JobExpired`, :class:`PollTimeout` or :class:`UnexpectedResponse`;
    transport errors are httpx's own.
    """
    state = _Poll(
        headers=headers,
        auth=auth,
        timeout=timeout,
        max_interval=max_interval,
        on_progress=on_progress,
        wait=wait,
    )
    hx = state.httpx
    do_sleep = time.sleep if sleep is None else sleep
    step = state.start(url_or_response)
    own = client is None
    http: httpx.Client = hx.Client(timeout=_own_timeout(wait)) if client is None else client
    try:
        while True:
            if step.kind == "done":
                assert step.response is not None
                return step.response
            if step.kind == "result":
                assert step.url is not None
                request, auth = state.build(http, "GET", step.url)
                return http.send(request, auth=auth)
            delay = state.sleep_for(step)
            if delay > 0:
                do_sleep(delay)
            assert state.url is not None
            response = http.get(
                state.url, follow_redirects=False, **state.status_kwargs(state.url, http.timeout)
            )
            step = state.interpret(response)
    finally:
        if own:
            http.close()


async def apoll(
    url_or_response: str | httpx.URL | httpx.Response,
    *,
    client: httpx.AsyncClient | None = None,
    headers: Mapping[str, str] | None = None,
    auth: AuthLike | None = None,
    timeout: float | None = None,
    max_interval: float = 30.0,
    on_progress: Callable[[dict[str, Any]], object] | None = None,
    sleep: Callable[[float], Awaitable[object]] | None = None,
    wait: float | None = DEFAULT_WAIT,
) -> httpx.Response:
    """:func:`poll`, awaitable, over an :class:`httpx.AsyncClient`."""
    state = _Poll(
        headers=headers,
        auth=auth,
        timeout=timeout,
        max_interval=max_interval,
        on_progress=on_progress,
        wait=wait,
    )
    hx = state.httpx
    do_sleep = asyncio.sleep if sleep is None else sleep
    step = state.start(url_or_response)
    own = client is None
    http: httpx.AsyncClient = (
        hx.AsyncClient(timeout=_own_timeout(wait)) if client is None else client
    )
    try:
        while True:
            if step.kind == "done":
                assert step.response is not None
                return step.response
            if step.kind == "result":
                assert step.url is not None
                request, auth = state.build(http, "GET", step.url)
                return await http.send(request, auth=auth)
            delay = state.sleep_for(step)
            if delay > 0:
                await do_sleep(delay)
            assert state.url is not None
            response = await http.get(
                state.url, follow_redirects=False, **state.status_kwargs(state.url, http.timeout)
            )
            step = state.interpret(response)
    finally:
        if own:
            await http.aclose()


def _cancel_target(
    url_or_response: str | httpx.URL | httpx.Response,
    headers: Mapping[str, str] | None,
    auth: AuthLike | None,
) -> _Poll:
    state = _Poll(headers=headers, auth=auth, timeout=None, max_interval=1.0, on_progress=None)
    state.start(url_or_response)
    if state.url is None:
        raise UnexpectedResponse("that response names no job to cancel")
    return state


def _cancel_outcome(response: httpx.Response) -> httpx.Response:
    code = response.status_code
    if code in (200, 202, 409):
        return response
    url = str(response.url)
    if code == 404:
        raise JobNotFound(
            f"no job at {url}", url=url, response=response, problem=_problem(response)
        )
    if code == 410:
        raise JobExpired(
            f"the job at {url} has expired", url=url, response=response, problem=_problem(response)
        )
    raise UnexpectedResponse(
        f"cancel of {url} answered {code}", url=url, response=response, problem=_problem(response)
    )


def cancel(
    url_or_response: str | httpx.URL | httpx.Response,
    *,
    client: httpx.Client | None = None,
    headers: Mapping[str, str] | None = None,
    auth: AuthLike | None = None,
) -> httpx.Response:
    """Send ``DELETE`` to the status URL and return the answer.

    ``200``: canceled before it ran; ``202``: cancellation requested of a
    running job; ``409``: the job had already finished. 404 and 410 raise
    :class:`JobNotFound` / :class:`JobExpired`; anything else
    :class:`UnexpectedResponse`.
    """
    state = _cancel_target(url_or_response, headers, auth)
    assert state.url is not None
    own = client is None
    http: httpx.Client = state.httpx.Client() if client is None else client
    try:
        response = http.delete(state.url, **state.request_kwargs(state.url))
    finally:
        if own:
            http.close()
    return _cancel_outcome(response)


async def acancel(
    url_or_response: str | httpx.URL | httpx.Response,
    *,
    client: httpx.AsyncClient | None = None,
    headers: Mapping[str, str] | None = None,
    auth: AuthLike | None = None,
) -> httpx.Response:
    """:func:`cancel`, awaitable."""
    state = _cancel_target(url_or_response, headers, auth)
    assert state.url is not None
    own = client is None
    http: httpx.AsyncClient = state.httpx.AsyncClient() if client is None else client
    try:
        response = await http.delete(state.url, **state.request_kwargs(state.url))
    finally:
        if own:
            await http.aclose()
    return _cancel_outcome(response)
