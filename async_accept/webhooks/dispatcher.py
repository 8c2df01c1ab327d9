"""Delivery: :class:`WebhookDispatcher` sends what an :mod:`~async_accept.outbox` holds.

POST of the JSON, retried with exponential backoff and full jitter (or the
receiver's ``Retry-After``), ``410 Gone`` disables the endpoint, spent
deliveries become dead letters to list and replay. It connects to the address
the policy checked (so DNS can't be rebound between check and connect) while
sending the real ``Host`` and TLS server name. httpx is optional
(``pip install 'async-accept[client]'``) and imported when constructed.
"""

from __future__ import annotations

import json
import logging
import random as _random
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._imports import import_optional
from ..client import parse_retry_after
from ..errors import ConfigurationError
from ..outbox import (
    DEFAULT_LEASE,
    Delivery,
    DisabledEndpoint,
    MemoryOutbox,
    Outbox,
    new_message_id,
    resolve_outbox,
)

if TYPE_CHECKING:
    import httpx
from .errors import WebhookResolveError, WebhookTargetError
from .policy import WebhookPolicy
from .signing import Secrets, _keys, webhook_headers

log = logging.getLogger("async_accept.webhooks")

USER_AGENT = "async-accept-webhooks/0.1"
_PIN = "async_accept.pinned_address"
#: Never retry sooner than this, whatever the jitter draws or the receiver says.
_MIN_RETRY_DELAY = 1.0


def _httpx() -> Any:
    return import_optional("httpx", "Webhooks", "client")


def _pinned_transport(verify_tls: bool | ssl.SSLContext) -> httpx.BaseTransport:
    import httpx

    class PinnedTransport(httpx.BaseTransport):
        """Sends each request to the address in its extensions, never to a
        fresh DNS answer; the URL's host stays in ``Host`` and the TLS SNI
        (and so in certificate checks)."""

        def __init__(self) -> None:
            # No keep-alive: a pooled connection is keyed by address, and two
            # host names on one address must not share a TLS session.
            self._inner = httpx.HTTPTransport(
                verify=verify_tls, retries=0, limits=httpx.Limits(max_keepalive_connections=0)
            )

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            address = request.extensions.get(_PIN)
            if not isinstance(address, str) or not address:
                raise httpx.ConnectError("no pinned address: refusing to connect", request=request)
            original = request.url
            # ``Host`` was set from the original URL when the request was built.
            request.url = original.copy_with(host=address)
            if original.host != address:
                request.extensions = {**request.extensions, "sni_hostname": original.host}
            return self._inner.handle_request(request)

        def close(self) -> None:
            self._inner.close()

    return PinnedTransport()


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(f"{name}={value!r} must be a number > 0")
    return float(value)


#: The Standard Webhooks retry schedule: seconds after each failed attempt.
STANDARD_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


