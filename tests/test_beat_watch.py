"""Whether registered workers are alive (engine/beats.py), as the health answer and the
dashboard tell it: by the reader's own monotonic clock once it has watched a full
window, by the registry's wall-clock age before that."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from async_accept.dashboard.data import Snapshot
from async_accept.dashboard.page import _workers
from async_accept.engine import Engine
from async_accept.engine.beats import BeatWatch
from async_accept.engine.health import health_report
from async_accept.job import JobStatus
from async_accept.options import build_options
from tests.fakeclock import FakeMonotonic

NOW = 1_700_000_000.0
LOST = 15.0


def _worker(wid: str, beat: float, **extra: Any) -> dict[str, Any]:
    return {"id": wid, "last_heartbeat": beat, "role": "worker", "consumes": True, **extra}


def test_fresh_reader_goes_by_the_registry_age() -> None:
    """Before a full window of watching, a worker is alive when its heartbeat is younger
    than lost_after by the reader's clock (the rule before the watch)."""
    watch = BeatWatch(LOST, FakeMonotonic())
    got = watch.alive([_worker("a", NOW - 3), _worker("b", NOW - 40)], NOW)
    assert got == {"a": True, "b": False}


def test_reader_ahead_of_the_workers_keeps_a_beating_worker_alive() -> None:
    """A reader whose wall clock runs 60 s ahead calls a worker that keeps beating alive
    once it has watched it change for a window (the wall-clock rule said silent)."""
    mono = FakeMonotonic()
    watch = BeatWatch(LOST, mono)
    beat = NOW - 60  # the worker's clock, 60 s behind the reader's
    assert watch.alive([_worker("a", beat)], NOW) == {"a": False}  # wall clock: stale
    for step in range(1, 6):
        mono.now += 5
        beat += 5
        got = watch.alive([_worker("a", beat)], NOW + 5 * step)
    assert got == {"a": True}


def test_reader_behind_the_workers_sees_a_dead_worker_silent() -> None:
    """A reader whose wall clock runs 60 s behind calls a worker whose heartbeat stopped
    changing silent after lost_after of its own monotonic time (the wall-clock rule kept
    it alive for 60 s more)."""
    mono = FakeMonotonic()
    watch = BeatWatch(LOST, mono)
    beat = NOW + 60
    assert watch.alive([_worker("a", beat)], NOW) == {"a": True}
    mono.now += LOST - 1
    assert watch.alive([_worker("a", beat)], NOW + LOST - 1) == {"a": True}
    mono.now += 2
    assert watch.alive([_worker("a", beat)], NOW + LOST + 1) == {"a": False}


def test_stopped_is_never_alive_and_forgotten_workers_start_afresh() -> None:
    """A worker that said goodbye is not alive; one the registry forgot is watched anew
    when it comes back (its first window goes by the registry's age)."""
    mono = FakeMonotonic()
    watch = BeatWatch(LOST, mono)
    assert watch.alive([_worker("a", NOW, state="stopped")], NOW) == {"a": False}
    watch.alive([_worker("b", NOW)], NOW)
    mono.now += 100
    assert watch.alive([], NOW + 100) == {}
    assert watch.alive([_worker("b", NOW + 99)], NOW + 100) == {"b": True}


@settings(max_examples=200, deadline=None)
@given(
    offset=st.floats(min_value=-3600, max_value=3600),
    beat_every=st.floats(min_value=0.5, max_value=LOST / 2),
    read_every=st.floats(min_value=0.5, max_value=30.0),
    beats_before_death=st.integers(min_value=1, max_value=40),
)
def test_verdicts_follow_the_workers_life_whatever_the_clocks(
    offset: float, beat_every: float, read_every: float, beats_before_death: int
) -> None:
    """Whatever the offset between the reader's and the worker's wall clocks: after the
    first window, a worker beating every beat_every (< lost_after / 2) is alive at every
    reading while it lives, and silent at every reading more than lost_after + one
    reading interval after it died."""
    mono = FakeMonotonic()
    watch = BeatWatch(LOST, mono)
    start = mono.now
    died_at = start + beats_before_death * beat_every
    t = start
    while t < died_at + LOST + 3 * read_every + 1:
        mono.now = t
        last_beat_at = min(t, died_at) - (min(t, died_at) - start) % beat_every
        got = watch.alive([_worker("a", last_beat_at + offset)], t)["a"]
        if t - start >= LOST and t < died_at:
            assert got, (t, last_beat_at)
        if t > died_at + LOST + read_every:
            assert not got, (t, last_beat_at)
        t += read_every


def test_health_stays_ok_when_the_reader_clock_runs_ahead() -> None:
    """The health answer of a reader 60 s ahead of a live consumer stays "ok" once it
    has watched the consumer beat for a window (before: "stalled", a 503)."""
    mono = FakeMonotonic()
    engine = Engine(build_options(secret_key="k" * 32))
    engine.beats = BeatWatch(engine.options.worker_lost_after, mono)
    counts = dict.fromkeys(JobStatus, 0)
    counts[JobStatus.QUEUED] = 1
    oldest = NOW - 100  # older than stall_after
    beat = NOW - 60
    first = health_report(engine, counts, oldest, [_worker("w", beat)], NOW)
    assert first["status"] == "stalled"  # a fresh reader has only the wall clocks
    for step in range(1, 8):
        mono.now += 5
        beat += 5
        report = health_report(engine, counts, oldest, [_worker("w", beat)], NOW + 5 * step)
    assert report["status"] == "ok"
    assert report["workers"][0]["alive"] is True and report["workers"][0]["age"] >= 59


def test_dashboard_shows_the_watch_verdict() -> None:
    """The dashboard's workers table says alive/silent as the watch judged it, and falls
    back to the registry's age for a worker the watch has no verdict on."""
    snap = Snapshot(
        now=NOW,
        counts={},
        oldest_queued_age=None,
        queued=[],
        running=[],
        failures=[],
        routes=[],
        buckets=[],
        workers=[_worker("ahead", NOW - 60), _worker("fresh", NOW - 1)],
        dead=None,
        worker_lost_after=LOST,
        alive={"ahead": True},
    )
    html = _workers(snap)
    rows = html.split("<tr>")[1:]
    ahead = next(r for r in rows if "ahead" in r)
    fresh = next(r for r in rows if "fresh" in r)
    assert "<td>alive</td>" in ahead and "<td>alive</td>" in fresh
    snap.alive = {"ahead": False}
    assert "<td>silent</td>" in next(r for r in _workers(snap).split("<tr>") if "ahead" in r)
