"""The operator dashboard at ``{prefix}/dashboard`` (off by default).

Server-rendered HTML from the middleware itself: no build step, no CDN, a few
lines of vanilla JS for the live updates. See ``serve.py`` for its URLs,
``gate.py`` for who may use it, ``data.py`` for where each figure comes from
and ``live.py`` for the live updates.
"""

from .data import DeadLetters, Marked
from .gate import Guard, SignInLimiter, guard_for
from .serve import serve_dashboard

__all__ = ["DeadLetters", "Guard", "Marked", "SignInLimiter", "guard_for", "serve_dashboard"]
