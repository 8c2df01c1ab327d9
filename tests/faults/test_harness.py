"""The harness's own counting: what makes a run pass or fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.harness import FaultReport, assert_nothing_lost, error_type, read_ledger


def test_ledger_counts_runs_per_input_id(tmp_path: Path) -> None:
    """Each ledger line is one execution of the id it starts with."""
    ledger = tmp_path / "ledger.txt"
    ledger.write_text("job-1 100\njob-2 100\njob-1 200\n")
    assert read_ledger(ledger) == {"job-1": 2, "job-2": 1}
    assert read_ledger(tmp_path / "missing.txt") == {}


def test_error_type_is_the_last_segment_of_the_problem_type() -> None:
    """URN and URL problem types both reduce to their last segment."""
    assert error_type({"error": {"type": "urn:async-accept:problem:worker-lost"}}) == "worker-lost"
    assert error_type({"error": {"type": "https://example.com/problems/handler-error"}}) == (
        "handler-error"
    )


@pytest.mark.parametrize(
    ("report", "message"),
    [
        (FaultReport(never_ending=["a"]), "never ended"),
        (FaultReport(vanished={404: 1}), "vanished"),
        (FaultReport(completed_not_executed=["a"]), "completed but never executed"),
        (FaultReport(canceled_but_executed=["a"]), "canceled though"),
        (FaultReport(executed_more_than_once=["a"]), "more than once"),
        (FaultReport(failed={"worker-lost": 1}), "unexpected failures"),
        (FaultReport(canceled=1), "canceled"),
    ],
)
def test_every_kind_of_loss_fails_the_run(report: FaultReport, message: str) -> None:
    """A lost, doubled, wrongly ended or unexpectedly failed job fails the assertion."""
    with pytest.raises(AssertionError, match=message):
        assert_nothing_lost(report)


def test_allowed_outcomes_pass() -> None:
    """Failures of an allowed type, retries where allowed and expected cancels pass."""
    report = FaultReport(
        submitted=3,
        accepted=3,
        completed=1,
        failed={"worker-lost": 1},
        canceled=1,
        executed_more_than_once=["a"],
    )
    assert_nothing_lost(
        report, allowed_errors={"worker-lost"}, retries_allowed=True, allow_canceled=True
    )
