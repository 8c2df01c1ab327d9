"""Group commit of the PostgreSQL store's creates: accepts that arrive while one
batch is on its way to the database go together in the next, one ``INSERT``
(one statement, so one transaction and one round trip) for all of them.

The first caller becomes the leader and sends what has queued (itself
included); the others wait for their own outcome. A job the batch statement
did not insert (its id already there, or its idempotency key held by a live
job, possibly one inserted by the same batch) is settled on its own, exactly
as a single create would be, so each caller gets its own ``(job, created)``.
A batch statement that fails for a reason of its own (not the connection) is
split: each create runs alone and gets its own outcome or error.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import Any, Generic, TypeVar, cast

import psycopg

from ...errors import StoreError
from ...job import CapturedRequest, Job
from .sql import _COLS, _COLUMNS, Statements, after_conflict, job_values, one

__all__ = ["MAX_BATCH", "AsyncBatcher", "Batcher", "create_many", "create_many_async"]

ItemT = TypeVar("ItemT")
OutT = TypeVar("OutT")

#: Creates sent in one statement at most.
MAX_BATCH = 64
#: Times a create is tried again when the holder of its idempotency key vanishes
#: (expired and deleted, or deleted by another process) between two statements.
CREATE_ROUNDS = 5

Create = tuple[Job, CapturedRequest]
Outcome = tuple[Job, bool] | BaseException
Conn = psycopg.Connection[Any]
AConn = psycopg.AsyncConnection[Any]


# -- the statements -----------------------------------------------------------------------------


#: Each column's SQL type (migration 1), for the arrays the batch statement unnests.
_FLOATS = {
    "created_at", "updated_at", "expires_at", "deadline_at", "sla", "started_at",
    "finished_at", "percent", "eta", "progress_at", "heartbeat_at",
}  # fmt: skip
_TYPES = {"cancel_requested": "boolean", "result_status": "integer", "attempts": "integer"}
_TYPES.update(meta="jsonb", **dict.fromkeys(_FLOATS, "double precision"))


@functools.cache
def insert_many(s: str) -> str:
    """The batch statement: one array per column (so one short statement, parsed and
    prepared once, whatever the batch's size), rows inserted in the callers' order.
    ``s`` is the quoted schema."""
    arrays = ", ".join(f"%b::{_TYPES.get(c, 'text')}[]" for c in _COLUMNS)
    return (
        f"WITH v AS (SELECT * FROM unnest({arrays}, %b::text[], %b::bytea[]) "
        f"WITH ORDINALITY AS v ({_COLS}, req_meta, req_body, n)), "
        f"j AS (INSERT INTO {s}.jobs ({_COLS}) SELECT {_COLS} FROM v ORDER BY n "
        # Any conflict: the id (a repeated create) or a live idempotency key, also
        # one taken by an earlier row of this very statement.
        "ON CONFLICT DO NOTHING RETURNING id) "
        f"INSERT INTO {s}.job_bodies (job_id, kind, meta, body) "
        "SELECT v.id, 'request', v.req_meta, v.req_body FROM v JOIN j ON j.id = v.id "
        "RETURNING job_id"
    )


def _arrays(creates: Sequence[Create]) -> list[Any]:
    """The batch statement's arguments, a list per column: one row per job id."""
    seen: set[str] = set()
    rows: list[tuple[Any, ...]] = []
    for job, request in creates:
        if job.id not in seen:
            seen.add(job.id)
            rows.append((*job_values(job), request.meta_json(), request.body))
    return [list(col) for col in zip(*rows, strict=True)]


def _is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, psycopg.OperationalError)


# -- what a batch says to the database, once for both kinds of connection --------------------

#: One statement to run: its text, its arguments, and whether they go in binary.
Query = tuple[str, Sequence[Any], bool]
#: A conversation with the database: yields statements, is sent each one's rows
#: (an empty list for a statement that returns none), has a statement's error
#: thrown in, and returns its value. :func:`_drive` runs it on a blocking
#: connection, :func:`_adrive` on an asyncio one: the logic is written once.
Talk = Generator[Query, list[Any], ItemT]


