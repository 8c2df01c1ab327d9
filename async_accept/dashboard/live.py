"""Live updates of the dashboard: ``GET {base}/events``, an event stream that says
"something changed" so the page fetches its panels again.

The stream waits on the process's change feed (``feed.py``) for a change of *any*
job: a store call of this process that returned a job in a new state, or the
store's signal of another process's write (SQLite ``data_version``, Redis pub/sub,
PostgreSQL ``LISTEN``). It sends no job data, only ``event: changed`` with an
``id:`` of ``<process>:<feed version>``; the page then reads the page again, the
same read a reload makes, under the same guard.

Bounded: at most one event per ``MIN_GAP`` seconds (changes in between are
coalesced into the next one), a keep-alive comment when quiet, and the stream
ends after ``STREAM_SECONDS`` (WSGI: ``wsgi_max_wait`` if shorter, since it holds
a thread). The browser's ``EventSource`` then reconnects with ``Last-Event-ID``;
a version of this process says whether anything changed meanwhile, one of
another process (or none known) gets an event at once. The page keeps a slow
periodic refresh as a fallback.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qs

from ..engine.ops import Gen, StoreCall
from ..engine.responses import NO_STORE, Response
from ..engine.waiting import SSE_KEEPALIVE, EventStream
from ..job import CapturedRequest

#: seconds a stream stays open before the browser reconnects
STREAM_SECONDS = 25.0
#: at least this many seconds between two events of one stream
MIN_GAP = 1.0
#: how long the browser waits before it reconnects (ms)
RETRY_MS = 2000

_SALT = secrets.token_hex(4)


class Feed(Protocol):
    """The change feed's face for waiters on any job (``feed.ChangeFeed``)."""

    version: int

    def touch_any(self) -> int: ...
    def wait_any(self, since: int, timeout: float) -> int: ...
    async def await_any(self, since: int, timeout: float) -> int: ...


def _process(feed: Feed) -> str:
    """Which feed a version belongs to (a forked child is another process)."""
    return f"{_SALT}{os.getpid():x}{id(feed):x}"


def mark(feed: Feed) -> str:
    """Where the page stands: ``<process>:<version>``, counted from now on."""
    return f"{_process(feed)}:{feed.touch_any()}"


def _since(feed: Feed, given: str | None) -> int | None:
    """The version a client has, if it is this feed's; None: tell it at once."""
    if not given:
        return feed.touch_any()
    proc, _, version = given.partition(":")
    if proc != _process(feed) or not version.isdigit():
        return None
    return int(version)


def _wait_any(feed: Feed, since: int, timeout: float) -> Gen[int]:
    call: StoreCall[int] = StoreCall(
        lambda _s: feed.wait_any(since, timeout), lambda _s: feed.await_any(since, timeout)
    )
    yield call
    return call.result


def _pause(seconds: float) -> Gen[None]:
    call: StoreCall[None] = StoreCall(
        lambda _s: time.sleep(seconds), lambda _s: asyncio.sleep(seconds)
    )
    yield call
    return None


@dataclass
class LiveStream(EventStream):
    """The dashboard's event stream: ``changed`` events, coalesced, for a while."""

    feed: Feed | None = None
    #: the version the client has (None: it is behind, tell it at once)
    since: int | None = None
    life: float = STREAM_SECONDS
    sent_at: float = -MIN_GAP
    deadline: float | None = field(default=None)

    def next_chunk(self, wait: float = SSE_KEEPALIVE) -> Gen[bytes | None]:
        feed = self.feed
        if self.done or feed is None:
            return None
        now = time.monotonic()
        if self.deadline is None:
            self.deadline = now + self.life
        left = self.deadline - now
        if left <= 0:
            self.done = True
            return None
        prelude = b""
        if not self.started:
            self.started = True
            prelude = f"retry: {RETRY_MS}\n\n".encode()
        version = feed.version
        if self.since is not None and version == self.since:
            version = yield from _wait_any(feed, self.since, max(0.0, min(wait, left)))
            if version == self.since:
                return prelude + b": keep-alive\n\n"
        gap = self.sent_at + MIN_GAP - time.monotonic()
        if gap > 0:  # coalesce: what changes meanwhile goes out with this event
            yield from _pause(gap)
            version = feed.version
        self.since, self.sent_at = version, time.monotonic()
        return (
            prelude + f"event: changed\nid: {_process(feed)}:{version}\ndata: changed\n\n".encode()
        )


def open_live(feed: Feed, request: CapturedRequest, limit: float | None) -> Response:
    """The answer to ``GET {base}/events`` of a caller the guard let in."""
    last = request.header(b"last-event-id")
    if last is not None:
        given: str | None = last.decode("latin-1").strip()
    else:
        given = parse_qs(request.query_string.decode("latin-1")).get("since", [None])[0]
    return LiveStream(
        200,
        [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            NO_STORE,
            (b"x-accel-buffering", b"no"),
        ],
        b"",
        limit=limit,
        feed=feed,
        since=_since(feed, given),
        life=STREAM_SECONDS if limit is None else min(limit, STREAM_SECONDS),
    )
