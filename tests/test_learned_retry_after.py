"""Retry-After from a route's learned run time: the header value computed from a
learned distribution (no timing), the hold of a read that lands near the learned
end, and how often the statistics are written to the store."""

from __future__ import annotations

from typing import Any

import pytest

from async_accept import timings
from async_accept.engine import Engine
from async_accept.job import Job, JobStatus
from async_accept.options import build_options
from async_accept.timings import RunTimes
from tests.test_store_contract import make_job

NOW = 1_000_000.0
ROUTE = "POST /report"


def engine_learned(runs: list[float], **options: Any) -> Engine:
    """An engine whose route ``ROUTE`` learned ``runs`` (no store)."""
    engine = Engine(build_options(secret_key="k" * 32, **options), clock=lambda: NOW)
    for seconds in runs:
        engine.run_times.record(ROUTE, seconds)
    return engine


def running(started_ago: float, **kw: Any) -> Job:
    return make_job(
        NOW - started_ago,
        route=ROUTE,
        status=JobStatus.PROCESSING,
        started_at=NOW - started_ago,
        deadline_at=NOW + 600,
        **kw,
    )


def test_first_retry_after_lands_within_a_second_before_the_learned_end() -> None:
    """A queued job of a route learned at ~2 s gets Retry-After 2 (floor of the 90th
    percentile), never 3: the poll lands in the last second before the end."""
    engine = engine_learned([2.004] * 9 + [2.02])
    queued = make_job(NOW, route=ROUTE, deadline_at=NOW + 600)
    assert engine.run_times.get(ROUTE) is not None
    assert engine.retry_after(queued, NOW) == 2


def test_retry_after_counts_from_the_start_to_the_high_percentile() -> None:
    """20 at the start, 12 after 8 s; the end is the 90th percentile, not the mean."""
    engine = engine_learned([10.0] * 5 + [20.3] * 5)
    learned = engine.run_times.get(ROUTE)
    assert learned is not None and learned.mean < 20 and learned.high == 20.3
    assert engine.retry_after(running(0.0), NOW) == 20
    assert engine.retry_after(running(8.0), NOW) == 12


def test_overrun_and_bounds_still_apply() -> None:
    """Past the learned end: the poll interval; max_retry_after and the deadline still cap it."""
    engine = engine_learned([2.0], poll_interval=1.0, max_retry_after=5)
    assert engine.retry_after(running(3.0), NOW) == 1
    long = engine_learned([30.0], max_retry_after=5)
    assert long.retry_after(running(0.0), NOW) == 5
    near_deadline = make_job(
        NOW, route=ROUTE, status=JobStatus.PROCESSING, started_at=NOW, deadline_at=NOW + 3
    )
    assert engine_learned([30.0]).retry_after(near_deadline, NOW) == 3


def test_progress_reported_by_the_handler_wins_over_what_was_learned() -> None:
    """A job with an eta gets Retry-After from the eta, and its reads are not held."""
    engine = engine_learned([2.0])
    job = running(1.5, eta=7.0, progress_at=NOW)
    assert engine.retry_after(job, NOW) == 7
    assert engine.hold_near_end(job, NOW) is None


def test_a_read_is_held_only_in_the_last_second_before_the_learned_end() -> None:
    """A plain read is held in the last second before the learned end only, until it + a grace."""
    engine = engine_learned([2.0])
    assert engine.hold_near_end(running(0.5), NOW) is None  # 1.5 s to go
    held = engine.hold_near_end(running(1.4), NOW)  # 0.6 s to go
    assert held == pytest.approx(0.6 + 0.5)
    assert engine.hold_near_end(running(2.1), NOW) is None  # overran
    queued = make_job(NOW, route=ROUTE)
    assert engine.hold_near_end(queued, NOW) is None
    assert engine_learned([]).hold_near_end(running(1.4), NOW) is None  # nothing learned


class Keeper:
    """A store that keeps run times in a dict and counts the writes."""

    def __init__(self) -> None:
        self.saved: dict[str, str] = {}
        self.writes = 0

    def load_run_times(self) -> dict[str, str]:
        return dict(self.saved)

    def save_run_time(self, route: str, data: str) -> None:
        self.writes += 1
        self.saved[route] = data


def test_run_times_are_written_at_most_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst of runs costs one store write; the next, an interval later, carries them all."""
    clock = [100.0]
    monkeypatch.setattr(timings.time, "monotonic", lambda: clock[0])
    keeper = Keeper()
    times = RunTimes(keeper)
    for _ in range(10):
        times.record(ROUTE, 0.05)
    assert keeper.writes == 1
    clock[0] += timings.SAVE_EVERY
    times.record(ROUTE, 0.05)
    assert keeper.writes == 2
    kept = timings.RunTime.from_json(keeper.saved[ROUTE])
    assert kept is not None and len(kept.recent) == 11


def test_save_due_says_when_a_record_would_write_and_save_false_never_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """save_due is True exactly when record would write the store; record(save=False)
    learns in memory only and leaves the next write due."""
    clock = [100.0]
    monkeypatch.setattr(timings.time, "monotonic", lambda: clock[0])
    keeper = Keeper()
    times = RunTimes(keeper)
    assert times.save_due(ROUTE)
    times.record(ROUTE, 0.05, save=False)
    assert keeper.writes == 0 and times.save_due(ROUTE)
    learned = times.get(ROUTE)
    assert learned is not None and learned.recent == [0.05]
    times.record(ROUTE, 0.07)
    assert keeper.writes == 1 and not times.save_due(ROUTE)
    clock[0] += timings.SAVE_EVERY
    assert times.save_due(ROUTE)
    assert not RunTimes(object()).save_due(ROUTE)  # a store that keeps none
