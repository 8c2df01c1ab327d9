"""Parsing the package's own source in tests."""

from __future__ import annotations

import ast
import time


def parse(source: str) -> ast.Module:
    """``ast.parse``, tried again on CPython 3.11's ``SystemError: AST constructor
    recursion depth mismatch``: the AST converter's depth counter is shared by the
    threads of the process, and a thread of an earlier test formatting a traceback
    (which parses source lines) at the same moment trips it."""
    for attempt in range(5):
        try:
            return ast.parse(source)
        except SystemError:
            if attempt == 4:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")
