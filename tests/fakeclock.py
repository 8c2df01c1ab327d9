"""A monotonic clock the tests move by hand (the liveness, worker and beat watches)."""

from __future__ import annotations


class FakeMonotonic:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