class WebhookDispatcher:
    """Sends the outbox's deliveries, signed, with retries and dead letters.

    Call :meth:`enqueue` when a job ends; deliveries go out on
    :meth:`deliver_due` (one pass, synchronous) or from the background thread
    of :meth:`start`. Several dispatchers (threads, processes) may share a
    SQLite outbox: each delivery is claimed by one at a time.

    Retries: by default the Standard Webhooks schedule (STANDARD_SCHEDULE: 5 s,
    5 min, 30 min, 2 h, 5 h, 10 h, 10 h after the failed attempts, so 8
    attempts span more than a day), each time up to 10 % earlier (jitter). A
    configured ``schedule`` works the same way (its last entry repeating). With
    ``backoff_base``/``backoff_cap`` instead, the n-th retry waits a random
    time in ``[0, min(backoff_cap, backoff_base * 2**(n-1))]`` (full jitter,
    at least one second). A ``Retry-After``
    from the receiver replaces that (capped at ``max_retry_after``). After
    ``max_attempts`` attempts the delivery is dead. 2xx is success; ``410``
    disables the endpoint for good (the delivery is dead and nothing is sent
    there again until :meth:`enable_endpoint`); anything else is a failure.
    Redirects are not followed.

    ``clock`` (POSIX seconds) and ``random`` (in [0, 1)) are injectable for tests.
    """

    def __init__(
        self,
        secret: Secrets,
        *,
        outbox: Outbox | str | None = None,
        policy: WebhookPolicy | None = None,
        max_attempts: int = 8,
        schedule: Sequence[float] | None = None,
        backoff_base: float | None = None,
        backoff_cap: float | None = None,
        max_retry_after: float = 3600.0,
        timeout: float = 15.0,
        batch_size: int = 50,
        lease: float | None = None,
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        random: Callable[[], float] = _random.random,
        verify_tls: bool | ssl.SSLContext = True,
        user_agent: str = USER_AGENT,
    ) -> None:
        hx = _httpx()
        self._keys = _keys(secret)
        self.policy = WebhookPolicy() if policy is None else policy
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigurationError(f"max_attempts={max_attempts!r} must be an integer >= 1")
        self.max_attempts = max_attempts
        if schedule is None and backoff_base is None and backoff_cap is None:
            schedule = STANDARD_SCHEDULE
        self.schedule = None if schedule is None else [float(s) for s in schedule]
        if self.schedule is not None and (
            not self.schedule or any(not s >= 0 for s in self.schedule)
        ):
            raise ConfigurationError(f"schedule={schedule!r} must be a non-empty list of seconds")
        self.backoff_base = _positive("backoff_base", 5.0 if backoff_base is None else backoff_base)
        self.backoff_cap = _positive("backoff_cap", 3600.0 if backoff_cap is None else backoff_cap)
        self.max_retry_after = _positive("max_retry_after", max_retry_after)
        self.timeout = _positive("timeout", timeout)
        self.interval = _positive("interval", interval)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size={batch_size!r} must be an integer >= 1")
        self.batch_size = batch_size
        # One claim covers one send; a send can take a few timeouts (connect,
        # write, read), so the lease must outlast that or two could overlap.
        self.lease = max(DEFAULT_LEASE, 6 * self.timeout) if lease is None else float(lease)
        if not self.lease > 4 * self.timeout:
            raise ConfigurationError(f"lease={lease!r} must exceed 4 x timeout ({self.timeout})")
        self._clock = clock
        self._random = random
        self._user_agent = user_agent
        # Resources last, once every option is known to be good.
        self._owns_outbox = outbox is None or isinstance(outbox, str)
        self.outbox: Outbox = MemoryOutbox() if outbox is None else resolve_outbox(outbox)
        self._http: httpx.Client = hx.Client(
            transport=_pinned_transport(verify_tls),
            timeout=self.timeout,
            follow_redirects=False,
            trust_env=False,  # an environment proxy would bypass the address check
        )
        #: renders the payload of a delivery recorded without one (the runtime's
        #: Observer.render; None: such a delivery waits, as a failed attempt)
        self.render: Callable[[Delivery], str | None] | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- producing ----------------------------------------------------------

    def enqueue(
        self,
        url: str,
        payload: Mapping[str, Any] | str | bytes,
        *,
        job_id: str | None = None,
        msg_id: str | None = None,
        client_supplied: bool = False,
        now: float | None = None,
        recorded: bool = False,
    ) -> Delivery:
        """Record a delivery of ``payload`` (the job's status JSON) to ``url``.

        The URL is checked on its face now (:meth:`WebhookPolicy.check_url`;
        raises :class:`WebhookTargetError`, so a bad client callback can be
        refused at accept time) and fully, with DNS, before every attempt.
        ``msg_id`` (the ``webhook-id``) defaults to a random one; passing a
        stable one makes a repeated enqueue a no-op. ``recorded``: the store has
        written the delivery already (with its job's end), without a payload; this
        fills it in (and falls back to writing it when it is not there).
        """
        self.policy.check_url(url, client_supplied=client_supplied)
        if isinstance(payload, bytes):
            body = payload.decode("utf-8")
        elif isinstance(payload, str):
            body = payload
        else:
            body = json.dumps(payload, separators=(",", ":"))
        t = self._clock() if now is None else now
        if recorded and msg_id and self.outbox.fill_payload(msg_id, body):
            self._wake.set()
            return Delivery(msg_id, url, body, t, t, job_id=job_id, client_supplied=client_supplied)
        delivery = Delivery(
            id=msg_id or new_message_id(),
            url=url,
            payload=body,
            created_at=t,
            next_at=t,
            updated_at=t,
            job_id=job_id,
            client_supplied=client_supplied,
        )
        stored = self.outbox.enqueue(delivery)
        if not stored.payload and body and self.outbox.fill_payload(stored.id, body):
            stored.payload = body  # recorded with its job's end, never filled in
        self._wake.set()
        return stored

    # -- operator -------------------------------------------------------------

    def list_dead(self, limit: int = 100) -> list[Delivery]:
        """Dead letters, oldest first."""
        return self.outbox.list_dead(limit)

    def replay(self, delivery_id: str, now: float | None = None) -> Delivery | None:
        """Send a dead letter again (with a fresh attempt budget); None when not dead."""
        out = self.outbox.replay(delivery_id, self._clock() if now is None else now)
        if out is not None:
            self._wake.set()
        return out

    def list_disabled(self) -> list[DisabledEndpoint]:
        """Endpoints that answered 410 Gone."""
        return self.outbox.list_disabled()

    def enable_endpoint(self, url: str) -> bool:
        """Allow deliveries to ``url`` again after a 410."""
        return self.outbox.enable_endpoint(url)

    # -- sending --------------------------------------------------------------

    def retry_delay(self, attempts: int, retry_after: str | None, now: float) -> float:
        """Seconds until the next attempt after ``attempts`` failed ones."""
        asked = parse_retry_after(retry_after, now)
        if asked is not None:
            return min(max(asked, _MIN_RETRY_DELAY), self.max_retry_after)
        if self.schedule is not None:
            planned = self.schedule[min(attempts, len(self.schedule)) - 1]
            return max(_MIN_RETRY_DELAY, planned * (0.9 + 0.1 * self._random()))
        ceiling = min(self.backoff_cap, self.backoff_base * 2.0 ** (attempts - 1))
        return max(_MIN_RETRY_DELAY, self._random() * ceiling)

    def deliver_due(self, now: float | None = None) -> int:
        """One pass: attempt up to ``batch_size`` due deliveries; how many were handled.

        ``now`` (POSIX seconds) fixes the time for the whole pass (tests);
        by default the clock is read before each delivery.
        """
        handled = 0
        while handled < self.batch_size:
            t = self._clock() if now is None else now
            claimed = self.outbox.due(t, 1, self.lease)
            if not claimed:
                break
            self._attempt(claimed[0], now)
            handled += 1
        return handled

    def _attempt(self, delivery: Delivery, now: float | None) -> None:
        t = self._clock() if now is None else now
        if not delivery.payload and not self._render(delivery, t):
            return
        if self.outbox.endpoint_disabled(delivery.url):
            self.outbox.mark_dead(
                delivery,
                now=t,
                attempts=delivery.attempts,
                last_error="endpoint disabled: it answered 410 Gone",
            )
            return
        attempts = delivery.attempts + 1
        try:
            target = self.policy.resolve(delivery.url, client_supplied=delivery.client_supplied)
        except WebhookTargetError as exc:
            log.warning("webhook %s refused: %s", delivery.id, exc.reason)
            self.outbox.mark_dead(
                delivery, now=t, attempts=delivery.attempts, last_error=f"refused: {exc.reason}"
            )
            return
        except WebhookResolveError as exc:
            self._failed(delivery, t, attempts, f"resolve: {exc.reason}", None, None)
            return
        hx = _httpx()
        body = delivery.payload.encode("utf-8")
        headers = {
            "content-type": "application/json",
            "user-agent": self._user_agent,
            **webhook_headers(self._keys, delivery.id, t, body),
        }
        request = self._http.build_request(
            "POST", delivery.url, content=body, headers=headers, extensions={_PIN: target.address}
        )
        try:
            response = self._http.send(request, stream=True)
        except hx.HTTPError as exc:
            self._failed(delivery, t, attempts, f"{type(exc).__name__}: {exc}", None, None)
            return
        try:
            status = response.status_code
            retry_after = response.headers.get("retry-after")
        finally:
            response.close()
        if 200 <= status < 300:
            self.outbox.mark_sent(delivery, now=t, attempts=attempts, status=status)
        elif status == 410:
            log.warning("webhook endpoint %s answered 410 Gone: disabled", delivery.url)
            self.outbox.disable_endpoint(delivery.url, t, "410 Gone")
            self.outbox.mark_dead(
                delivery,
                now=t,
                attempts=attempts,
                last_error="410 Gone: endpoint disabled",
                status=status,
            )
        else:
            self._failed(delivery, t, attempts, f"HTTP {status}", status, retry_after)

    def _render(self, delivery: Delivery, t: float) -> bool:
        """Fill in the payload of a delivery its store recorded with its job's end
        (its process stopped before doing so); False when that can't be done now."""
        render = self.render
        if render is None:
            self._failed(delivery, t, delivery.attempts + 1, "payload not written yet", None, None)
            return False
        try:
            payload = render(delivery)
        except Exception as exc:  # the store is down: try again later
            self._failed(delivery, t, delivery.attempts + 1, f"render: {exc}", None, None)
            return False
        if payload is None:
            self.outbox.mark_dead(
                delivery,
                now=t,
                attempts=delivery.attempts,
                last_error="its job is gone or not over",
            )
            return False
        self.outbox.fill_payload(delivery.id, payload)  # every later attempt sends the same
        delivery.payload = payload
        return True

    def _failed(
        self,
        delivery: Delivery,
        now: float,
        attempts: int,
        error: str,
        status: int | None,
        retry_after: str | None,
    ) -> None:
        if attempts >= self.max_attempts:
            log.warning("webhook %s to %s is a dead letter: %s", delivery.id, delivery.url, error)
            self.outbox.mark_dead(
                delivery, now=now, attempts=attempts, last_error=error, status=status
            )
            return
        delay = self.retry_delay(attempts, retry_after, now)
        self.outbox.mark_retry(
            delivery,
            now=now,
            next_at=now + delay,
            attempts=attempts,
            last_error=error,
            status=status,
        )

    # -- background -------------------------------------------------------------

    def start(self) -> None:
        """Deliver in a daemon thread until :meth:`stop`."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="async-accept-webhooks", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                handled = self.deliver_due()
            except Exception:  # keep delivering; the lease brings the row back
                log.exception("webhook delivery pass failed")
                handled = 0
            if handled == 0:
                self._wake.wait(self.interval)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the background thread (the delivery in flight finishes first)."""
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def close(self) -> None:
        """Stop, close the HTTP client, and the outbox when this dispatcher made it."""
        self.stop()
        self._http.close()
        if self._owns_outbox:
            self.outbox.close()

    def __enter__(self) -> WebhookDispatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
