"""The operator dashboard at ``{prefix}/dashboard`` (off by default).

Server-rendered HTML from the middleware itself: no build step, no CDN, a few
lines of vanilla JS for the refresh. See ``serve.py`` for its URLs,
``gate.py`` for who may use it and ``data.py`` for where each figure comes from.
"""

from .data import DeadLetters
from .gate import Guard, guard_for
from .serve import serve_dashboard

__all__ = ["DeadLetters", "Guard", "guard_for", "serve_dashboard"]
