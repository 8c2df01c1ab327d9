"""Store namespaces: several applications sharing one SQLite file keep apart by
giving each its own (``sqlite:///jobs.db?namespace=billing`` or ``namespace=``),
as they do on one Redis database. The rules are Redis's: 1-64 letters, digits,
``_``, ``.`` or ``-``; given once; the URL's and the keyword's must agree."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..errors import ConfigurationError

__all__ = ["NAMESPACE_PATTERN", "check_namespace", "pick_namespace"]

#: What a namespace may be (the same as a Redis store's).
NAMESPACE_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def check_namespace(kind: str, name: object) -> str:
    """``name`` if it is a valid namespace, else a ConfigurationError saying what to write."""
    if not isinstance(name, str) or not NAMESPACE_PATTERN.fullmatch(name):
        raise ConfigurationError(
            f"{kind} namespace {name!r}: use 1-64 letters, digits, '_', '.' or '-' "
            "(e.g. ?namespace=billing)"
        )
    return name


def pick_namespace(
    kind: str, where: str, from_url: Sequence[str], keyword: str | None, default: str
) -> str:
    """The namespace to use: the keyword's, else the URL's (``from_url``: the values
    of its ``namespace`` options), else ``default``. ``where`` names the URL in errors."""
    if len(from_url) > 1:
        raise ConfigurationError(f"{where}: give ?namespace= once")
    if keyword is not None and from_url and from_url[0] != keyword:
        raise ConfigurationError(
            f"{where} says namespace={from_url[0]!r} but namespace={keyword!r} "
            "was given too: keep one of them"
        )
    if keyword is not None:
        return check_namespace(kind, keyword)
    if from_url:
        return check_namespace(kind, from_url[0])
    return default