class _Steps(Generic[OutT]):
    """A :data:`Talk` advanced one statement at a time: :meth:`next` hands out the
    next statement (None once the talk returned its :attr:`value`), :meth:`reply`
    gives it the statement's rows or error. The drivers only run statements."""

    __slots__ = ("_reply", "_talk", "value")

    def __init__(self, talk: Talk[OutT]) -> None:
        self._talk = talk
        self._reply: list[Any] | Exception | None = None
        self.value: OutT | None = None

    def reply(self, rows_or_error: list[Any] | Exception) -> None:
        self._reply = rows_or_error

    def next(self) -> Query | None:
        reply, self._reply = self._reply, None
        try:
            if isinstance(reply, Exception):
                return self._talk.throw(reply)
            if reply is None:  # the first statement
                return next(self._talk)
            return self._talk.send(reply)
        except StopIteration as stop:
            self.value = stop.value
            return None


def _drive(conn: Conn, talk: Talk[OutT]) -> OutT:
    """Run ``talk`` on a blocking connection."""
    steps = _Steps(talk)
    while (query := steps.next()) is not None:
        try:
            cur = conn.execute(query[0], query[1], binary=query[2])
            steps.reply(cur.fetchall() if cur.description is not None else [])
        except Exception as exc:
            steps.reply(exc)
    return cast(OutT, steps.value)


async def _adrive(conn: AConn, talk: Talk[OutT]) -> OutT:
    """Run ``talk`` on an asyncio connection."""
    steps = _Steps(talk)
    while (query := steps.next()) is not None:
        try:
            cur = await conn.execute(query[0], query[1], binary=query[2])
            steps.reply(await cur.fetchall() if cur.description is not None else [])
        except Exception as exc:
            steps.reply(exc)
    return cast(OutT, steps.value)


def _one(sql: Statements, job: Job, request: CapturedRequest) -> Talk[tuple[Job, bool]]:
    """One create: insert, or settle the conflict (a repeat, a live or an expired key)."""
    values = (*job_values(job), request.meta_json(), request.body)
    for _ in range(CREATE_ROUNDS):
        if (yield sql.create, values, False):
            return job, True
        same = one((yield sql.by_id, (job.id,), False))
        holder = None
        if same is None and job.idempotency_key is not None:
            holder = one((yield sql.by_key, (job.idempotency_key,), False))
        step = after_conflict(job, same, holder)
        if step.result is not None:
            return step.result
        if step.drop is not None:
            yield sql.drop_expired_holder, (step.drop, job.created_at), False
    raise StoreError(f"PostgreSQL store: create of job {job.id} kept conflicting")


def _many(sql: Statements, creates: Sequence[Create]) -> Talk[list[Outcome]]:
    """Every create of the batch: one statement, then the conflicts one by one."""
    if len(creates) == 1:
        return [(yield from _one(sql, *creates[0]))]
    try:
        rows = yield insert_many(sql.schema_sql), _arrays(creates), True
        inserted = {r[0] for r in rows}
    except psycopg.Error as exc:
        if _is_connection_error(exc):
            raise
        inserted = set()  # nothing of it was written: each create alone says why
    out: list[Outcome] = []
    for job, request in creates:
        if job.id in inserted:
            inserted.discard(job.id)  # a second create of the same job settles as a repeat
            out.append((job, True))
            continue
        try:
            out.append((yield from _one(sql, job, request)))
        except psycopg.Error as exc:
            if _is_connection_error(exc):
                raise
            out.append(exc)
        except StoreError as exc:
            out.append(exc)
    return out


def create_one(conn: Conn, sql: Statements, job: Job, request: CapturedRequest) -> tuple[Job, bool]:
    """One create on a blocking connection (see :func:`_one`)."""
    return _drive(conn, _one(sql, job, request))


async def create_one_async(
    conn: AConn, sql: Statements, job: Job, request: CapturedRequest
) -> tuple[Job, bool]:
    """:func:`create_one` on an asyncio connection."""
    return await _adrive(conn, _one(sql, job, request))


def create_many(conn: Conn, sql: Statements, creates: Sequence[Create]) -> list[Outcome]:
    """Every create of the batch on a blocking connection (see :func:`_many`)."""
    return _drive(conn, _many(sql, creates))


async def create_many_async(
    conn: AConn, sql: Statements, creates: Sequence[Create]
) -> list[Outcome]:
    """:func:`create_many` on an asyncio connection."""
    return await _adrive(conn, _many(sql, creates))


