"""Key names and the round trip behind every store method, shared by both faces."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ...errors import ConfigurationError, StoreError
from ...job import CapturedRequest, CapturedResponse, Job, JobStatus
from ..base import WORKER_RETENTION, Outcome, OwnedQuery, Progress
from .codec import _CREATED_AT, _FIELDS, STATUSES, _enc, _f, _job, _opt

T = TypeVar("T")

_PURGE_BATCH = 500

# -- what each method sends and how it reads the answer -----------------------------------


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One round trip: a script (by name) or, when ``script`` is None, an HMGET."""

    script: str | None
    keys: list[str]
    args: list[str | bytes]
    parse: Callable[[Any], T]


def _parse_cancel(raw: Any) -> tuple[Job | None, bool]:
    if not raw:
        return None, False
    return _job(raw[1]), bool(raw[0])


class _Layout:
    """Key names and the calls behind every store method, shared by both faces."""

    def __init__(self, namespace: str) -> None:
        if not namespace or not isinstance(namespace, str):
            raise ConfigurationError("RedisStore namespace must be a non-empty string")
        self.ns = namespace
        #: the scripts that end a job also write its webhook notices (default_outbox)
        self.notify = False

    def job_key(self, job_id: str) -> str:
        return f"{self.ns}:job:{job_id}"

    def idem_key(self, key: str) -> str:
        return f"{self.ns}:idem:{key}"

    def create(self, job: Job, request: CapturedRequest) -> _Call[tuple[Job, bool]]:
        keys = [self.job_key(job.id)]
        if job.idempotency_key is not None:
            keys.append(self.idem_key(job.idempotency_key))
        args: list[str | bytes] = [
            self.ns,
            job.id,
            _f(job.created_at),
            _f(job.expires_at),
            JobStatus(job.status).value,
        ]
        pairs: list[str] = []
        for name, kind in _FIELDS:
            value = getattr(job, name)
            if value is not None:
                pairs += [name, _enc(kind, value)]
        # ensure_ascii=False: Lua gets the very UTF-8 bytes HSET stored before.
        args += [
            json.dumps(pairs, ensure_ascii=False, separators=(",", ":")),
            request.meta_json(),
            request.body,
            job.owner,
        ]

        def parse(raw: Any) -> tuple[Job, bool]:
            if raw[0]:
                return job, True
            existing = _job(raw[1])
            assert existing is not None  # the script checked it is live
            return existing, False

        return _Call("create", keys, args, parse)

    def get(self, job_id: str, now: float) -> _Call[Job | None]:
        def parse(raw: Any) -> Job | None:
            job = _job(raw)
            return job if job is not None and job.expires_at > now else None

        return _Call("get", [self.job_key(job_id)], [self.ns], parse)

    def get_request(self, job_id: str) -> _Call[CapturedRequest | None]:
        def parse(raw: Any) -> CapturedRequest | None:
            meta, body = raw
            if meta is None:
                return None
            return CapturedRequest.from_meta_json(meta.decode(), body or b"")

        return _Call(None, [self.job_key(job_id)], ["req_meta", "req_body"], parse)

    def get_result(self, job_id: str) -> _Call[CapturedResponse | None]:
        def parse(raw: Any) -> CapturedResponse | None:
            meta, body = raw
            if meta is None:
                return None
            return CapturedResponse.from_meta_json(meta.decode(), body or b"")

        return _Call(None, [self.job_key(job_id)], ["res_meta", "res_body"], parse)

    def claim(self, job_id: str, worker_id: str, now: float) -> _Call[Job | None]:
        return _Call("claim", [self.job_key(job_id)], [self.ns, worker_id, _f(now)], _job)

    def claim_with_request(
        self, job_id: str, worker_id: str, now: float
    ) -> _Call[tuple[Job, CapturedRequest | None] | None]:
        def parse(raw: Any) -> tuple[Job, CapturedRequest | None] | None:
            job = _job(raw[0]) if raw else None
            if job is None:
                return None
            meta, body = raw[1]
            request = (
                None if meta is None else CapturedRequest.from_meta_json(meta.decode(), body or b"")
            )
            return job, request

        args: list[str | bytes] = [self.ns, worker_id, _f(now)]
        return _Call("claim_request", [self.job_key(job_id)], args, parse)

    def heartbeat(self, job_id: str, worker_id: str, now: float) -> _Call[Job | None]:
        return _Call("heartbeat", [self.job_key(job_id)], [self.ns, worker_id, _f(now)], _job)

    def set_progress(
        self, job_id: str, worker_id: str, now: float, progress: Progress
    ) -> _Call[Job | None]:
        percent, message, eta = progress
        args: list[str | bytes] = [
            self.ns,
            worker_id,
            _f(now),
            _opt(None if percent is None else _f(percent)),
            _opt(message),
            _opt(None if eta is None else _f(eta)),
        ]
        return _Call("progress", [self.job_key(job_id)], args, _job)

    def finish(
        self, job_id: str, worker_id: str, now: float, outcome: Outcome
    ) -> _Call[Job | None]:
        status, response, error, result_location = outcome
        args: list[str | bytes] = [
            self.ns,
            worker_id,
            _f(now),
            status.value,
            _opt(None if response is None else response.meta_json()),
            _opt(None if response is None else response.body),
            _opt(None if response is None else str(int(response.status))),
            _opt(None if error is None else _enc("j", error)),
            _opt(result_location),
        ]
        return _Call(self._ending("finish"), [self.job_key(job_id)], args, _job)

    def fail(
        self,
        job_id: str,
        expected: Collection[JobStatus],
        now: float,
        error: dict[str, Any],
        lease: float | None = None,
    ) -> _Call[Job | None]:
        args: list[str | bytes] = [self.ns, _f(now), _enc("j", error), _lease(lease)]
        args += [JobStatus(s).value for s in expected]
        return _Call(self._ending("fail"), [self.job_key(job_id)], args, _job)

    def cancel(self, job_id: str, now: float) -> _Call[tuple[Job | None, bool]]:
        key = [self.job_key(job_id)]
        return _Call(self._ending("cancel"), key, [self.ns, _f(now)], _parse_cancel)

    def requeue(
        self, job_id: str, worker_id: str, now: float, lease: float | None = None
    ) -> _Call[Job | None]:
        args: list[str | bytes] = [self.ns, worker_id, _f(now), _lease(lease)]
        return _Call(self._ending("requeue"), [self.job_key(job_id)], args, _job)

    def _ending(self, script: str) -> str:
        """The script that may end a job: with its notices when the outbox is ours."""
        return script + "_notify" if self.notify else script

    def mark_dispatched(
        self, job_ids: Sequence[str], now: float, stale_before: float
    ) -> _Call[list[str]]:
        ids = list(job_ids)

        def parse(raw: Any) -> list[str]:
            return [ids[int(i) - 1] for i in raw]

        keys = [self.job_key(j) for j in ids]
        return _Call("dispatch", keys, [self.ns, _f(now), _f(stale_before)], parse)

    def retry(self, job_id: str, now: float) -> _Call[Job | None]:
        return _Call("retry", [self.job_key(job_id)], [self.ns, _f(now)], _job)

    def list_jobs(
        self, status: JobStatus | None, limit: int, created_before: float | None, newest: bool
    ) -> _Call[list[Job]]:
        limit = int(limit)
        statuses = STATUSES if status is None else (JobStatus(status).value,)
        top = "+inf" if created_before is None else "(" + _f(created_before)
        args: list[str | bytes] = [self.ns, str(max(limit, 0)), top, *statuses]

        def parse(raw: Any) -> list[Job]:
            if limit <= 0:
                return []
            # created_at, then the creation sequence
            rows = sorted(raw, key=lambda r: (float(r[_CREATED_AT]), r[-1]), reverse=newest)
            return [job for job in map(_job, rows[:limit]) if job is not None]

        return _Call("list_newest" if newest else "list", [], args, parse)

    def list_owned(self, owner: str, now: float, query: OwnedQuery) -> _Call[list[Job]]:
        top, cursor = "+inf", None
        before, created_before = query.before, query.created_before
        if before is not None:
            top, cursor = _f(before[0]), before[1]
        if created_before is not None and (before is None or created_before <= before[0]):
            top, cursor = "(" + _f(created_before), None
        bottom = "-inf" if query.created_after is None else _f(query.created_after)
        status = None if query.status is None else JobStatus(query.status).value
        args: list[str | bytes] = [
            self.ns,
            owner,
            _f(now),
            str(max(0, int(query.limit))),
            top,
            _opt(cursor),
            bottom,
            _opt(status),
            _opt(query.route),
        ]

        def parse(raw: Any) -> list[Job]:
            return [job for job in map(_job, raw or []) if job is not None]

        return _Call("owned", [], args, parse)

    def count_by_status(self) -> _Call[dict[JobStatus, int]]:
        def parse(raw: Any) -> dict[JobStatus, int]:
            return {JobStatus(s): int(n) for s, n in zip(STATUSES, raw, strict=True)}

        return _Call("count", [], [self.ns], parse)

    def purge_batch(self, now: float) -> _Call[tuple[int, bool]]:
        def parse(raw: Any) -> tuple[int, bool]:
            return int(raw[0]), int(raw[1]) >= _PURGE_BATCH

        return _Call("purge", [], [self.ns, _f(now), str(_PURGE_BATCH)], parse)

    def delete(self, job_id: str) -> _Call[bool]:
        return _Call("delete", [self.job_key(job_id)], [self.ns], bool)

    def worker_heartbeat(self, worker_id: str, now: float, info: dict[str, Any]) -> _Call[None]:
        data = json.dumps(info, separators=(",", ":"))
        return _Call("worker_beat", [], [self.ns, worker_id, _f(now), data], lambda raw: None)

    def list_workers(self, now: float) -> _Call[list[dict[str, Any]]]:
        def parse(raw: Any) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            for wid, score, info in raw:
                entry: dict[str, Any] = json.loads(info)
                entry.update(id=wid.decode("utf-8"), last_heartbeat=float(score))
                out.append(entry)
            return out

        return _Call("workers", [], [self.ns, _f(now - WORKER_RETENTION)], parse)


def _store_error(exc: BaseException) -> StoreError:
    return StoreError(f"Redis store: {type(exc).__name__}: {exc}")


def _lease(lease: float | None) -> str:
    """A deadman lease as the scripts compare it with ``heartbeat_at`` ('' for none)."""
    return "" if lease is None else _f(lease)
