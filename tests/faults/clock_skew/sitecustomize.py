"""Put this folder first on PYTHONPATH to give a process a skewed wall clock.

``ASYNC_ACCEPT_FAULT_CLOCK_SKEW=-9`` makes ``time.time()`` (and ``time.time_ns()``)
of the process answer 9 s behind the machine's clock, from interpreter start-up on,
as a host whose clock is off would: everything async_accept writes with its clock
(``heartbeat_at``, ``created_at``, ...) is skewed. The monotonic clock is untouched.
"""

from __future__ import annotations

import os
import time

_SKEW = float(os.environ.get("ASYNC_ACCEPT_FAULT_CLOCK_SKEW", "0") or 0)

if _SKEW:
    _time = time.time
    _time_ns = time.time_ns
    _skew_ns = int(_SKEW * 1e9)

    def _skewed() -> float:
        return _time() + _SKEW

    def _skewed_ns() -> int:
        return _time_ns() + _skew_ns

    time.time = _skewed
    time.time_ns = _skewed_ns
