"""What the ``async-accept`` commands share (cli.py, cli_webhooks.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["Fail", "print_table", "runtime_of"]


class Fail(Exception):
    """A command that could not do what was asked: message, exit status 1."""


def runtime_of(app_path: str) -> Any:
    from .worker import load_runtime

    return load_runtime(app_path)


def print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    widths = {c: max([len(c), *(len(str(r[c])) for r in rows)]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in columns).rstrip())
