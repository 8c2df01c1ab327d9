"""What writing the webhook delivery with a job's end costs a finish.

::

    python -m benchmarks.outbox_finish sqlite|redis [--jobs 1000] [--rounds 7]

Store calls only (no HTTP, no handler), on a fresh SQLite file or Redis
namespace per round, ``--jobs`` claimed jobs each with a webhook. The modes
alternate in every round:

- ``before``: finish, then the delivery written by a second call (``enqueue``,
  what the runtime did before the outbox moved into the end's transaction, and
  still does with ``webhook_outbox=`` elsewhere);
- ``after``: finish writing the delivery in its transaction / Lua script, then
  ``fill_payload`` (what the runtime does now);
- ``finish-off`` / ``finish-on``: the finish call alone, without and with the
  delivery in it.

Prints the median per job of each mode over the rounds, and the ratios.
Redis: 127.0.0.1:6379 db 0 (``--redis URL``), its keys deleted after each round.
Not a test: nothing asserts a timing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

from async_accept.job import CapturedRequest, CapturedResponse, Job, JobStatus, new_job_id
from async_accept.outbox import Delivery, Outbox, RedisOutbox, SQLiteOutbox
from async_accept.stores.outbox_base import delivery_id

REQUEST = CapturedRequest("POST", "/x", b"", [], b"body")
RESPONSE = CapturedResponse(200, [(b"content-type", b"text/plain")], b"ok" * 50)
HOOK = "https://hooks.example/h"
#: about the size of a real envelope (status JSON with absolute links)
PAYLOAD = '{"type":"job.completed","data":{"id":"x","status":"completed"}}' * 8


def _claimed(store: Any, n: int, now: float) -> list[str]:
    ids = []
    for _ in range(n):
        # id, status, owner, created_at, updated_at, expires_at, deadline_at, sla
        job = Job(new_job_id(), JobStatus.QUEUED, "o", now, now, now + 3600, now + 600, 300.0)
        job.meta = {"webhook": HOOK}
        store.create(job, REQUEST)
        store.claim(job.id, "w", now)
        ids.append(job.id)
    return ids


def _before(store: Any, box: Outbox, job_id: str, now: float) -> None:
    store.finish(job_id, "w", now, JobStatus.COMPLETED, RESPONSE)
    msg = delivery_id(job_id, HOOK)
    box.enqueue(Delivery(msg, HOOK, PAYLOAD, now, now, job_id=job_id))


def _after(store: Any, box: Outbox, job_id: str, now: float) -> None:
    store.finish(job_id, "w", now, JobStatus.COMPLETED, RESPONSE)
    box.fill_payload(delivery_id(job_id, HOOK), PAYLOAD)


def _finish(store: Any, box: Outbox, job_id: str, now: float) -> None:
    store.finish(job_id, "w", now, JobStatus.COMPLETED, RESPONSE)


MODES: dict[str, tuple[Callable[[Any, Outbox, str, float], None], bool]] = {
    # mode: (what each job does, whether the store writes deliveries with the end)
    "before": (_before, False),
    "after": (_after, True),
    "finish-off": (_finish, False),
    "finish-on": (_finish, True),
}


def _store(kind: str, redis_url: str, with_end: bool) -> tuple[Any, Outbox]:
    if kind == "sqlite":
        from async_accept.stores.sqlite import SQLiteStore

        store: Any = SQLiteStore(os.path.join(tempfile.mkdtemp(), "jobs.db"))
        # default_outbox() turns the write with the end on
        return store, store.default_outbox() if with_end else SQLiteOutbox(store.path)
    from async_accept.stores.redis import RedisStore

    store = RedisStore.from_url(redis_url, namespace="bench-" + uuid.uuid4().hex)
    return store, store.default_outbox() if with_end else RedisOutbox.for_store(store)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["sqlite", "redis"])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    now = time.time()
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode, (step, with_end) in MODES.items():
            store, box = _store(args.kind, args.redis, with_end)
            try:
                ids = _claimed(store, args.jobs, now)
                start = time.perf_counter()
                for job_id in ids:
                    step(store, box, job_id, now)
                times[mode].append((time.perf_counter() - start) / len(ids))
            finally:
                if args.kind == "redis":
                    for key in store.client.scan_iter(match=store.namespace + ":*", count=1000):
                        store.client.delete(key)
                store.close()
    med = {mode: statistics.median(v) for mode, v in times.items()}
    for mode, v in times.items():
        rounds = ", ".join(f"{t * 1e6:.0f}" for t in v)
        print(f"{args.kind} {mode:>10}: median {med[mode] * 1e6:.0f} us per job ({rounds})")
    print(f"{args.kind} after / before: {med['after'] / med['before']:.2f}")
    print(f"{args.kind} finish-on / finish-off: {med['finish-on'] / med['finish-off']:.2f}")


if __name__ == "__main__":
    main()