# -- who sends the batch ------------------------------------------------------------------------


def _own(error: BaseException, shared: bool) -> BaseException:
    """An exception to raise in one caller: a copy when several callers share it."""
    if not shared or not isinstance(error, StoreError):
        return error
    copy = StoreError(str(error))
    copy.__cause__ = error
    return copy


class _Op(Generic[ItemT, OutT]):
    __slots__ = ("done", "error", "item", "result")

    def __init__(self, item: ItemT) -> None:
        self.item = item
        self.done = False
        self.result: OutT | None = None
        self.error: BaseException | None = None


class Batcher(Generic[ItemT, OutT]):
    """Blocking callers: one at a time leads, sending what has queued (up to
    :data:`MAX_BATCH` a statement) until its own item is done; the others sleep
    until theirs is, or until the leader leaves and one of them takes over."""

    def __init__(self, send: Callable[[list[ItemT]], list[OutT | BaseException]]) -> None:
        self._send = send
        self._cond = threading.Condition()
        self._queue: list[_Op[ItemT, OutT]] = []
        self._leading = False

    def submit(self, item: ItemT) -> OutT:
        op: _Op[ItemT, OutT] = _Op(item)
        with self._cond:
            self._queue.append(op)
            while not op.done and self._leading:
                self._cond.wait()
            lead = not op.done
            if lead:
                self._leading = True
        if lead:
            try:
                while not op.done:
                    self._flush()
            finally:
                with self._cond:
                    self._leading = False
                    self._cond.notify_all()
        if op.error is not None:
            raise op.error
        return cast(OutT, op.result)

    def _flush(self) -> None:
        with self._cond:
            batch = self._queue[:MAX_BATCH]
            del self._queue[:MAX_BATCH]
        try:
            outs: list[OutT | BaseException] = self._send([op.item for op in batch])
        except BaseException as exc:
            outs = [_own(exc, len(batch) > 1) for _ in batch]
            if not isinstance(exc, Exception):
                self._settle(batch, outs)
                raise
        self._settle(batch, outs)

    def _settle(self, batch: list[_Op[ItemT, OutT]], outs: list[OutT | BaseException]) -> None:
        with self._cond:
            for op, out in zip(batch, outs, strict=True):
                if isinstance(out, BaseException):
                    op.error = out
                else:
                    op.result = out
                op.done = True
            self._cond.notify_all()


class AsyncBatcher(Generic[ItemT, OutT]):
    """The same for one event loop's tasks: the first caller sends batches until
    its own item is done, then hands what is left to a task of its own."""

    def __init__(
        self,
        send: Callable[[list[ItemT]], Awaitable[list[OutT | BaseException]]],
        in_flight: int = 1,
    ) -> None:
        self.in_flight = in_flight
        self._send = send
        self._queue: list[tuple[ItemT, asyncio.Future[OutT]]] = []
        self._active = 0  # batches being sent
        self._drains: set[asyncio.Task[None]] = set()

    async def submit(self, item: ItemT) -> OutT:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[OutT] = loop.create_future()
        self._queue.append((item, future))
        if self._active < self.in_flight:
            self._active += 1
            try:
                while not future.done() and self._queue:
                    await self._flush()
            finally:
                self._active -= 1
                if self._queue and self._active < self.in_flight and not loop.is_closed():
                    self._start_drain(loop)
        return await future

    def _start_drain(self, loop: asyncio.AbstractEventLoop) -> None:
        self._active += 1
        task = loop.create_task(self._drain())
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def _drain(self) -> None:
        try:
            while self._queue:
                await self._flush()
        finally:
            self._active -= 1

    async def _flush(self) -> None:
        batch = self._queue[:MAX_BATCH]
        del self._queue[:MAX_BATCH]
        try:
            outs = await self._send([item for item, _ in batch])
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else StoreError("the call was cancelled")
            for _, future in batch:
                if not future.done():
                    future.set_exception(_own(error, len(batch) > 1))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), out in zip(batch, outs, strict=True):
            if future.done():  # its caller was cancelled; the create stands anyway
                continue
            if isinstance(out, BaseException):
                future.set_exception(out)
            else:
                future.set_result(out)
